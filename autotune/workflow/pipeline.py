"""The whole job: ``run`` (profile, search, select, tuned.yaml, final run, report) and
``train`` (final run and report from a saved tuned.yaml).

Each stage is a call into its own package; this module only wires them in order and
decides where the outputs go inside the run directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.config import TrainConfig, TunedConfig, load_tuned
from autotune.errors import AutotuneError
from autotune.engine.loop import TrainResult
from autotune.workflow.final import WEIGHTS_FILE, FinalOptions, final_run
from autotune.hardware import HardwareProfile, collect_profile
from autotune.workflow import parallel
from autotune.machines import results
from autotune.report.format import flops_text, passed_over_text
from autotune.report import write_report
from autotune.search import (
    Facts,
    SearchBudget,
    enqueue_default,
    fail_stale_trials,
    gate,
    gpu_facts,
    has_conv2d,
    load_space,
    open_study,
    run_search,
    select,
)
from autotune.engine.memory import format_size
from autotune.search import model_stats, warmstart, worker
from autotune.search.objective import Scorer
from autotune.search.limits import apply_limits, default_limit_bytes, probe_limits
from autotune.search.storage import redact, sqlite_url
from autotune.search.opening import study_exists
from autotune.search.screen import sized_trials
from autotune.search.study import scorer_of
from autotune.search.select import Selection, throughput_pick
from autotune.workflow.run_data import report_data, search_data, selection_data, versions
from autotune.search.space import SearchSpace
from autotune.model.task import Task, load_task
import autotune.search.optuna_adapter as study_data

STUDY_FILE = "study.db"
TUNED_FILE = "tuned.yaml"
HARDWARE_FILE = "hardware.yaml"


@dataclass(frozen=True)
class RunOptions:
    out: Path
    space: str = "default"
    budget: SearchBudget = SearchBudget()
    seed: int | None = None  # None: the model file's BASE seed
    epochs: int | None = None  # None: the model file's BASE epochs
    progress: bool = True
    # Saved hardware profiles: the run records its result there and a new study starts
    # from the most similar machine's results. None: neither.
    profiles: Path | None = None
    warm_start: bool = True
    # Memory the tuner may use (bytes): probes and trials run under it. None: the GPU's
    # memory, or the host's available memory, for the probe; trials uncapped.
    memory_limit: int | None = None
    headroom: float = 0.1  # fraction of the limit the probed micro-batch leaves free
    objective: str = "goodput"  # what trials are scored on: goodput or throughput
    final: FinalOptions = FinalOptions()
    # Where the study lives (a storage URL, see search/storage.py) and its name. None:
    # OUT/study.db, and the model file's name.
    storage: str | None = None
    study: str | None = None
    # Worker processes running trials at once (one per GPU; on the CPU, each on its share
    # of the cores); 1 runs them in this process.
    workers: int = 1
    # Raise the budget to hold the whole screening of each knob's choices and a few trials
    # after it (``screen.sized_trials``): the CLI's default when --trials is not given.
    size_budget: bool = False


def default_out(model_path: str | Path) -> Path:
    """The run directory when --out is not given: runs/<model file stem>."""
    return Path("runs") / Path(model_path).stem


@dataclass
class Tuning:
    """What the search produced: the study, the space it searched, the selection and the
    tuned config (already written to tuned.yaml)."""

    task: Task
    profile: HardwareProfile
    study: Any
    space: SearchSpace
    selection: Selection
    tuned: TunedConfig
    path: Path


@dataclass
class RunResult:
    """What ``run`` and ``train`` produced: the paths written, the final run's result, and
    for ``run`` the search that chose the config."""

    paths: dict[str, Path]
    result: TrainResult
    config: TrainConfig
    tuning: Tuning | None = None


def run(model_path: str | Path, opts: RunOptions, log: Any = print) -> dict[str, Path]:
    """Tune, train and report for one model file; returns the paths written."""
    return run_all(model_path, opts, log).paths


def run_all(model_path: str | Path, opts: RunOptions, log: Any = print) -> RunResult:
    """``run``, returning the search, the final run's result and the paths."""
    return finish(tune(model_path, opts, log), opts, log)


def finish(t: Tuning, opts: RunOptions, log: Any = print) -> RunResult:
    """The final run with the tuned config, the report, and the recorded result."""
    paths = {"tuned": t.path}
    result = final_run(t.task, t.tuned.train, opts.out, opts.progress, log, opts.final, t.profile.gpus)
    data = report_data(t.task, t.tuned.train, result, t.profile, opts.final, t.tuned.measured)
    if data["final"].get("accounting"):  # tuned.yaml also says what the full run achieved
        t.tuned.measured["final_run"] = _final_run_record(data["final"]["accounting"])
        t.tuned.save(t.path)
    data["search"] = search_data(t.study, t.space, study_budget(t.study, opts.budget))
    data["selection"] = selection_data(t.selection, t.tuned)
    paths.update(write_report(data, opts.out))
    paths["weights"] = opts.out / WEIGHTS_FILE
    log(f"autotune: report {paths['markdown']} and {paths['html']}")
    if opts.profiles is not None:
        paths["profile"] = results.record(opts.profiles, t.profile, _result_entry(t.task, t.space, t.study, t.tuned))
        log(f"autotune: recorded the result in {paths['profile']}")
    return RunResult(paths, result, t.tuned.train, t)


def _final_run_record(accounting: dict[str, Any]) -> dict[str, Any]:
    """The final run's accounting as tuned.yaml keeps it: rounded, in its units."""
    def r(x: Any) -> Any:
        return round(x, 4) if isinstance(x, float) else x

    return {"selected_samples_per_s": r(accounting["selected_samples_per_s"]),
            "achieved_samples_per_s": r(accounting["achieved_samples_per_s"]),
            "achieved_over_selected": r(accounting["ratio"]),
            "end_to_end_samples_per_s": r(accounting["end_to_end_samples_per_s"]),
            "seconds": {k: r(v) for k, v in accounting["seconds"].items()},
            "gap": accounting["gap"]}


def storage_of(opts: RunOptions) -> str:
    return opts.storage or sqlite_url(opts.out / STUDY_FILE)


def study_budget(study: Any, fallback: SearchBudget) -> SearchBudget:
    """The budget the study was last run with (``autotune run`` stores it for workers)."""
    data = study_data.attrs(study).get("budget")
    return SearchBudget.from_dict(data) if data else fallback


@dataclass
class Setup:
    """A study ready for trials: created (profiled, probed, first trials queued) or joined."""

    task: Task
    profile: HardwareProfile
    study: Any
    space: SearchSpace
    storage: str


def tune(model_path: str | Path, opts: RunOptions, log: Any = print) -> Tuning:
    """Profile, probe, search and select for one model file; writes hardware.yaml, the
    study and tuned.yaml into ``opts.out``. Resumes the study found there (or joins the
    one at ``opts.storage``). With ``opts.workers`` > 1 the trials run in that many
    worker processes (``parallel``), and this process selects once they are done."""
    started = time.perf_counter()
    plans = parallel.plan_workers(opts.workers) if opts.workers > 1 else []
    s = setup_study(model_path, opts, log, plans)
    budget = opts.budget
    if opts.size_budget and sized_trials(budget.n_trials, s.space, s.study) > budget.n_trials:
        budget = dataclasses.replace(budget, n_trials=sized_trials(budget.n_trials, s.space, s.study))
        study_data.put(s.study, "budget", budget.to_dict())  # where workers read it
        log(f"autotune: budget {budget.n_trials} trials, for the screening of each knob's choices (--trials sets it)")
    before = len(s.study.get_trials(deepcopy=False))
    if plans:
        parallel.run_workers(s.study, budget, s.task.path, s.storage, opts.out, plans, opts.progress, log)
    # With workers: whatever budget a stopped worker left.
    run_search(s.study, s.task, s.space, budget, progress=opts.progress and not plans, started=started)
    ran = len(s.study.get_trials(deepcopy=False)) - before
    return select_and_save(s.task, s.profile, s.study, s.space, s.storage, opts, ran, log, started)


def setup_study(model_path: str | Path, opts: RunOptions, log: Any = print, plans: list[Any] | None = None,
                own_budget: bool = True) -> Setup:
    """Profile this machine and create the study (memory probe, model statistics, the
    first trials queued), or resume or join it. Of several processes creating one study
    at once, one does and the others join. ``opts.budget`` is stored in the study for
    its workers when it is created, and with ``own_budget`` (``autotune run``) also when
    it is resumed."""
    task = load_task(model_path)
    raw = load_space(opts.space)  # before any slow work or any file: a bad YAML fails at once
    worker.preload_for(task.path)
    task = _override_base(task, opts)
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    log(f"autotune: run directory {out}")
    profile = collect_profile()
    profile.save(out / HARDWARE_FILE)
    log(f"autotune: hardware {profile.fingerprint} (training on {profile.device})")
    space = gate(raw, _facts(profile, task, plans))
    storage = storage_of(opts)

    def prepare(study: Any, space: SearchSpace) -> tuple[SearchSpace, Scorer]:
        space, probe = _probe_memory(task, space, profile, opts, log)
        scorer = _scorer(task, profile, opts, log)
        study_data.put(study, "memory_probe", probe)
        study_data.put(study, "hardware_profile", profile.to_dict())
        study_data.put(study, "trial_device", parallel.trial_device(profile))
        study_data.put(study, "budget", opts.budget.to_dict())
        warm = _warm_plan(space, profile, task, opts)
        # A warm start seeds the study with another machine's best; a cold one screens
        # every knob's choices first (search/screen.py).
        enqueue_default(study, space, screening=warm is None, batch=task.base.batch_size)
        if warm is not None:
            n = warmstart.apply(study, warm)
            log(f"autotune: warm start: {n} config(s) from {warm['source_fingerprint']} "
                f"(micro-batch scaled by memory ratio {warm['memory_ratio']:.2f})")
        return space, scorer

    existed = study_exists(storage, opts.study or task.name)
    study, space = open_study(storage, opts.study or task.name, task, raw, space, profile.fingerprint, task.base.seed,
                              Scorer(opts.objective), prepare=prepare, log=log)
    if own_budget:
        study_data.put(study, "budget", opts.budget.to_dict())
    stale = fail_stale_trials(study)
    if stale:
        log(f"autotune: marked {stale} trial(s) left running by a stopped tuner as failed")
    if existed:
        log(f"autotune: resuming the study in {redact(storage)} ({len(study.trials)} trials so far)")
    return Setup(task, profile, study, space, storage)


def select_and_save(task: Task, profile: HardwareProfile, study: Any, space: SearchSpace, storage: str, opts: RunOptions,
                    ran: int, log: Any = print, started: float | None = None) -> Tuning:
    """Re-measure the best few (``select``) and write tuned.yaml into ``opts.out``; with
    ``started`` (``time.perf_counter()`` when the tuning began), tuned.yaml records the
    tuning's wall time (``measured.tuning_seconds``), for the report's payback."""
    budget = study_budget(study, opts.budget)
    if ran == 0 and study_data.attrs(study).get("remeasured"):
        # Nothing new was measured: the selection made before still holds (and a resumed
        # final run must train the config it started with).
        selection = Selection.from_dict(study_data.attrs(study)["remeasured"], study)
        log("autotune: the study was complete; using its earlier selection")
    else:
        selection = select(study, task, budget.trial, progress=opts.progress)
        if selection.passed_over:
            log(f"autotune: {passed_over_text(selection.passed_over)}")
    # The final run's length is this command's (--epochs, as `autotune finalize` may give
    # it), not the one the trials were queued with.
    selection.picked.config = dataclasses.replace(selection.picked.config, epochs=task.base.epochs)
    tuned = _tuned_config(task, space, profile, study, selection, storage)
    if started is not None:
        tuned.measured["tuning_seconds"] = round(time.perf_counter() - started, 1)
    _keep_previous(opts.out / TUNED_FILE, tuned, log)
    path = tuned.save(opts.out / TUNED_FILE)
    log(f"autotune: wrote {path}")
    return Tuning(task, profile, study, space, selection, tuned, path)


def _keep_previous(path: Path, tuned: TunedConfig, log: Any) -> Path | None:
    """An existing tuned YAML with another config (or one that cannot be read) is renamed
    to ``tuned.previous-<time>.yaml`` before the new one is written, never overwritten;
    returns where it went. One with the same config is rewritten (its measurements may be
    newer), and the log says so."""
    if not path.exists():
        return None
    try:
        same = load_tuned(path).train == tuned.train
    except AutotuneError:
        same = False
    if same:
        log(f"autotune: {path} holds the same config; rewriting it with the latest measurements")
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.stem}.previous-{stamp}{path.suffix}")
    path.replace(kept)
    log(f"autotune: {path} held another config; kept it as {kept}")
    return kept


def _probe_memory(task: Task, space: SearchSpace, profile: HardwareProfile, opts: RunOptions, log: Any) -> tuple[SearchSpace, dict[str, Any]]:
    limit = opts.memory_limit or default_limit_bytes(profile.device, profile.gpus, profile.host)
    found = probe_limits(task, space, limit, opts.headroom, opts.progress)
    summary = ", ".join(f"{key} {r.max_batch}" for key, r in found.items())
    log(f"autotune: largest micro-batch in {format_size(limit)} with {opts.headroom:.0%} headroom: {summary}")
    data = {
        "limit_bytes": limit,
        "limit_given": opts.memory_limit is not None,
        "headroom": opts.headroom,
        "pairs": {key: r.to_dict() for key, r in found.items()},
    }
    return apply_limits(space, found, limit), data


def _scorer(task: Task, profile: HardwareProfile, opts: RunOptions, log: Any) -> Scorer:
    """Measure the model's FLOPs and gradient noise scale, for goodput and MFU."""
    stats = model_stats.measure_isolated(task)
    scorer = Scorer.build(opts.objective, task.base.batch_size, stats, profile.measured, profile.device)
    log(f"autotune: {flops_text(stats['flops_per_sample'])} per sample; objective {scorer.objective}, "
        f"reference batch {scorer.reference_batch}")
    if scorer.objective == "goodput":
        log(f"autotune: statistical efficiency: {scorer.basis}")
    return scorer


def _warm_plan(space: SearchSpace, profile: HardwareProfile, task: Task, opts: RunOptions) -> dict[str, Any] | None:
    if opts.profiles is None or not opts.warm_start:
        return None
    return warmstart.plan(opts.profiles, profile, task.name, space)


def _result_entry(task: Task, space: SearchSpace, study: Any, tuned: TunedConfig) -> dict[str, Any]:
    best = {"config": tuned.train.to_dict(), **{k: tuned.measured.get(k) for k in (
        "throughput_samples_per_s", "goodput_samples_per_s", "default_throughput_samples_per_s", "speedup_vs_default",
        "peak_memory_bytes")}}
    top: list[dict[str, Any]] = []
    measured = [t for t in study.trials if t.user_attrs.get("status") == "ok" and t.value is not None]
    for t in sorted(measured, key=lambda t: t.value, reverse=True):
        if all(t.user_attrs["config"] != item["config"] for item in top):
            top.append({"config": t.user_attrs["config"], "throughput_samples_per_s": t.user_attrs.get("throughput_samples_per_s"),
                        "goodput_samples_per_s": t.user_attrs.get("goodput_samples_per_s")})
    return results.make_entry(task.name, task.sha256, space.name, tuned.measured.get("device", ""), best, top)


def train(model_path: str | Path, config_path: str | Path | TunedConfig, out: Path, epochs: int | None = None,
          progress: bool = True, log: Any = print, final: FinalOptions = FinalOptions()) -> dict[str, Path]:
    """Train with a saved tuned config and write the weights and the report."""
    return train_all(model_path, config_path, out, epochs, progress, log, final).paths


def train_all(model_path: str | Path, config: str | Path | TunedConfig, out: Path, epochs: int | None = None,
              progress: bool = True, log: Any = print, final: FinalOptions = FinalOptions()) -> RunResult:
    """``train``, returning the final run's result with the paths; ``config`` is a tuned
    YAML's path or a ``TunedConfig``."""
    task = load_task(model_path)
    tuned = config if isinstance(config, TunedConfig) else load_tuned(config)
    cfg = tuned.train if epochs is None else TrainConfig.from_dict({**tuned.train.to_dict(), "epochs": epochs})
    out.mkdir(parents=True, exist_ok=True)
    source = "the given config" if isinstance(config, TunedConfig) else str(config)
    log(f"autotune: training {task.path.name} with {source}")
    gpus = collect_profile(measure=False).gpus if final.nproc > 1 else []
    result = final_run(task, cfg, out, progress, log, final, gpus)
    paths = write_report(report_data(task, cfg, result, None, final, tuned.measured), out)
    paths["weights"] = out / WEIGHTS_FILE
    log(f"autotune: report {paths['markdown']} and {paths['html']}")
    return RunResult(paths, result, cfg)


def _override_base(task: Task, opts: RunOptions) -> Task:
    changes = {k: v for k, v in (("seed", opts.seed), ("epochs", opts.epochs)) if v is not None}
    if not changes:
        return task
    return dataclasses.replace(task, base=dataclasses.replace(task.base, **changes))


def _facts(profile: HardwareProfile, task: Task, plans: list[Any] | None = None) -> Facts:
    model = task.build_model()
    cores = int(profile.host.get("logical_cores") or 1)
    return Facts(
        device_type=profile.device,
        amp_blocked=profile.allowed_amp(),
        # CPU workers each get their share of the cores: thread counts above it are gated out.
        logical_cores=min(len(p.cpus) for p in plans) if plans and plans[0].cpus else cores,
        has_blocks=bool(task.blocks(model)),
        train_size=len(task.datasets()[0]),
        has_conv=has_conv2d(model),
        **gpu_facts(profile.device, task.make_optimizer(model.parameters(), task.base.lr, task.base.weight_decay)),
    )



def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _tuned_config(task: Task, space: SearchSpace, profile: HardwareProfile, study: Any, sel: Selection, storage: str) -> TunedConfig:
    scorer = scorer_of(study)
    tuned_tps, default_tps = sel.picked.median_throughput(), sel.default.median_throughput()
    scores = scorer.score(sel.config, {"throughput_samples_per_s": tuned_tps})
    default_scores = scorer.score(sel.default.config, {"throughput_samples_per_s": default_tps})
    speedup, objective_ratio = sel.over_default()
    measured = {
        "objective": sel.objective,
        "throughput_samples_per_s": tuned_tps,
        "goodput_samples_per_s": scores["goodput_samples_per_s"],
        "statistical_efficiency": scores["statistical_efficiency"],
        "mfu": scores["mfu"],
        "remeasured_samples_per_s": sel.picked.throughputs,
        "default_throughput_samples_per_s": default_tps,
        # Round-adjusted, as the race compared them (``Selection.over_default``).
        "speedup_vs_default": speedup if speedup is not None else _ratio(tuned_tps, default_tps),
        "goodput_vs_default": (objective_ratio if sel.objective == "goodput" and objective_ratio is not None else
                               _ratio(scores["goodput_samples_per_s"], default_scores["goodput_samples_per_s"])),
        "gradient_noise_scale": scorer.b_noise,
        "noise_scale": {**scorer.noise, "used": scorer.b_noise, "basis": scorer.basis,
                        "throughput_pick": throughput_pick(study)} if scorer.objective == "goodput" else None,
        "reference_batch_size": scorer.reference_batch,
        "flops_per_sample": scorer.flops_per_sample,
        "peak_memory_bytes": sel.trial_attrs.get("peak_memory_bytes"),
        "trial_val_loss": sel.trial_attrs.get("val_loss"),
        "trial_val_accuracy": sel.trial_attrs.get("val_accuracy"),
        "device": profile.device,
    }
    provenance = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "model_file": str(task.path),
        "model_sha256": task.sha256,
        # Exports need it to count optimizer steps (a DeepSpeed scheduler's total).
        "train_samples": len(task.datasets()[0]),
        "seeds": {"train": sel.config.seed, "sampler": task.base.seed},
        "versions": versions(),
        "hardware": {"fingerprint": profile.fingerprint, "device": profile.device,
                     "cpu_model": profile.host.get("cpu_model"),
                     "gpus": [g.get("name") for g in profile.gpus]},
        "search_space": {"name": space.name, "sha256": space.sha256, "source": space.source,
                         "space": space.to_dict(), "gated": space.gated},
        "study": {"storage": storage, "name": study.study_name, "trial": sel.trial_number,
                  "trials": len(study.trials)},
    }
    return TunedConfig(train=sel.config, provenance=provenance, measured=measured)


__all__ = ["FinalOptions", "RunOptions", "default_out", "final_run", "run", "train", "versions"]
