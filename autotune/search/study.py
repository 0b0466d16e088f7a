"""The Optuna study: open or resume it on a real storage, and run trials until the budget.

Each trial is asked from the study, its knobs suggested by the search space, measured in
a fresh process (``worker.run_isolated``) and told back with its measurements as user
attributes (units in their names), so Optuna's own tools show them.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.errors import ConfigError
from autotune.search.objective import Scorer
from autotune.search.prune import Reporting, SlowTrialPruner, best_completed
from autotune.search.screen import enqueue_combination, enqueue_refinement, enqueue_screening, enqueue_second_stage
from autotune.search.space import SearchSpace, parse_space
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import Outcome, run_isolated
from autotune.task import Task

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class SearchBudget:
    n_trials: int = 24  # finished trials the study should hold in all
    timeout_s: float | None = None  # no new trial starts after this many seconds
    trial: TrialBudget = TrialBudget()
    # A trial whose median window so far is below this share of the best completed
    # trial's value is stopped (pruned); 0 measures every trial in full.
    prune_below: float = 0.5
    prune_after_windows: int = 2  # ... judged only after this many timing windows


def open_study(
    storage: str, name: str, task: Task, raw: SearchSpace, space: SearchSpace, fingerprint: str, seed: int,
    scorer: Scorer | None = None,
) -> tuple[optuna.Study, SearchSpace]:
    """Create the study, or load it when it exists; returns it with the space it searches.

    ``raw`` is the space as written in its YAML, ``space`` the same gated for this machine.
    A resumed study keeps the gated space and the scorer it was created with (so a
    microbenchmark that comes out differently this time cannot change the choices or the
    scale mid-study), and must belong to the same model file, the same YAML, the same
    hardware and the same objective. ``scorer`` defaults to goodput without a noise-scale
    estimate, which scores like throughput.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    existing = _existing_attrs(storage, name)
    n_done = existing.pop("_n_trials", 0)
    sampler = optuna.samplers.TPESampler(seed=seed + n_done, n_startup_trials=5)
    study = optuna.create_study(
        storage=rdb_storage(storage), study_name=name, direction="maximize", sampler=sampler, pruner=SlowTrialPruner(),
        load_if_exists=True,
    )
    if existing:
        _check_same(existing, task, raw, fingerprint, storage)
        if scorer is not None and existing.get("objective") != scorer.objective:
            raise ConfigError(
                f"The study in {storage} maximises {existing.get('objective')}, not {scorer.objective}; "
                "its trials' values cannot be compared with new ones.",
                hint="Use another --out folder for a new study, or run with the study's --objective.",
            )
        stored = parse_space(existing["search_space"], source=raw.source)
        return study, dataclasses.replace(stored, gated=existing.get("gated", {}))
    attrs = {
        "model_file": str(task.path),
        "model_sha256": task.sha256,
        "search_space_name": raw.name,
        "search_space_sha256": raw.sha256,
        "search_space": space.to_dict(),
        "gated": space.gated,
        "hardware_fingerprint": fingerprint,
        "objective": (scorer or Scorer()).objective,
        "scorer": (scorer or Scorer()).to_dict(),
        "seed": seed,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    # The objective's name and unit, for optuna-dashboard and Optuna's plots.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names([f"{attrs['objective']}_samples_per_s"])
    return study, space


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage for ``url``; a SQLite file is opened in write-ahead-log mode with
    ``synchronous=NORMAL``. A trial writes some forty values (measurements, windows), each
    its own transaction: with SQLite's default every commit waits for the disk (0.30 s a
    trial here), in WAL mode none does (0.04 s). A crash of the tuner loses nothing; a
    power loss may lose the last trials."""
    storage = optuna.storages.RDBStorage(url)
    if url.startswith("sqlite:"):
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()  # connections made before the listener are closed
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def study_exists(storage: str, name: str) -> bool:
    optuna.logging.set_verbosity(logging.WARNING)
    return bool(_existing_attrs(storage, name))


def scorer_of(study: optuna.Study) -> Scorer:
    """The scorer a study was created with (studies from before scorers: throughput)."""
    return Scorer.from_dict(study.user_attrs.get("scorer") or {"objective": "throughput"})


def _existing_attrs(storage: str, name: str) -> dict[str, Any]:
    try:
        old = optuna.load_study(study_name=name, storage=rdb_storage(storage))
    except KeyError:
        return {}
    return {**old.user_attrs, "_n_trials": len(old.trials)}


def _check_same(attrs: dict[str, Any], task: Task, raw: SearchSpace, fingerprint: str, storage: str) -> None:
    hint = "Use another --out folder for a new study, or delete the old one."
    if attrs.get("model_sha256") != task.sha256:
        raise ConfigError(
            f"The study in {storage} was made for a different version of the model file "
            f"({attrs.get('model_file')}); resuming it would mix results of two models.",
            hint=hint,
        )
    if attrs.get("search_space_sha256") != raw.sha256:
        raise ConfigError(
            f"The study in {storage} was made with a different search space "
            f"({attrs.get('search_space_name')!r} with other choices than {raw.source}); "
            "resuming it would mix two spaces.",
            hint=hint,
        )
    if attrs.get("hardware_fingerprint") != fingerprint:
        raise ConfigError(
            f"The study in {storage} was measured on other hardware "
            f"({attrs.get('hardware_fingerprint')}, this machine is {fingerprint}); "
            "throughputs of two machines cannot be compared in one study.",
            hint=hint,
        )


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a tuner that was stopped (killed, or the machine went
    down) as failed, with the reason, and queue each one's config again, once: a trial
    that was itself such a retry is not queued a third time, and one stopped before it
    had a config (between Optuna's ask and the draw) has nothing to retry. Returns how
    many."""
    stale = [t for t in study.trials if t.state == TrialState.RUNNING]
    for t in stale:
        live = optuna.trial.Trial(study, t._trial_id)
        live.set_user_attr("status", "stale")
        live.set_user_attr("reason", "the tuner stopped while this trial ran")
        study.tell(t.number, state=TrialState.FAIL)
        study.set_user_attr(f"stale_trial_{t.number}", "the tuner stopped while it ran")
        # Its config: the knobs it had drawn, or for a queued trial stopped before drawing
        # them, the ones it was queued with; a trial stopped before either had none.
        knobs = t.params or t.system_attrs.get("fixed_params")
        if knobs and t.user_attrs.get("retry_of") is None:
            attrs = {k: v for k, v in t.user_attrs.items() if k == "role"}
            study.enqueue_trial(knobs, user_attrs={**attrs, "retry_of": t.number})
    return len(stale)


def default_knobs(space: SearchSpace) -> dict[str, Any]:
    """The untuned reference config's values of the searched knobs."""
    default = TrainConfig()
    knobs = {name: getattr(default, name) for name in space.searched()}
    if knobs.get("cpu_threads") == 0:  # 0 is torch's default: the count torch picks here
        knobs["cpu_threads"] = torch.get_num_threads()
    return knobs


def enqueue_default(study: optuna.Study, space: SearchSpace, screening: bool = False) -> bool:
    """Queue the untuned reference config (batch 32, fp32, no workers) as the first trial,
    and with ``screening`` the one-factor-at-a-time trials around it (``screen``)."""
    if study.trials:
        return False
    knobs = default_knobs(space)
    if not space.contains(knobs):
        return False
    study.enqueue_trial(knobs, user_attrs={"role": "default"})
    if screening:
        enqueue_screening(study, space, knobs)
    return True


def run_search(
    study: optuna.Study,
    task: Task,
    space: SearchSpace,
    budget: SearchBudget,
    progress: bool = True,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> int:
    """Run trials until the study holds ``budget.n_trials`` finished ones, or time is up.

    Trials ruled out before running (infeasible configs) do not count. With the study's
    ``budget.prune_below`` > 0, clearly slow trials stop early (``prune``); every trial's
    timing windows are reported to the study. Returns the number of trials this call
    asked for.
    """
    done = sum(_counts(t) for t in study.trials)
    train_size = len(task.datasets()[0])
    start, ran = time.perf_counter(), 0
    # Infeasible and duplicate proposals cost no time and do not count, but must not loop
    # forever: a sampler that proposes only known configs has converged.
    asks_left = 3 * budget.n_trials
    bar = tqdm(total=budget.n_trials, initial=min(done, budget.n_trials), desc="trials", unit="trial", disable=not progress)
    while done < budget.n_trials and asks_left > 0:
        if budget.timeout_s is not None and time.perf_counter() - start >= budget.timeout_s:
            bar.write(f"search timeout of {budget.timeout_s:.0f} s reached")
            break
        # Each is due once the trials before it have finished: the micro-batch's screening,
        # then the other knobs' at its best choice, then the combination.
        enqueue_second_stage(study, space)
        enqueue_combination(study, space, lambda knobs: space.infeasible(TrainConfig.from_base(task.base, **knobs), train_size) is None)
        enqueue_refinement(study, space)  # due once the combination has finished
        frozen = _one_trial(study, task, space, budget, train_size)
        asks_left -= 1
        ran += 1
        if _counts(frozen):
            done += 1
            bar.update(1)
        bar.set_postfix_str(_postfix(study, frozen))
        if on_trial is not None:
            on_trial(frozen)
    bar.close()
    return ran


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against the budget: finished, and measured by itself
    (not ruled out unrun, not answered from an earlier trial of the same config, not cut
    short by a stopped tuner: that one is queued again)."""
    return trial.state in FINISHED and trial.user_attrs.get("status") not in ("infeasible", "duplicate", "stale")


def _measured_before(study: optuna.Study, cfg: TrainConfig) -> optuna.trial.FrozenTrial | None:
    """An earlier measured trial of the same config that completed or ran out of memory."""
    wanted = cfg.to_dict()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("status") in ("ok", "oom", "pruned") and t.user_attrs.get("config") == wanted:
            return t
    return None


def _one_trial(study: optuna.Study, task: Task, space: SearchSpace, budget: SearchBudget, train_size: int) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    cfg = TrainConfig.from_base(task.base, **space.suggest(trial))
    trial.set_user_attr("config", cfg.to_dict())
    reason = space.infeasible(cfg, train_size)
    if reason:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("reason", reason)
        return study.tell(trial, state=TrialState.PRUNED)
    # A recheck (``screen.enqueue_recheck``) measures a config again on purpose.
    earlier = None if trial.user_attrs.get("recheck") else _measured_before(study, cfg)
    if earlier is not None:
        # The sampler proposed a config it already has: answer from the earlier
        # measurement instead of spending a trial on it (re-measuring is selection's job).
        trial.set_user_attr("status", "duplicate")
        trial.set_user_attr("duplicate_of", earlier.number)
        if earlier.state == TrialState.COMPLETE:
            return study.tell(trial, earlier.value)
        trial.set_user_attr("reason", earlier.user_attrs.get("reason", ""))
        return study.tell(trial, state=TrialState.PRUNED)
    scale = scorer_of(study).value(cfg, {"throughput_samples_per_s": 1.0}) or 1.0
    report = None
    if budget.prune_below > 0:
        report = Reporting(best_completed(study), scale, budget.prune_below, budget.prune_after_windows).to_dict()
    start = time.perf_counter()
    outcome = run_isolated(
        measure,
        {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.trial.to_dict(), "report": report},
        budget.trial.timeout_s,
    )
    # Wall time of the trial process, start to answer: what the measurement cost.
    trial.set_user_attr("trial_seconds", time.perf_counter() - start)
    for step, rate in enumerate(outcome.value.get("window_samples_per_s") or []):
        trial.report(rate * scale, step)  # each window in the objective's units
    return _tell(study, trial, outcome, cfg)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, cfg: TrainConfig) -> optuna.trial.FrozenTrial:
    trial.set_user_attr("status", outcome.status)
    scorer = scorer_of(study)
    measured = {**outcome.value, **(scorer.score(cfg, outcome.value) if outcome.ok else {})}
    for key, value in measured.items():
        trial.set_user_attr(key, value)
    value = scorer.value(cfg, outcome.value) if outcome.ok else None
    _memory_constraint(study, trial, outcome)
    if outcome.ok and outcome.value.get("pruned"):
        trial.set_user_attr("status", "pruned")
        return study.tell(trial, state=TrialState.PRUNED)
    if outcome.ok and value is None:
        outcome = Outcome("error", reason="the trial ended before a full timing window")
        trial.set_user_attr("status", outcome.status)
    if outcome.ok:
        return study.tell(trial, value)
    trial.set_user_attr("reason", outcome.reason)
    if outcome.detail:
        trial.set_user_attr("traceback", outcome.detail[-4000:])
    # Out of memory is a property of the config (too big), so the sampler learns from it;
    # other failures say nothing about the config and are ignored by the sampler.
    state = TrialState.PRUNED if outcome.status == "oom" else TrialState.FAIL
    return study.tell(trial, state=state)


def _memory_constraint(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Memory over the study's budget (the probe's limit less its headroom) as an Optuna
    constraint: the share of the budget a trial went over by, <= 0 when it stayed within.
    A trial that ran out of memory is over by an unknown amount, counted as 1."""
    probe = study.user_attrs.get("memory_probe") or {}
    if not probe.get("limit_bytes"):
        return
    budget = probe["limit_bytes"] * (1 - probe.get("headroom", 0.0))
    used = outcome.value.get("memory_used_bytes", outcome.value.get("peak_memory_bytes"))
    if outcome.status == "oom":
        trial.set_constraint("memory", 1.0)
    elif outcome.ok and used is not None:
        trial.set_constraint("memory", used / budget - 1.0)


def _postfix(study: optuna.Study, last: optuna.trial.FrozenTrial) -> str:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max((t.value for t in complete), default=None)
    status = last.user_attrs.get("status", last.state.name.lower())
    text = f"last: {status}"
    if best is not None:
        text += f", best {best:,.0f} {study.user_attrs.get('objective', 'throughput')} samples/s"
    return text
