"""Render the report data (one dict) as JSON, Markdown and HTML.

The data model is built by ``autotune.workflow.pipeline``; its sections are all optional except
``model`` and ``config``, so a plain ``autotune train`` (no search) renders too. The JSON
Schema ``report.schema.json`` (next to this module) documents every key:

- model: {file, sha256}
- hardware: {fingerprint, device, cpu_model, logical_cores, memory_total_bytes, gpus, nvml}
- search: {space, gated, budget, objective, trials: [...], param_importances, knob_effects}
- selection: {objective, picked, candidates: [{trial, config, values, throughputs,
  median}], default: {...}, throughput_samples_per_s, goodput_samples_per_s, mfu,
  statistical_efficiency, speedup_vs_default, goodput_vs_default, gradient_noise_scale}
- config: the TrainConfig used for the final run
- final: {history: [...], seconds, samples_per_s, peak_memory_bytes, val_loss, val_accuracy,
  and where measured mfu and time_to_target}
- evaluation: classification or regression metrics (``evaluate.evaluation_metrics``)

report.md and report.html are rendered from the data as it reads back from report.json,
so ``autotune report RUN_DIR`` (``rerender``) writes the same files again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotune.config import write_atomic
from autotune.errors import ConfigError
from autotune.report import format as f
from autotune.report.tables import (Table, effects_table, importance_table, pareto_table,
                                    regression_table, selection_table)

REPORT_SCHEMA_VERSION = 2
# Versions ``rerender`` reads: version 1 lacked the search analysis and the evaluation's kind.
READABLE_VERSIONS = (1, 2)
JSON_FILE, MARKDOWN_FILE, HTML_FILE = "report.json", "report.md", "report.html"


def write_report(data: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    text = json.dumps({"schema_version": REPORT_SCHEMA_VERSION, **data}, indent=2, default=str) + "\n"
    paths = {"json": write_atomic(out / JSON_FILE, text)}
    paths.update(_write_rendered(json.loads(text), out))
    return paths


def _write_rendered(data: dict[str, Any], out: Path) -> dict[str, Path]:
    from autotune.report.html import render_html

    return {
        "markdown": write_atomic(out / MARKDOWN_FILE, render_markdown(data)),
        "html": write_atomic(out / HTML_FILE, render_html(data)),
    }


def rerender(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md and report.html again from ``run_dir``/report.json (no training)."""
    path = Path(run_dir) / JSON_FILE
    hint = "Give the run directory that `autotune run` or `autotune train` wrote (it holds report.json)."
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such run directory.", hint=hint)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file.", hint=hint)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}.", hint=hint) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, but got {type(data).__name__}.", hint=hint)
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(f"{path}: schema_version {version!r} is not supported; this autotune reads schema_version "
                          f"{', '.join(map(str, READABLE_VERSIONS))}.", hint="Re-render it with the autotune that wrote it.")
    missing = [k for k in ("model", "config") if not isinstance(data.get(k), dict)]
    if missing or "file" not in data["model"]:
        what = ", ".join(missing) if missing else "model.file"
        raise ConfigError(f"{path} lacks {what}, which every report has.", hint=hint)
    return _write_rendered(data, Path(run_dir))


def render_markdown(data: dict[str, Any]) -> str:
    parts = [f"# autotune report: {Path(data['model']['file']).name}\n"]
    if f.model_form(data):
        parts.append(f"The model is {f.model_form(data)}.\n")
    card = f.summary_card(data)
    if card:
        parts.append("## Summary\n\n" + _table(["", ""], [[label, text] for label, text in card]))
    facts = f.headline_facts(data)
    if facts:
        parts.append("Result: " + ", ".join(facts) + ".\n")
    if data.get("search") or data.get("final"):
        parts.append(f"Figures of the sections below are in `{HTML_FILE}` next to this file.\n")
    for section in (_hardware, _search, _trials, _analysis, _selection, _config, _final, _evaluation):
        text = section(data)
        if text:
            parts.append(text)
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f.fmt(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _section(title: str, table: Table | None) -> str:
    if table is None:
        return ""
    text = f"## {title}\n\n{table.intro}\n"
    if table.rows:
        text += "\n" + _table(table.header, table.rows)
    if table.outro:
        text += f"\n{table.outro}\n"
    return text


def _hardware(data: dict[str, Any]) -> str:
    hw = data.get("hardware")
    return "## Hardware\n\n" + _table(["", ""], f.hardware_rows(hw)) if hw else ""


def _search(data: dict[str, Any]) -> str:
    s = data.get("search")
    if not s:
        return ""
    out = [f"## Search\n\nSpace `{s['space']['name']}`; budget: {f.budget_text(s)}.\n", _table(f.SPACE_HEADER, f.space_rows(s))]
    gated = f.gated_rows(s)
    if gated:
        out.append("Ruled out on this machine or model:\n\n" + _table(["knob", "choice", "why"], gated))
    if s.get("warm_start"):
        out.append(f.warm_start_text(s["warm_start"]) + "\n")
    probe = s.get("memory_probe")
    if probe:
        out.append(f.probe_intro(probe) + "\n\n" + _table(f.PROBE_HEADER, f.probe_rows(probe)))
    return "\n".join(out)


def _trials(data: dict[str, Any]) -> str:
    trials = (data.get("search") or {}).get("trials")
    if trials is None:
        return ""
    ran, queued = f.split_queued(trials)
    text = f"## Trials ({len(ran)})\n\n" + _table(f.TRIAL_HEADER, [f.trial_cells(t) for t in ran])
    return text + (f"\n{queued}\n" if queued else "")


def _analysis(data: dict[str, Any]) -> str:
    s = data.get("search") or {}
    parts = [
        _section("Throughput and validation loss: the Pareto front", pareto_table(s)),
        _section("Parameter importances", importance_table(s)),
        _section("Measured effect of each knob on this hardware", effects_table(s)),
    ]
    return "\n".join(p for p in parts if p)


def _selection(data: dict[str, Any]) -> str:
    return _section("Selection", selection_table(data.get("selection") or {}))


def _config(data: dict[str, Any]) -> str:
    cfg = data.get("config")
    if not cfg:
        return ""
    return "## Config used for the final run\n\n" + _table(["knob", "value"], [[k, v] for k, v in cfg.items()])


def _final(data: dict[str, Any]) -> str:
    final = data.get("final")
    if not final:
        return ""
    text = "## Final training\n\n" + ", ".join(f.final_facts(final)) + ".\n\n"
    if f.accounting_facts(final):
        text += f.accounting_facts(final) + "\n\n"
    return text + _table(f.HISTORY_HEADER, f.history_rows(final))


def _evaluation(data: dict[str, Any]) -> str:
    ev = data.get("evaluation")
    if not ev:
        return ""
    if ev.get("kind") == "regression":
        return _section("Evaluation on the validation set", regression_table(ev))
    text = f"## Evaluation on the validation set ({ev['samples']} samples)\n\n"
    text += "scikit-learn `classification_report`:\n\n```\n" + ev["report_text"].rstrip() + "\n```\n\n"
    labels = ev["labels"]
    rows = [[f"**{labels[i]}**", *row] for i, row in enumerate(ev["confusion_matrix"])]
    text += "Confusion matrix (rows: true class, columns: predicted):\n\n"
    text += _table(["true \\ pred", *labels], rows)
    return text


def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, shipped with the package (report.schema.json)."""
    from importlib import resources

    return json.loads(resources.files("autotune.report").joinpath("report.schema.json").read_text())
