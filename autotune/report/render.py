"""Render the report data (one dict) as JSON and as Markdown.

The data model is built by ``autotune.pipeline``; its sections are all optional except
``model`` and ``config``, so a plain ``autotune train`` (no search) renders too:

- model: {file, sha256}
- hardware: {fingerprint, device, cpu_model, logical_cores, memory_total_bytes, gpus, nvml}
- search: {space, gated, budget, trials: [...], best_trial, default_trial}
- selection: {objective, picked, candidates: [{trial, config, values, throughputs,
  median}], default: {...}, throughput_samples_per_s, goodput_samples_per_s, mfu,
  statistical_efficiency, speedup_vs_default, goodput_vs_default, gradient_noise_scale}
- config: the TrainConfig used for the final run
- final: {history: [...], seconds, samples_per_s, peak_memory_bytes, val_loss, val_accuracy}
- evaluation: classification metrics (see ``evaluate.classification_metrics``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotune.config import TrainConfig, write_atomic

REPORT_SCHEMA_VERSION = 1


def write_report(data: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json and report.md into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    data = {"schema_version": REPORT_SCHEMA_VERSION, **data}
    return {
        "json": write_atomic(out / "report.json", json.dumps(data, indent=2, default=str) + "\n"),
        "markdown": write_atomic(out / "report.md", render_markdown(data)),
    }


def render_markdown(data: dict[str, Any]) -> str:
    parts = [f"# autotune report: {Path(data['model']['file']).name}\n"]
    parts.append(_headline(data))
    for section in (_hardware, _search, _selection, _config, _final, _evaluation):
        text = section(data)
        if text:
            parts.append(text)
    return "\n".join(parts)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _headline(data: dict[str, Any]) -> str:
    final, sel = data.get("final", {}), data.get("selection", {})
    bits = []
    if final.get("val_accuracy") is not None:
        bits.append(f"validation accuracy **{final['val_accuracy']:.4f}**")
    if final.get("val_loss") is not None:
        bits.append(f"validation loss {final['val_loss']:.4f}")
    if sel.get("speedup_vs_default"):
        bits.append(f"tuned throughput **{sel['speedup_vs_default']:.2f}x** the default config")
    if sel.get("objective") == "goodput" and sel.get("goodput_vs_default"):
        bits.append(f"goodput {sel['goodput_vs_default']:.2f}x")
    return ("Result: " + ", ".join(bits) + ".\n") if bits else ""


def _hardware(data: dict[str, Any]) -> str:
    hw = data.get("hardware")
    if not hw:
        return ""
    rows = [
        ["fingerprint", hw.get("fingerprint")],
        ["device", hw.get("device")],
        ["CPU", hw.get("cpu_model")],
        ["logical cores", hw.get("logical_cores")],
        ["memory", _mib(hw.get("memory_total_bytes"))],
        ["GPUs", ", ".join(hw.get("gpus") or []) or "none"],
    ]
    if hw.get("nvml"):
        rows.append(["NVML", hw["nvml"]])
    return "## Hardware\n\n" + _table(["", ""], rows)


def _search(data: dict[str, Any]) -> str:
    s = data.get("search")
    if not s:
        return ""
    out = [f"## Search\n\nSpace `{s['space']['name']}`; budget: {s.get('budget')}.\n"]
    params = [[k, v.get("choices", f"[{v.get('low')}, {v.get('high')}]")] for k, v in s["space"]["params"].items()]
    out.append(_table(["knob", "searched over"], params))
    gated = [[k, c, r] for k, d in (s.get("gated") or {}).items() for c, r in d.items()]
    if gated:
        out.append("Ruled out on this machine or model:\n\n" + _table(["knob", "choice", "why"], gated))
    warm = s.get("warm_start")
    if warm:
        out.append(
            f"Warm start: {len(warm['seeds'])} config(s) queued from the results of "
            f"`{warm['source_fingerprint']}` (distance {warm['distance']:.2f}, micro-batch scaled "
            f"by the memory ratio {warm['memory_ratio']:.2f}).\n"
        )
    probe = s.get("memory_probe")
    if probe:
        out.append(_probe_table(probe))
    rows = [_trial_row(t) for t in s.get("trials", [])]
    header = ["#", "state", "micro-batch", "accum", "workers", "amp", "ckpt", "other knobs", "samples/s", "goodput",
              "MFU", "peak memory", "val acc", "note"]
    out.append(f"Trials ({len(rows)}):\n\n" + _table(header, rows))
    return "\n".join(out)


def _probe_table(probe: dict[str, Any]) -> str:
    given = "--memory-limit" if probe.get("limit_given") else "default limit"
    text = (
        f"Largest micro-batch that trains in {_mib(probe['limit_bytes'])} ({given}), keeping "
        f"{probe['headroom']:.0%} free; peak memory modelled as intercept + slope x batch:\n\n"
    )
    rows = []
    for key, r in probe["pairs"].items():
        amp, ckpt = key.split("/")
        slope = r.get("slope_bytes_per_sample")
        probes = f"0 (as {r['inferred_from']})" if r.get("inferred_from") else r["n_probes"]
        rows.append([amp, ckpt, r["max_batch"], probes, _mib(r.get("intercept_bytes")),
                     "-" if slope is None else f"{slope / 2**20:.3f} MiB"])
    return text + _table(["amp", "checkpointing", "largest micro-batch", "probes", "intercept", "slope per sample"], rows)


def _trial_row(t: dict[str, Any]) -> list[Any]:
    cfg = t.get("config") or {}
    roles = {"default": "default config", "warm_start": f"warm start from {t.get('warm_start_from')}"}
    note = t.get("reason") or roles.get(t.get("role"), "")
    if t.get("duplicate_of") is not None:
        note = f"same config as trial {t['duplicate_of']}; not run again"
    return [
        t["number"],
        t["state"],
        cfg.get("micro_batch_size"),
        cfg.get("accumulation_steps"),
        cfg.get("num_workers"),
        cfg.get("amp"),
        cfg.get("checkpointing"),
        _other_knobs(cfg, t.get("compile_seconds")) or "-",
        t.get("throughput_samples_per_s"),
        t.get("goodput_samples_per_s"),
        _pct(t.get("mfu")),
        _mib(t.get("peak_memory_bytes")),
        t.get("val_accuracy"),
        str(note).replace("|", "/")[:120],
    ]


# Knobs the tables show in one column, each only where it differs from its default.
_OTHER_KNOBS = ("cpu_threads", "channels_last", "cudnn_benchmark", "compile", "schedule")


def _other_knobs(cfg: dict[str, Any], compile_seconds: float | None = None) -> str:
    """"cpu_threads 4, channels_last, compile (14 s)": the other knobs that are not at their
    default, with the compile time when one was measured."""
    default = TrainConfig()
    parts = []
    for name in _OTHER_KNOBS:
        value = cfg.get(name, getattr(default, name))
        if value == getattr(default, name):
            continue
        text = name if value is True else f"{name} {value}"
        if name == "compile" and compile_seconds:
            text += f" ({compile_seconds:.1f} s)"
        parts.append(text)
    return ", ".join(parts)


def _selection(data: dict[str, Any]) -> str:
    sel = data.get("selection")
    if not sel:
        return ""
    objective = sel.get("objective", "throughput")
    rows = []
    for c in sel.get("candidates", []) + ([sel["default"]] if sel["default"].get("trial") is None else []):
        cfg = c["config"]
        label = f"trial {c['trial']}" if c.get("trial") is not None else "default (not a trial)"
        if (c.get("trial") is None and sel.get("picked_default")) or (c.get("trial") is not None and c["trial"] == sel.get("picked")):
            label += " **picked**"
        knobs = f"{cfg['micro_batch_size']} x {cfg['accumulation_steps']}, amp {cfg['amp']}, workers {cfg['num_workers']}"
        knobs = ", ".join(filter(None, [knobs, _other_knobs(cfg)]))
        rows.append([label, knobs, c.get("trial_value"), c.get("median"), ", ".join(f"{v:,.0f}" for v in c.get("values", []))])
    text = (
        f"## Selection\n\nThe best {len(sel.get('candidates', []))} trials and the default config re-measured in turns "
        f"(fresh processes), picked on the median {objective} (samples/s)"
        + (f"; after {sel['rounds']} rounds, those within {sel['margin']:.0%} of the best median got more rounds, "
           f"up to {sel['max_rounds']}" if sel.get("max_rounds", 0) > sel.get("rounds", 0) else "")
        + ":\n\n"
    )
    text += _table(["config", "knobs", f"trial {objective}", f"median {objective}", "runs"], rows)
    facts = []
    if sel.get("speedup_vs_default"):
        facts.append(f"throughput **{sel['speedup_vs_default']:.2f}x** the default's")
    if sel.get("goodput_vs_default"):
        facts.append(f"goodput {sel['goodput_vs_default']:.2f}x")
    if sel.get("mfu") is not None:
        facts.append(f"MFU {_pct(sel['mfu'])}")
    if sel.get("gradient_noise_scale"):
        facts.append(f"gradient noise scale {sel['gradient_noise_scale']:,.0f}, "
                     f"statistical efficiency {sel.get('statistical_efficiency', 1):.2f}")
    if facts:
        text += "\nPicked config: " + "; ".join(facts) + ".\n"
    return text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _config(data: dict[str, Any]) -> str:
    cfg = data.get("config")
    if not cfg:
        return ""
    return "## Config used for the final run\n\n" + _table(["knob", "value"], [[k, v] for k, v in cfg.items()])


def _final(data: dict[str, Any]) -> str:
    f = data.get("final")
    if not f:
        return ""
    text = (
        f"## Final training\n\n{f.get('epochs_run')} epochs in {f['seconds']:.1f} s, "
        f"{_fmt(f.get('samples_per_s'))} samples/s, peak memory {_mib(f.get('peak_memory_bytes'))}.\n\n"
    )
    header = ["epoch", "train loss", "val loss", "val acc", "lr", "samples/s", "seconds"]
    rows = [
        [r["epoch"], r["train_loss"], r.get("val_loss"), r.get("val_accuracy"), r["lr"], r.get("samples_per_s"), r["seconds"]]
        for r in f.get("history", [])
    ]
    return text + _table(header, rows)


def _evaluation(data: dict[str, Any]) -> str:
    ev = data.get("evaluation")
    if not ev:
        return ""
    text = f"## Evaluation on the validation set ({ev['samples']} samples)\n\n"
    text += "scikit-learn `classification_report`:\n\n```\n" + ev["report_text"].rstrip() + "\n```\n\n"
    labels = ev["labels"]
    rows = [[f"**{labels[i]}**", *row] for i, row in enumerate(ev["confusion_matrix"])]
    text += "Confusion matrix (rows: true class, columns: predicted):\n\n"
    text += _table(["true \\ pred", *labels], rows)
    return text
