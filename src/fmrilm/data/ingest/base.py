"""The records ingest passes around: what discovery finds (:class:`RawRun`), what a loader
returns (:class:`Loaded`) and the user's import options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.atlas import Atlas
from fmrilm.data.scan import Scan


@dataclass
class Loaded:
    """What a run's loader returns: raw parcellated series and what cleaning needs."""

    data: np.ndarray  # (n_frames, n_rois), raw units
    atlas: Atlas
    confounds: np.ndarray | None = None  # (n_frames, n_confounds)
    sample_mask: np.ndarray | None = None  # frame indices to keep
    qc: dict[str, float] = field(default_factory=dict)  # e.g. fd_mean from fMRIPrep confounds


@dataclass
class RawRun:
    """One run found by discovery; ``load()`` does the expensive part."""

    subject: str
    load: Callable[[], Loaded]
    tr: float | None
    source: str
    session: str = ""
    run: str = ""
    site: str = ""
    task: str = "rest"
    events: pd.DataFrame | None = None
    phenotypes: dict[str, Any] = field(default_factory=dict)

    @property
    def paradigm(self) -> str:
        return "rest" if self.task.lower().startswith("rest") else "task"

    @property
    def scan_id(self) -> str:
        return Scan(
            np.zeros((1, 1)), None, self.subject, self.session, self.run, task=self.task
        ).scan_id


@dataclass
class ImportOptions:
    atlas: str | None = None  # builtin atlas name or label image path
    atlas_labels: str | None = None
    roi_table: str | None = None
    tr: float | None = None
    phenotypes: str | None = None  # extra phenotype table (participant_id + columns)
    array_key: str | None = None  # key inside .h5/.mat files
    site: str = ""
