"""An evaluation report a person can read: ``metrics.json``, PNG figures and ``report.html``.

:func:`write_report` validates one metrics dict (:mod:`.schema`, which documents the schema),
writes it unchanged to ``metrics.json``, draws the figures (:mod:`.figures`) and writes a
self-contained ``report.html`` (:mod:`.html`: inline CSS, figures referenced by relative file
name, so the folder can be moved or zipped as a whole). :func:`method_entry` turns the output of
:func:`~fmrilm.evaluation.metrics.score_classifier`, ``score`` or a baseline into one method of
the schema; :func:`summary_lines` (:mod:`.summary`) is the plain-text summary for a terminal.
"""

from __future__ import annotations

from pathlib import Path

from fmrilm.evaluation.report.figures import _write_figures
from fmrilm.evaluation.report.html import _render_html
from fmrilm.evaluation.report.schema import (
    DEFAULT_PRIMARY,
    GROUP_COLORS,
    GROUPS,
    LOWER_IS_BETTER,
    METRIC_LABELS,
    method_entry,
    validate_metrics,
)
from fmrilm.evaluation.report.summary import retrieval_statements, summary_lines, task_statements
from fmrilm.io import write_json, write_text

__all__ = [
    "DEFAULT_PRIMARY",
    "GROUPS",
    "GROUP_COLORS",
    "LOWER_IS_BETTER",
    "METRIC_LABELS",
    "method_entry",
    "retrieval_statements",
    "summary_lines",
    "task_statements",
    "validate_metrics",
    "write_report",
]


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
