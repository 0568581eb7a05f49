"""The self-contained ``report.html`` (inline CSS, figures by relative file name)."""

from __future__ import annotations

import html
from typing import Any

from fmrilm.evaluation.report.figures import _ordered_methods, _slug
from fmrilm.evaluation.report.schema import (
    GROUP_COLORS,
    GROUPS,
    LOWER_IS_BETTER,
    _is_number,
    _label,
    _primary,
    _triple,
)
from fmrilm.evaluation.report.summary import (
    _direction,
    _fmt_metric,
    _fnum,
    _retrieval_chance,
    retrieval_statements,
    task_statements,
)

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
