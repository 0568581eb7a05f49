"""A single 4-D NIfTI image in MNI space, parcellated with a label-image atlas.

The atlas is AAL3 unless ``--atlas`` names another label-image atlas (``aal``, ``hcpex``, or any
``.nii`` label image with ``--atlas-labels``). Parcellation is nilearn's ``NiftiLabelsMasker``
(mean over the voxels of each label). Voxels that are NaN/Inf in every frame (SPM's "outside the
brain") are left out of the means; a voxel NaN/Inf in only some frames is refused as corrupt.
The functions here are shared with the BIDS source.

Atlas and image on different grids: the label image is **resampled to the image's grid**
(nearest neighbour, nilearn's ``resampling_target="data"``); labels that vanish at the image's
resolution, or whose voxels are all zero in the image (outside its brain mask or field of view),
are dropped and the scan's atlas becomes a named subset. Before that, the image's field of view
(from its affine) must cover at least half of the atlas's bounding box in MNI millimetres;
otherwise the import is **refused**, since the image is then not in MNI space (or has a broken
affine). The check cannot tell a native-space image that happens to sit where MNI space is:
import spatially normalised images only (fMRIPrep ``space-MNI152*`` outputs).
"""

from __future__ import annotations

import functools
import gzip
import itertools
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.maskers import NiftiLabelsMasker

from fmrilm.data.atlas import DEFAULT_ATLAS, Atlas, load_atlas
from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.data.ingest.common import (
    check_phenotype_match,
    drop_empty_rois,
    forget_listings,
    phenotype_table,
    present_atlas,
    run_fields,
    sidecar_tr,
)
from fmrilm.errors import FmrilmError

MIN_OVERLAP = 0.5  # fraction of the atlas bounding box the image must cover
# nibabel/gzip/zlib raise these on truncated or corrupt files
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError)
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def volume_atlas(options: ImportOptions) -> Atlas:
    """The label-image atlas for volume data: ``--atlas`` (+ ``--atlas-labels``) or AAL3."""
    atlas = load_atlas(options.atlas or DEFAULT_ATLAS, options.atlas_labels)
    if atlas.image is None or "label" not in atlas.rois.columns:
        raise FmrilmError(
            f"--atlas {options.atlas}: a volume image needs a label-image atlas (aal3, aal, hcpex, or "
            "a .nii label image with --atlas-labels); coordinate atlases cannot parcellate voxels"
        )
    return atlas


def open_image(path: Path):
    """The NIfTI header and affine (data stay on disk); a 4-D image is required."""
    try:
        img = nib.load(str(path))
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise FmrilmError(f"{path}: cannot read as NIfTI ({_short(exc)})") from None
    shape = img.shape
    if len(shape) == 5 and shape[3] == 1:
        shape = (*shape[:3], shape[4])  # some tools store time on the 5th axis
    if len(shape) != 4:
        raise FmrilmError(f"{path}: expected a 4-D fMRI image (x, y, z, time), got shape {shape}")
    if shape[3] < 2:
        raise FmrilmError(f"{path}: only {shape[3]} volume(s); a time series needs at least 2")
    return img


def header_tr(img) -> float | None:
    """TR in seconds from the NIfTI header, or None when the header does not record one.

    The 4th zoom is read in the header's time unit. With no unit, 1.0 is nibabel's placeholder
    for "unset" and is ignored; other values above 100 are taken as milliseconds.
    """
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return None
    value = float(zooms[3])
    unit = img.header.get_xyzt_units()[1]
    if not (np.isfinite(value) and value > 0):
        return None
    if unit in _TIME_UNITS:
        return value * _TIME_UNITS[unit]
    if value == 1.0:
        return None
    return value / 1000.0 if value > 100 else value


def check_overlap(img, atlas: Atlas, path: Path) -> None:
    """Refuse an image whose field of view misses most of the atlas (not in MNI space)."""
    lo_a, hi_a = _atlas_box(str(atlas.image))
    lo_i, hi_i = _image_box(img)
    inter = np.clip(np.minimum(hi_a, hi_i) - np.maximum(lo_a, lo_i), 0, None).prod()
    fraction = float(inter / (hi_a - lo_a).prod())
    if fraction >= MIN_OVERLAP:
        return
    fov = ", ".join(f"{a:.0f}..{b:.0f}" for a, b in zip(lo_i, hi_i, strict=True))
    if fraction == 0:
        detail = "does not overlap the atlas at all"
    else:
        detail = f"covers only {fraction:.0%} of the atlas's extent"
    raise FmrilmError(
        f"{path}: the image's field of view (x, y, z mm: {fov}) {detail} ({atlas.name}); "
        "the image is not in MNI space or its affine is wrong -- import MNI-normalised images "
        "(e.g. fMRIPrep space-MNI152NLin2009cAsym)"
    )


def resolve_tr(img, path: Path, options: ImportOptions, sidecar: float | None = None) -> float:
    """``--tr`` if given, else the sidecar TR, else the header TR; refuse when none is known."""
    for tr in (options.tr, sidecar, header_tr(img)):
        if tr is not None:
            return float(tr)
    raise FmrilmError(
        f"{path}: unknown TR (no RepetitionTime sidecar, none in the header); pass --tr SECONDS"
    )


def parcellate(path: Path, atlas: Atlas) -> tuple[np.ndarray, Atlas]:
    """Mean signal per atlas label, shape (n_frames, n_present_rois), and the present ROIs.

    Masker columns follow ``region_ids_`` (label values present after resampling), never their
    position: labels can vanish on a coarse grid.
    """
    img = read_image(path)
    masker = NiftiLabelsMasker(
        labels_img=str(atlas.image),
        mask_img=finite_mask(img, path),
        resampling_target="data",
        standardize=None,
        strategy="mean",
    )
    with warnings.catch_warnings():
        # vanished labels are handled below via region_ids_, NaN voxels by the mask
        warnings.filterwarnings("ignore", message=".*labels were removed.*")
        warnings.filterwarnings("ignore", message=".*Non-finite values detected.*")
        data = masker.fit_transform(img)  # (n_frames, n_labels_present)
    column = {int(v): i for i, v in masker.region_ids_.items() if i != "background"}
    rows = [r for r in atlas.rois.itertuples() if int(r.label) in column]
    if not rows:
        raise FmrilmError(f"{path}: no region of atlas {atlas.name!r} lies inside the image")
    data = data[:, [column[int(r.label)] for r in rows]]
    return drop_empty_rois(
        data, present_atlas(atlas, [r.name for r in rows]), empty="zero", what=str(path)
    )


def read_image(path: Path):
    """The 4-D image with its data in memory; a corrupt or truncated file is named as such."""
    img = open_image(path)
    try:
        data = np.asanyarray(img.dataobj)
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise FmrilmError(
            f"{path}: cannot read the image data; the file is corrupt or truncated ({_short(exc)})"
        ) from None
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    return nib.Nifti1Image(data, img.affine, img.header)


def finite_mask(img, path: Path):
    """Voxels with data in every frame, as a mask image; None when that is every voxel.

    Some pipelines (SPM) write NaN outside the brain: such voxels are left out of the region
    means. A voxel that is NaN/Inf in only some frames is corrupt data and is refused.
    """
    data = np.asanyarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.floating):
        return None  # integer images cannot hold NaN
    every = np.ones(data.shape[:3], dtype=bool)
    some = np.zeros(data.shape[:3], dtype=bool)
    for start in range(0, data.shape[3], 64):  # in chunks: a full boolean copy can be GBs
        finite = np.isfinite(data[..., start : start + 64])
        every &= finite.all(axis=3)
        some |= finite.any(axis=3)
    partial = some & ~every
    if partial.any():
        i, j, k = np.argwhere(partial)[0]
        t = int(np.flatnonzero(~np.isfinite(data[i, j, k]))[0])
        raise FmrilmError(
            f"{path}: {int(partial.sum())} voxels are NaN/Inf in some frames but not all (first at "
            f"voxel ({i}, {j}, {k}), frame {t}); only voxels missing in every frame are tolerated"
        )
    return None if every.all() else nib.Nifti1Image(every.astype(np.uint8), img.affine)


def load_volume(path: Path, atlas: Atlas) -> Loaded:
    """Loader of a run without confounds (a bare NIfTI or raw BIDS)."""
    data, present = parcellate(path, atlas)
    return Loaded(data=data, atlas=present)


def discover(path: Path, options: ImportOptions) -> list[RawRun]:
    """One run: the 4-D image at ``path``.

    ids come from BIDS entities in the name, else its stem; TR from ``--tr``, a same-name JSON
    sidecar, or the header; events and ``participants.tsv`` are read from the file's folder.
    """
    forget_listings()  # sidecars may have changed since an earlier discovery
    path = Path(path)
    img = open_image(path)
    atlas = volume_atlas(options)
    check_overlap(img, atlas, path)
    dirs = [path.parent]
    phenotypes = phenotype_table(options, dirs)
    run = RawRun(
        load=functools.partial(load_volume, path, atlas),
        tr=resolve_tr(img, path, options, sidecar_tr(path, ("bold",), dirs)),
        **run_fields(path, dirs, phenotypes, options),
    )
    check_phenotype_match(phenotypes, [run], options)
    return [run]


@functools.lru_cache(maxsize=8)
def _atlas_box(image: str) -> tuple[np.ndarray, np.ndarray]:
    """MNI bounding box (mm) of the non-zero voxels of a label image."""
    img = nib.load(image)
    ijk = np.argwhere(np.asarray(img.dataobj) != 0)
    corners = np.array([ijk.min(axis=0) - 0.5, ijk.max(axis=0) + 0.5])
    return _box(img.affine, corners)


def _image_box(img) -> tuple[np.ndarray, np.ndarray]:
    """MNI bounding box (mm) of the image's voxel grid."""
    shape = np.array(img.shape[:3])
    return _box(img.affine, np.array([[-0.5, -0.5, -0.5], shape - 0.5]))


def _box(affine: np.ndarray, ijk_range: np.ndarray) -> tuple[np.ndarray, np.ndarray]:

    corners = np.array(list(itertools.product(*ijk_range.T)))  # the 8 corners of the voxel box
    xyz = nib.affines.apply_affine(affine, corners)
    return xyz.min(axis=0), xyz.max(axis=0)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
