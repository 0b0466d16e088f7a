"""``autotune compare``'s output: the data ``compare.compare`` builds as an aligned
plain-text table, a Markdown table or JSON. Bytes show as GiB, bytes/s as GB/s, missing
values as "-"."""

from __future__ import annotations

import json
import math
from typing import Any

_GIB = 1024**3
_MISSING = "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def format_value(value: Any, unit: str | None) -> str:
    """A value for the table: bytes as GiB, bytes/s as GB/s, "-" where missing."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _is_number(value):
        return str(value)
    if unit == "bytes":
        gib = value / _GIB
        return f"{gib:.1f} GiB" if gib >= 1 else f"{gib:.2g} GiB"
    if unit == "bytes/s":
        return f"{value / 1e9:.1f} GB/s"
    return f"{_number(value)} {unit or ''}".rstrip()


def format_ratio(ratio: float) -> str:
    """"0.52x"; small ratios keep two significant digits ("0.0036x")."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _cells(row: dict[str, Any]) -> list[str]:
    """The row's name, then per profile its value, with "(ratio)" after all but the first."""
    cells = [row["name"]]
    for i, value in enumerate(row["values"]):
        text = format_value(value, row["unit"])
        ratio = row["ratios"][i] if row["ratios"] else None
        cells.append(text if i == 0 or ratio is None else f"{text} ({format_ratio(ratio)})")
    return cells


def _tuned_title(model: dict[str, Any]) -> str:
    on = ", ".join(f"[{i}]" for i in model["tuned_on"])
    title = f"Tuned: {model['model']}"
    if model["only_one"]:
        return f"{title} (only on {on}: nothing to compare it with)"
    note = "" if model["same_model_file"] else "; the model files differ (sha256)"
    return f"{title} (on {on}{note})"


def _blocks(data: dict[str, Any]) -> list[tuple[str, list[list[str]]]]:
    """(title, rows of cells) per section, shared by the text and Markdown renderers."""
    blocks = [
        ("Specs", [_cells(r) for r in data["specs"]]),
        ("Measured", [_cells(r) for r in data["measured"]]),
    ]
    blocks += [(_tuned_title(m), [_cells(r) for r in m["rows"]]) for m in data["tuned"]]
    if not data["tuned"]:
        blocks.append(("Tuned: no model was tuned on these machines", []))
    return blocks


def _legend(data: dict[str, Any]) -> list[str]:
    return [f"[{p['index']}] {p['label']}" for p in data["profiles"]]


def render_text(data: dict[str, Any]) -> str:
    """An aligned plain-text table for the terminal."""
    blocks = _blocks(data)
    header = [""] + [f"[{p['index']}]" for p in data["profiles"]]
    rows = [header] + [["  " + cells[0], *cells[1:]] for _, block in blocks for cells in block]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    n = len(data["profiles"])
    out = [f"autotune compare: {n} profiles, ratios to [1]"]
    out += ["  " + text for text in _legend(data)]
    out += ["", line(header)]
    for title, block in blocks:
        out.append(title)
        out += [line(["  " + cells[0], *cells[1:]]) for cells in block]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(data: dict[str, Any]) -> str:
    """A Markdown table (one row per spec, peak or knob; section titles in bold)."""
    n = len(data["profiles"])
    out = [f"**autotune compare**: {n} profiles, ratios to [1]", ""]
    out += [f"- {_md(text)}" for text in _legend(data)] + [""]
    out.append("| | " + " | ".join(f"[{p['index']}]" for p in data["profiles"]) + " |")
    out.append("|" + " --- |" * (n + 1))
    for title, block in _blocks(data):
        out.append(f"| **{_md(title)}** |" + " |" * n)
        out += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in block]
    return "\n".join(out) + "\n"


def render_json(data: dict[str, Any]) -> str:
    """The data as JSON: raw values in their units, ratios as numbers (null where none)."""
    return json.dumps(data, indent=2, default=str) + "\n"
