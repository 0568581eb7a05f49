"""One scan's corpus entry as text (what ``fmrilm corpus show`` prints)."""

from __future__ import annotations

from typing import Any


def format_value(value: Any) -> str:
    """A descriptor value as shown: floats to 4 significant digits, lists comma-separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def format_record(scan_id: str, record: dict, texts: list[str]) -> str:
    """A scan's descriptor record, grouped by family (value, unit, z-score), then its texts."""
    lines = [f"scan {scan_id}", ""]
    family = None
    for name, d in record.items():
        if d["family"] != family:
            family = d["family"]
            lines.append(f"[{family}]")
        z = "" if d.get("z") is None else f"  z={d['z']:+.2f}"
        lines.append(f"  {name:<42} {format_value(d['value'])} {d['unit']}{z}")
    lines.append("")
    for i, t in enumerate(texts, 1):
        lines.append(f"text {i}: {t}")
    return "\n".join(lines)
