"""The labelled rows a task is evaluated on, and the scoring of one method's answers on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fmrilm.evaluation.metrics import (
    invalid_rate,
    repeated_subjects,
    score_classifier,
    score_regression,
)
from fmrilm.tasks import task_rows

if TYPE_CHECKING:
    import pandas as pd


def label_rows(cohort, task, split: str) -> pd.DataFrame:
    """The rows of ``split`` that ``task`` asks about, with their label in ``_label``."""
    rows = task_rows(cohort, task, split).copy()
    rows["_label"] = [task.label(r) for _, r in rows.iterrows()]
    return rows[rows["_label"].notna()]


def eval_rows(cohort, task, split: str, max_rows: int | None = None) -> pd.DataFrame:
    """The labelled rows of ``split`` that ``run_eval`` asks about (``max_rows`` evenly spaced)."""
    rows = label_rows(cohort, task, split)
    return evenly_spaced(rows, max_rows)


def evenly_spaced(rows: pd.DataFrame, most: int | None) -> pd.DataFrame:
    """At most ``most`` rows, evenly spaced (all of them when ``most`` is None)."""
    if most is not None and len(rows) > most:
        keep = np.linspace(0, len(rows) - 1, most).round().astype(int)
        rows = rows.iloc[np.unique(keep)]
    return rows


def row_groups(rows: pd.DataFrame) -> np.ndarray | None:
    """The subject of each row when a subject has several (cluster bootstrap, grouped inner CV),
    else None."""
    return repeated_subjects(rows["subject"].to_numpy())


def score_answers(
    task, y_true, y_pred, proba=None, *, n_boot: int, fill=None, groups=None
) -> dict[str, Any]:
    """Metrics of one method; regression predictions that are None take ``fill``; ``groups``
    (:func:`row_groups`) makes the bootstrap resample subjects."""
    if task.kind == "classification":
        # a class seen only in the held-out split is no candidate: it stays, always wrong
        classes = list(task.values)
        classes += sorted({v for v in y_true if v not in classes}, key=str)
        if proba is not None and len(classes) > len(task.values):
            proba = np.hstack([proba, np.zeros((len(proba), len(classes) - len(task.values)))])
        return score_classifier(
            y_true, y_pred, proba, classes=classes, n_boot=n_boot, groups=groups
        )
    bad = invalid_rate(y_pred)
    pred = np.array([fill if p is None else p for p in y_pred], dtype=float)
    res = score_regression(np.asarray(y_true, dtype=float), pred, n_boot=n_boot, groups=groups)
    if bad:
        res["invalid_rate"] = bad
    return res


def shots_curve(task, shots: list[int], scores: list[dict]) -> dict[str, Any]:
    """A few-shot curve of the report schema: the primary metric [value, lo, hi] per K."""
    metric = "balanced_accuracy" if task.kind == "classification" else "r2"
    return {
        "k": list(shots),
        "metric": metric,
        "value": [v[metric][0] for v in scores],
        "lo": [v[metric][1] for v in scores],
        "hi": [v[metric][2] for v in scores],
    }
