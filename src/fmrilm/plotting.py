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
