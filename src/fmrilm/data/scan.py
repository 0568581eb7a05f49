"""The unit of data: one fMRI run as a (time, ROI) float32 array plus its metadata."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError

Paradigm = Literal["rest", "task"]
EVENT_COLUMNS = ("onset", "duration", "trial_type")
_ID_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class Scan:
    """One fMRI run after parcellation.

    Attributes
    ----------
    data : ndarray, shape (n_frames, n_rois), float32
        ROI time series, time first.
    tr : float or None
        Repetition time in seconds; ``None`` only while unknown (a cohort refuses it).
    subject, session, run, site : str
        Identifiers. ``subject`` is required; the others may be empty.
    paradigm : {"rest", "task"}
    task : str
        Task name (``"rest"`` for resting state).
    events : DataFrame or None
        BIDS-style events table with columns ``onset``, ``duration`` (seconds) and ``trial_type``.
    phenotypes : dict
        Subject-level variables (age, sex, diagnosis, ...).
    atlas : str
        Name of the ROI table the columns follow.
    qc : dict
        Quality measures computed on the raw signal (``tsnr``, ``fd_mean``, ...).
    """

    data: np.ndarray
    tr: float | None
    subject: str
    session: str = ""
    run: str = ""
    site: str = ""
    paradigm: Paradigm = "rest"
    task: str = "rest"
    events: pd.DataFrame | None = None
    phenotypes: dict[str, Any] = field(default_factory=dict)
    atlas: str = ""
    qc: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        if self.data.ndim != 2:
            raise FmrilmError(
                f"scan {self.scan_id}: expected a 2-D (time, ROI) array, got shape {self.data.shape}"
            )
        for name in ("subject", "session", "run", "task"):
            value = str(getattr(self, name))
            if value and not _ID_RE.match(value):
                raise FmrilmError(
                    f"scan of subject {self.subject!r}: {name}={value!r} must be letters and digits only "
                    "(BIDS labels)"
                )
        if not self.subject:
            raise FmrilmError("a scan needs a subject id")
        if self.paradigm not in ("rest", "task"):
            raise FmrilmError(
                f"scan {self.scan_id}: paradigm must be 'rest' or 'task', got {self.paradigm!r}"
            )
        if self.tr is not None and not (math.isfinite(self.tr) and self.tr > 0):
            raise FmrilmError(
                f"scan {self.scan_id}: TR must be a positive number of seconds, got {self.tr}"
            )
        if self.events is not None:
            missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
            if missing:
                raise FmrilmError(f"scan {self.scan_id}: events table lacks columns {missing}")

    @property
    def scan_id(self) -> str:
        """BIDS-like identifier, unique within a cohort: ``sub-X[_ses-Y]_task-Z[_run-N]``."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        parts.append(f"task-{self.task or 'rest'}")
        if self.run:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    @property
    def n_frames(self) -> int:
        return self.data.shape[0]

    @property
    def n_rois(self) -> int:
        return self.data.shape[1]

    @property
    def duration(self) -> float:
        return self.n_frames * (self.tr or float("nan"))


def check_series(
    data: np.ndarray,
    *,
    what: str,
    n_rois: int | None = None,
    min_frames: int = 1,
    roi_names: list[str] | None = None,
) -> np.ndarray:
    """Validate a (time, ROI) array and return it as float32; raise a one-line error otherwise.

    ``what`` names the file or scan in the message. Checks, in order: dimensionality, finite
    values, orientation against ``n_rois`` (a transposed array is named as such), length, and
    zero-variance ROIs (which would turn into NaN after scaling).
    """
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise FmrilmError(f"{what}: expected a 2-D (time, ROI) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise FmrilmError(f"{what}: values must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        t, r = np.argwhere(bad)[0]
        raise FmrilmError(
            f"{what}: {int(bad.sum())} NaN/Inf values (first at frame {t}, ROI {_roi(r, roi_names)})"
        )
    if n_rois is not None and arr.shape[1] != n_rois:
        if arr.shape[0] == n_rois:
            raise FmrilmError(
                f"{what}: shape {arr.shape} looks transposed: expected (time, {n_rois} ROIs); "
                "store time along the first axis"
            )
        raise FmrilmError(f"{what}: has {arr.shape[1]} ROI columns but the atlas has {n_rois} ROIs")
    if arr.shape[0] < min_frames:
        raise FmrilmError(
            f"{what}: only {arr.shape[0]} frames, fewer than the minimum of {min_frames} "
            "(preprocess.min_frames)"
        )
    std = arr.std(axis=0)
    flat = np.flatnonzero(std <= 1e-8 * (np.abs(arr).max(axis=0) + 1e-12))
    if flat.size:
        names = ", ".join(_roi(i, roi_names) for i in flat[:5])
        more = f" and {flat.size - 5} more" if flat.size > 5 else ""
        raise FmrilmError(f"{what}: {flat.size} constant (zero-variance) ROIs: {names}{more}")
    return arr


def _roi(index: int, names: list[str] | None) -> str:
    return f"{index} ({names[index]})" if names is not None and index < len(names) else str(index)
