"""The descriptor record: named, typed values with units and provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Bump when any descriptor's definition changes: a corpus refuses to mix versions.
DESCRIPTOR_VERSION = "1"


@dataclass
class Descriptor:
    """One value describing a scan.

    Attributes
    ----------
    name : str
        Dotted identifier, unique within a record, e.g. ``fc.within.Default`` or
        ``graph.global_efficiency``.
    value : float, int, str or list
        The value (lists for per-network profiles or rankings).
    unit : str
        Unit of ``value`` ("Fisher z", "Hz", "s", "fraction", "" for dimensionless).
    family : str
        Descriptor family (``connectivity``, ``graph``, ``gradients``, ``spectral``, ``dynamics``,
        ``task``, ``quality``).
    provenance : str
        How it was computed, in one line (method + library).
    z : float or None
        The value z-scored against cohort norms fitted on the training split, when the family
        has norms; texts use ``z`` for qualitative words.
    """

    name: str
    value: Any
    unit: str
    family: str
    provenance: str
    z: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = _plain(d["value"])
        if d["z"] is not None:
            d["z"] = round(float(d["z"]), 3)
        return d


@dataclass
class Context:
    """Everything a descriptor family may read about one scan.

    ``series`` is (n_frames, n_rois) float32 after the cohort's preprocessing (robust-scaled per
    ROI by default). ``networks`` has one label per ROI (``""`` when unknown). ``norms`` holds the
    cohort-level statistics fitted on the training split (``None`` while fitting them).
    """

    scan_id: str
    series: np.ndarray
    tr: float
    roi_names: list[str]
    networks: list[str]
    coords: np.ndarray  # (n_rois, 3) MNI mm
    events: pd.DataFrame | None = None
    qc: dict[str, float] = field(default_factory=dict)
    norms: Any = None

    @property
    def n_frames(self) -> int:
        return self.series.shape[0]

    @property
    def n_rois(self) -> int:
        return self.series.shape[1]

    def network_index(self) -> dict[str, np.ndarray]:
        """Known network label -> ROI indices (sorted by label); unknown ROIs are left out."""
        nets = np.asarray(self.networks)
        return {n: np.flatnonzero(nets == n) for n in sorted(set(self.networks)) if n}

    def fc(self) -> np.ndarray:
        """Pearson correlation matrix (n_rois, n_rois), computed once per context."""
        if not hasattr(self, "_fc"):
            self._fc = np.corrcoef(np.asarray(self.series, dtype=np.float64).T)
        return self._fc


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float):
        return round(v, 6)
    return v


@dataclass
class AtlasNorms:
    """Cohort statistics for one atlas, fitted on the training split only.

    ``mean``/``sd`` z-score scalar descriptors by name; ``states`` are the dynamic-FC state
    centroids, shape (n_states, n_edges) in windowed Fisher-z FC, or ``None``.
    """

    mean: dict[str, float] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)
    states: np.ndarray | None = None
    n_scans: int = 0

    def z(self, name: str, value: float) -> float | None:
        if name not in self.mean or not self.sd.get(name):
            return None
        return (float(value) - self.mean[name]) / self.sd[name]
