"""Plain-text summary of a report: per-task lines and the comparison sentences."""

from __future__ import annotations

from typing import Any

from fmrilm.evaluation.report.schema import (
    LOWER_IS_BETTER,
    _best,
    _chance,
    _is_int,
    _label,
    _primary,
    _triple,
)


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
