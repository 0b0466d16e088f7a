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
import logging
import os
import socket
import threading
import warnings
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.errors import ConfigError
from autotune.search.objective import Scorer
from autotune.search.prune import Reporting, SlowTrialPruner, best_completed
from autotune.search.screen import enqueue_combination, enqueue_refinement, enqueue_screening, enqueue_second_stage, in_stages
from autotune.search.space import SearchSpace, parse_space
from autotune.search.storage import claim, is_claim, open_storage, redact
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import Outcome, run_isolated
from autotune.task import Task

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A running trial's process writes a heartbeat this often (seconds); a trial whose
# heartbeat is older than STALE_AFTER_S (and whose process, on this machine, is gone) is
# failed as stale and its config queued again. AUTOTUNE_STALE_AFTER_S overrides it.
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
# How long a process that joins a study waits for the process that created it to finish
# setting it up (profile, memory probe, model statistics), and how often it looks.
SETUP_WAIT_S = 3600.0
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

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "trial"}, "trial": self.trial.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchBudget:
        return cls(**{**data, "trial": TrialBudget(**data.get("trial", {}))})


def open_study(
    storage: str, name: str, task: Task, raw: SearchSpace, space: SearchSpace, fingerprint: str, seed: int,
    scorer: Scorer | None = None,
    prepare: Callable[[optuna.Study, SearchSpace], tuple[SearchSpace, Scorer | None]] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[optuna.Study, SearchSpace]:
    """Create the study, or join it when it exists; returns it with the space it searches.

    ``raw`` is the space as written in its YAML, ``space`` the same gated for this machine.
    Creation is a claim: of several processes that open a new study at once, exactly one
    creates it and calls ``prepare(study, space)`` (which may probe memory, measure the
    model, queue the first trials, and returns the space and scorer to store); the others
    wait until it is set up. Should ``prepare`` fail, the half-made study is deleted.

    A joined or resumed study keeps the gated space and the scorer it was created with
    (so a microbenchmark that comes out differently this time cannot change the choices
    or the scale mid-study), and must belong to the same model file, the same YAML, the
    same hardware and the same objective. ``scorer`` defaults to goodput without a noise-
    scale estimate, which scores like throughput.
    """
    optuna.logging.set_verbosity(logging.WARNING)
    backend = open_storage(storage)
    try:
        backend.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    if created:
        study = _load(backend, name, seed)
        study.set_user_attr("setup", "pending")
        study.set_user_attr("setup_by", owner())
        try:
            if prepare is not None:
                space, scorer = prepare(study, space)
            _write_attrs(study, task, raw, space, fingerprint, seed, scorer)
        except BaseException:
            optuna.delete_study(study_name=name, storage=backend)
            raise
        study.set_user_attr("setup", "done")
        return study, space
    existing = _wait_set_up(backend, name, storage, log)
    study = _load(backend, name, seed + existing.pop("_n_trials", 0))
    _check_same(existing, task, raw, fingerprint, storage)
    if scorer is not None and existing.get("objective") != scorer.objective:
        raise ConfigError(
            f"The study in {redact(storage)} maximises {existing.get('objective')}, not {scorer.objective}; "
            "its trials' values cannot be compared with new ones.",
            hint="Use another --out folder for a new study, or run with the study's --objective.",
        )
    stored = parse_space(existing["search_space"], source=raw.source)
    return study, dataclasses.replace(stored, gated=existing.get("gated", {}))


def join_study(storage: str, name: str, task: Task, device: str,
               log: Callable[[str], None] = lambda line: None) -> tuple[optuna.Study, SearchSpace]:
    """Join a study another process created (``autotune worker``, ``autotune finalize``),
    waiting until it is set up; returns it with its gated space. It must be for the same
    model file and, where the study names it, the same trial device (``trial_device``)."""
    optuna.logging.set_verbosity(logging.WARNING)
    backend = open_storage(storage)
    if not study_exists(storage, name):
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(backend) if not is_claim(s.study_name))
        raise ConfigError(f"There is no study {name!r} in {redact(storage)} (it holds: {', '.join(names) or 'none'}).",
                          hint="Start it with `autotune run MODEL --storage URL --study NAME`, or name one it holds.")
    existing = _wait_set_up(backend, name, storage, log)
    study = _load(backend, name, int(existing.get("seed", 0)) + existing.pop("_n_trials", 0) + os.getpid())
    if existing.get("model_sha256") != task.sha256:
        raise ConfigError(
            f"The study {name!r} in {redact(storage)} is for another version of the model file "
            f"({existing.get('model_file')}): this worker's {task.path} differs from it.",
            hint="Run every worker with the same model file as the study.",
        )
    if existing.get("trial_device") not in (None, device):
        raise ConfigError(
            f"The study {name!r} measures trials on {existing['trial_device']}; this worker has {device}. "
            "Throughputs of two kinds of device cannot be compared in one study.",
            hint="Run workers only on machines with the same kind of device as the study's.",
        )
    stored = parse_space(existing["search_space"], source=f"study {name!r}")
    return study, dataclasses.replace(stored, gated=existing.get("gated", {}))


def _load(backend: Any, name: str, seed: int) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    return optuna.load_study(study_name=name, storage=backend, sampler=sampler, pruner=SlowTrialPruner())


def _write_attrs(study: optuna.Study, task: Task, raw: SearchSpace, space: SearchSpace, fingerprint: str, seed: int,
                 scorer: Scorer | None) -> None:
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


def _is_set_up(attrs: dict[str, Any]) -> bool:
    """A study is ready to join once its creator wrote ``setup: done`` (a study from
    before workers has no ``setup``, only the rest)."""
    return attrs.get("setup", "done") == "done" and "model_sha256" in attrs


def _wait_set_up(backend: Any, name: str, storage: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The study's user attributes (and its trial count as ``_n_trials``) once its creator
    has set it up; waits up to SETUP_WAIT_S."""
    deadline, said = time.monotonic() + SETUP_WAIT_S, False
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=backend)
        except KeyError:
            raise ConfigError(f"The process creating study {name!r} in {redact(storage)} failed, and deleted it.",
                              hint="Its own output says why; run again to create it.") from None
        attrs = study.user_attrs
        if _is_set_up(attrs):
            return {**attrs, "_n_trials": len(study.get_trials(deepcopy=False))}
        where, _, pid = str(attrs.get("setup_by", "")).rpartition(":")
        gone = where == _here() and pid.isdigit() and not _pid_alive(int(pid))
        if gone or time.monotonic() > deadline:
            raise ConfigError(
                f"The study {name!r} in {redact(storage)} exists but was never set up: the process that created "
                "it (profile, memory probe) stopped before it finished.",
                hint=f"Delete it (optuna delete-study --study-name {name} --storage URL) and start again.",
            )
        if not said:
            log(f"autotune: waiting for the process that created study {name!r} to finish setting it up")
            said = True
        time.sleep(POLL_S)


def study_exists(storage: str, name: str) -> bool:
    """Whether ``storage`` holds a study ``name`` (set up or being set up)."""
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return False
    return True


def scorer_of(study: optuna.Study) -> Scorer:
    """The scorer a study was created with (studies from before scorers: throughput)."""
    return Scorer.from_dict(study.user_attrs.get("scorer") or {"objective": "throughput"})


def _check_same(attrs: dict[str, Any], task: Task, raw: SearchSpace, fingerprint: str, storage: str) -> None:
    hint = "Use another --out folder for a new study, or delete the old one."
    if attrs.get("model_sha256") != task.sha256:
        raise ConfigError(
            f"The study in {redact(storage)} was made for a different version of the model file "
            f"({attrs.get('model_file')}); resuming it would mix results of two models.",
            hint=hint,
        )
    if attrs.get("search_space_sha256") != raw.sha256:
        raise ConfigError(
            f"The study in {redact(storage)} was made with a different search space "
            f"({attrs.get('search_space_name')!r} with other choices than {raw.source}); "
            "resuming it would mix two spaces.",
            hint=hint,
        )
    if attrs.get("hardware_fingerprint") != fingerprint:
        raise ConfigError(
            f"The study in {redact(storage)} was measured on other hardware "
            f"({attrs.get('hardware_fingerprint')}, this machine is {fingerprint}); "
            "throughputs of two machines cannot be compared in one study.",
            hint=hint,
        )


def _here() -> str:
    """This machine, as far as process ids mean anything: the host name, and on Linux the
    process-id namespace (containers that share a host name do not share pids)."""
    try:
        return f"{socket.gethostname()}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def owner() -> str:
    """This process, as a trial's ``worker`` attribute names it: host[:pid namespace]:pid."""
    return f"{_here()}:{os.getpid()}"


def _stale_after() -> float:
    return float(os.environ.get("AUTOTUNE_STALE_AFTER_S", STALE_AFTER_S))


# What this process saw of each running trial's heartbeat, and since when (its own
# monotonic clock): a heartbeat is judged by whether it changes, so the clocks of two
# machines never need to agree.
_seen: dict[tuple[int, int], tuple[Any, float]] = {}


def _is_stale(trial: optuna.trial.FrozenTrial, study_id: int) -> bool:
    """A running trial whose process is gone: on this machine, its pid no longer runs; on
    any, its heartbeat (or, for one with no heartbeat yet, anything about it) has not
    changed for STALE_AFTER_S while this process watched."""
    where, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if where == _here() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
        return True
    key, beat, now = (study_id, trial._trial_id), trial.user_attrs.get("heartbeat"), time.monotonic()
    seen = _seen.get(key)
    if seen is None or seen[0] != beat:
        _seen[key] = (beat, now)
        return False
    return now - seen[1] > _stale_after()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: optuna.Study, everyone: bool = False) -> int:
    """Fail the trials left RUNNING by a tuner that stopped (killed, or its machine went
    down) with the reason, and queue each one's config again, once. With ``everyone``,
    every running trial counts as stale (only for a study no other process uses); else
    only those ``_is_stale`` finds. Returns how many this process failed."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if everyone or _is_stale(t, study._study_id)]
    return sum(mark_stale(study, t, "the tuner stopped while this trial ran") for t in stale)


def mark_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Fail one running trial as stale and queue its config again, unless it was itself
    such a retry, or was stopped before it had a config (between Optuna's ask and the
    draw). Safe when several processes find the same trial: one of them does it."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "status", "stale")
        study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # it finished after all, or another process failed it first
    if not claim(study, f"stale-{trial.number}"):
        return False
    study.set_user_attr(f"stale_trial_{trial.number}", reason)
    # Its config: the knobs it had drawn, or for a queued trial stopped before drawing
    # them, the ones it was queued with; a trial stopped before either had none.
    knobs = trial.params or trial.system_attrs.get("fixed_params")
    if knobs and trial.user_attrs.get("retry_of") is None:
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("role", "recheck")}
        study.enqueue_trial(knobs, user_attrs={**attrs, "retry_of": trial.number})
    return True


class Heartbeat:
    """While a trial runs, write its ``heartbeat`` (time.time()) every HEARTBEAT_S from a
    thread, so other processes can tell it from one whose tuner is gone."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float = HEARTBEAT_S) -> None:
        self._study, self._trial_id, self._interval = study, trial._trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autotune-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._study._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())
            except Exception:  # finished meanwhile, or the database blinked: the next beat tries again
                pass


def default_knobs(space: SearchSpace) -> dict[str, Any]:
    """The untuned reference config's values of the searched knobs."""
    default = TrainConfig()
    knobs = {name: getattr(default, name) for name in space.searched()}
    if knobs.get("cpu_threads") == 0:  # 0 is torch's default: the count torch picks here
        knobs["cpu_threads"] = torch.get_num_threads()
        choices = space.params["cpu_threads"].choices or []
        if choices and knobs["cpu_threads"] not in choices:
            # CPU workers each get a share of the cores, and the space only counts up to it.
            knobs["cpu_threads"] = max((c for c in choices if c <= knobs["cpu_threads"]), default=min(choices))
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
    timing windows are reported to the study. Other processes may run trials of the same
    study meanwhile: a trial they are running counts towards the budget while it runs
    (so the study does not overshoot it), and this one waits for theirs when nothing else
    is left to start, or when the next screening stage depends on them; a trial of theirs
    that goes stale is failed and queued again here. Returns the number of trials this
    call asked for.
    """
    train_size = len(task.datasets()[0])
    start, ran = time.perf_counter(), 0
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
            bar.write(f"search timeout of {budget.timeout_s:.0f} s reached")
            break
        fail_stale_trials(study)
        # Each is due once the trials before it have finished: the micro-batch's screening,
        # then the other knobs' at its best choice, then the combination, then the climb.
        enqueue_second_stage(study, space, claim=claims)
        enqueue_combination(study, space, feasible, claim=claims)
        enqueue_refinement(study, space, claim=claims)
        trials = study.get_trials(deepcopy=False)
        done = sum(counts(t) for t in trials)
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


def counts(trial: optuna.trial.FrozenTrial) -> bool:
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


def _running_elsewhere(study: optuna.Study, cfg: TrainConfig, number: int) -> optuna.trial.FrozenTrial | None:
    """A trial of the same config that another process is measuring right now (an earlier
    one: of two that drew the same config at once, the first measures it)."""
    wanted = cfg.to_dict()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number < number and t.user_attrs.get("config") == wanted and not t.user_attrs.get("recheck"):
            return t
    return None


def _one_trial(study: optuna.Study, task: Task, space: SearchSpace, budget: SearchBudget,
               train_size: int) -> optuna.trial.FrozenTrial | None:
    """Ask, measure and tell one trial; None when another process failed it as stale
    while it ran. A stop (Ctrl-C) fails it as stale at once, and queues it again."""
    trial = study.ask()
    try:
        trial.set_user_attr("worker", owner())
        trial.set_user_attr("heartbeat", time.time())
        with Heartbeat(study, trial):
            return _measure_and_tell(study, trial, task, space, budget, train_size)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    except Exception:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return None  # failed as stale by another process meanwhile (tell says ValueError)
        mark_stale(study, study._storage.get_trial(trial._trial_id), "the tuner failed while this trial ran")
        raise
    except BaseException:
        mark_stale(study, study._storage.get_trial(trial._trial_id), "the tuner was stopped while this trial ran")
        raise


def _measure_and_tell(study: optuna.Study, trial: optuna.Trial, task: Task, space: SearchSpace, budget: SearchBudget,
                      train_size: int) -> optuna.trial.FrozenTrial:
    cfg = TrainConfig.from_base(task.base, **space.suggest(trial))
    trial.set_user_attr("config", cfg.to_dict())
    reason = space.infeasible(cfg, train_size)
    if reason:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("reason", reason)
        return study.tell(trial, state=TrialState.PRUNED)
    # A recheck (``screen.enqueue_recheck``) measures a config again on purpose.
    recheck = trial.user_attrs.get("recheck")
    busy = None if recheck else _running_elsewhere(study, cfg, trial.number)
    if busy is not None and trial.user_attrs.get("role") is None:
        trial.set_user_attr("status", "duplicate")
        trial.set_user_attr("duplicate_of", busy.number)
        trial.set_user_attr("reason", "another worker was measuring the same config")
        return study.tell(trial, state=TrialState.PRUNED)
    if busy is not None:
        # A queued trial (a screening choice, a step of the climb) needs the value: wait
        # for the other worker's measurement and answer from it, as from any earlier one.
        deadline = time.monotonic() + budget.trial.timeout_s + 2 * _stale_after()
        while not study._storage.get_trial(busy._trial_id).state.is_finished() and time.monotonic() < deadline:
            time.sleep(POLL_S)
    earlier = None if recheck else _measured_before(study, cfg)
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
