"""A CIFTI-2 dense time series (``.dtseries.nii``), parcellated with a CIFTI label file.

* Atlas: ``--atlas FILE.dlabel.nii`` (required) -- each ROI is the mean over the grayordinates
  carrying its label (first label map of the file; key 0 / unlabelled is background).
  Grayordinates are matched between the two files by brain structure and vertex (surfaces) or
  voxel (volume), so a cortex-only dlabel works on a 91k dtseries. Volume atlases (``.nii``) are
  not used for CIFTI: subcortical parcels must be labels of the dlabel.
* ROI positions: ``--roi-table`` (rows matched by label name), else the label names must belong
  to a known atlas (:func:`fmrilm.data.atlas.resolve_roi_names`); CIFTI surfaces carry no MNI
  coordinates, so e.g. Glasser or Schaefer dlabels need ``--roi-table``.
* TR: ``--tr``, else the step of the series axis (when its unit is seconds).

Labels with no grayordinate in the time series, or whose signal is zero throughout, are dropped
and the scan's atlas becomes a named subset (as for volumes).
"""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.cifti2 import cifti2_axes as ax
from scipy import sparse

from fmrilm.data.atlas import Atlas, resolve_roi_names
from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.data.ingest.common import (
    check_phenotype_match,
    drop_empty_rois,
    forget_listings,
    phenotype_table,
    present_atlas,
    run_fields,
)
from fmrilm.errors import FmrilmError

_UNITS = {"SECOND": 1.0}
_KEY_COLUMNS = ["structure", "vertex", "i", "j", "k"]


def discover(path: Path, options: ImportOptions) -> list[RawRun]:
    """One run: the dense time series at ``path``, parcellated by ``--atlas FILE.dlabel.nii``.

    ids come from BIDS entities in the name, else its stem; events and ``participants.tsv`` are
    read from the file's folder.
    """
    forget_listings()  # sidecars may have changed since an earlier discovery
    path = Path(path)
    series, _ = _axes(_load(path, "CIFTI time series"), path, ("series", "brain_models"))
    labels = _dlabel(options)
    atlas = _label_atlas(labels, options)
    dirs = [path.parent]
    phenotypes = phenotype_table(options, dirs)
    run = RawRun(
        load=functools.partial(load_cifti, path, labels, atlas),
        tr=_tr(series, path, options),
        **run_fields(path, dirs, phenotypes, options),
    )
    check_phenotype_match(phenotypes, [run], options)
    return [run]


def load_cifti(path: Path, labels: Path, atlas: Atlas) -> Loaded:
    """Mean time series per label, shape (n_frames, n_present_labels)."""
    img = _load(path, "CIFTI time series")
    _, models = _axes(img, path, ("series", "brain_models"))
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)  # (n_frames, n_grayordinates)
    except (OSError, EOFError, ValueError) as exc:
        raise FmrilmError(
            f"{path}: cannot read the data; the file is corrupt or truncated ({exc})"
        ) from None
    label = _labels_on(models, labels, path)  # (n_grayordinates,) label key per grayordinate
    keys = dict(zip(atlas.rois["key"].astype(int), atlas.names, strict=True))
    present = [k for k in keys if np.any(label == k)]
    if not present:
        raise FmrilmError(
            f"{path}: no label of {labels.name} falls on the time series' grayordinates"
        )
    column = np.full(max(int(label.max()), max(present)) + 1, -1)
    column[present] = np.arange(len(present))  # label key -> output column
    rows = np.flatnonzero(np.isin(label, present))
    cols = column[label[rows]]
    counts = np.bincount(cols, minlength=len(present))
    weights = sparse.csr_matrix(
        (1.0 / counts[cols], (rows, cols)), shape=(label.size, len(present))
    )
    means = np.asarray(data @ weights)  # (n_frames, n_present)
    sub = present_atlas(atlas, [keys[k] for k in present])
    return Loaded(*drop_empty_rois(means, sub, empty="zero", what=str(path)))


# --------------------------------------------------------------------------------------------
# internals


def _load(path: Path, what: str):

    if not path.is_file():
        raise FmrilmError(f"{what} {path} does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for malformed CIFTI XML
        raise FmrilmError(
            f"{what} {path}: cannot read as CIFTI-2 ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(img, nib.Cifti2Image):
        raise FmrilmError(f"{what} {path}: not a CIFTI-2 file")
    return img


def _axes(img, path: Path, kinds: tuple[str, str]):
    """The two axes of a CIFTI image, checked to be of the expected kinds."""
    types = {"series": ax.SeriesAxis, "brain_models": ax.BrainModelAxis, "labels": ax.LabelAxis}
    axes = [img.header.get_axis(i) for i in range(2)]
    for axis, kind in zip(axes, kinds, strict=True):
        if not isinstance(axis, types[kind]):
            raise FmrilmError(
                f"{path}: expected CIFTI axes ({kinds[0]}, {kinds[1]}), got "
                f"({type(axes[0]).__name__}, {type(axes[1]).__name__})"
            )
    return axes


def _tr(series, path: Path, options: ImportOptions) -> float:
    if options.tr is not None:
        return float(options.tr)
    if series.unit in _UNITS and series.step > 0:
        return float(series.step) * _UNITS[series.unit]
    raise FmrilmError(
        f"{path}: unknown TR (series axis unit {series.unit}, step {series.step}); pass --tr SECONDS"
    )


def _dlabel(options: ImportOptions) -> Path:
    if not options.atlas:
        raise FmrilmError("CIFTI input needs a parcellation: pass --atlas FILE.dlabel.nii")
    path = Path(options.atlas)
    if not path.name.endswith(".dlabel.nii"):
        raise FmrilmError(
            f"--atlas {options.atlas}: CIFTI input needs a CIFTI label file (.dlabel.nii)"
        )
    return path


def _label_table(labels: Path) -> tuple[dict[int, str], np.ndarray, object]:
    """Label names by key, the key per grayordinate of the first map, and its brain models."""
    img = _load(labels, "atlas")
    label_axis, models = _axes(img, labels, ("labels", "brain_models"))
    names = {int(k): str(v[0]) for k, v in label_axis.label[0].items() if int(k) != 0}
    keys = np.rint(np.asarray(img.dataobj)[0]).astype(np.int64)
    return names, keys, models


def _label_atlas(labels: Path, options: ImportOptions) -> Atlas:
    """ROI table of the dlabel's labels (in key order), placed by ``--roi-table`` or by name."""
    names, keys, _ = _label_table(labels)
    used = [k for k in sorted(names) if np.any(keys == k)]
    if not used:
        raise FmrilmError(f"atlas {labels}: no grayordinate carries a label")
    label_names = [names[k] for k in used]
    stem = labels.name.removesuffix(".dlabel.nii")
    if options.roi_table:
        table = Atlas.from_table(options.roi_table)
        missing = [n for n in label_names if n not in set(table.names)]
        if missing:
            raise FmrilmError(
                f"--roi-table {options.roi_table}: no rows for labels {missing[:3]} of {labels.name}"
            )
        atlas = table.subset(label_names, name=stem)
    else:
        try:
            atlas = resolve_roi_names(label_names, name=stem)
        except FmrilmError as exc:
            raise FmrilmError(f"atlas {labels}: {exc}") from None
        atlas = Atlas(stem, atlas.rois)  # the dlabel names the parcellation
    rois = atlas.rois.copy()
    rois["key"] = used
    return Atlas(atlas.name, rois)


def _labels_on(models, labels: Path, path: Path) -> np.ndarray:
    """The dlabel key of every grayordinate of the time series (0 where unlabelled)."""
    _, keys, label_models = _label_table(labels)
    if models == label_models:
        return keys
    if models.volume_shape is not None and label_models.volume_shape is not None:
        if not np.allclose(models.affine, label_models.affine):
            raise FmrilmError(f"{path}: the volume grid differs from that of atlas {labels.name}")
    table = _grayordinates(label_models).assign(key=keys)
    merged = _grayordinates(models).merge(table, on=_KEY_COLUMNS, how="left")
    if merged["key"].notna().sum() == 0:
        raise FmrilmError(
            f"{path}: shares no grayordinate with atlas {labels.name} (different surface mesh?)"
        )
    return merged["key"].fillna(0).to_numpy(dtype=np.int64)


def _grayordinates(models) -> pd.DataFrame:
    """One row per grayordinate: structure, vertex (-1 for voxels), voxel i, j, k (-1 for vertices)."""
    voxel = np.asarray(models.voxel)
    return pd.DataFrame(
        {
            "structure": np.asarray(models.name),
            "vertex": np.asarray(models.vertex),
            "i": voxel[:, 0],
            "j": voxel[:, 1],
            "k": voxel[:, 2],
        }
    )
