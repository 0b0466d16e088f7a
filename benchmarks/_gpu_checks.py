"""The GPU acceptance check's logic that needs no GPU: datasheets, verdicts, bookkeeping.

``gpu_acceptance.py`` measures on the card and runs autotune; everything it then decides
(which datasheet a card has, whether a ratio meets its goal, whether a finished run
directory holds failed trials, which GPU knob choices and which single-trial labels the
runs covered, whether MFU is a fraction) and what it writes (the result JSON) lives here
as plain functions, so the CPU tests run them and they cannot rot unseen. What the time
limit allows is decided in _gpu_plan.py.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GOAL_RATIO = 0.8  # measured / datasheet a card's copy bandwidth must reach
# A burst of bf16 matmuls (8192^3, ten after three warm-ups, random data) against the
# datasheet's dense peak: cuBLAS reaches 0.77-0.81 of it on an H100/H200 SXM at its boost
# clock (matmul_sustained.py), so 0.75 catches a card or a measurement far off its spec
# without failing on the spread between runs.
MATMUL_GOAL = 0.75
# autotune's own figure (a few hundred matmuls back to back) over the burst: under
# sustained load a card at its power limit lowers its clock (an H200 SXM from 1980 to about
# 1470 MHz at 700 W, 0.85 of the burst's speed), so the profile's figure, the one training
# sees, sits below the burst; far below it, or above it, the measurement is wrong.
SUSTAINED_RANGE = (0.6, 1.05)


@dataclass(frozen=True)
class Datasheet:
    """A card's vendor figures: dense bf16 tensor-core peak and memory bandwidth."""

    card: str
    bf16_dense_tflops: float
    memory_tbps: float  # 10^12 bytes/s, the bus's total (reads and writes together)


# First match wins, so the more specific names come first. NVML names, for example:
# "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100 80GB PCIe". Dense figures (no structured sparsity), from NVIDIA's datasheets.
DATASHEETS: tuple[tuple[str, Datasheet], ...] = (
    (r"(?<!g)h200.*nvl", Datasheet("H200 NVL", 835.0, 4.8)),
    (r"(?<!g)h200", Datasheet("H200 SXM", 989.0, 4.8)),  # not the GH200, whose memory differs by model
    (r"h100.*nvl", Datasheet("H100 NVL", 835.0, 3.9)),
    (r"h100.*pcie", Datasheet("H100 PCIe", 756.0, 2.0)),
    (r"h100", Datasheet("H100 SXM", 989.0, 3.35)),
    (r"a100.*(80gb.*pcie|pcie.*80gb)", Datasheet("A100 80GB PCIe", 312.0, 1.935)),
    (r"a100.*pcie", Datasheet("A100 40GB PCIe", 312.0, 1.555)),
    (r"a100.*80gb", Datasheet("A100 80GB SXM", 312.0, 2.039)),
    (r"a100", Datasheet("A100 40GB SXM", 312.0, 1.555)),
    (r"l40s", Datasheet("L40S", 362.0, 0.864)),
    (r"\bl4\b", Datasheet("L4", 121.0, 0.3)),
)


def datasheet_for(gpu_name: str) -> Datasheet | None:
    """The datasheet of the card NVML or torch calls ``gpu_name``; None for one not listed."""
    name = gpu_name.lower()
    return next((sheet for pattern, sheet in DATASHEETS if re.search(pattern, name)), None)


def ratio_verdict(measured: float, datasheet: float, goal: float = GOAL_RATIO) -> tuple[str, float]:
    """PASS or FAIL and measured / datasheet: PASS when the ratio reaches ``goal``."""
    if not (datasheet > 0 and math.isfinite(measured)):
        raise ValueError(f"need a finite measurement and a positive datasheet figure, got {measured} and {datasheet}")
    ratio = measured / datasheet
    return ("PASS" if ratio >= goal else "FAIL"), ratio


def matmul_verdict(burst: float, sustained: float, datasheet: float) -> tuple[str, float, float]:
    """PASS or FAIL, burst / datasheet and sustained / burst: PASS when the burst reaches
    ``MATMUL_GOAL`` of the datasheet and autotune's sustained figure is in
    ``SUSTAINED_RANGE`` of the burst."""
    status, ratio = ratio_verdict(burst, datasheet, MATMUL_GOAL)
    if not (burst > 0 and math.isfinite(sustained)):
        raise ValueError(f"need a positive burst and a finite sustained figure, got {burst} and {sustained}")
    share = sustained / burst
    low, high = SUSTAINED_RANGE
    return ("PASS" if status == "PASS" and low <= share <= high else "FAIL"), ratio, share


# ------------------------------------------------------------------ checks and the report


@dataclass
class Check:
    """One check's outcome: PASS, FAIL or SKIP, a one-line figure, its seconds, details."""

    name: str
    status: str
    figure: str = ""
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<18} {self.seconds:6.1f} s  {self.figure}"


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks) for status in ("PASS", "FAIL", "SKIP")}


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0 (skipped checks do not fail the run)."""
    return int(any(c.status == "FAIL" for c in checks))


def slug(text: str) -> str:
    """Lower-case words joined by dashes: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def result_path(results_dir: Path, gpu_slug: str, date: dt.date) -> Path:
    return Path(results_dir) / f"gpu_acceptance-{gpu_slug}-{date.isoformat()}.json"


def write_result(path: Path, checks: list[Check], budget: Any, **facts: Any) -> Path:
    """The result file: ``facts`` (the card, the commit, the command ...), the time used,
    the counts, and every check with its figure, seconds and details."""
    payload = {**facts, "time_limit_s": budget.limit_s, "elapsed_s": round(budget.elapsed(), 1),
               "counts": counts(checks), "checks": [asdict(c) for c in checks]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# ------------------------------------------------------------------ verdicts


NVML_FIELDS = ("name", "uuid", "memory_total_bytes", "sm_count", "max_sm_clock_mhz", "max_memory_clock_mhz")


def nvml_missing(gpu: dict[str, Any], driver_version: Any, na: str = "N/A") -> list[str]:
    """The fields of a profile's ``gpus[0]`` (and the driver version) that read N/A or are absent."""
    missing = [key for key in NVML_FIELDS if gpu.get(key) in (None, "", na)]
    return missing + (["driver_version"] if driver_version in (None, "", na) else [])


def probe_verdict(at_max: dict[str, Any], beyond: dict[str, Any]) -> str:
    """PASS when the probed largest micro-batch fits again and 1.1 times it does not.

    Each argument is a probe's ``ok`` (ran without running out of memory) and ``fits``
    (ran within the limit less the headroom)."""
    return "PASS" if at_max["fits"] and not beyond["fits"] else "FAIL"


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_verdict(status: str, value: dict[str, Any]) -> tuple[str, str]:
    """PASS when a single trial finished with a finite training and validation loss."""
    if status != "ok":
        return "FAIL", status
    losses = {key: value.get(key) for key in ("train_loss", "val_loss")}
    bad = [f"{key} {v}" for key, v in losses.items() if not finite(v)]
    return ("FAIL", ", ".join(bad)) if bad else ("PASS", f"loss {losses['train_loss']:.3g}")


# ------------------------------------------------------------------ finished runs


# The GPU knobs of the search, each with every choice the runs should measure at least once.
# compile comes last: a study screens knobs in this order, and each compiled trial pays a
# cold compile (a minute or more), so a run cut short by its timeout has the others.
GPU_KNOBS: dict[str, tuple[Any, ...]] = {
    "fp32_precision": ("ieee", "tf32"),
    "optimizer_impl": ("auto", "plain", "foreach", "fused"),
    "expandable_segments": (False, True),
    "compile": ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead"),
}
# Trials that got no answer: an exception, a dead process, no result in time. Any of them
# means a config's path did not run through on this card.
BAD_STATUSES = ("error", "crash", "timeout")
# Trials that timed windows (a pruned one was stopped after some, being clearly slow).
MEASURED_STATUSES = ("ok", "pruned")


def gpu_knob_space(micro_batch_size: int = 32) -> dict[str, Any]:
    """A search space (YAML data) over the GPU knobs alone, everything else fixed, so that
    a cold study's screening measures every choice of every GPU knob once (amp is fixed
    to fp32, where ``fp32_precision`` decides the math)."""
    params: dict[str, Any] = {"micro_batch_size": {"choices": [micro_batch_size]}, "amp": {"choices": ["off"]}}
    params.update({name: {"choices": list(choices)} for name, choices in GPU_KNOBS.items()})
    return {"name": "gpu-knobs", "description": "the GPU knobs alone (benchmarks/gpu_acceptance.py)", "params": params}


@dataclass
class RunSummary:
    """What a finished (or stopped) ``autotune run`` directory says about its trials."""

    run_dir: str
    trials: list[dict[str, Any]]  # number, state, status, config, mfu, reason ...
    speedup_vs_default: float | None = None  # tuned over default throughput, re-measured
    selection_mfu: float | None = None
    final_mfu: float | None = None
    finished: bool = False  # report.json was written
    gated: dict[str, dict[str, str]] = field(default_factory=dict)  # knob -> choice -> why it was ruled out
    budget_trials: int | None = None  # the study's budget (--trials, or the size autotune chose)

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            key = str(t.get("status") or t.get("state"))
            out[key] = out.get(key, 0) + 1
        return out

    def counted(self) -> int:
        """Trials that count against the budget, as autotune counts them (study.counts):
        finished and measured by themselves."""
        return sum(t.get("state") in FINISHED_STATES and t.get("status") not in UNCOUNTED for t in self.trials)

    def short(self) -> bool:
        """Whether the search stopped before its budget (its --timeout, or a kill)."""
        return self.budget_trials is not None and self.counted() < self.budget_trials


FINISHED_STATES = ("complete", "pruned", "fail")
UNCOUNTED = ("infeasible", "duplicate", "stale")  # ruled out unrun, answered from another trial, cut by a stop


def read_run(run_dir: Path) -> RunSummary:
    """The trials and figures of ``run_dir``: from report.json when the run got that far,
    else from its Optuna study (study.db); the speed-up also from tuned.yaml."""
    run_dir = Path(run_dir)
    report = run_dir / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        selection, final, search = data.get("selection") or {}, data.get("final") or {}, data["search"]
        return RunSummary(str(run_dir), search["trials"], selection.get("speedup_vs_default"), selection.get("mfu"),
                          final.get("mfu"), finished=True, gated=search.get("gated") or {},
                          budget_trials=(search.get("budget") or {}).get("n_trials"))
    measured = _tuned_measured(run_dir / "tuned.yaml")
    trials, budget = _study_trials(run_dir / "study.db")
    return RunSummary(str(run_dir), trials, measured.get("speedup_vs_default"), measured.get("mfu"), budget_trials=budget)


def _tuned_measured(path: Path) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get("measured") or {} if path.is_file() else {}


def _study_trials(db: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Trials of the study in ``db`` as report.json lists them (claims, studies whose names
    hold "~", are the search's bookkeeping and are left out), and its budget in trials."""
    if not db.is_file():
        return [], None
    import optuna

    import autotune.search.optuna_adapter as study_data

    storage = f"sqlite:///{db}"
    rows, budget = [], None
    for name in (n for n in optuna.get_all_study_names(storage) if "~" not in n):
        study = optuna.load_study(study_name=name, storage=storage)
        budget = (study_data.attrs(study).get("budget") or {}).get("n_trials", budget)
        for t in study.trials:
            rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, **t.user_attrs})
    return rows, budget


def bad_trials(summary: RunSummary) -> list[dict[str, Any]]:
    return [t for t in summary.trials if t.get("status") in BAD_STATUSES]


def knob_value(name: str, value: Any) -> Any:
    """A knob's value as the current config spells it (``compile: true`` was "default")."""
    if name == "compile" and isinstance(value, bool):
        return "default" if value else "off"
    return value


def measured_choices(summaries: list[RunSummary], knobs: dict[str, tuple[Any, ...]] = GPU_KNOBS) -> dict[str, set[Any]]:
    """Per knob, the values that measured trials of any of ``summaries`` ran with."""
    seen: dict[str, set[Any]] = {name: set() for name in knobs}
    for summary in summaries:
        for t in summary.trials:
            config = t.get("config") or {}
            if t.get("status") in MEASURED_STATUSES:
                for name in knobs:
                    if name in config:
                        seen[name].add(knob_value(name, config[name]))
    return seen


def missing_choices(seen: dict[str, set[Any]], knobs: dict[str, tuple[Any, ...]] = GPU_KNOBS) -> list[str]:
    """"knob=choice" for each choice of ``knobs`` that no measured trial ran with."""
    return [f"{name}={choice}" for name, choices in knobs.items() for choice in choices if choice not in seen.get(name, ())]


def gated_reasons(summaries: list[RunSummary], choices: list[str]) -> dict[str, str]:
    """For each "knob=choice" of ``choices`` that a run ruled out on this machine, why."""
    out = {}
    for item in choices:
        name, choice = item.split("=", 1)
        reason = next((s.gated.get(name, {}).get(choice) for s in summaries if s.gated.get(name, {}).get(choice)), None)
        if reason:
            out[item] = reason
    return out


def mfu_values(summary: RunSummary) -> list[tuple[str, float]]:
    """Every MFU figure of a run: each measured trial's, the selection's, the final run's."""
    found = [(f"trial {t.get('number')}", t["mfu"]) for t in summary.trials
             if t.get("status") == "ok" and t.get("mfu") is not None]
    found += [(where, v) for where, v in (("selection", summary.selection_mfu), ("final", summary.final_mfu)) if v is not None]
    return found


def mfu_verdict(values: list[tuple[str, float]]) -> tuple[str, str]:
    """PASS when there are MFU figures and each is in (0, 1]; the range as the figure."""
    if not values:
        return "FAIL", "no MFU figure in any run"
    outside = [f"{where} {v:.3g}" for where, v in values if not (finite(v) and 0 < v <= 1)]
    span = f"{len(values)} figures in [{min(v for _, v in values):.3g}, {max(v for _, v in values):.3g}]"
    return ("FAIL", f"{span}; outside (0, 1]: {', '.join(outside[:5])}") if outside else ("PASS", span)


def run_verdict(returncode: int | None, summary: RunSummary) -> tuple[str, str]:
    """PASS when the run exited 0, wrote its report and no trial failed; the figure names
    the trial counts by status, the tuned/default ratio and the final MFU.

    ``returncode`` None means the run was stopped at the time limit: a failed trial still
    fails it, otherwise it is skipped (it could not finish, which is not a fault)."""
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses().items()))
    speedup = f"{summary.speedup_vs_default:.2f}x" if summary.speedup_vs_default else "n/a"
    mfu = f"{summary.final_mfu:.3f}" if summary.final_mfu is not None else "n/a"
    figure = f"{len(summary.trials)} trials ({statuses}); tuned/default {speedup}; final MFU {mfu}"
    if summary.short():
        figure += f"; search stopped after {summary.counted()} of {summary.budget_trials} trials"
    if returncode is None:
        figure = f"stopped at the time limit; {figure}"
    bad = bad_trials(summary)
    if bad:
        first = bad[0]
        return "FAIL", f"{figure}; trial {first.get('number')} {first.get('status')}: {str(first.get('reason', ''))[:200]}"
    if returncode is None:
        return "SKIP", figure
    if returncode != 0 or not summary.finished:
        return "FAIL", f"{figure}; autotune exited {returncode}" + ("" if summary.finished else ", no report.json")
    return "PASS", figure


# ------------------------------------------------------------------ what the runs covered


# Single-trial labels and their knobs, in the order they run directly when no run covered
# them: the (fp16 with a GradScaler, bf16, TF32, checkpointing, each compile
# mode), then the other GPU paths.
LABELS: dict[str, dict[str, Any]] = {
    "fp16+GradScaler": {"amp": "fp16"},
    "bf16": {"amp": "bf16"},
    "tf32": {"fp32_precision": "tf32"},
    "checkpointing": {"checkpointing": True},
    "compile default": {"compile": "default"},
    "compile reduce-overhead": {"compile": "reduce-overhead"},
    "compile max-autotune-no-cudagraphs": {"compile": "max-autotune-no-cudagraphs"},
    "channels_last": {"channels_last": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "fused optimizer": {"optimizer_impl": "fused"},
    "expandable_segments": {"expandable_segments": True},
}


def completed(trial: dict[str, Any]) -> bool:
    """Whether a run's trial took its own config through training and evaluation: state
    complete and status ok (not pruned, failed, out of memory, ruled out, or answered from
    another trial as a duplicate) with a finite training and validation loss."""
    return (trial.get("state") == "complete" and trial.get("status") == "ok"
            and finite(trial.get("train_loss")) and finite(trial.get("val_loss")))


def coverage(summaries: dict[str, RunSummary], labels: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Per label, "<run> trial <number>": the first completed trial of the runs (in the
    order given) whose config has every knob of the label; None where none has."""
    out: dict[str, str | None] = {}
    for label, knobs in labels.items():
        out[label] = next((f"{name} trial {t.get('number')}" for name, summary in summaries.items()
                           for t in summary.trials if completed(t) and all(
                               knob_value(k, (t.get("config") or {}).get(k)) == v for k, v in knobs.items())), None)
    return out


def trials_verdict(covered: dict[str, str | None], direct: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """PASS when every label completed, in a run (``covered``) or as a direct single trial
    (``direct``: label -> its row with status and figure); FAIL when a direct trial failed;
    else SKIP, the labels neither covered nor run being left for lack of time. The figure
    names, per label, the run and trial that covered it or the direct trial's result."""
    parts, failed, left = [], [], []
    for label, where in covered.items():
        row = direct.get(label)
        if where:
            parts.append(f"{label}: {where}")
        elif row:
            parts.append(f"{label}: direct {row['status']} {row['figure']}".rstrip())
            failed += [label] if row["status"] != "PASS" else []
        else:
            parts.append(f"{label}: not run (time limit)")
            left.append(label)
    done = len(covered) - len(failed) - len(left)
    in_runs = sum(bool(where) for where in covered.values())
    figure = f"{done} of {len(covered)} completed ({in_runs} in runs): {'; '.join(parts)}"
    return ("FAIL" if failed else "SKIP" if left else "PASS"), figure


def knobs_verdict(missing: list[str], gated: dict[str, str], short: dict[str, str]) -> str:
    """PASS when no GPU knob choice is missing; SKIP when some are but a run that would
    have measured them was skipped or stopped early for time (``short``: run -> why),
    unless a missing choice was ruled out by the gate on this machine; else FAIL."""
    if not missing:
        return "PASS"
    return "SKIP" if short and not gated else "FAIL"
