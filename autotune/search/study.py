"""The Optuna study: open, join or resume it on a real storage, and run trials until the budget.

Each trial is asked from the study, its knobs suggested by the search space, measured in
a fresh process (``worker.run_isolated``) and told back with its measurements as user
attributes (units in their names), so Optuna's own tools show them.

Any number of processes, on one machine or many, may run trials of one study at once
(``autotune worker``): the study holds everything they share (the gated space, the
scorer, the budget), a trial records which process runs it and that process's heartbeat,
and the search's own bookkeeping (queueing the next stage) is claimed atomically
(``storage.claim``), so no trial is queued, lost or run twice.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.search.objective import Scorer
from autotune.search.prune import Reporting, best_of
from autotune.search.climb import enqueue_refinement
from autotune.search.screen import enqueue_combination, enqueue_screening, enqueue_second_stage, in_stages
from autotune.search.space import SearchSpace
from autotune.search.stale import _stale_after, fail_stale_trials, mark_stale, owner, trial_heartbeat
from autotune.search.optuna_adapter import claim, write_trial
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import Outcome, run_isolated
from autotune.model.task import Task
import autotune.search.optuna_adapter as study_data

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# How often a process waiting on others' trials (or on a study's set-up) looks again.
POLL_S = 0.5
# Set by the CLI's Ctrl-C handler. Python drops a KeyboardInterrupt that lands inside a
# garbage-collection callback (SQLAlchemy has some), so the search also stops on this
# flag at the next trial.
STOP = threading.Event()


@dataclass(frozen=True)
class SearchBudget:
    n_trials: int = 24  # finished trials the study should hold in all
    timeout_s: float | None = None  # no new trial starts after this many seconds
    trial: TrialBudget = TrialBudget()
    # A trial whose median window so far is below this share of the best completed
    # trial's value is stopped (pruned); 0 measures every trial in full.
    prune_below: float = 0.5
    prune_after_windows: int = 2  # ... judged only after this many timing windows
    # Stop tuning once its time reaches this share of the full run's estimated time at the
    # default config (``tuning_estimate``); None: no such limit.
    max_tuning_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "trial"}, "trial": self.trial.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchBudget:
        return cls(**{**data, "trial": TrialBudget(**data.get("trial", {}))})


def scorer_of(study: optuna.Study) -> Scorer:
    """The scorer a study was created with (studies from before scorers: throughput)."""
    return _scorer_in(study_data.attrs(study))


def _scorer_in(study_attrs: dict[str, Any]) -> Scorer:
    return Scorer.from_dict(study_attrs.get("scorer") or {"objective": "throughput"})


def default_knobs(space: SearchSpace, batch: int | None = None) -> dict[str, Any]:
    """The untuned reference config's values of the searched knobs: micro-batch ``batch``
    (the model file's ``BASE`` batch, which goodput counts samples in) where the space holds
    it, else ``TrainConfig``'s; every other knob at ``TrainConfig``'s default."""
    default = TrainConfig()
    knobs = {name: getattr(default, name) for name in space.searched()}
    if batch and "micro_batch_size" in knobs and space.contains({**knobs, "micro_batch_size": batch}):
        knobs["micro_batch_size"] = batch
    if knobs.get("cpu_threads") == 0:  # 0 is torch's default: the count torch picks here
        knobs["cpu_threads"] = torch.get_num_threads()
        choices = space.params["cpu_threads"].choices or []
        if choices and knobs["cpu_threads"] not in choices:
            # CPU workers each get a share of the cores, and the space only counts up to it.
            knobs["cpu_threads"] = max((c for c in choices if c <= knobs["cpu_threads"]), default=min(choices))
    return knobs


def enqueue_default(study: optuna.Study, space: SearchSpace, screening: bool = False, batch: int | None = None) -> bool:
    """Queue the untuned reference config (micro-batch ``batch``, the model file's, fp32, no
    workers: ``default_knobs``) as the first trial, and with ``screening`` the
    one-factor-at-a-time trials around it (``screen``)."""
    if study.trials:
        return False
    knobs = default_knobs(space, batch)
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
    started: float | None = None,
) -> int:
    """Run trials until the study holds ``budget.n_trials`` finished ones, or time is up.

    Trials ruled out before running (infeasible configs) do not count. With the study's
    ``budget.prune_below`` > 0, clearly slow trials stop early (``prune``); every trial's
    timing windows are reported to the study. Other processes may run trials of the same
    study meanwhile: a trial they are running counts towards the budget while it runs
    (so the study does not overshoot it), and this one waits for theirs when nothing else
    is left to start, or when the next screening stage depends on them; a trial of theirs
    that goes stale is failed and queued again here. Returns the number of trials this
    call asked for.

    Once the default config's trial has run, the full run's time at that config is known
    (``tuning_estimate``): the search says what the tuning will cost against it, warning
    where it costs more than the run itself, and with ``budget.max_tuning_share`` stops
    when the time since ``started`` (``time.perf_counter()`` when the tuning began,
    default: now) reaches that share of the run's.
    """
    train_size = len(task.datasets()[0])
    start, ran = time.perf_counter(), 0
    started = start if started is None else started
    estimate = study_data.attrs(study).get("tuning_estimate")
    feasible = lambda knobs: space.infeasible(TrainConfig.from_base(task.base, **knobs), train_size) is None  # noqa: E731
    claims = lambda key: claim(study, key)  # noqa: E731
    # Infeasible and duplicate proposals cost no time and do not count, but must not loop
    # forever: a sampler that proposes only known configs has converged.
    asks_left = 3 * budget.n_trials
    done = sum(counts(t) for t in study.get_trials(deepcopy=False))
    bar = tqdm(total=budget.n_trials, initial=min(done, budget.n_trials), desc="trials", unit="trial", disable=not progress)
    while asks_left > 0:
        if STOP.is_set():
            raise KeyboardInterrupt
        if budget.timeout_s is not None and time.perf_counter() - start >= budget.timeout_s:
            bar.write(f"search timeout of {budget.timeout_s:g} s reached")
            break
        fail_stale_trials(study)
        # Each is due once the trials before it have finished: the micro-batch's screening,
        # then the other knobs' at its best choice, then the combination, then the climb.
        enqueue_second_stage(study, space, claim=claims)
        enqueue_combination(study, space, feasible, claim=claims)
        enqueue_refinement(study, space, claim=claims)
        trials = study.get_trials(deepcopy=False)
        done = sum(counts(t) for t in trials)
        if estimate is None:  # from the same read of the study as the rest of this step
            estimate = tuning_estimate(trials, budget)
            if estimate is not None:
                study_data.put(study, "tuning_estimate", estimate)
                bar.write(estimate_text(estimate, budget.max_tuning_share))
        if (estimate and budget.max_tuning_share
                and time.perf_counter() - started >= budget.max_tuning_share * estimate["full_run_s"]):
            bar.write(f"autotune: tuning stopped at {budget.max_tuning_share:g} of the full run's estimated "
                      f"{estimate['full_run_s']:,.0f} s (--max-tuning-share)")
            study_data.put(study, "stopped_by", "max_tuning_share")
            break
        bar.n = min(done, budget.n_trials)
        bar.refresh()
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= budget.n_trials:
            break
        if running and (done + running >= budget.n_trials or (not waiting and in_stages(study))):
            time.sleep(POLL_S)  # another process's trials decide what comes next
            continue
        frozen = _one_trial(study, task, space, budget, train_size)
        asks_left -= 1
        ran += 1
        if frozen is None:
            continue  # another process failed it as stale meanwhile; it was queued again
        bar.set_postfix_str(_postfix(study, frozen))
        if on_trial is not None:
            on_trial(frozen)
    bar.close()
    return ran


def tuning_estimate(trials: list[optuna.trial.FrozenTrial], budget: SearchBudget) -> dict[str, float] | None:
    """Once the default config's trial has been measured: the full run's seconds at the
    default config (its training samples at the trial's samples/s) and what the tuning
    will take, about the default trial's seconds for each trial of the budget. None
    before that."""
    default = next((t for t in trials if t.user_attrs.get("role") == "default" and t.state == TrialState.COMPLETE
                    and t.user_attrs.get("throughput_samples_per_s") and t.user_attrs.get("run_samples")), None)
    if default is None:
        return None
    attrs = default.user_attrs
    full = attrs["run_samples"] / attrs["throughput_samples_per_s"]
    tuning = (attrs.get("trial_seconds") or 0.0) * budget.n_trials
    return {"full_run_s": full, "tuning_s": tuning, "trial_s": attrs.get("trial_seconds") or 0.0}


def estimate_text(estimate: dict[str, float], share: float | None) -> str:
    """The start-of-search sentence: the full run's time against what tuning will cost."""
    full, tuning = estimate["full_run_s"], estimate["tuning_s"]
    text = (f"autotune: the full run at the default config would take about {full:,.0f} s; the search's trials "
            f"will take about {tuning:,.0f} s")
    if share:
        return text + f", stopped at {share:g} of the run's time ({share * full:,.0f} s, --max-tuning-share)"
    if tuning > full:
        return (text + f", {tuning / full:.1f}x the run itself: for a run this short, --max-tuning-share 0.5 "
                       "(or --trials) bounds the tuning")
    return text


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against the budget: finished, and measured by itself
    (not ruled out unrun, not answered from an earlier trial of the same config, not cut
    short by a stopped tuner: that one is queued again)."""
    return trial.state in FINISHED and trial.user_attrs.get("status") not in ("infeasible", "duplicate", "stale")


def _measured_before(trials: list[optuna.trial.FrozenTrial], cfg: TrainConfig) -> optuna.trial.FrozenTrial | None:
    """Of ``trials``, an earlier measured one of the same config that completed or ran
    out of memory."""
    wanted = cfg.to_dict()
    for t in trials:
        if (t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("status") in ("ok", "oom", "pruned")
                and t.user_attrs.get("config") == wanted):
            return t
    return None


def _running_elsewhere(trials: list[optuna.trial.FrozenTrial], cfg: TrainConfig, number: int) -> optuna.trial.FrozenTrial | None:
    """Of ``trials``, one of the same config that another process is measuring right now
    (an earlier one: of two that drew the same config at once, the first measures it)."""
    wanted = cfg.to_dict()
    for t in trials:
        if (t.state == TrialState.RUNNING and t.number < number and t.user_attrs.get("config") == wanted
                and not t.user_attrs.get("recheck")):
            return t
    return None


def _one_trial(study: optuna.Study, task: Task, space: SearchSpace, budget: SearchBudget,
               train_size: int) -> optuna.trial.FrozenTrial | None:
    """Ask, measure and tell one trial; None when another process failed it as stale
    while it ran. A stop (Ctrl-C) fails it as stale at once, and queues it again."""
    trial = study.ask()
    try:
        write_trial(trial, {"worker": owner(), "heartbeat": time.time()})
        with trial_heartbeat(study, trial):
            return _measure_and_tell(study, trial, task, space, budget, train_size)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    except Exception:
        if study_data.fetch_trial(study, trial).state.is_finished():
            return None  # failed as stale by another process meanwhile (tell says ValueError)
        mark_stale(study, study_data.fetch_trial(study, trial), "the tuner failed while this trial ran")
        raise
    except BaseException:
        mark_stale(study, study_data.fetch_trial(study, trial), "the tuner was stopped while this trial ran")
        raise


def _measure_and_tell(study: optuna.Study, trial: optuna.Trial, task: Task, space: SearchSpace, budget: SearchBudget,
                      train_size: int) -> optuna.trial.FrozenTrial:
    cfg = TrainConfig.from_base(task.base, **space.suggest(trial))
    trial.set_user_attr("config", cfg.to_dict())
    reason = space.infeasible(cfg, train_size)
    if reason:
        write_trial(trial, {"status": "infeasible", "reason": reason})
        return study.tell(trial, state=TrialState.PRUNED)
    # One read of the study serves the checks below (each read costs 5-20 ms on SQLite).
    trials = study.get_trials(deepcopy=False)
    # A recheck (``screen.enqueue_recheck``) measures a config again on purpose.
    recheck = trial.user_attrs.get("recheck")
    busy = None if recheck else _running_elsewhere(trials, cfg, trial.number)
    if busy is not None and trial.user_attrs.get("role") is None:
        write_trial(trial, {"status": "duplicate", "duplicate_of": busy.number,
                            "reason": "another worker was measuring the same config"})
        return study.tell(trial, state=TrialState.PRUNED)
    if busy is not None:
        # A queued trial (a screening choice, a step of the climb) needs the value: wait
        # for the other worker's measurement and answer from it, as from any earlier one.
        deadline = time.monotonic() + budget.trial.timeout_for(cfg) + 2 * _stale_after()
        while not study_data.fetch_trial(study, busy).state.is_finished() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        trials = study.get_trials(deepcopy=False)
    earlier = None if recheck else _measured_before(trials, cfg)
    if earlier is not None:
        # The sampler proposed a config it already has: answer from the earlier
        # measurement instead of spending a trial on it (re-measuring is selection's job).
        attrs = {"status": "duplicate", "duplicate_of": earlier.number}
        if earlier.state == TrialState.COMPLETE:
            write_trial(trial, attrs)
            return study.tell(trial, earlier.value)
        write_trial(trial, {**attrs, "reason": earlier.user_attrs.get("reason", "")})
        return study.tell(trial, state=TrialState.PRUNED)
    study_attrs = study_data.attrs(study)
    scorer = _scorer_in(study_attrs)
    scale = scorer.value(cfg, {"throughput_samples_per_s": 1.0}) or 1.0
    report = None
    if budget.prune_below > 0:
        report = Reporting(best_of(trials), scale, budget.prune_below, budget.prune_after_windows).to_dict()
    start = time.perf_counter()
    outcome = run_isolated(
        measure,
        {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.trial.to_dict(), "report": report},
        budget.trial.timeout_for(cfg),
    )
    # Wall time of the trial process, start to answer: what the measurement cost.
    seconds = time.perf_counter() - start
    # Each window in the objective's units, as Optuna's intermediate values.
    windows = {step: rate * scale for step, rate in enumerate(outcome.value.get("window_samples_per_s") or [])}
    return _tell(study, trial, outcome, cfg, {"trial_seconds": seconds}, windows, study_attrs)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, cfg: TrainConfig,
          attrs: dict[str, Any] | None = None, windows: dict[int, float] | None = None,
          study_attrs: dict[str, Any] | None = None) -> optuna.trial.FrozenTrial:
    """Record the trial's measurements (with ``attrs`` and the ``windows`` as intermediate
    values, all in one write) and tell the study its value or state. ``study_attrs``: the
    study's user attributes, when the caller has read them already."""
    study_attrs = study_data.attrs(study) if study_attrs is None else study_attrs
    scorer = _scorer_in(study_attrs)
    measured = {**(attrs or {}), **outcome.value, **(scorer.score(cfg, outcome.value) if outcome.ok else {})}
    value = scorer.value(cfg, outcome.value) if outcome.ok else None
    _memory_constraint(study_attrs, trial, outcome)  # what the process used, whatever its value
    status = outcome.status
    if outcome.ok and outcome.value.get("pruned"):
        status = "pruned"
    elif outcome.ok and value is None:
        outcome = Outcome("error", reason="the trial ended before a full timing window")
        status = outcome.status
    if not outcome.ok:
        measured["reason"] = outcome.reason
        if outcome.detail:
            measured["traceback"] = outcome.detail[-4000:]
    write_trial(trial, {**measured, "status": status}, windows)
    if status == "pruned":
        return study.tell(trial, state=TrialState.PRUNED)
    if outcome.ok:
        return study.tell(trial, value)
    # Out of memory is a property of the config (too big), so the sampler learns from it;
    # other failures say nothing about the config and are ignored by the sampler.
    state = TrialState.PRUNED if outcome.status == "oom" else TrialState.FAIL
    return study.tell(trial, state=state)


def _memory_constraint(study_attrs: dict[str, Any], trial: optuna.Trial, outcome: Outcome) -> None:
    """Memory over the study's budget (the probe's limit less its headroom) as an Optuna
    constraint: the share of the budget a trial went over by, <= 0 when it stayed within.
    A trial that ran out of memory is over by an unknown amount, counted as 1."""
    probe = study_attrs.get("memory_probe") or {}
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
        text += f", best {best:,.0f} {study_data.attrs(study).get('objective', 'throughput')} samples/s"
    return text
