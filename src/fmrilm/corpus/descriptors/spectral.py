"""Temporal and spectral descriptors (ALFF, fALFF, peak frequency, timescale) and scan quality.

Spectra are periodograms of the whole scan (as ``scipy.signal.periodogram``: mean removed, no
taper, one-sided density), computed for all ROIs at once -- the spectrum the ALFF literature
uses (Zang et al., 2007; REST/DPABI). One zero-padded FFT (``scipy.fft``) gives both the
periodogram and the autocorrelation (:func:`spectra`).

* **ALFF** (amplitude of low-frequency fluctuations): the mean of the amplitude spectrum
  ``sqrt(PSD)`` over 0.01-0.08 Hz (upper edge clipped to Nyquist). The PSD is a density, so
  ALFF does not depend on the scan length; its unit is that of the scaled signal per sqrt(Hz).
* **fALFF** (Zou et al., 2008): the sum of the amplitude spectrum over 0.01-0.08 Hz divided by
  its sum over 0 Hz-Nyquist. A flat (white) spectrum gives ``0.07 / Nyquist``.
* **Peak frequency**: the maximum above 0.008 Hz (the cohort's high-pass cut-off) of the
  ROI-mean periodogram after a moving average over ``PEAK_SMOOTH_HZ`` (0.005 Hz; a raw
  periodogram is too noisy to locate a peak).
* **Timescale** (Watanabe et al., 2019): per ROI, the sum of the autocorrelation function over
  lags 1, 2, ... up to (excluding) the first lag where it is <= 0, times the TR; the median over
  ROIs is reported. For an AR(1) process with coefficient ``phi`` it is ``TR * phi / (1 - phi)``.
  The autocorrelation is the usual biased estimate normalised by lag 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft
from scipy.ndimage import uniform_filter1d

from fmrilm.corpus.descriptors._common import NO_NETWORKS, network_average, note
from fmrilm.corpus.descriptors.base import Context, Descriptor

FAMILY = "spectral"
ALFF_BAND = (0.01, 0.08)  # Hz
PEAK_MIN_HZ = 0.008  # the cohort's high-pass cut-off: below it the spectrum is filtered away
PEAK_SMOOTH_HZ = 0.005
_PSD = "periodogram (scipy.fft, = scipy.signal.periodogram)"


def compute_quality(ctx: Context) -> list[Descriptor]:
    """Scan length and the raw-signal quality measures recorded at import."""
    out = [
        Descriptor("quality.n_frames", int(ctx.n_frames), "frames", "quality", "series length"),
        Descriptor(
            "quality.duration_s",
            float(ctx.n_frames * ctx.tr),
            "s",
            "quality",
            "n_frames x TR",
        ),
    ]
    tsnr = ctx.qc.get("tsnr")
    if tsnr is not None and math.isfinite(tsnr):
        out.append(
            Descriptor(
                "quality.tsnr",
                float(tsnr),
                "",
                "quality",
                "median over ROIs of raw mean / SD of the detrended raw signal, at import "
                "(fmrilm.data.preprocess.tsnr)",
            )
        )
    fd = ctx.qc.get("fd_mean")
    if fd is not None and math.isfinite(fd):
        out.append(
            Descriptor(
                "quality.fd_mean",
                float(fd),
                "mm",
                "quality",
                "mean framewise displacement from the source's motion confounds",
            )
        )
    return out


def spectra(series: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodogram and autocorrelation of every ROI from one zero-padded FFT.

    Returns frequencies (n_freqs,) in Hz, the one-sided PSD (n_freqs, n_rois) -- equal to
    ``scipy.signal.periodogram(series, fs=1/tr, axis=0)`` (a test checks), which costs 4x more
    here -- and the autocorrelation (n_frames, n_rois) at lags 0 .. n_frames - 1 (1 at lag 0).
    Padding to 2 n frames makes the autocorrelation linear rather than circular, and the even
    bins of the padded transform are exactly the unpadded ones the periodogram needs.
    """
    n = series.shape[0]
    x = series - series.mean(axis=0)
    spec = fft.rfft(x, 2 * n, axis=0)
    power = spec.real**2 + spec.imag**2  # (n + 1, n_rois)
    acf = fft.irfft(power, 2 * n, axis=0)[:n]
    acf = acf / np.where(acf[0] > 0, acf[0], 1.0)
    psd = power[::2] * (2.0 * tr / n)  # density: |X|^2 / (fs n), doubled for one side
    psd[0] /= 2.0
    if n % 2 == 0:
        psd[-1] /= 2.0  # the Nyquist bin has no mirror image
    return np.fft.rfftfreq(n, d=tr), psd, acf


def autocorrelation_timescale(acf: np.ndarray, tr: float) -> np.ndarray:
    """Timescale in seconds of every ROI, shape (n_rois,), from its autocorrelation (n_lags,
    n_rois) (definition in the module docstring)."""
    lagged = acf[1:]  # lags 1 .. n-1
    nonpositive = lagged <= 0
    # number of leading positive lags (all of them when the ACF never reaches zero)
    n_positive = np.where(nonpositive.any(axis=0), nonpositive.argmax(axis=0), lagged.shape[0])
    csum = np.vstack([np.zeros((1, lagged.shape[1])), np.cumsum(lagged, axis=0)])
    return tr * csum[n_positive, np.arange(lagged.shape[1])]


def _alff(ctx: Context, f: np.ndarray, amp: np.ndarray) -> list[Descriptor]:
    """ALFF and fALFF per network and fALFF over all ROIs (or a note if the band is missing)."""
    nyquist = 0.5 / ctx.tr
    band = (f >= ALFF_BAND[0]) & (f <= min(ALFF_BAND[1], nyquist))
    if not band.any():
        return [note(FAMILY, "scan too short to resolve 0.01-0.08 Hz; ALFF/fALFF omitted")]
    alff = amp[band].mean(axis=0)  # (n_rois,)
    total = amp.sum(axis=0)
    falff = amp[band].sum(axis=0) / np.where(total > 0, total, 1.0)
    band_txt = f"{ALFF_BAND[0]:g}-{min(ALFF_BAND[1], nyquist):.3g} Hz"
    out: list[Descriptor] = []
    if ctx.network_index():
        for net, v in network_average(alff, ctx).items():
            how = f"mean sqrt(PSD) over {band_txt}, averaged over the network's ROIs; " + _PSD
            out.append(Descriptor(f"spectral.alff.{net}", v, "a.u. (scaled signal)", FAMILY, how))
        for net, v in network_average(falff, ctx).items():
            how = (
                f"sum sqrt(PSD) over {band_txt} / over 0-Nyquist, averaged over the "
                "network's ROIs; " + _PSD
            )
            out.append(Descriptor(f"spectral.falff.{net}", v, "fraction", FAMILY, how))
    else:
        out.append(note(FAMILY, NO_NETWORKS))
    how = f"fALFF ({band_txt}) averaged over all ROIs; " + _PSD
    out.append(Descriptor("spectral.falff_mean", float(falff.mean()), "fraction", FAMILY, how))
    return out


def compute(ctx: Context) -> list[Descriptor]:
    """ALFF/fALFF per network and over all ROIs, peak frequency, timescale, global-signal SD."""
    x = np.asarray(ctx.series)  # float32 as stored: the FFTs are twice as fast as in float64
    f, psd, acf = spectra(x, ctx.tr)
    out = _alff(ctx, f, np.sqrt(psd))  # amplitude (n_freqs, n_rois)
    above = f > PEAK_MIN_HZ
    if above.any():
        width = max(1, round(PEAK_SMOOTH_HZ / f[1]))
        mean_psd = uniform_filter1d(psd.mean(axis=1, dtype=np.float64), width, mode="nearest")
        peak = f[above][np.argmax(mean_psd[above])]
        out.append(
            Descriptor(
                "spectral.peak_frequency",
                float(peak),
                "Hz",
                FAMILY,
                f"peak above {PEAK_MIN_HZ} Hz of the ROI-mean {_PSD}, {PEAK_SMOOTH_HZ} Hz moving "
                "average (scipy.ndimage)",
            )
        )
    out.append(
        Descriptor(
            "spectral.timescale_s",
            float(np.median(autocorrelation_timescale(acf, ctx.tr))),
            "s",
            FAMILY,
            "median over ROIs of TR x sum of the autocorrelation over lags before its first "
            "zero crossing (FFT autocorrelation, scipy.fft)",
        )
    )
    out.append(
        Descriptor(
            "spectral.global_signal_sd",
            float(x.mean(axis=1, dtype=np.float64).std()),
            "a.u. (scaled signal)",
            FAMILY,
            "standard deviation over frames of the mean signal of all ROIs (numpy)",
        )
    )
    return out
