"""Figures a person would rather look at than read (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.data.atlas import Atlas
from fmrilm.io import atomic_path


def scan_overview(
    series: np.ndarray, atlas: Atlas, tr: float, title: str, path: str | Path, n_rois: int = 6
) -> Path:
    """FC matrix ordered by network beside a few ROI time series; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = np.array(atlas.networks)
    order = np.argsort(nets, kind="stable")
    fc = np.corrcoef(np.asarray(series, dtype=np.float64).T)[np.ix_(order, order)]
    fig, (ax_fc, ax_ts) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.4]}
    )
    im = ax_fc.imshow(fc, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(im, ax=ax_fc, fraction=0.046, label="Pearson r")
    # network blocks: tick at the middle of each run of equal labels
    sorted_nets = nets[order]
    bounds = np.flatnonzero(sorted_nets[1:] != sorted_nets[:-1]) + 1
    for b in bounds:
        ax_fc.axhline(b - 0.5, color="k", lw=0.5)
        ax_fc.axvline(b - 0.5, color="k", lw=0.5)
    starts = np.r_[0, bounds]
    ends = np.r_[bounds, len(nets)]
    ax_fc.set_yticks(
        (starts + ends - 1) / 2, [n or "unknown" for n in sorted_nets[starts]], fontsize=8
    )
    ax_fc.set_xticks([])
    ax_fc.set_title(f"functional connectivity ({len(atlas)} ROIs, by network)")
    pick = np.linspace(0, len(atlas) - 1, n_rois).astype(int)
    t = np.arange(series.shape[0]) * tr
    for k, i in enumerate(pick):
        ax_ts.plot(t, np.asarray(series[:, i]) + 6 * k, lw=0.7)
    ax_ts.set_yticks([6 * k for k in range(n_rois)], [atlas.names[i] for i in pick], fontsize=8)
    ax_ts.set_xlabel("time (s)")
    ax_ts.set_title("ROI time series (robust-scaled, offset for display)")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)
    return path


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss terms, code usage and perplexity against the training step."""
    plt = _plt()
    steps = [h["step"] for h in history]
    losses = [k for k in ("rec", "commit", "nce", "adv") if any(k in h for h in history)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k in losses:
        axes[0].plot(steps, [h.get(k, np.nan) for h in history], label=k)
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="losses")
    axes[0].legend()
    axes[1].plot(steps, [h["usage_pct"] for h in history], color="C2")
    axes[1].set(xlabel="step", ylabel="% of codes used", ylim=(0, 101), title="code usage")
    axes[2].plot(steps, [h["perplexity"] for h in history], color="C3")
    axes[2].set(xlabel="step", ylabel="perplexity", title="code perplexity")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def code_usage(counts: list[int] | np.ndarray, path: str | Path, title: str = "") -> Path:
    """Histogram of how often each code is used, sorted by frequency."""
    plt = _plt()
    c = np.sort(np.asarray(counts, dtype=float))[::-1]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.bar(np.arange(len(c)), c / max(c.sum(), 1), width=1.0, color="C0")
    used = int((c > 0).sum())
    ax.set(
        xlabel=f"code rank ({used} of {len(c)} used)",
        ylabel="fraction of tokens",
        yscale="log",
        title=title or "codebook usage",
    )
    fig.tight_layout()
    return _save(fig, path)


def reconstruction(
    original: np.ndarray,
    recon: np.ndarray,
    roi_names: list[str],
    tr: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Original and reconstructed series of a few ROIs (rows), one window each."""
    plt = _plt()
    n = original.shape[1]
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.6 * n + 0.6), sharex=True, squeeze=False)
    t = np.arange(original.shape[0]) * tr
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, original[:, i], color="k", lw=1.2, label="original")
        ax.plot(t, recon[:, i], color="C1", lw=1.2, label="reconstruction")
        ax.set_ylabel(roi_names[i], rotation=0, ha="right", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
