"""Preprocessing of parcellated series: denoise/filter, resample to a common TR, scale.

Each step is explicit and recorded in the cohort (``cohort.json: preprocessing``); appending
data processed differently to a cohort is refused. All steps are per scan, so none of them can
leak information between subjects or splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from nilearn import signal
from scipy.signal import detrend, resample_poly

from fmrilm.data.scan import check_series
from fmrilm.errors import FmrilmError

Scaling = Literal["robust", "zscore", "none"]


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings applied to every scan at ingest.

    Attributes
    ----------
    detrend : bool
        Remove linear trends (``nilearn.signal.clean``).
    high_pass, low_pass : float or None
        Butterworth cut-offs in Hz (``None`` disables). The default high-pass (0.008 Hz) removes
        scanner drift without touching resting-state fluctuations.
    target_tr : float or None
        Resample every scan to this TR in seconds (``None`` keeps each scan's own TR).
    scaling : {"robust", "zscore", "none"}
        Per-ROI scaling within each scan; ``robust`` = (x - median) / IQR as in fMRI-LM.
    min_frames : int
        Shortest accepted scan, in frames after resampling.
    """

    detrend: bool = True
    high_pass: float | None = 0.008
    low_pass: float | None = None
    target_tr: float | None = None
    scaling: Scaling = "robust"
    min_frames: int = 20

    def __post_init__(self) -> None:
        if self.scaling not in ("robust", "zscore", "none"):
            raise FmrilmError(f"scaling must be robust, zscore or none, got {self.scaling!r}")
        for name in ("high_pass", "low_pass", "target_tr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise FmrilmError(f"{name} must be positive or None, got {v}")
        if self.high_pass and self.low_pass and self.high_pass >= self.low_pass:
            raise FmrilmError(
                f"high_pass ({self.high_pass} Hz) must be below low_pass ({self.low_pass} Hz)"
            )
        if self.min_frames < 2:
            raise FmrilmError(f"min_frames must be at least 2, got {self.min_frames}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FmrilmError(
                f"unknown preprocessing settings {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)


def tsnr(data: np.ndarray) -> float:
    """Median over ROIs of temporal SNR: raw mean / sd of the linearly detrended raw signal.

    Detrending first keeps slow scanner drift from counting as noise (the usual definition).
    Only meaningful on raw scanner units (a demeaned signal has tSNR ~ 0); returns NaN then.
    """
    mean = data.mean(axis=0)
    std = detrend(data, axis=0, type="linear").std(axis=0)
    if np.median(np.abs(mean)) < 1e-6 * (np.median(std) + 1e-12):
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmedian(mean / std))


def clean(
    data: np.ndarray,
    tr: float,
    config: PreprocessConfig,
    confounds: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Detrend, regress confounds and band-pass filter with ``nilearn.signal.clean``.

    ``sample_mask`` (frame indices to keep, e.g. from nilearn's fMRIPrep confound loaders)
    censors high-motion frames.
    """
    nyquist = 0.5 / tr
    low = config.low_pass if config.low_pass and config.low_pass < nyquist else None
    high = config.high_pass if config.high_pass and config.high_pass < nyquist else None
    if not (config.detrend or high or low or confounds is not None or sample_mask is not None):
        return data.astype(np.float32)
    if confounds is None and sample_mask is None:
        # Same result as signal.clean(filter="butterworth") (a test checks equality), but
        # nilearn's in-place filter path loops over ROIs; the copying path filters all at once.
        out = signal.clean(
            data.astype(np.float64), detrend=config.detrend, standardize=None, t_r=tr, filter=False
        )
        if high or low:
            out = signal.butterworth(out, 1.0 / tr, low_pass=low, high_pass=high, copy=True)
        return out.astype(np.float32)
    out = signal.clean(
        data.astype(np.float64),
        detrend=config.detrend,
        standardize=None,
        confounds=confounds,
        sample_mask=sample_mask,
        high_pass=high,
        low_pass=low,
        t_r=tr,
        filter="butterworth" if (high or low) else False,
    )
    return out.astype(np.float32)


def resample(data: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample (time, ROI) series from ``tr`` to ``target_tr`` seconds.

    Uses polyphase filtering (``scipy.signal.resample_poly``), which low-passes before
    decimating, so downsampling does not alias. The TR ratio is approximated by a fraction with
    denominator <= 1000 (error < 0.1 %).
    """
    if abs(tr - target_tr) < 1e-9:
        return data
    ratio = Fraction(tr / target_tr).limit_denominator(1000)
    out = resample_poly(
        data.astype(np.float64), ratio.numerator, ratio.denominator, axis=0, padtype="line"
    )
    n_out = int(np.floor(data.shape[0] * tr / target_tr + 1e-6))
    return out[:n_out].astype(np.float32)


def scale(data: np.ndarray, method: Scaling) -> np.ndarray:
    """Per-ROI scaling within one scan."""
    if method == "none":
        return data.astype(np.float32)
    if method == "zscore":
        center, spread = data.mean(axis=0), data.std(axis=0)
    else:
        q25, center, q75 = np.percentile(data, [25, 50, 75], axis=0)
        spread = q75 - q25
    spread = np.where(spread > 0, spread, 1.0)
    return ((data - center) / spread).astype(np.float32)


def preprocess(
    data: np.ndarray,
    tr: float,
    config: PreprocessConfig,
    *,
    what: str,
    confounds: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    roi_names: list[str] | None = None,
) -> tuple[np.ndarray, float, dict[str, float]]:
    """Validate and preprocess one raw (time, ROI) series.

    Returns the processed series, its TR after resampling, and QC measures of the raw signal.
    """
    if tr is None or not tr > 0:
        raise FmrilmError(f"{what}: unknown TR; pass --tr SECONDS")
    raw = check_series(
        data,
        what=what,
        n_rois=len(roi_names) if roi_names else None,
        min_frames=2,
        roi_names=roi_names,
    )
    qc = {"tsnr": tsnr(raw)}
    # refuse short scans before filtering: the Butterworth filter itself fails on them
    n_kept = raw.shape[0] if sample_mask is None else len(sample_mask)
    out_tr = config.target_tr or tr
    n_out = int(np.floor(n_kept * tr / out_tr + 1e-6))
    if n_out < config.min_frames:
        raise FmrilmError(
            f"{what}: only {n_out} frames at TR {out_tr:g} s, fewer than the minimum of "
            f"{config.min_frames} (preprocess.min_frames)"
        )
    x = clean(raw, tr, config, confounds=confounds, sample_mask=sample_mask)
    if config.target_tr is not None:
        x = resample(x, tr, config.target_tr)
    if x.shape[0] < config.min_frames:
        raise FmrilmError(
            f"{what}: only {x.shape[0]} frames at TR {out_tr:g} s, fewer than the minimum of "
            f"{config.min_frames} (preprocess.min_frames)"
        )
    x = scale(x, config.scaling)
    return check_series(x, what=f"{what} (after preprocessing)", roi_names=roi_names), out_tr, qc
