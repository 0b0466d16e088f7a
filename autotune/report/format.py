"""Numbers and table rows as the report shows them, shared by the Markdown and the HTML.

Texts may hold Markdown's ``**bold**`` and ```code``` marks; the HTML renderer turns
them into tags, so one sentence serves both formats.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autotune.config import TUNED_KNOBS, TrainConfig, compile_mode


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
    """The trials that ran, and sentences about the rest: configs ruled out without
    running (counted, with their reasons, not mixed into the table), proposals answered
    from an earlier trial of the same config, and trials still queued (a new study queues
    every screening trial at once, and the budget may end first)."""
    unrun = {"infeasible": [], "duplicate": []}
    ran, queued = [], []
    for t in trials:
        if t.get("state") == "waiting":
            queued.append(str(t["number"]))
        elif t.get("status") in unrun:
            unrun[t["status"]].append(t)
        else:
            ran.append(t)
    notes = []
    if unrun["infeasible"]:
        reasons: dict[str, list[str]] = {}
        for t in unrun["infeasible"]:
            reasons.setdefault(str(t.get("reason") or "no reason recorded"), []).append(str(t["number"]))
        notes.append(f"{len(unrun['infeasible'])} config(s) ruled out without running: " + "; ".join(
            f"{reason} (trials {', '.join(numbers)})" for reason, numbers in reasons.items()) + ".")
    if unrun["duplicate"]:
        numbers = ", ".join(str(t["number"]) for t in unrun["duplicate"])
        notes.append(f"{len(unrun['duplicate'])} proposal(s) repeated a config already measured and were answered "
                     f"from that trial (trials {numbers}).")
    if queued:
        notes.append(f"{len(queued)} more queued trial(s) did not run, as the budget was reached first "
                     f"(numbers {', '.join(queued)}); running the same command with a larger --trials runs them.")
    return ran, "\n\n".join(notes)


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


def changes_from_default(picked: dict[str, Any], default: dict[str, Any]) -> list[str]:
    """"micro_batch_size 32 -> 256": each knob the pick sets otherwise than the default."""
    out = []
    for key in TUNED_KNOBS:
        if key in picked and key in default and picked[key] != default[key]:
            before, after = default[key], picked[key]
            if key == "cpu_threads":  # 0 leaves the thread count to torch
                before, after = (v if v else "torch's default" for v in (before, after))
            if isinstance(before, float) or isinstance(after, float):
                before, after = f"{before:.4g}", f"{after:.4g}"
            out.append(f"{key} {fmt(before)} -> {fmt(after)}")
    return out


def payback_seconds(tuning_s: float, speedup: float) -> float | None:
    """Seconds of training with the tuned config after which the tuning has paid for
    itself: each such second would have taken ``speedup`` seconds at the default, so it
    saves ``speedup - 1``; None when the pick is not faster (it never pays back)."""
    if not speedup or speedup <= 1 or tuning_s is None:
        return None
    return tuning_s / (speedup - 1)


def summary_card(data: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The report's first answer, as (label, text) rows: the config to use (what changed
    from the default), its speed-up, what the tuning cost and when it pays for itself.
    None for a report without a search (``autotune train``)."""
    sel = data.get("selection") or {}
    if not sel.get("speedup_vs_default"):
        return None
    picked = data.get("config") or {}
    default = (sel.get("default") or {}).get("config") or {}
    changes = changes_from_default(picked, default)
    rows = [("Use", "; ".join(changes) if changes else "the default config: nothing measured faster")]
    objective = sel.get("objective") or "throughput"
    speedup = sel["goodput_vs_default"] if objective == "goodput" and sel.get("goodput_vs_default") else sel["speedup_vs_default"]
    text = f"{sel['speedup_vs_default']:.2f}x the default's samples/s"
    if objective == "goodput" and sel.get("goodput_vs_default"):
        text += f", {sel['goodput_vs_default']:.2f}x its goodput"
    rows.append(("Speed-up", text))
    tuning_s = sel.get("tuning_seconds")
    if tuning_s is not None:
        rows.append(("Tuning took", duration(tuning_s)))
        back = payback_seconds(tuning_s, speedup)
        final_s = (data.get("final") or {}).get("seconds")
        if back is None:
            rows.append(("Pays back", "never: the pick is no faster than the default"))
        else:
            text = (f"after {duration(back)} of training at this size with the tuned config "
                    f"(each second saves {speedup - 1:.2f} s against the default)")
            if final_s:
                text += (f"; this run trained for {duration(final_s)}, "
                         + ("so it has paid back already" if final_s >= back else f"{final_s / back:.0%} of that"))
            rows.append(("Pays back", text))
    return rows


def passed_over_text(over: dict[str, Any]) -> str:
    """Why the race's best level was not the pick (``Selection.passed_over``), as a clause
    for the run's log and the report's selection section."""
    return (f"trial {over['trial']} had the best level, at effective batch {over['effective_batch']}, but led the "
            f"default by {over['lead']:.2f}x, less than the {over['needed']:.2f}x a pick at another batch than the "
            f"reference {over['reference_batch']} needs (its goodput rests on a predicted sample cost, and must beat "
            f"the default even if that is off by the margin): it was passed over")


def flops_text(flops: float) -> str:
    """FLOPs in the unit that fits their size: "850 FLOP", "12.5 KFLOP", "10.7 MFLOP", "3.2 GFLOP"."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("KFLOP", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:,.3g} {unit}"
    return f"{flops:,.0f} FLOP"


def duration(seconds: float) -> str:
    """"45 s", "6.3 min", "2.1 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
    if b.get("max_tuning_share"):
        parts.append(f"tuning stops at {b['max_tuning_share']:g} of the full run's estimated time")
    trial = b.get("trial") or {}
    if trial.get("windows") and trial.get("window_s"):
        parts.append(f"each trial timed over {trial['windows']} windows of at least {trial['window_s']} s")
    text = "; ".join(parts)
    est = search.get("tuning_estimate")
    if est:
        text += (f". The full run at the default config was estimated at {est['full_run_s']:,.0f} s, the search's "
                 f"trials at {est['tuning_s']:,.0f} s"
                 + (f" ({est['tuning_s'] / est['full_run_s']:.1f}x the run)" if est["tuning_s"] > est["full_run_s"] else ""))
    if search.get("stopped_by") == "max_tuning_share":
        text += "; the search stopped at --max-tuning-share"
    return text


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
