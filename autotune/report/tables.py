"""The report's analysis sections as header, rows and sentences, for both renderers:
selection, the Pareto front, parameter importances, each knob's measured effect and the
evaluation. Each returns None when the data has nothing for its section."""

from __future__ import annotations

from typing import Any, NamedTuple

from autotune.report.analysis import pareto_front, trial_points
from autotune.report.format import fmt, knobs_text, passed_over_text, pct, ratio


class Table(NamedTuple):
    intro: str
    header: list[str]
    rows: list[list[Any]]
    outro: str = ""


def selection_table(sel: dict[str, Any]) -> Table | None:
    if not sel:
        return None
    objective = sel.get("objective", "throughput")
    rows = []
    default = sel.get("default") or {}
    extra = [default] if default and default.get("trial") is None else []
    for c in sel.get("candidates", []) + extra:
        label = f"trial {c['trial']}" if c.get("trial") is not None else "default (not a trial)"
        if (c.get("trial") is None and sel.get("picked_default")) or (c.get("trial") is not None and c["trial"] == sel.get("picked")):
            label += " **picked**"
        elif c.get("dropped"):
            label += f" (out after round {max(c.get('rounds') or [0]) + 1})"
        rows.append([label, knobs_text(c["config"]), c.get("trial_value"), c.get("level", c.get("median")),
                     ", ".join(f"{v:,.0f}" for v in c.get("values", []))])
    intro = (
        f"The best {len(sel.get('candidates', []))} trials and the default config re-measured in turns "
        f"(fresh processes"
        + (f", {sel['run_windows']} timing windows a run" if sel.get("run_windows") else "")
        + f"), picked on the {objective} (samples/s) with each round's machine speed taken out"
        + (f"; after the first round, the {sel['keep']} best by that round and their trials together went on"
           if sel.get("keep") else "")
        + (f"; after {sel['cut_after']} rounds, those more than {sel['cut']:.0%} behind the best left the race"
           if sel.get("cut") is not None and sel.get("cut_after") else "")
        + (f"; after {sel['rounds']} rounds, those within {sel['margin']:.0%} of the best got more rounds, "
           f"up to {sel['max_rounds']}" if sel.get("max_rounds", 0) > sel.get("rounds", 0) else "")
        + ":"
    )
    facts = []
    if sel.get("speedup_vs_default"):
        facts.append(f"throughput **{sel['speedup_vs_default']:.2f}x** the default's")
    if sel.get("goodput_vs_default"):
        facts.append(f"goodput {sel['goodput_vs_default']:.2f}x")
    if sel.get("mfu") is not None:
        facts.append(f"MFU {pct(sel['mfu'])}")
    if sel.get("gradient_noise_scale"):
        facts.append(f"statistical efficiency {sel.get('statistical_efficiency', 1):.2f}")
    outro = ("Picked config: " + "; ".join(facts) + ".") if facts else ""
    noise = sel.get("noise_scale")
    if noise:
        if noise.get("estimate"):
            span = (f"95% interval [{noise['low']:,.0f}, {noise['high']:,.0f}]" if noise.get("low") and noise.get("high")
                    else "no bounded interval")
            how = "per-example" if noise.get("method") == "per-example" else "group"
            why = noise.get("method_fallback_reason") if how == "group" else None
            outro += (f" Gradient noise scale {noise['estimate']:,.0f} ({span}; from {how} gradient norms"
                      f"{', Adam-preconditioned' if noise.get('preconditioned') else ''}"
                      f"{f', since per-example gradients failed ({why})' if why else ''}; reported, not used).")
        outro += f" Statistical efficiency: {noise['basis']}."
        alone = noise.get("throughput_pick")
        picked = next((c["config"] for c in [*(sel.get("candidates") or []), sel.get("default") or {}]
                       if c.get("trial") == sel.get("picked") and "config" in c), None)
        if alone and alone.get("config") and alone["config"] != picked:
            outro += (f" Under throughput alone the best trial was {alone['trial']} "
                      f"({knobs_text(alone['config'])}, {alone['samples_per_s']:,.0f} samples/s).")
        elif alone:
            outro += " Throughput alone would have picked the same config."
    over = sel.get("passed_over")
    if over:
        text = passed_over_text(over)
        outro += f" {text[:1].upper()}{text[1:]}."
    header = ["config", "knobs", f"trial {objective}", f"{objective}, round-adjusted", "runs"]
    return Table(intro, header, rows, outro)


def pareto_table(search: dict[str, Any]) -> Table | None:
    points = trial_points((search or {}).get("trials", []))
    if len(points) < 2:
        return None
    front = pareto_front([(t["throughput_samples_per_s"], t["val_loss"]) for t in points])
    rows = [[points[i]["number"], points[i]["throughput_samples_per_s"], points[i]["val_loss"],
             points[i].get("val_accuracy"), knobs_text(points[i].get("config") or {})] for i in front]
    which = "this one is" if len(front) == 1 else f"these {len(front)} are"
    intro = (f"Throughput against validation loss: of the {len(points)} measured trials, {which} "
             "not beaten on both at once (more samples/s and lower loss). The loss is the short trial's, on a "
             "few validation batches: a sanity check of each config, not the trained model's quality.")
    return Table(intro, ["trial", "samples/s", "val loss", "val acc", "knobs"], rows)


def importance_table(search: dict[str, Any]) -> Table | None:
    imp = (search or {}).get("param_importances")
    if not imp:
        return None
    if imp.get("importances") is None:
        return Table(f"Parameter importances could not be computed: {imp.get('reason')}.", [], [])
    rows = [[k, f"{v:.3f}"] for k, v in sorted(imp["importances"].items(), key=lambda kv: -kv[1])]
    intro = (f"How much each knob mattered for reaching the best objective values, from "
             f"`{imp.get('method')}` over {imp.get('trials')} completed trials (importances sum to 1).")
    outro = f"Note: {imp['note']}" if imp.get("note") else ""
    return Table(intro, ["knob", "importance"], rows, outro)


def effects_table(search: dict[str, Any]) -> Table | None:
    eff = (search or {}).get("knob_effects")
    if not eff:
        return None
    if not eff.get("knobs"):
        return Table(f"The effect of each knob was not measured: {eff.get('reason')}.", [], [])
    rows = []
    for name, choices in eff["knobs"].items():
        for r in choices:
            is_ref = r["trial"] == r.get("base_trial", eff.get("default_trial"))
            label = " (default)" if r["trial"] == eff.get("default_trial") else " (base)" if is_ref else ""
            rows.append([name, fmt(r["choice"]) + label, r["trial"], r.get("value"),
                         ratio(r.get("relative")), r.get("throughput_samples_per_s"), r.get("note") or ""])
    # Knobs screened together as well: one row per pair of choices.
    for name, choices in (eff.get("pairs") or {}).items():
        for r in choices:
            rows.append([name, " + ".join(fmt(c) for c in r["choice"]), r["trial"], r.get("value"),
                         ratio(r.get("relative")), r.get("throughput_samples_per_s"), r.get("note") or ""])
    objective = search.get("objective") or "objective"
    if eff.get("lead"):
        base = eff.get("base") or {}
        intro = (f"The screening trials measured each choice of `{eff['lead']}` with every other knob at its default "
                 f"(trial {eff.get('default_trial')}), then each choice of the other knobs with every other knob at the "
                 f"base: the default with {eff['lead']} = {fmt(base.get(eff['lead']))} (trial {eff.get('base_trial')}). "
                 f"The {objective} (samples/s) of each, and its ratio to the config it was screened around, as measured "
                 f"just before and after it (that config is measured again every few choices: the machine's speed drifts).")
        header = ["knob", "choice", "trial", objective, "vs default or base", "samples/s", "note"]
    else:
        intro = (f"The screening trials measured each choice of each knob with every other knob at its default "
                 f"(trial {eff.get('default_trial')}): the {objective} (samples/s) of each, and its ratio to the default's, "
                 f"as measured just before and after it (the default is measured again every few choices).")
        header = ["knob", "choice", "trial", objective, "vs default", "samples/s", "note"]
    return Table(intro, header, rows)


def classification_table(ev: dict[str, Any]) -> Table:
    rows = []
    for label, scores in ev["report"].items():
        if isinstance(scores, dict):
            rows.append([label, *(f"{scores.get(k, 0.0):.4f}" for k in ("precision", "recall", "f1-score")),
                         int(scores.get("support", 0))])
    intro = f"scikit-learn `classification_report` on the validation set ({ev['samples']} samples):"
    outro = f"Accuracy {ev['accuracy']:.4f}."
    return Table(intro, ["class", "precision", "recall", "f1-score", "support"], rows, outro)


def regression_table(ev: dict[str, Any]) -> Table:
    rows = [["MAE (mean absolute error)", ev["mae"]], ["RMSE (root mean squared error)", ev["rmse"]],
            ["R^2 (coefficient of determination)", ev.get("r2")]]
    outputs = f", {ev['outputs']} outputs each (averaged)" if ev.get("outputs", 1) > 1 else ""
    intro = f"scikit-learn regression metrics on the validation set ({ev['samples']} samples{outputs}):"
    outro = "" if ev.get("r2") is not None else "R^2 is undefined: the targets do not vary."
    return Table(intro, ["metric", "value"], rows, outro)
