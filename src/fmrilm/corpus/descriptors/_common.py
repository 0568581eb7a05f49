"""Small helpers shared by the descriptor families (notes, network grouping)."""

from __future__ import annotations

import numpy as np

from fmrilm.corpus.descriptors.base import Context, Descriptor

NO_NETWORKS = "no ROI has a network label; network-level descriptors omitted"


def note(family: str, message: str) -> Descriptor:
    """A ``<family>.note`` descriptor: why something is missing, instead of a wrong number."""
    return Descriptor(f"{family}.note", message, "", family, "fmrilm descriptor check")


def network_average(values: np.ndarray, ctx: Context) -> dict[str, float]:
    """Mean of a per-ROI vector (n_rois,) within each labelled network; ``""`` ROIs are ignored."""
    return {net: float(values[idx].mean()) for net, idx in ctx.network_index().items()}


def network_signals(series: np.ndarray, ctx: Context) -> tuple[list[str], np.ndarray]:
    """Network names and their mean signals, shape (n_frames, n_networks), one matrix product."""
    index = ctx.network_index()
    names = list(index)
    weights = np.zeros((series.shape[1], len(names)))  # (n_rois, n_networks) averaging matrix
    for j, idx in enumerate(index.values()):
        weights[idx, j] = 1.0 / idx.size
    return names, series @ weights
