"""The report as one self-contained HTML file.

Everything is inside the file: the style sheet inline, the figures as base64 PNG images
(``data:`` URLs), no scripts, no links to other files or sites, no web fonts. It opens
the same offline, from an e-mail attachment or from a CI artifact. A figure that cannot
be drawn is replaced by a line saying why; the rest of the report still renders.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

from autotune.report import figures
from autotune.report import format as f
from autotune.report.analysis import pareto_front, trial_points
from autotune.report.tables import (Table, classification_table, effects_table, importance_table, pareto_table,
                                    regression_table, selection_table)


class Section(NamedTuple):
    id: str
    title: str
    body: str


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; padding-bottom: 0.2em; border-bottom: 1px solid #ddd; }
.headline { font-size: 1.1em; background: #eef5ff; border-left: 4px solid #1f77b4; padding: 10px 14px; }
.card { border: 2px solid #1f77b4; border-radius: 6px; margin: 12px 0; width: auto; } .card th { text-align: left; padding: 6px 12px; white-space: nowrap; vertical-align: top; } .card td { padding: 6px 12px; }
nav ol { columns: 3; font-size: 0.92em; padding-left: 1.4em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nw { white-space: nowrap; }
table.kv th { background: none; font-weight: 600; }
table.trials { font-size: 0.8em; } table.trials td:last-child { min-width: 14em; }
tr.fail td { background: #fdecec; } tr.pruned td { color: #777; } tr.picked td { background: #eaf7ea; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; }
.warn { color: #b00020; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
.muted { color: #666; font-size: 0.9em; }
"""


def render_html(data: dict[str, Any]) -> str:
    name = Path(data["model"]["file"]).name
    sections = [s for s in (build(data) for build in _SECTIONS) if s is not None]
    nav = "".join(f'<li><a href="#{s.id}">{_esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(f'<section id="{s.id}">\n<h2>{_esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    facts = f.headline_facts(data)
    headline = f'<p class="headline" id="headline">Result: {_inline(", ".join(facts))}.</p>' if facts else ""
    card = f.summary_card(data)
    if card:
        rows = "".join(f"<tr><th>{_esc(label)}</th><td>{_inline(text)}</td></tr>" for label, text in card)
        headline = f'<table class="card" id="summary"><tbody>{rows}</tbody></table>\n' + headline
    meta = f"Model file <code>{_esc(data['model']['file'])}</code>"
    if f.model_form(data):
        meta += ", " + _inline(f.model_form(data))
    if data.get("created"):
        meta += f", report written {_esc(data['created'])}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>autotune report: {_esc(name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>autotune report: {_esc(name)}</h1>\n<p class=\"muted\">{meta}.</p>\n{headline}\n"
        f"<nav><ol>{nav}</ol></nav>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    """Escape ``text`` and turn its Markdown ``**bold**`` and ```code``` into tags."""
    out = _esc(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


# A number as the tables show it: "1,328", "0.9944", "2.7e-05", "1.50x", "30.58%", "340 MiB".
_NUMBER = re.compile(r"^-?[\d,]*\.?\d+(e[-+]?\d+)?( ?(x|%|MiB|s))?$")


def _numeric_columns(rows: list[list[Any]], width: int) -> list[bool]:
    """Columns whose cells are all numbers (or missing), to be right-aligned."""
    texts = [[f.fmt(c) for c in row] for row in rows]
    return [bool(rows) and all(i >= len(t) or t[i] == "-" or bool(_NUMBER.match(t[i])) for t in texts) for i in range(width)]


def _cell(value: Any, numeric: bool) -> str:
    text = f.fmt(value)
    classes = [c for c, on in (("num", numeric), ("nw", len(text) <= 32)) if on]
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}>{_inline(text)}</td>"


def _table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None, cls: str = "") -> str:
    numeric = _numeric_columns(rows, len(header))
    head = "".join(("<th class=\"num\">" if numeric[i] else "<th>") + f"{_esc(h)}</th>" for i, h in enumerate(header))
    lines = []
    for k, row in enumerate(rows):
        row_cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        lines.append(f"<tr{row_cls}>" + "".join(_cell(c, numeric[i]) for i, c in enumerate(row)) + "</tr>")
    table_cls = f' class="{cls}"' if cls else ""
    return (f'<div class="scroll"><table{table_cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(lines)
            + "\n</tbody></table></div>")


def _kv_table(rows: list[list[Any]]) -> str:
    """A two-column table of names and values, without a header."""
    lines = [f'<tr><th scope="row">{_esc(k)}</th><td>{_inline(f.fmt(v))}</td></tr>' for k, v in rows]
    return '<div class="scroll"><table class="kv"><tbody>\n' + "\n".join(lines) + "\n</tbody></table></div>"


def _para(text: str) -> str:
    return f"<p>{_inline(text)}</p>" if text else ""


def _from_table(table: Table) -> str:
    body = _para(table.intro)
    if table.rows:
        body += "\n" + _table(table.header, table.rows)
    return body + _para(table.outro)


def _figure(fig_id: str, caption: str, draw: Callable[[], bytes]) -> str:
    """An embedded PNG, or a line saying why it could not be drawn."""
    try:
        png = draw()
    except Exception as exc:  # a broken figure must not cost the whole report
        return f'<p class="warn" id="{fig_id}-error">The figure "{_esc(caption)}" could not be drawn: {_esc(exc)}</p>'
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure id="{fig_id}"><img src="{src}" alt="{_esc(caption)}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def _hardware(data: dict[str, Any]) -> Section | None:
    hw = data.get("hardware")
    return Section("hardware", "Hardware", _kv_table(f.hardware_rows(hw))) if hw else None


def _search(data: dict[str, Any]) -> Section | None:
    s = data.get("search")
    if not s:
        return None
    body = [_para(f"Space `{s['space']['name']}`; budget: {f.budget_text(s)}."),
            _table(f.SPACE_HEADER, f.space_rows(s))]
    gated = f.gated_rows(s)
    if gated:
        body += [_para("Ruled out on this machine or model:"), _table(["knob", "choice", "why"], gated)]
    if s.get("warm_start"):
        body.append(_para(f.warm_start_text(s["warm_start"])))
    return Section("search", "Search space and budget", "\n".join(body))


def _probe(data: dict[str, Any]) -> Section | None:
    probe = (data.get("search") or {}).get("memory_probe")
    if not probe:
        return None
    return Section("probe", "Memory probe", _para(f.probe_intro(probe)) + _table(f.PROBE_HEADER, f.probe_rows(probe)))


def _trials(data: dict[str, Any]) -> Section | None:
    trials = (data.get("search") or {}).get("trials")
    if trials is None:
        return None
    picked = (data.get("selection") or {}).get("picked")
    ran, queued = f.split_queued(trials)
    classes = ["picked" if t["number"] == picked else str(t.get("state", "")) for t in ran]
    body = _table(f.TRIAL_HEADER, [f.trial_cells(t, note_chars=None) for t in ran], classes, cls="trials")
    objective = (data.get("search") or {}).get("objective", "throughput")
    if any(t.get("value") is not None for t in ran):
        body = _figure("fig-history", f"The search over time: each trial's {objective} by trial and by the trials' "
                       "own seconds, the best so far in orange.", lambda: figures.history(ran, objective)) + body
    return Section("trials", f"Trials ({len(ran)})", body + "".join(_para(p) for p in queued.split("\n\n") if p))


def _pareto(data: dict[str, Any]) -> Section | None:
    search, sel = data.get("search") or {}, data.get("selection") or {}
    table = pareto_table(search)
    if table is None:
        return None
    points = trial_points(search["trials"])
    front = pareto_front([(t["throughput_samples_per_s"], t["val_loss"]) for t in points])
    default = next((t["number"] for t in search["trials"] if t.get("role") == "default"), None)
    fig = _figure("fig-pareto", "Throughput against the trial's validation loss; the Pareto front in orange.",
                  lambda: figures.pareto(points, front, sel.get("picked"), default))
    return Section("pareto", "Throughput and validation loss: the Pareto front", _para(table.intro) + fig
                   + _table(table.header, table.rows))


def _importances(data: dict[str, Any]) -> Section | None:
    search = data.get("search") or {}
    table = importance_table(search)
    if table is None:
        return None
    body = _from_table(table)
    if table.rows:
        values = search["param_importances"]["importances"]
        body = _para(table.intro) + _figure("fig-importances", "Parameter importances (Optuna).",
                                            lambda: figures.importances(values)) + _para(table.outro)
    return Section("importances", "Parameter importances", body)


def _effects(data: dict[str, Any]) -> Section | None:
    search = data.get("search") or {}
    table = effects_table(search)
    if table is None:
        return None
    body = _from_table(table)
    if table.rows:
        body = (_para(table.intro) + _figure("fig-knob-effects", "Each screened choice relative to the default config.",
                                             lambda: figures.knob_effects(search["knob_effects"]))
                + _table(table.header, table.rows))
    return Section("knob-effects", "Measured effect of each knob on this hardware", body)


def _selection(data: dict[str, Any]) -> Section | None:
    table = selection_table(data.get("selection") or {})
    return Section("selection", "Selection", _from_table(table)) if table else None


def _config(data: dict[str, Any]) -> Section | None:
    cfg = data.get("config")
    if not cfg:
        return None
    return Section("config", "Config used for the final run", _kv_table([[k, v] for k, v in cfg.items()]))


def _final(data: dict[str, Any]) -> Section | None:
    final = data.get("final")
    if not final:
        return None
    body = _para(", ".join(f.final_facts(final)) + ".")
    if f.accounting_facts(final):
        body += _para(f.accounting_facts(final))
    if final.get("history"):
        body += _figure("fig-training-curves", "The final run per epoch.",
                        lambda: figures.training_curves(final["history"]))
    body += _table(f.HISTORY_HEADER, f.history_rows(final))
    return Section("final", "Final training", body)


def _evaluation(data: dict[str, Any]) -> Section | None:
    ev = data.get("evaluation")
    if not ev:
        return None
    if ev.get("kind") == "regression":
        return Section("evaluation", "Evaluation on the validation set", _from_table(regression_table(ev)))
    body = _from_table(classification_table(ev))
    body += _figure("fig-confusion-matrix", "Confusion matrix: rows are the true class, columns the prediction.",
                    lambda: figures.confusion_matrix(ev["labels"], ev["confusion_matrix"]))
    rows = [[f"**{ev['labels'][i]}**", *row] for i, row in enumerate(ev["confusion_matrix"])]
    body += "<details><summary>Confusion matrix as numbers</summary>" + _table(["true \\ pred", *ev["labels"]], rows) + "</details>"
    return Section("evaluation", "Evaluation on the validation set", body)


_SECTIONS = (_hardware, _search, _probe, _trials, _pareto, _importances, _effects, _selection, _config, _final,
             _evaluation)
