"""Cohort norms for descriptors, fitted on the training split only and saved for reuse.

z-scores in every description compare a scan with the *training* scans of its atlas, so no
statistic of validation or test scans shapes the text of any scan (the leak Brain-JEPA's cached
normalisation had). Norms are saved as JSON beside the corpus and can be passed to
``fmrilm corpus build --norms FILE`` to describe new data on the same scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.corpus.descriptors.base import DESCRIPTOR_VERSION, AtlasNorms, Descriptor
from fmrilm.corpus.descriptors.dynamics import fit_states
from fmrilm.errors import FmrilmError
from fmrilm.io import read_meta, write_json

NORMS_FORMAT = "fmrilm-corpus-norms"
# counts, identifiers and task statistics are reported as they are, not against norms
UNNORMED = (
    "quality.n_frames",
    "quality.duration_s",
    "graph.n_modules",
    "dynamics.n_windows",
    "dynamics.dominant_state",
    "dynamics.mean_dwell_s",
    "dynamics.transitions_per_min",
    "gradients.principal_range",
    "task.",
)
MAX_WINDOWS = 20_000  # dynamic-FC windows used to fit states (random subsample beyond this)


def normable(d: Descriptor) -> bool:
    return (
        isinstance(d.value, (int, float))
        and not isinstance(d.value, bool)
        and np.isfinite(d.value)
        and not d.name.startswith(UNNORMED)
    )


class CorpusNorms:
    """Norms of every atlas in a cohort: ``atlases[name]`` is an :class:`AtlasNorms`."""

    def __init__(self, atlases: dict[str, AtlasNorms], meta: dict[str, Any]):
        self.atlases = atlases
        self.meta = meta

    def for_atlas(self, name: str) -> AtlasNorms:
        try:
            return self.atlases[name]
        except KeyError:
            raise FmrilmError(
                f"the corpus norms have no statistics for atlas {name!r} (have {sorted(self.atlases)}); "
                "fit norms on training data with this atlas"
            ) from None

    def save(self, path: Path) -> None:
        write_json(
            path,
            {
                **self.meta,
                "atlases": {
                    name: {
                        "n_scans": n.n_scans,
                        "mean": n.mean,
                        "sd": n.sd,
                        "states": None if n.states is None else np.round(n.states, 6).tolist(),
                    }
                    for name, n in self.atlases.items()
                },
            },
        )

    @classmethod
    def load(cls, path: Path) -> CorpusNorms:
        raw = read_meta(
            path,
            NORMS_FORMAT,
            DESCRIPTOR_VERSION,
            version_key="descriptor_version",
            missing=f"norms file {path} does not exist",
            wrong_format="{path} is not an fmrilm norms file",
            wrong_version="{path}: norms were fitted with descriptor version {found}, "
            "this fmrilm computes version {expected}; refit them",
        )
        atlases = {
            name: AtlasNorms(
                mean=a["mean"],
                sd=a["sd"],
                states=None if a["states"] is None else np.asarray(a["states"], dtype=float),
                n_scans=a["n_scans"],
            )
            for name, a in raw["atlases"].items()
        }
        meta = {k: v for k, v in raw.items() if k != "atlases"}
        return cls(atlases, meta)


def fit_norms(
    items: Iterable[tuple[str, str, list[Descriptor], np.ndarray]],
    *,
    cohort_id: str,
    n_states: int = 4,
    seed: int = 0,
) -> CorpusNorms:
    """Fit norms from (atlas, scan id, raw descriptors, windowed FC) of the training scans.

    ``windowed FC`` is :func:`fmrilm.corpus.descriptors.dynamics.window_fc` of the scan,
    shape (n_windows, n_edges); the dynamic-FC states are k-means centroids of all of them.
    """
    values: dict[str, dict[str, list[float]]] = {}
    windows: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    for atlas, _scan_id, descs, w in items:
        counts[atlas] = counts.get(atlas, 0) + 1
        per = values.setdefault(atlas, {})
        for d in descs:
            if normable(d):
                per.setdefault(d.name, []).append(float(d.value))
        if len(w):
            windows.setdefault(atlas, []).append(w)
    if not counts:
        raise FmrilmError(
            "no training scans to fit corpus norms on (assign splits: fmrilm data split)"
        )
    rng = np.random.default_rng(seed)
    atlases = {}
    for atlas, per in values.items():
        mean = {k: float(np.mean(v)) for k, v in per.items()}
        sd = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in per.items()}
        states = None
        if windows.get(atlas):
            w = np.concatenate(windows[atlas])
            if len(w) > MAX_WINDOWS:
                w = w[rng.choice(len(w), MAX_WINDOWS, replace=False)]
            if len(w) >= n_states:
                states = fit_states(w, k=n_states, seed=seed)
        atlases[atlas] = AtlasNorms(mean=mean, sd=sd, states=states, n_scans=counts[atlas])
    meta = {
        "format": NORMS_FORMAT,
        "descriptor_version": DESCRIPTOR_VERSION,
        "cohort_id": cohort_id,
        "fitted_on": "train split",
        "n_states": n_states,
        "seed": seed,
    }
    return CorpusNorms(atlases, meta)
