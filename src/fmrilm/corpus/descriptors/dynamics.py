"""Dynamic functional connectivity: sliding-window FC, its variability and recurring states.

Windows last ``WINDOW_S`` (60) seconds, rounded to whole frames, and start every quarter window
(Allen et al., 2014 use similar settings); rectangular windows. Each window's FC is the Pearson
correlation, Fisher z-transformed (r clipped to +-0.999), as the upper triangle (n_edges =
n_rois (n_rois - 1) / 2).

States are k-means centroids of windowed FC fitted on the training split (``fit_states``,
stored in ``AtlasNorms.states``); a scan's windows are assigned to the nearest centroid
(Euclidean, as k-means does). Dwell times and transition rates count each window as one step
(``step_s`` seconds): a run of ``m`` consecutive windows in one state dwells ``m * step_s`` s,
and ``transitions_per_min`` is the number of state changes per minute of the ``n_windows *
step_s`` seconds the sequence covers. Scans shorter than two windows (120 s) get a note, not
numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from fmrilm.corpus.descriptors.base import AtlasNorms, Context, Descriptor
from fmrilm.errors import FmrilmError

FAMILY = "dynamics"
WINDOW_S = 60.0
N_STATES = 4
R_CLIP = 0.999
_WFC = "60 s sliding-window Pearson FC, Fisher z, step 15 s (numpy)"


def window_frames(
    tr: float, window_s: float = WINDOW_S, step_s: float | None = None
) -> tuple[int, int]:
    """Window and step lengths in frames (step defaults to a quarter window, at least 1)."""
    width = max(2, int(round(window_s / tr)))
    step = max(1, int(round((window_s / 4 if step_s is None else step_s) / tr)))
    return width, step


def window_fc(
    series: np.ndarray, tr: float, window_s: float = WINDOW_S, step_s: float | None = None
) -> np.ndarray:
    """Fisher-z FC of every window as upper triangles, shape (n_windows, n_edges), float32.

    ``series`` is (n_frames, n_rois). A scan shorter than one window gives (0, n_edges).
    """
    # float32 halves the cost of the dominant batched matrix product; r is exact to ~1e-7
    x = np.asarray(series, dtype=np.float32)
    n, r = x.shape
    width, step = window_frames(tr, window_s, step_s)
    iu, ju = np.triu_indices(r, 1)
    if n < width:
        return np.empty((0, iu.size), dtype=np.float32)
    starts = np.arange(0, n - width + 1, step)
    win = x[starts[:, None] + np.arange(width)[None, :]]  # (n_windows, width, n_rois), a copy
    win -= win.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("wtr,wtr->wr", win, win))  # (n_windows, n_rois)
    win /= np.where(norm > 0, norm, 1.0)[:, None, :]
    corr = win.transpose(0, 2, 1) @ win  # (n_windows, n_rois, n_rois)
    edges = np.clip(corr[:, iu, ju], -R_CLIP, R_CLIP)
    # arctanh via log: same values (to rounding), 4x faster than np.arctanh here
    return 0.5 * np.log((1.0 + edges) / (1.0 - edges))


def fit_states(windows: np.ndarray, k: int = N_STATES, seed: int = 0) -> np.ndarray:
    """k-means centroids of windowed FC, shape (k, n_edges), ordered by decreasing mean FC.

    ``windows`` stacks (n_windows, n_edges) rows from ``window_fc`` over the training scans.
    Deterministic for a given ``seed``; the order makes state numbers stable across refits.
    """
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 2 or windows.shape[0] < k:
        raise FmrilmError(
            f"fit_states needs a (n_windows, n_edges) array with at least k={k} windows, "
            f"got shape {windows.shape}"
        )
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(windows)
    centers = km.cluster_centers_
    return centers[np.argsort(-centers.mean(axis=1), kind="stable")]


def assign_states(windows: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Index of the nearest state (Euclidean) for each window, shape (n_windows,)."""
    # |w - s|^2 = |w|^2 - 2 w.s + |s|^2; |w|^2 does not change the argmin
    d = (states**2).sum(axis=1)[None, :] - 2.0 * windows @ states.T
    return d.argmin(axis=1)


def compute(ctx: Context) -> list[Descriptor]:
    """Number of windows, FC variability and, with fitted states, occupancy/dwell/transitions."""
    width, step = window_frames(ctx.tr)
    if ctx.n_frames < 2 * width:
        return [
            Descriptor(
                "dynamics.note",
                "scan shorter than two 60 s windows; dynamic FC omitted",
                "",
                FAMILY,
                f"{ctx.n_frames} frames < 2 x {width} frames at TR {ctx.tr:g} s",
            )
        ]
    windows = window_fc(ctx.series, ctx.tr)
    n_win = windows.shape[0]
    out = [
        Descriptor("dynamics.n_windows", int(n_win), "", FAMILY, _WFC),
        Descriptor(
            "dynamics.fc_variability",
            float(windows.std(axis=0).mean()),
            "Fisher z",
            FAMILY,
            "mean over edges of the SD over windows of " + _WFC,
        ),
    ]
    norms = ctx.norms
    if not (isinstance(norms, AtlasNorms) and norms.states is not None):
        return out
    states = np.asarray(norms.states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != windows.shape[1]:
        raise FmrilmError(
            f"dynamic-FC states have shape {states.shape}, expected (n_states, {windows.shape[1]}) "
            f"for {ctx.n_rois} ROIs: norms were fitted on another atlas"
        )
    labels = assign_states(windows, states)
    step_s = step * ctx.tr
    n_changes = int(np.count_nonzero(np.diff(labels)))
    occupancy = np.bincount(labels, minlength=states.shape[0]) / n_win
    how = f"nearest of {states.shape[0]} k-means states (training split, scikit-learn) per window of {_WFC}"
    out += [
        Descriptor(
            "dynamics.occupancy",
            [float(v) for v in occupancy],
            "fraction",
            FAMILY,
            "fraction of windows in each state; " + how,
        ),
        Descriptor(
            "dynamics.dominant_state",
            int(occupancy.argmax()) + 1,
            "",
            FAMILY,
            "most occupied state (1-based, states ordered by decreasing mean FC); " + how,
        ),
        Descriptor(
            "dynamics.mean_dwell_s",
            float(n_win * step_s / (n_changes + 1)),
            "s",
            FAMILY,
            "mean length of runs of consecutive windows in one state x step; " + how,
        ),
        Descriptor(
            "dynamics.transitions_per_min",
            float(n_changes / (n_win * step_s / 60.0)),
            "1/min",
            FAMILY,
            "state changes per minute of the window sequence; " + how,
        ),
    ]
    return out
