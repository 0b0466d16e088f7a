"""Numbers and table rows as the report shows them, shared by the Markdown and the HTML.

Texts may hold Markdown's ``**bold**`` and ```code``` marks; the HTML renderer turns
them into tags, so one sentence serves both formats.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autotune.config import TrainConfig, compile_mode


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: 4 significant digits, thousands separated, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def mib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


# Knobs the tables show in one column, each only where it differs from its default.
OTHER_KNOBS = ("cpu_threads", "channels_last", "cudnn_benchmark", "compile", "fp32_precision", "optimizer_impl",
               "expandable_segments", "schedule")


def other_knobs(cfg: dict[str, Any], compile_seconds: float | None = None) -> str:
    """"cpu_threads 4, channels_last, compile (14 s)": the other knobs that are not at their
    default, with the compile time when one was measured."""
    default = TrainConfig()
    parts = []
    for name in OTHER_KNOBS:
        value = cfg.get(name, getattr(default, name))
        value = compile_mode(value) if name == "compile" else value  # reports from when it was a switch
        if value == getattr(default, name):
            continue
        text = name if value is True else f"{name} {value}"
        if name == "compile" and compile_seconds:
            text += f" ({compile_seconds:.1f} s)"
        parts.append(text)
    return ", ".join(parts)


def knobs_text(cfg: dict[str, Any]) -> str:
    """"64 x 2, amp bf16, workers 0, cpu_threads 2": a config in one line."""
    if not cfg:
        return "-"
    main = (f"{cfg.get('micro_batch_size')} x {cfg.get('accumulation_steps')}, amp {cfg.get('amp')}, "
            f"workers {cfg.get('num_workers')}")
    return ", ".join(filter(None, [main, other_knobs(cfg)]))


TRIAL_HEADER = ["#", "state", "micro-batch", "accum", "workers", "amp", "ckpt", "other knobs", "samples/s", "goodput",
                "MFU", "peak memory", "val loss", "val acc", "note"]


def trial_note(t: dict[str, Any], chars: int | None = 120) -> str:
    """Why a trial ended as it did, or what it was for; cut to ``chars`` (None: whole)."""
    roles = {"default": "default config", "recheck": "the same config measured again",
             "warm_start": f"warm start from {t.get('warm_start_from')}"}
    note = t.get("reason") or roles.get(t.get("role"), "")
    if t.get("duplicate_of") is not None:
        note = f"same config as trial {t['duplicate_of']}; not run again"
    return str(note).replace("|", "/")[:chars]


def split_queued(trials: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The trials that ran (or were ruled out), and a sentence about those still queued:
    a new study queues every screening trial at once, and the budget may end first."""
    ran = [t for t in trials if t.get("state") != "waiting"]
    queued = [str(t["number"]) for t in trials if t.get("state") == "waiting"]
    if not queued:
        return ran, ""
    return ran, (f"{len(queued)} more queued trial(s) did not run, as the budget was reached first "
                 f"(numbers {', '.join(queued)}); running the same command with a larger --trials runs them.")


def trial_cells(t: dict[str, Any], note_chars: int | None = 120) -> list[Any]:
    """One trial's row under ``TRIAL_HEADER``."""
    cfg = t.get("config") or {}
    return [
        t["number"],
        t["state"],
        cfg.get("micro_batch_size"),
        cfg.get("accumulation_steps"),
        cfg.get("num_workers"),
        cfg.get("amp"),
        cfg.get("checkpointing"),
        other_knobs(cfg, t.get("compile_seconds")) or "-",
        t.get("throughput_samples_per_s"),
        t.get("goodput_samples_per_s"),
        pct(t.get("mfu")),
        mib(t.get("peak_memory_bytes")),
        t.get("val_loss"),
        t.get("val_accuracy"),
        trial_note(t, note_chars),
    ]


def model_form(data: dict[str, Any]) -> str | None:
    """How the run fed the model, e.g. "called as `model(**batch)`, the target from each
    item's 'labels'"; None for a report written before this was recorded."""
    model = data.get("model") or {}
    if not model.get("calling"):
        return None
    return f"called as `{model['calling']}`, the target from {model.get('target', 'each item')}"


def headline_facts(data: dict[str, Any]) -> list[str]:
    final, sel, ev = data.get("final") or {}, data.get("selection") or {}, data.get("evaluation") or {}
    bits = []
    if final.get("val_accuracy") is not None:
        bits.append(f"validation accuracy **{final['val_accuracy']:.4f}**")
    if ev.get("kind") == "regression":
        bits.append(f"RMSE **{ev['rmse']:.4g}**" + (f", R^2 {ev['r2']:.4f}" if ev.get("r2") is not None else ""))
    if final.get("val_loss") is not None:
        bits.append(f"validation loss {final['val_loss']:.4f}")
    if sel.get("speedup_vs_default"):
        bits.append(f"tuned throughput **{sel['speedup_vs_default']:.2f}x** the default config")
    if sel.get("objective") == "goodput" and sel.get("goodput_vs_default"):
        bits.append(f"goodput {sel['goodput_vs_default']:.2f}x")
    return bits


def hardware_rows(hw: dict[str, Any]) -> list[list[Any]]:
    rows = [
        ["fingerprint", hw.get("fingerprint")],
        ["device", hw.get("device")],
        ["CPU", hw.get("cpu_model")],
        ["logical cores", hw.get("logical_cores")],
        ["memory", mib(hw.get("memory_total_bytes"))],
        ["GPUs", ", ".join(hw.get("gpus") or []) or "none"],
    ]
    if hw.get("nvml"):
        rows.append(["NVML", hw["nvml"]])
    return rows


SPACE_HEADER = ["knob", "searched over", "what it does"]


def space_rows(search: dict[str, Any]) -> list[list[Any]]:
    """One row per knob of the space: its choices (or range) and what it does (the
    ``TrainConfig`` field's reason, as tuned.yaml writes it)."""
    docs = {fl.name: fl.metadata.get("doc", "") for fl in dataclasses.fields(TrainConfig)}
    params = search["space"]["params"]
    return [[k, ", ".join(fmt(c) for c in v["choices"]) if "choices" in v else f"{fmt(v.get('low'))} to {fmt(v.get('high'))}",
             docs.get(k, "")] for k, v in params.items()]


def gated_rows(search: dict[str, Any]) -> list[list[Any]]:
    # JSON object keys are text: a boolean choice reads back as "True"/"False".
    plain = {"True": "true", "False": "false"}
    return [[k, plain.get(c, c), r] for k, d in (search.get("gated") or {}).items() for c, r in d.items()]


def budget_text(search: dict[str, Any]) -> str:
    b = search.get("budget") or {}
    if not b:
        return "not recorded"
    parts = [f"{b.get('n_trials')} measured trials"]
    if b.get("timeout_s"):
        parts.append(f"at most {b['timeout_s']:,.0f} s of search")
    if b.get("prune_below"):
        parts.append(f"a trial below {b['prune_below']:.0%} of the best is stopped early")
    trial = b.get("trial") or {}
    if trial.get("windows") and trial.get("window_s"):
        parts.append(f"each trial timed over {trial['windows']} windows of at least {trial['window_s']} s")
    return "; ".join(parts)


def warm_start_text(warm: dict[str, Any]) -> str:
    return (f"Warm start: {len(warm['seeds'])} config(s) queued from the results of "
            f"`{warm['source_fingerprint']}` (distance {warm['distance']:.2f}, micro-batch scaled "
            f"by the memory ratio {warm['memory_ratio']:.2f}).")


def probe_intro(probe: dict[str, Any]) -> str:
    given = "--memory-limit" if probe.get("limit_given") else "default limit"
    return (f"Largest micro-batch that trains in {mib(probe['limit_bytes'])} ({given}), keeping "
            f"{probe['headroom']:.0%} free; peak memory modelled as intercept + slope x batch:")


PROBE_HEADER = ["amp", "checkpointing", "largest micro-batch", "probes", "intercept", "slope per sample"]


def probe_rows(probe: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, r in probe["pairs"].items():
        amp, ckpt = key.split("/")
        slope = r.get("slope_bytes_per_sample")
        probes = f"0 (as {r['inferred_from']})" if r.get("inferred_from") else r["n_probes"]
        rows.append([amp, ckpt, r["max_batch"], probes, mib(r.get("intercept_bytes")),
                     "-" if slope is None else f"{slope / 2**20:.3f} MiB"])
    return rows


def final_facts(f: dict[str, Any]) -> list[str]:
    """The final run's totals, its MFU and its time to the target, where recorded."""
    facts = [f"{f.get('epochs_run')} epochs in {f['seconds']:.1f} s", f"{fmt(f.get('samples_per_s'))} samples/s",
             f"peak memory {mib(f.get('peak_memory_bytes'))}"]
    if (f.get("processes") or 1) > 1:
        facts.append(f"{f['processes']} processes (DistributedDataParallel)")
    resumed = f.get("resumed_at")
    if resumed:
        facts.append(f"resumed from a checkpoint after {resumed.get('epoch')} epoch(s) and {resumed.get('steps')} steps")
    if f.get("mfu") is not None:
        facts.append(f"MFU {pct(f['mfu'])}")
    ttt = f.get("time_to_target")
    if ttt:
        target = f"{ttt.get('metric')} {fmt(ttt.get('target'))}"
        if ttt.get("seconds") is None:
            facts.append(f"did not reach {target}")
        else:
            epoch = f" (epoch {ttt['epoch']})" if ttt.get("epoch") is not None else ""
            facts.append(f"reached {target} after **{ttt['seconds']:.1f} s**{epoch}")
    return facts


def accounting_facts(f: dict[str, Any]) -> str | None:
    """The final run against the search's prediction, and where its wall time went: a
    paragraph for both renderers; None when the run recorded no accounting."""
    a = f.get("accounting")
    if not a:
        return None
    sec = a["seconds"]
    text = ""
    if a.get("ratio") is not None:
        text = (f"Predicted against achieved: the selection measured {fmt(a['selected_samples_per_s'])} samples/s "
                f"for this config; the final run's training steps achieved {fmt(a['achieved_samples_per_s'])} "
                f"(**{a['ratio']:.2f}x**). ")
    spent = [f"{label} {sec[key]:.1f} s" for key, label in (
        ("training", "training steps"), ("data_wait", "of which waiting for data"), ("epoch_start", "epoch starts"),
        ("evaluation", "evaluation"), ("checkpoints", "checkpoints"), ("compile", "compile"), ("setup", "setup"),
        ("other", "other")) if sec.get(key, 0) >= 0.05 or key == "training"]
    text += f"Of its {sec['total']:.1f} s: " + ", ".join(spent) + (
        f"; {fmt(a['end_to_end_samples_per_s'])} samples/s end to end.")
    if a.get("gap"):
        text += f" **The training steps ran more than 15% off the prediction**; likely cause: {a['gap']}."
    return text


HISTORY_HEADER = ["epoch", "train loss", "val loss", "val acc", "lr", "samples/s", "seconds"]


def history_rows(f: dict[str, Any]) -> list[list[Any]]:
    return [[r["epoch"], r["train_loss"], r.get("val_loss"), r.get("val_accuracy"), r["lr"], r.get("samples_per_s"),
             r["seconds"]] for r in f.get("history", [])]
