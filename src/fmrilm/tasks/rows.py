"""The manifest rows of a task: which scans a task is trained, fitted and evaluated on.

Subject-level tasks use one scan per subject (the first resting scan, else the first scan: the
scan :func:`fmrilm.evaluation.baselines.subject_table` picks for every subject with a resting
scan); scan-level tasks use every labelled scan. Only labelled rows are returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from fmrilm.data.cohort import SPLITS
from fmrilm.errors import FmrilmError
from fmrilm.tasks.base import Task, is_missing

if TYPE_CHECKING:
    from fmrilm.data.cohort import Cohort

REST_TASK = "rest"  # the manifest ``task`` value of resting scans (as in baselines.subject_table)


def task_rows(cohort: Cohort, task: Task, split: str) -> pd.DataFrame:
    """Manifest rows a task is trained or evaluated on in ``split`` (labelled rows only).

    Subject-level tasks: one scan per subject, the first resting scan else the first scan (in
    manifest order). Scan-level tasks: every labelled scan.
    """
    if split not in SPLITS:
        raise FmrilmError(f"split must be one of {SPLITS}, got {split!r}")
    m = cohort.manifest
    rows = m[m["split"] == split]
    if task.label_from in ("column", "bins"):
        if task.column not in rows.columns:
            raise FmrilmError(f"task {task.name!r}: the manifest has no column {task.column!r}")
        labelled = ~rows[task.column].map(is_missing).astype(bool)
    elif rows.empty:
        labelled = pd.Series(False, index=rows.index)
    else:
        labelled = rows.apply(lambda r: task.label(r) is not None, axis=1).astype(bool)
    rows = rows[labelled]
    if task.level == "subject":
        rows = one_scan_per_subject(rows)
    if rows.empty:
        raise FmrilmError(f"task {task.name!r}: no labelled scans in the {split!r} split")
    return rows


def one_scan_per_subject(rows: pd.DataFrame) -> pd.DataFrame:
    """The first resting scan of each subject, else its first scan; manifest order kept."""
    rest = rows[rows["task"] == REST_TASK].drop_duplicates("subject")
    other = rows[~rows["subject"].isin(rest["subject"])].drop_duplicates("subject")
    return pd.concat([rest, other]).sort_index()


def training_labels(cohort: Cohort, name: str, column: str, level: str) -> pd.Series:
    """Labels of ``column`` on the rows a task of ``level`` trains on (training split)."""
    probe = Task(name, "text", column, level, ("?",))
    return task_rows(cohort, probe, "train")[column]


__all__ = ["REST_TASK", "one_scan_per_subject", "task_rows", "training_labels"]
