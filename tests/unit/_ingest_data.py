"""Synthetic inputs for the ingest tests: painted MNI images, cohort snapshots."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np

VOXEL_MM = 6.0  # coarse grid: small AAL3 labels vanish, as on real low-resolution data
GRID_SHAPE = (31, 37, 31)
MNI_ORIGIN = (-90.0, -126.0, -72.0)


def grid_affine(shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = np.add(MNI_ORIGIN, shift_mm)
    return affine


@functools.lru_cache(maxsize=1)
def coarse_labels() -> np.ndarray:
    """AAL3 label values on the 6 mm grid (nearest neighbour), shape GRID_SHAPE."""
    from nilearn.image import resample_img

    from fmrilm.data.atlas import load_atlas

    img = resample_img(
        nib.load(load_atlas("aal3").image),
        target_affine=grid_affine(),
        target_shape=GRID_SHAPE,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.rint(np.asarray(img.dataobj)).astype(np.int64)


def painted_series(n_frames: int, seed: int = 0) -> dict[int, np.ndarray]:
    """An independent random time course (around 100) for every label on the grid."""
    rng = np.random.default_rng(seed)
    values = [int(v) for v in np.unique(coarse_labels()) if v != 0]
    return {v: 100.0 + 5.0 * rng.standard_normal(n_frames) for v in values}


def write_painted(
    path: Path,
    n_frames: int = 40,
    tr: float | None = 2.0,
    seed: int = 0,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    edit=None,
) -> dict[int, np.ndarray]:
    """Write a 4-D image whose voxels carry their AAL3 label's time course (+ small noise).

    ``edit(labels, data, series)`` may change the array before it is saved. Returns the painted
    series by label value.
    """
    labels = coarse_labels()
    series = painted_series(n_frames, seed)
    rng = np.random.default_rng(seed + 1)
    data = np.zeros((*GRID_SHAPE, n_frames), dtype=np.float32)
    for value, ts in series.items():
        mask = labels == value
        data[mask] = ts + 0.5 * rng.standard_normal((int(mask.sum()), n_frames))
    if edit is not None:
        edit(labels, data, series)
    img = nib.Nifti1Image(data, grid_affine(shift_mm))
    if tr is None:
        img.header.set_xyzt_units("mm", "unknown")
        img.header["pixdim"][4] = 1.0  # nibabel's "unset"
    else:
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return series


def folder_digest(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (to prove a folder was left unchanged)."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
