"""Metrics with bootstrap confidence intervals (resampling test subjects)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(point estimate, lower, upper) of ``metric`` with a percentile bootstrap over samples."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if len(np.unique(y_true[idx])) < 2 and metric is balanced_accuracy:
            continue
        stats.append(metric(y_true[idx], y_pred[idx]))
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(metric(y_true, y_pred)), float(lo), float(hi)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():
        # a bootstrap resample may lack a class the model predicts; the score is still defined
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.r2_score(y_true, y_pred))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.mean_absolute_error(y_true, y_pred))


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if np.std(y_pred) == 0 or np.std(y_true) == 0:
        return 0.0
    return float(np.corrcoef(y_true, y_pred)[0, 1])


CLASSIFICATION = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
REGRESSION = {"r2": r2, "mae": mae, "pearson": pearson}


def score(
    kind: str, y_true: np.ndarray, y_pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """All metrics of a task kind ('classification' or 'regression'), each as [value, lo, hi]."""
    table = CLASSIFICATION if kind == "classification" else REGRESSION
    return {
        name: [round(v, 4) for v in bootstrap_ci(fn, y_true, y_pred, n_boot=n_boot, seed=seed)]
        for name, fn in table.items()
    }
