"""An evaluation report a person can read: ``metrics.json``, PNG figures and ``report.html``.

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

import html
import math
import numbers
import re
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path, write_json, write_text

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


def write_report(metrics: dict, out_dir: str | Path) -> Path:
    """Validate ``metrics``, write metrics.json, the figures and report.html; return the HTML path."""
    validate_metrics(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    figures = _write_figures(metrics, out_dir)
    path = out_dir / "report.html"
    write_text(path, _render_html(metrics, figures))
    return path


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


def summary_lines(metrics: dict) -> list[str]:
    """A plain-text summary for the terminal: per task, every method's primary metric with its
    interval, then the comparison sentences, retrieval and throughput."""
    lines = [metrics.get("title", "fmrilm evaluation")]
    for name, task in metrics["tasks"].items():
        metric = _primary(task)
        lines.append(f"\n{name} ({task['kind']}, {task['n_test']} held-out, {_label(metric)}):")
        width = max(len(m) for m in task["methods"])
        for method, m in task["methods"].items():
            extra = ""
            if m.get("invalid_rate"):
                extra = f"  invalid {m['invalid_rate']:.0%}"
            lines.append(
                f"  {method:<{width}}  {_fmt_metric(m['metrics'].get(metric))}  [{m['group']}]{extra}"
            )
        lines += [f"  - {t}" for t in task_statements(name, task)]
    if metrics.get("retrieval"):
        lines.append("\nretrieval:")
        lines += [f"  - {t}" for t in retrieval_statements(metrics["retrieval"])]
    if metrics.get("throughput"):
        lines.append(f"\nthroughput: {metrics['throughput'].get('scans_per_s')} scans/s")
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return lines


def task_statements(task_name: str, task: dict) -> list[str]:
    """Plain sentences comparing each fmrilm method with the best baseline, chance and oracle."""
    metric = _primary(task)
    label = _label(metric)
    lower = metric in LOWER_IS_BETTER
    methods = task["methods"]
    baseline = _best(methods, "baseline", metric)
    oracle = _best(methods, "oracle", metric)
    chance = _chance(task, metric)
    out = []
    fmrilm = [
        (name, _triple(m["metrics"].get(metric)), m)
        for name, m in methods.items()
        if m["group"] == "fmrilm"
    ]
    for name, (v, lo, hi), m in fmrilm:
        if v is None:
            out.append(f"{name} has no {label} on {task_name}.")
            continue
        if baseline:
            b_name, (bv, blo, bhi) = baseline
            relation = _relation(v, bv, lower)
            sentence = (
                f"{name} is {relation} {_baseline_name(b_name)} on {task_name} "
                f"({_f2(v)} vs {_f2(bv)} {label}"
            )
            if None not in (lo, hi, blo, bhi) and relation != "level with":
                overlap = lo <= bhi and blo <= hi
                sentence += (
                    "; the intervals overlap, so the difference is not clear-cut"
                    if overlap
                    else "; the intervals do not overlap"
                )
            out.append(sentence + ").")
        if chance is not None and lo is not None and hi is not None and lo <= chance <= hi:
            out.append(
                f"{name} is not distinguishable from chance on {task_name}: its interval "
                f"[{_f2(lo)}, {_f2(hi)}] includes chance ({_f2(chance)} {label})."
            )
        elif chance is not None and (v <= chance if not lower else v >= chance):
            out.append(f"{name} is at or below chance on {task_name} ({_f2(v)} vs {_f2(chance)}).")
        if oracle:
            o_name, (ov, _, _) = oracle
            out.append(
                f"{name} is {_relation(v, ov, lower)} {_oracle_name(o_name)} (upper bound) on "
                f"{task_name} ({_f2(v)} vs {_f2(ov)} {label})."
            )
        rate = m.get("invalid_rate")
        if rate:
            out.append(
                f"{name} gave no usable answer for {rate:.1%} of the {task['n_test']} test "
                f"subjects on {task_name} (counted as wrong)."
            )
    if not fmrilm and baseline and oracle:
        (b_name, (bv, _, _)), (o_name, (ov, _, _)) = baseline, oracle
        out.append(
            f"{_baseline_name(b_name)[0].upper()}{_baseline_name(b_name)[1:]} is "
            f"{_relation(bv, ov, lower)} {_oracle_name(o_name)} (upper bound) on {task_name} "
            f"({_f2(bv)} vs {_f2(ov)} {label})."
        )
    return out


def retrieval_statements(retrieval: dict) -> list[str]:
    out = []
    for direction, res in retrieval.items():
        at = sorted(res["recall_at"], key=int)[0]
        chance = _retrieval_chance(res, int(at))
        sentence = (
            f"{_direction(direction)} retrieval among {res['n']} candidates: recall@{at} "
            f"{_f2(res['recall_at'][at])}"
        )
        if chance is not None:
            ratio = res["recall_at"][at] / chance if chance > 0 else float("inf")
            sentence += f" vs chance {_f3(chance)} ({ratio:.1f}x chance)"
        out.append(sentence + f"; median rank {_fnum(res['median_rank'])}.")
    return out


def _relation(v: float, ref: float, lower_is_better: bool) -> str:
    if round(v, 2) == round(ref, 2):
        return "level with"
    if lower_is_better:
        return "better than" if v < ref else "worse than"
    return "above" if v > ref else "below"


def _baseline_name(name: str) -> str:
    return f"the {name}" if "baseline" in name.lower() else f"the {name} baseline"


def _oracle_name(name: str) -> str:
    return f"the {name}" if "oracle" in name.lower() else f"the {name} oracle"


def _direction(direction: str) -> str:
    return {"fmri_to_text": "fMRI → text", "text_to_fmri": "text → fMRI"}.get(
        direction, direction.replace("_", " ")
    )


def _retrieval_chance(res: dict, at: int) -> float | None:
    chance = res.get("chance_recall_at", {})
    if str(at) in chance:
        return chance[str(at)]
    return min(at / res["n"], 1.0)


def _f2(v: float) -> str:
    text = f"{v:.2f}"
    return text.lstrip("-") if float(text) == 0 else text


def _f3(v: float) -> str:
    return f"{v:.3f}"


def _fnum(v: Any) -> str:
    if v is None:
        return "—"
    if _is_int(v):
        return str(v)
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.000"


def _fmt_metric(value: Any) -> str:
    v, lo, hi = _triple(value)
    if v is None:
        return "—"
    if lo is None or hi is None:
        return _fnum(v)
    return f"{_fnum(v)} [{_fnum(lo)}, {_fnum(hi)}]"


# --- figures -------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    if not fig.get_constrained_layout():
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)
    return path.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:40] or "task"


def _wrap(text: str, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _write_figures(metrics: dict, out_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Draw every figure; returns {task name or "retrieval": [(file name, caption)]}."""
    figures: dict[str, list[tuple[str, str]]] = {}
    for i, (name, task) in enumerate(metrics["tasks"].items(), 1):
        stem = f"task{i}_{_slug(name)}"
        out = figures.setdefault(name, [])
        out.append(
            (
                _bar_chart(name, task, out_dir / f"{stem}_{_primary(task)}.png"),
                f"{_label(_primary(task))} of every method with its interval",
            )
        )
        if task.get("fewshot"):
            out.append(
                (
                    _fewshot_plot(name, task, out_dir / f"{stem}_fewshot.png"),
                    "few-shot curves: metric against the number of labelled examples K",
                )
            )
        if any("confusion" in m for m in task["methods"].values()):
            out.append(
                (
                    _confusion_plot(name, task, out_dir / f"{stem}_confusion.png"),
                    "confusion matrices: counts, colour = share of the true class (row)",
                )
            )
        if any("calibration" in m for m in task["methods"].values()):
            out.append(
                (
                    _calibration_plot(name, task, out_dir / f"{stem}_calibration.png"),
                    "reliability diagram: accuracy against confidence (diagonal = calibrated)",
                )
            )
    if metrics.get("retrieval"):
        figures["retrieval"] = [
            (
                _retrieval_plot(metrics["retrieval"], out_dir / "retrieval.png"),
                "recall@k against k for both directions; dashed: chance",
            )
        ]
    return figures


def _ordered_methods(task: dict) -> list[tuple[str, dict]]:
    """Methods grouped fmrilm, baseline, oracle, keeping the input order inside a group."""
    items = list(task["methods"].items())
    return sorted(items, key=lambda kv: GROUPS.index(kv[1]["group"]))


def _bar_chart(name: str, task: dict, path: Path) -> str:
    plt = _plt()
    metric = _primary(task)
    methods = _ordered_methods(task)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) + 2.5), 4.6))
    values = [_triple(m["metrics"].get(metric)) for _, m in methods]
    x = np.arange(len(methods))
    for i, ((_, m), (v, lo, hi)) in enumerate(zip(methods, values, strict=True)):
        color = GROUP_COLORS[m["group"]]
        if v is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", color="0.4")
            continue
        ax.bar(i, v, color=color, width=0.7)
        if lo is not None and hi is not None:
            ax.errorbar(
                i, v, yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], color="k", capsize=5, lw=1.2
            )
        top = hi if hi is not None else v
        ax.annotate(
            _fnum(v),
            (i, max(top, v, 0)),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=9,
        )
    chance = _chance(task, metric)
    if chance is not None:
        ax.axhline(chance, color="#c92a2a", ls="--", lw=1.2, label=f"chance ({chance:.2f})")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g])
        for g in GROUPS
        if any(m["group"] == g for _, m in methods)
    ]
    labels = [g for g in GROUPS if any(m["group"] == g for _, m in methods)]
    if chance is not None:
        handles.append(plt.Line2D([], [], color="#c92a2a", ls="--"))
        labels.append(f"chance ({chance:.2f})")
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xticks(x, [_wrap(n) for n, _ in methods], fontsize=9)
    ax.set_ylabel(_label(metric))
    finite = [t for v in values for t in v if t is not None] + ([chance] if chance else [])
    if metric in ("balanced_accuracy", "accuracy", "f1", "auroc"):
        ax.set_ylim(0, 1.08)
    elif finite:
        low, high = min(min(finite), 0), max(max(finite), 0)
        pad = 0.12 * (high - low or 1)
        ax.set_ylim(low - pad * (low < 0), high + pad)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"{name}: {_label(metric)} on {task['n_test']} test subjects")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _fewshot_plot(name: str, task: dict, path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ks: set[int] = set()
    metrics_used = set()
    for i, (curve_name, curve) in enumerate(task["fewshot"].items()):
        k = np.asarray(curve["k"], dtype=float)
        v = np.array([np.nan if x is None else x for x in curve["value"]], dtype=float)
        ax.plot(k, v, marker="o", color=f"C{i}", label=curve_name)
        if curve.get("lo") is not None and curve.get("hi") is not None:
            lo = np.array([np.nan if x is None else x for x in curve["lo"]], dtype=float)
            hi = np.array([np.nan if x is None else x for x in curve["hi"]], dtype=float)
            ax.fill_between(k, lo, hi, color=f"C{i}", alpha=0.18, lw=0)
        ks.update(curve["k"])
        metrics_used.add(curve["metric"])
    metric = metrics_used.pop() if len(metrics_used) == 1 else "metric"
    chance = _chance(task, metric)
    if chance is not None:
        ax.axhline(chance, color="#c92a2a", ls="--", lw=1.2, label=f"chance ({chance:.2f})")
    ax.set_xscale("log", base=2)
    ticks = sorted(ks)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    per = "per class" if task["kind"] == "classification" else "(× 2 subjects)"
    ax.set_xlabel(f"K labelled training examples {per}")
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{name}: few-shot learning (band: lo–hi)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _confusion_plot(name: str, task: dict, path: Path) -> str:
    plt = _plt()
    shown = [(n, m) for n, m in _ordered_methods(task) if "confusion" in m]
    classes = [str(c) for c in task["classes"]]
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    size = max(3.2, 0.55 * len(classes) + 2.2)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(size * cols + 1.2, size * rows + 0.6),
        squeeze=False,
        layout="constrained",  # makes room for the shared colour bar and the tick labels
    )
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    im = None
    for ax, (method, m) in zip(axes.ravel(), shown, strict=False):
        counts = np.asarray(m["confusion"], dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for r in range(len(classes)):
            for c in range(len(classes)):
                ax.text(
                    c,
                    r,
                    f"{int(counts[r, c])}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[r, c] > 0.55 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true class")
        title = _wrap(method, 28)
        if m.get("invalid_rate"):
            title += f"\n({m['invalid_rate']:.0%} invalid answers, not shown)"
        ax.set_title(title, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, label="share of true class")
    fig.suptitle(f"{name}: confusion matrices")
    return _save(fig, path)


def _calibration_plot(name: str, task: dict, path: Path) -> str:
    plt = _plt()
    shown = [(n, m) for n, m in _ordered_methods(task) if "calibration" in m]
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(6.2, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="k", ls=":", lw=1, label="perfectly calibrated")
    width = 0.08 / max(len(shown), 1)
    for i, (method, m) in enumerate(shown):
        cal = m["calibration"]
        ece = m["metrics"].get("ece")
        label = method + (f" (ECE {_triple(ece)[0]:.3f})" if _triple(ece)[0] is not None else "")
        ax.plot(cal["confidence"], cal["accuracy"], marker="o", color=f"C{i}", label=label)
        offset = (i - (len(shown) - 1) / 2) * width
        ax_n.bar(np.asarray(cal["confidence"]) + offset, cal["count"], width=width, color=f"C{i}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy in the bin")
    ax.set_title(f"{name}: reliability diagram (top-label confidence)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.set(xlabel="confidence", ylabel="test subjects")
    ax_n.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _retrieval_plot(retrieval: dict, path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    max_n = 1
    for i, (direction, res) in enumerate(retrieval.items()):
        if "curve" in res:
            k, recall = res["curve"]["k"], res["curve"]["recall"]
        else:
            pairs = sorted((int(a), v) for a, v in res["recall_at"].items())
            k, recall = [p[0] for p in pairs], [p[1] for p in pairs]
        ax.plot(k, recall, marker="o", ms=3, color=f"C{i}", label=_direction(direction))
        max_n = max(max_n, res["n"], max(k))
    # chance: with n candidates the true match is in a random top k with probability k / n;
    # directions with the same chance curve share one line
    chance_curves: dict[tuple, list[str]] = {}
    for direction, res in retrieval.items():
        if res.get("chance_recall_at"):
            pairs = sorted((int(a), v) for a, v in res["chance_recall_at"].items())
        else:
            ks = np.unique(np.geomspace(1, res["n"], 50).astype(int))
            pairs = [(int(k), min(k / res["n"], 1.0)) for k in ks]
        chance_curves.setdefault(tuple(pairs), []).append(_direction(direction))
    for i, (pairs, directions) in enumerate(chance_curves.items()):
        ax.plot(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            ls="--",
            color=f"{0.35 + 0.2 * i:.2f}",
            label=f"chance ({', '.join(directions)})",
        )
    ax.set_xscale("log")
    ax.set(xlim=(1, max_n), ylim=(0, 1.02), xlabel="k", ylabel="recall@k")
    ax.set_title("cross-modal retrieval on the test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- HTML ----------------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1.2em; color: #1d2330; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #e3e6ea; padding-bottom: 0.2em;
     margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d5d9de; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.meta td:first-child { font-weight: 600; background: #f8f9fa; }
.chip { display: inline-block; padding: 0 0.5em; border-radius: 0.6em; color: white;
        font-size: 0.85em; }
.warn { background: #fff4e6; border-left: 4px solid #f08c00; padding: 0.6em 1em; }
.findings li { margin: 0.25em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #e3e6ea; }
figcaption { color: #5c6370; font-size: 0.9em; }
.muted { color: #5c6370; font-size: 0.9em; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _render_html(metrics: dict, figures: dict[str, list[tuple[str, str]]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(metrics['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(metrics['title'])}</h1>",
        _meta_table(metrics),
    ]
    if metrics["split"] != "test":
        parts.append(
            f'<p class="warn">These scores are on the <b>{_e(metrics["split"])}</b> split, not '
            "the held-out test split: do not quote them as final results.</p>"
        )
    findings = [s for n, t in metrics["tasks"].items() for s in task_statements(n, t)]
    findings += retrieval_statements(metrics.get("retrieval") or {})
    parts.append("<h2>Findings</h2>")
    if findings:
        parts.append('<ul class="findings">' + "".join(f"<li>{_e(s)}</li>" for s in findings))
        parts.append("</ul>")
    else:
        parts.append("<p>No fmrilm method to compare.</p>")
    parts.append(
        '<p class="muted">Values are point estimates on the test subjects with [lo, hi]: a 95 % '
        "bootstrap interval over test subjects unless a note says otherwise. Groups: "
        + ", ".join(
            f'<span class="chip" style="background:{GROUP_COLORS[g]}">{g}</span>' for g in GROUPS
        )
        + " (the oracle is an upper bound from the simulator's true parameters). Answers that "
        "could not be parsed count as wrong; their share is the invalid rate.</p>"
    )
    for name, task in metrics["tasks"].items():
        parts.append(_task_section(name, task, figures.get(name, [])))
    if metrics.get("retrieval"):
        parts.append(_retrieval_section(metrics["retrieval"], figures.get("retrieval", [])))
    if metrics.get("throughput"):
        rows = "".join(
            f'<tr><td>{_e(k.replace("_", " "))}</td><td class="num">'
            f"{_e(_fnum(v) if _is_number(v) else v)}</td></tr>"
            for k, v in metrics["throughput"].items()
        )
        parts.append(f"<h2>Throughput</h2><table>{rows}</table>")
    if metrics.get("notes"):
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{_e(n)}</li>" for n in metrics["notes"])
        parts.append("</ul>")
    parts.append(
        '<p class="muted">Written by fmrilm.evaluation.report; every number is in '
        '<a href="metrics.json">metrics.json</a>.</p></body></html>'
    )
    return "\n".join(parts) + "\n"


def _meta_table(metrics: dict) -> str:
    rows = [(k, metrics[k]) for k in ("model", "cohort", "split", "created")]
    rows += [(f"version: {k}", v) for k, v in (metrics.get("versions") or {}).items()]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _task_section(name: str, task: dict, figures: list[tuple[str, str]]) -> str:
    primary = _primary(task)
    methods = _ordered_methods(task)
    names = [primary]
    for _, m in methods:
        names += [k for k in m["metrics"] if k not in names]
    has_invalid = any(m.get("invalid_rate") is not None for _, m in methods)
    has_note = any(m.get("note") for _, m in methods)
    best = {metric: _best_value(methods, metric) for metric in names}
    head = "<tr><th>method</th><th>group</th>" + "".join(f"<th>{_e(_label(k))}</th>" for k in names)
    head += ("<th>invalid rate</th>" if has_invalid else "") + ("<th>note</th>" if has_note else "")
    rows = []
    for method, m in methods:
        cells = [
            f"<td>{_e(method)}</td>",
            f'<td><span class="chip" style="background:{GROUP_COLORS[m["group"]]}">'
            f"{_e(m['group'])}</span></td>",
        ]
        for k in names:
            text = _e(_fmt_metric(m["metrics"].get(k)))
            v = _triple(m["metrics"].get(k))[0]
            if m["group"] != "oracle" and v is not None and v == best[k]:
                text = f"<b>{text}</b>"
            cells.append(f'<td class="num">{text}</td>')
        if has_invalid:
            rate = m.get("invalid_rate")
            cells.append(f'<td class="num">{"—" if rate is None else f"{rate:.1%}"}</td>')
        if has_note:
            cells.append(f"<td>{_e(m.get('note', ''))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = task["kind"]
    about = f"{kind}, {task['n_test']} test subjects, primary metric: {_label(primary)}"
    if kind == "classification":
        about += f"; classes: {', '.join(str(c) for c in task['classes'])}"
    parts = [
        f'<h2 id="task-{_e(_slug(name))}">Task: {_e(name)}</h2>',
        f'<p class="muted">{_e(about)}. Bold: best non-oracle value per column.</p>',
        f"<table>{head}</tr>{''.join(rows)}</table>",
    ]
    statements = task_statements(name, task)
    if statements:
        parts.append("<ul>" + "".join(f"<li>{_e(s)}</li>" for s in statements) + "</ul>")
    if task.get("fewshot"):
        parts.append(_fewshot_table(task["fewshot"]))
    for file_name, caption in figures:
        parts.append(
            f'<figure><img src="{_e(file_name)}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _best_value(methods: list[tuple[str, dict]], metric: str) -> float | None:
    values = [
        _triple(m["metrics"].get(metric))[0]
        for _, m in methods
        if m["group"] != "oracle" and _triple(m["metrics"].get(metric))[0] is not None
    ]
    if not values:
        return None
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def _fewshot_table(curves: dict) -> str:
    ks = sorted({k for c in curves.values() for k in c["k"]})
    head = "<tr><th>few-shot curve</th><th>metric</th>" + "".join(f"<th>K={k}</th>" for k in ks)
    rows = []
    notes = []
    for name, c in curves.items():
        cells = []
        for k in ks:
            if k not in c["k"]:
                cells.append("<td>—</td>")
                continue
            i = c["k"].index(k)
            lo = c["lo"][i] if c.get("lo") else None
            hi = c["hi"][i] if c.get("hi") else None
            cells.append(f'<td class="num">{_e(_fmt_metric([c["value"][i], lo, hi]))}</td>')
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(_label(c['metric']))}</td>{''.join(cells)}</tr>"
        )
        if c.get("note"):
            notes.append(f"<li>{_e(name)}: {_e(c['note'])}</li>")
        elif c.get("interval"):
            notes.append(f"<li>{_e(name)}: [lo, hi] = {_e(c['interval'])}</li>")
    out = f"<h3>Few-shot</h3><table>{head}</tr>{''.join(rows)}</table>"
    if notes:
        out += f'<ul class="muted">{"".join(notes)}</ul>'
    return out


def _retrieval_section(retrieval: dict, figures: list[tuple[str, str]]) -> str:
    ats = sorted({int(a) for r in retrieval.values() for a in r["recall_at"]})
    head = "<tr><th>direction</th><th>candidates</th>" + "".join(
        f"<th>recall@{a} (chance)</th>" for a in ats
    )
    head += "<th>median rank</th></tr>"
    rows = []
    for direction, res in retrieval.items():
        cells = []
        for a in ats:
            v = res["recall_at"].get(str(a))
            chance = _retrieval_chance(res, a)
            text = "—" if v is None else f"{_fnum(v)} ({_fnum(chance)})"
            cells.append(f'<td class="num">{_e(text)}</td>')
        rows.append(
            f"<tr><td>{_e(_direction(direction))}</td><td class='num'>{res['n']}</td>"
            f"{''.join(cells)}<td class='num'>{_e(_fnum(res['median_rank']))}</td></tr>"
        )
    parts = [f"<h2>Retrieval</h2><table>{head}{''.join(rows)}</table>"]
    for file_name, caption in figures:
        parts.append(
            f'<figure><img src="{_e(file_name)}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)
