"""Metrics with bootstrap confidence intervals (resampling test subjects).

Every interval is a 95 % percentile bootstrap over the test subjects, so it describes how much
the score would move with another draw of test subjects from the same population -- not the
variability of training. With one row per subject the rows are resampled; when a subject has
several rows (scan-level tasks such as task state: one row per run), pass ``groups`` (the
subject of each row) and whole subjects are resampled with all their rows (a cluster
bootstrap), since runs of one subject are not independent draws.

Classification predictions may be ``None`` (or NaN): a free-generated answer that could not be
parsed into a class. Such a prediction is never mapped to a class: :func:`score_classifier`
counts it as wrong and reports the share of them as ``invalid_rate``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from fmrilm.errors import FmrilmError

INVALID = -1  # code of an unparseable prediction; never a class index
_CHUNK_CELLS = 2_000_000  # bootstrap resamples are drawn in blocks of at most this many cells


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(point estimate, lower, upper) of ``metric`` with a percentile bootstrap over samples
    (over ``groups`` -- whole subjects -- when given)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    stats = []
    for block in _resamples(rng, n, n_boot, groups):
        for idx in block:
            if len(np.unique(y_true[idx])) < 2 and metric in (balanced_accuracy, f1):
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


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's default).

    Invalid (``None``) predictions count as wrong: they lower the recall of their true class
    and are not a class of their own.
    """
    y_true, y_pred = _as_list(y_true), _as_list(y_pred)
    if any(is_invalid(v) for v in y_true):
        raise FmrilmError("y_true contains None/NaN: every test subject needs a true label")
    classes = _infer_classes(y_true, y_pred)
    t, p = _encode(y_true, classes, "y_true"), _encode(y_pred, classes, "y_pred")
    return float(_class_scores(t[None], p[None], len(classes))["f1"][0])


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.r2_score(y_true, y_pred))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.mean_absolute_error(y_true, y_pred))


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if np.std(y_pred) == 0 or np.std(y_true) == 0:
        return 0.0
    return float(np.corrcoef(y_true, y_pred)[0, 1])


CLASSIFICATION = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "f1": f1}
REGRESSION = {"r2": r2, "mae": mae, "pearson": pearson}


def repeated_subjects(subjects: np.ndarray) -> np.ndarray | None:
    """``subjects`` when one of them occurs more than once (grouped CV / bootstrap), else None."""
    return subjects if len(set(subjects)) < len(subjects) else None


def _resamples(rng: np.random.Generator, n: int, n_boot: int, groups=None):
    """Bootstrap row-index blocks of shape (resamples, rows).

    Without ``groups``: blocks of i.i.d. row draws (the stream equals one draw per resample).
    With ``groups`` (one label per row): one resample per block, whole groups drawn with
    replacement and all their rows taken, so a resample's length varies.
    """
    if groups is None:
        chunk = max(1, _CHUNK_CELLS // max(n, 1))
        for start in range(0, n_boot, chunk):
            yield rng.integers(0, n, (min(chunk, n_boot - start), n))
        return
    groups = np.asarray(groups)
    if len(groups) != n:
        raise FmrilmError(f"groups has {len(groups)} entries but there are {n} rows")
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        yield np.concatenate([members[g] for g in pick])[None]


def score(
    kind: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict:
    """All metrics of a task kind ('classification' or 'regression'), each as [value, lo, hi].

    Classification goes through :func:`score_classifier` (same resamples, so the intervals equal
    those of :func:`bootstrap_ci`); ``"invalid_rate"`` is added when some prediction is ``None``.
    """
    if kind == "classification":
        full = score_classifier(y_true, y_pred, n_boot=n_boot, seed=seed, groups=groups)
        out = {name: full[name] for name in CLASSIFICATION}
        if full["invalid_rate"] > 0:
            out["invalid_rate"] = full["invalid_rate"]
        return out
    return {
        name: [
            round(v, 4)
            for v in bootstrap_ci(fn, y_true, y_pred, n_boot=n_boot, seed=seed, groups=groups)
        ]
        for name, fn in REGRESSION.items()
    }


def score_regression(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict:
    """R², MAE and Pearson r, each as [value, lo, hi] (the same as ``score("regression", ...)``)."""
    return score("regression", y_true, y_pred, n_boot=n_boot, seed=seed, groups=groups)


# --- classification with invalid answers and class probabilities ---------------------------------


def is_invalid(value: Any) -> bool:
    """True for a prediction that is no answer at all: ``None`` or a float NaN."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def invalid_rate(y_pred: Sequence[Any] | np.ndarray) -> float:
    """Share of predictions that are ``None``/NaN (unparseable free-generated answers)."""
    y_pred = _as_list(y_pred)
    if not y_pred:
        raise FmrilmError("invalid_rate: no predictions")
    return sum(is_invalid(v) for v in y_pred) / len(y_pred)


def auroc(
    y_true: Sequence[Any] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
) -> float | None:
    """Area under the ROC curve from class probabilities (columns in ``classes`` order).

    Binary: the ROC AUC of ``proba[:, 1]`` for ``classes[1]`` (the positive class). More classes:
    the macro average of one-vs-rest AUCs over the classes present in ``y_true`` (equal to
    scikit-learn's ``roc_auc_score(multi_class="ovr")`` when every class is present). ``None``
    when ``y_true`` holds a single class.
    """
    classes = list(classes)
    t = _encode(_as_list(y_true), classes, "y_true")
    proba = _check_proba(proba, len(t), classes)
    value = _auroc_codes(t[None], proba[None], len(classes))[0]
    return None if np.isnan(value) else float(value)


def reliability_curve(
    y_true: Sequence[Any] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
    *,
    n_bins: int = 10,
) -> dict[str, list]:
    """Top-label reliability data: per non-empty confidence bin, the mean confidence, accuracy, count.

    The confidence of a row is its largest class probability and it is correct when that class
    is the true one. Bins split [0, 1] into ``n_bins`` equal widths; empty bins are left out.
    """
    classes = list(classes)
    t = _encode(_as_list(y_true), classes, "y_true")
    return _reliability(t, _check_proba(proba, len(t), classes), n_bins)


def expected_calibration_error(
    y_true: Sequence[Any] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
    *,
    n_bins: int = 10,
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over the bins of :func:`reliability_curve`."""
    return _ece(reliability_curve(y_true, proba, classes, n_bins=n_bins))


def score_classifier(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    proba: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = 10,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Every classification metric of one method on one test set.

    Parameters
    ----------
    y_true, y_pred
        One entry per test subject. A ``None``/NaN prediction is an invalid (unparseable)
        answer: it counts as wrong for accuracy, balanced accuracy and F1 and is left out of
        the confusion matrix (so a row of the matrix sums to that class's test subjects minus
        its invalid answers).
    proba
        Optional class probabilities, shape (n, len(classes)), columns in ``classes`` order;
        rows must sum to 1. AUROC and calibration describe these probabilities (the
        top-label confidence and its argmax), independently of ``y_pred``.
    groups
        Optional subject of each row: the bootstrap then resamples whole subjects (cluster
        bootstrap), as a subject's runs are not independent.
    classes
        The class order of ``proba`` columns and of the confusion matrix. Default: the sorted
        labels seen in ``y_true`` and the valid predictions.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``f1`` (macro) and, with ``proba``, ``auroc``: each
        ``[value, lo, hi]``, the interval a percentile bootstrap over test subjects (rows are
        resampled jointly in ``y_true``, ``y_pred`` and ``proba``). Resamples holding a single
        true class are skipped for every metric except accuracy; a bound is ``None`` when no
        resample was usable, the value ``None`` when the metric is undefined on the test set.
        ``ece`` (float) and ``calibration`` ({"confidence", "accuracy", "count"}), both ``None``
        without ``proba``; ``confusion`` (rows true, columns predicted, in ``classes`` order);
        ``classes``; ``invalid_rate``; ``n``.
    """
    t, p, proba, classes = _coded_inputs(y_true, y_pred, proba, classes)
    out = _interval_scores(t, p, proba, len(classes), n_boot, seed, level, groups)
    if proba is not None:
        curve = _reliability(t, proba, n_bins)
        out["ece"] = round(_ece(curve), 4)
        out["calibration"] = curve
    else:
        out["ece"] = None
        out["calibration"] = None
    valid = p != INVALID
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (t[valid], p[valid]), 1)
    out["confusion"] = confusion.tolist()
    out["classes"] = [_plain(c) for c in classes]
    out["invalid_rate"] = round(float(np.mean(~valid)), 4)
    out["n"] = len(t)
    return out


def _coded_inputs(y_true, y_pred, proba, classes) -> tuple[np.ndarray, np.ndarray, Any, list]:
    """Checked class codes of ``y_true`` and ``y_pred``, checked ``proba``, the class list."""
    y_true, y_pred = _as_list(y_true), _as_list(y_pred)
    if len(y_true) != len(y_pred):
        raise FmrilmError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    if not y_true:
        raise FmrilmError("score_classifier: no test predictions to score")
    if any(is_invalid(v) for v in y_true):
        raise FmrilmError("y_true contains None/NaN: every test subject needs a true label")
    if classes is None:
        classes = _infer_classes(y_true, y_pred)
        if proba is not None and np.shape(proba)[-1] != len(classes):
            raise FmrilmError(
                f"proba has {np.shape(proba)[-1]} columns but {len(classes)} classes were "
                f"inferred from the labels ({classes}); pass classes= in the column order"
            )
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise FmrilmError(f"classes must be distinct, got {classes}")
    t = _encode(y_true, classes, "y_true")
    p = _encode(y_pred, classes, "y_pred")
    if proba is not None:
        proba = _check_proba(proba, len(t), classes)
    return t, p, proba, classes


def _interval_scores(t, p, proba, k: int, n_boot: int, seed: int, level: float, groups):
    """[value, lo, hi] of accuracy, balanced accuracy, F1 (and AUROC with ``proba``)."""
    point = _class_scores(t[None], p[None], k)
    if proba is not None:
        point["auroc"] = _auroc_codes(t[None], proba[None], k)
    boots: dict[str, list[np.ndarray]] = {name: [] for name in point}
    rng = np.random.default_rng(seed)
    for idx in _resamples(rng, len(t), n_boot, groups):
        scores = _class_scores(t[idx], p[idx], k)
        if proba is not None:
            scores["auroc"] = _auroc_codes(t[idx], proba[idx], k)
        for name, values in scores.items():
            boots[name].append(values)

    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out: dict[str, Any] = {}
    for name in ("accuracy", "balanced_accuracy", "f1", "auroc"):
        if name not in point:
            continue
        values = np.concatenate(boots[name])
        values = values[~np.isnan(values)]
        v = float(point[name][0])
        lo, hi = np.percentile(values, q) if len(values) else (None, None)
        out[name] = [_round(v), _round(lo), _round(hi)]
    return out


def _class_scores(t: np.ndarray, p: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of each row of code arrays t, p (B, n).

    NaN where undefined: balanced accuracy and F1 need two true classes in the resample.
    """
    b, n = t.shape
    offset = np.arange(b)[:, None] * k
    n_true = np.bincount((offset + t).ravel(), minlength=b * k).reshape(b, k)
    hit = t == p
    tp = np.bincount((offset + t)[hit], minlength=b * k).reshape(b, k)
    valid = p != INVALID
    n_pred = np.bincount((offset + p)[valid], minlength=b * k).reshape(b, k)
    present = n_true > 0
    two_classes = present.sum(axis=1) >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.maximum(n_true, 1), np.nan)
        bal = np.nanmean(recall, axis=1)
        denom = n_true + n_pred  # 2 tp + fp + fn
        f1_c = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
        macro_f1 = np.nanmean(f1_c, axis=1)
    return {
        "accuracy": hit.mean(axis=1),
        "balanced_accuracy": np.where(two_classes, bal, np.nan),
        "f1": np.where(two_classes, macro_f1, np.nan),
    }


def _auroc_codes(t: np.ndarray, proba: np.ndarray, k: int) -> np.ndarray:
    """AUROC of each row of t (B, n) with probabilities (B, n, k); NaN with one true class."""
    n = t.shape[1]
    columns = [1] if k == 2 else range(k)
    aucs = []
    for c in columns:
        pos = t == c
        n_pos = pos.sum(axis=1)
        n_neg = n - n_pos
        ranks = rankdata(proba[..., c], axis=1)  # ties get the average rank (Mann-Whitney U)
        u = (ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(np.stack(aucs), axis=0)


def _reliability(t: np.ndarray, proba: np.ndarray, n_bins: int) -> dict[str, list]:
    if n_bins < 1:
        raise FmrilmError(f"n_bins must be at least 1, got {n_bins}")
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == t
    edges = np.linspace(0, 1, n_bins + 1)
    # bin i holds confidences in (edges[i], edges[i + 1]]; the first bin also holds 0
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for i in range(n_bins):
        members = bins == i
        if members.any():
            out["confidence"].append(round(float(confidence[members].mean()), 4))
            out["accuracy"].append(round(float(correct[members].mean()), 4))
            out["count"].append(int(members.sum()))
    return out


def _ece(curve: dict[str, list]) -> float:
    count = np.asarray(curve["count"], dtype=float)
    gap = np.abs(np.asarray(curve["accuracy"]) - np.asarray(curve["confidence"]))
    return float((count * gap).sum() / count.sum())


def _check_proba(proba: np.ndarray, n: int, classes: list) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (n, len(classes)):
        raise FmrilmError(
            f"proba must have shape (n_test, n_classes) = ({n}, {len(classes)}), got {proba.shape}"
        )
    if not np.isfinite(proba).all() or (proba < 0).any():
        raise FmrilmError("proba must hold finite, non-negative probabilities")
    sums = proba.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-2):
        worst = float(sums[np.argmax(np.abs(sums - 1))])
        raise FmrilmError(f"each row of proba must sum to 1 (found a row summing to {worst:.3f})")
    return proba / sums[:, None]


def _as_list(values: Any) -> list:
    return list(values.tolist() if isinstance(values, np.ndarray) else values)


def _infer_classes(y_true: list, y_pred: list) -> list:
    seen = {v for v in y_true} | {v for v in y_pred if not is_invalid(v)}
    try:
        return sorted(seen)
    except TypeError:  # mixed label types: keep the order of first appearance
        return list(dict.fromkeys([*y_true, *(v for v in y_pred if not is_invalid(v))]))


def _encode(values: list, classes: list, what: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    codes = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if is_invalid(v):
            codes[i] = INVALID
        elif v in index:
            codes[i] = index[v]
        else:
            hint = (
                " (map an unparseable answer to None, never to a class)" if what == "y_pred" else ""
            )
            raise FmrilmError(
                f"{what} holds {v!r}, which is not one of the classes {classes}{hint}"
            )
    return codes


def _round(v: float | None) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 4)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
