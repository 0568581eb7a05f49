"""The PNG figures of a report (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np

from fmrilm.evaluation.report.schema import GROUP_COLORS, GROUPS, _chance, _label, _primary, _triple
from fmrilm.evaluation.report.summary import _direction, _fnum
from fmrilm.io import atomic_path


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
