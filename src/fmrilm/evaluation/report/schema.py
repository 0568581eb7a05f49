"""The metrics schema of an evaluation report: its constants, entries and validation.

:func:`write_report` validates one metrics dict, writes it unchanged to ``metrics.json``, draws
the figures and writes a self-contained ``report.html`` (inline CSS, figures referenced by
relative file name, so the folder can be moved or zipped as a whole). :func:`method_entry`
turns the output of :func:`~fmrilm.evaluation.metrics.score_classifier`, ``score`` or a baseline
into one method of the schema.

Input schema (every key not marked optional is required; unknown keys are refused, so a typo
is an error rather than a silently missing section)::

    {
      "title": str, "model": str, "cohort": str,
      "split": "test",                 # any other split name is shown with a warning banner
      "created": ISO 8601 str,
      "versions": {str: any},          # optional (package versions, git commit, ...)
      "tasks": {"<task>": {
          "kind": "classification" | "regression",
          "n_test": int,
          "classes": [...],            # classification: the class order of confusion matrices
          "primary_metric": str,       # optional; default balanced_accuracy / r2 by kind
          "methods": {"<method>": {
              "group": "fmrilm" | "baseline" | "oracle",
              "metrics": {"<name>": [value, lo, hi] | number | null},
              "invalid_rate": float | null,                               # optional
              "confusion": [[int]],    # optional; rows true, columns predicted, classes order
              "calibration": {"confidence": [], "accuracy": [], "count": []},  # optional
              "note": str}},                                              # optional
          "fewshot": {"<curve, e.g. in-context | lora | fc+lr>": {        # optional
              "k": [int], "metric": str, "value": [number | null],
              "lo": [number | null] | null, "hi": [number | null] | null,
              "note": str, "interval": str, "skipped": [int]}}}},   # last three optional
      "retrieval": {"fmri_to_text" | "text_to_fmri": {                   # optional
          "recall_at": {"1": v, "5": v, "10": v}, "median_rank": v, "n": int,
          "chance_recall_at": {...},                                      # optional
          "curve": {"k": [...], "recall": [...]}}},                       # optional
      "throughput": {"scans_per_s": float, ...},                          # optional
      "notes": [str]                                                      # optional
    }

``[value, lo, hi]`` is a point estimate with its interval (95 % bootstrap over test subjects
unless the method's note says otherwise); any of the three may be null (undefined, or no
usable bootstrap resample). Metrics named in ``LOWER_IS_BETTER`` (MAE, ECE, ...) are compared
the other way round.
"""

from __future__ import annotations

import math
import numbers
from datetime import datetime
from typing import Any, NoReturn

from fmrilm.errors import FmrilmError

GROUPS = ("fmrilm", "baseline", "oracle")
GROUP_COLORS = {"fmrilm": "#2b6cb0", "baseline": "#8a8f98", "oracle": "#2f9e44"}
DEFAULT_PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}
LOWER_IS_BETTER = {"mae", "mse", "rmse", "ece", "median_rank", "invalid_rate"}
METRIC_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "macro F1",
    "auroc": "AUROC",
    "ece": "ECE",
    "r2": "R²",
    "mae": "MAE",
    "pearson": "Pearson r",
}
_TOP_REQUIRED = ("title", "model", "cohort", "split", "created", "tasks")
_TOP_OPTIONAL = ("versions", "retrieval", "throughput", "notes")
_TASK_KEYS = ("kind", "n_test", "classes", "primary_metric", "methods", "fewshot")
_METHOD_KEYS = ("group", "metrics", "invalid_rate", "confusion", "calibration", "note")
_CURVE_KEYS = ("k", "metric", "value", "lo", "hi", "note", "interval", "skipped")
_RETRIEVAL_KEYS = ("recall_at", "median_rank", "n", "chance_recall_at", "curve")


def method_entry(result: dict, group: str, *, note: str | None = None) -> dict[str, Any]:
    """One ``methods`` entry of the schema from a scores dict or a baseline result.

    ``result`` is the output of ``score``/``score_classifier``/``score_regression``, or a dict
    holding one under ``"metrics"`` (``fc_linear_baseline``, ``fewshot_baseline``, ...). Interval
    metrics and plain numbers go to ``metrics``; ``invalid_rate``, ``confusion`` and
    ``calibration`` to their own keys. A few-shot result's ``interval`` becomes the note.
    """
    if group not in GROUPS:
        raise FmrilmError(f"group must be one of {list(GROUPS)}, got {group!r}")
    scores = result["metrics"] if isinstance(result.get("metrics"), dict) else result
    entry: dict[str, Any] = {"group": group, "metrics": {}}
    for name, value in scores.items():
        if name in ("confusion", "calibration", "classes", "invalid_rate", "n"):
            continue
        if value is None or _is_number(value) or _is_interval(value):
            entry["metrics"][name] = list(value) if isinstance(value, list | tuple) else value
    for key in ("invalid_rate", "confusion", "calibration"):
        if scores.get(key) is not None:
            entry[key] = scores[key]
    if note is None and "interval" in result:
        note = f"[lo, hi] = {result['interval']}"
    if note:
        entry["note"] = note
    return entry


# --- validation ------------------------------------------------------------------------------------


def validate_metrics(metrics: Any) -> None:
    """Raise :class:`FmrilmError` naming the first key that does not follow the schema."""
    _keys(metrics, "metrics", _TOP_REQUIRED, _TOP_OPTIONAL)
    for key in ("title", "model", "cohort", "split", "created"):
        _string(metrics[key], key)
    try:
        datetime.fromisoformat(metrics["created"])
    except ValueError:
        raise FmrilmError(
            f"report metrics: created: expected an ISO 8601 date-time, got {metrics['created']!r}"
        ) from None
    if "versions" in metrics and not isinstance(metrics["versions"], dict):
        _fail("versions", "expected an object {name: version}")
    tasks = metrics["tasks"]
    if not isinstance(tasks, dict) or not tasks:
        _fail("tasks", "expected a non-empty object {task name: task}")
    for name, task in tasks.items():
        _validate_task(task, f"tasks.{name}")
    if "retrieval" in metrics:
        retrieval = metrics["retrieval"]
        if not isinstance(retrieval, dict) or not retrieval:
            _fail("retrieval", "expected an object {direction: results}")
        for direction, res in retrieval.items():
            _validate_retrieval(res, f"retrieval.{direction}")
    if "throughput" in metrics:
        throughput = metrics["throughput"]
        if not isinstance(throughput, dict):
            _fail("throughput", "expected an object {name: number}")
        for key, value in throughput.items():
            if not (_is_number(value) or isinstance(value, str)):
                _fail(f"throughput.{key}", f"expected a number or a string, got {value!r}")
    if "notes" in metrics:
        notes = metrics["notes"]
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            _fail("notes", "expected a list of strings")


def _validate_task(task: Any, path: str) -> None:
    _keys(task, path, ("kind", "n_test", "methods"), _TASK_KEYS)
    kind = task["kind"]
    if kind not in DEFAULT_PRIMARY:
        _fail(f"{path}.kind", f"expected 'classification' or 'regression', got {kind!r}")
    if not _is_int(task["n_test"]) or task["n_test"] < 1:
        _fail(f"{path}.n_test", f"expected a positive integer, got {task['n_test']!r}")
    n_classes = None
    if kind == "classification":
        classes = task.get("classes")
        if not isinstance(classes, list) or len(classes) < 2:
            _fail(f"{path}.classes", "a classification task needs a list of at least 2 classes")
        if len({str(c) for c in classes}) != len(classes):
            _fail(f"{path}.classes", f"classes must be distinct, got {classes}")
        n_classes = len(classes)
    primary = task.get("primary_metric", DEFAULT_PRIMARY[kind])
    _string(primary, f"{path}.primary_metric")
    methods = task["methods"]
    if not isinstance(methods, dict) or not methods:
        _fail(f"{path}.methods", "expected a non-empty object {method name: method}")
    for name, method in methods.items():
        _validate_method(method, f"{path}.methods.{name}", n_classes)
    if not any(primary in m["metrics"] for m in methods.values()):
        _fail(f"{path}.primary_metric", f"{primary!r} is in no method's metrics")
    if "fewshot" in task:
        curves = task["fewshot"]
        if not isinstance(curves, dict) or not curves:
            _fail(f"{path}.fewshot", "expected a non-empty object {curve name: curve}")
        for name, curve in curves.items():
            _validate_curve(curve, f"{path}.fewshot.{name}")


def _validate_method(method: Any, path: str, n_classes: int | None) -> None:
    _keys(method, path, ("group", "metrics"), _METHOD_KEYS)
    if method["group"] not in GROUPS:
        _fail(f"{path}.group", f"expected one of {list(GROUPS)}, got {method['group']!r}")
    values = method["metrics"]
    if not isinstance(values, dict) or not values:
        _fail(f"{path}.metrics", "expected a non-empty object {metric name: value}")
    for name, value in values.items():
        if not (value is None or _is_number(value) or _is_interval(value)):
            _fail(
                f"{path}.metrics.{name}",
                f"expected [value, lo, hi], a number or null, got {value!r}",
            )
        if _is_interval(value) and None not in value[1:] and value[1] > value[2]:
            _fail(f"{path}.metrics.{name}", f"lo > hi in {value}")
    rate = method.get("invalid_rate")
    if rate is not None and not (_is_number(rate) and 0 <= rate <= 1):
        _fail(f"{path}.invalid_rate", f"expected a fraction in [0, 1] or null, got {rate!r}")
    if "confusion" in method:
        if n_classes is None:
            _fail(f"{path}.confusion", "only a classification task has a confusion matrix")
        m = method["confusion"]
        square = isinstance(m, list) and len(m) == n_classes
        square = square and all(isinstance(r, list) and len(r) == n_classes for r in m)
        if not square or not all(_is_int(c) and c >= 0 for r in m for c in r):
            _fail(
                f"{path}.confusion",
                f"expected a {n_classes}x{n_classes} list of non-negative counts "
                "(one row and column per class)",
            )
    if "note" in method:
        _string(method["note"], f"{path}.note")
    if "calibration" in method:
        cal = method["calibration"]
        _keys(cal, f"{path}.calibration", ("confidence", "accuracy", "count"), ())
        lists = [cal[k] for k in ("confidence", "accuracy", "count")]
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
            _fail(
                f"{path}.calibration", "confidence, accuracy and count must be equal-length lists"
            )
        if not all(_is_number(v) and 0 <= v <= 1 for v in lists[0] + lists[1]):
            _fail(f"{path}.calibration", "confidence and accuracy must be numbers in [0, 1]")
        if not all(_is_int(v) and v >= 0 for v in lists[2]):
            _fail(f"{path}.calibration.count", "expected non-negative integers")


def _validate_curve(curve: Any, path: str) -> None:
    _keys(curve, path, ("k", "metric", "value"), _CURVE_KEYS)
    k = curve["k"]
    if not isinstance(k, list) or not k or not all(_is_int(v) and v >= 1 for v in k):
        _fail(f"{path}.k", f"expected a non-empty list of positive integers, got {k!r}")
    _string(curve["metric"], f"{path}.metric")
    for key in ("value", "lo", "hi"):
        values = curve.get(key)
        if key != "value" and values is None:
            continue
        if not isinstance(values, list) or len(values) != len(k):
            _fail(f"{path}.{key}", f"expected a list as long as k ({len(k)} entries)")
        if not all(v is None or _is_number(v) for v in values):
            _fail(f"{path}.{key}", "expected numbers or nulls")
    for key in ("note", "interval"):
        if key in curve:
            _string(curve[key], f"{path}.{key}")


def _validate_retrieval(res: Any, path: str) -> None:
    _keys(res, path, ("recall_at", "median_rank", "n"), _RETRIEVAL_KEYS)
    for key in ("recall_at", "chance_recall_at"):
        if key not in res:
            continue
        table = res[key]
        if not isinstance(table, dict) or not table:
            _fail(f"{path}.{key}", 'expected an object {"1": recall, "5": recall, ...}')
        for at, value in table.items():
            if not str(at).isdigit() or int(at) < 1:
                _fail(f"{path}.{key}", f"keys must be positive integers as strings, got {at!r}")
            if not (_is_number(value) and 0 <= value <= 1):
                _fail(f"{path}.{key}.{at}", f"expected a recall in [0, 1], got {value!r}")
    if not _is_number(res["median_rank"]):
        _fail(f"{path}.median_rank", f"expected a number, got {res['median_rank']!r}")
    if not _is_int(res["n"]) or res["n"] < 1:
        _fail(f"{path}.n", f"expected a positive integer, got {res['n']!r}")
    if "curve" in res:
        curve = res["curve"]
        _keys(curve, f"{path}.curve", ("k", "recall"), ())
        k, recall = curve["k"], curve["recall"]
        if not isinstance(k, list) or not isinstance(recall, list) or len(k) != len(recall):
            _fail(f"{path}.curve", "k and recall must be equal-length lists")
        if not all(_is_int(v) and v >= 1 for v in k):
            _fail(f"{path}.curve.k", "expected positive integers")
        if not all(_is_number(v) and 0 <= v <= 1 for v in recall):
            _fail(f"{path}.curve.recall", "expected recalls in [0, 1]")


def _keys(obj: Any, path: str, required: tuple, allowed: tuple) -> None:
    if not isinstance(obj, dict):
        _fail(path, f"expected an object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        _fail(path, f"missing key {missing[0]!r}")
    known = set(required) | set(allowed)
    unknown = [k for k in obj if k not in known]
    if unknown:
        _fail(path, f"unknown key {unknown[0]!r} (expected {sorted(known)})")


def _string(value: Any, path: str) -> None:
    if not isinstance(value, str) or not value.strip():
        _fail(path, f"expected a non-empty string, got {value!r}")


def _fail(path: str, message: str) -> NoReturn:
    raise FmrilmError(f"report metrics: {path}: {message}")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_interval(v: Any) -> bool:
    return (
        isinstance(v, list | tuple) and len(v) == 3 and all(x is None or _is_number(x) for x in v)
    )


# --- reading the numbers -----------------------------------------------------------------------------


def _triple(value: Any) -> tuple[float | None, float | None, float | None]:
    """(value, lo, hi) of a metric entry; lo/hi None for a plain number."""
    if _is_interval(value):
        return value[0], value[1], value[2]
    return value, None, None


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _primary(task: dict) -> str:
    return task.get("primary_metric", DEFAULT_PRIMARY[task["kind"]])


def _chance(task: dict, metric: str) -> float | None:
    """The score of a predictor without information, where it is known."""
    if metric == "balanced_accuracy" and task["kind"] == "classification":
        return 1 / len(task["classes"])
    if metric == "auroc":
        return 0.5
    if metric in ("r2", "pearson"):
        return 0.0
    return None


def _best(methods: dict, group: str, metric: str) -> tuple[str, tuple] | None:
    """The method of ``group`` with the best value of ``metric``."""
    rows = [
        (name, _triple(m["metrics"].get(metric)))
        for name, m in methods.items()
        if m["group"] == group and _triple(m["metrics"].get(metric))[0] is not None
    ]
    if not rows:
        return None
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(rows, key=lambda r: sign * r[1][0])
