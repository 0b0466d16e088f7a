"""Opening a study: create it (exactly one of several processes does), join it, or resume it.

Creation is a claim on the study's name (``create_new_study`` fails for all but one
process); the creator runs ``prepare`` (profile, memory probe, first trials queued) and
marks the study ``setup: done``; everyone else waits for that, then checks that the study
belongs to the same model file, search space, hardware and objective.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from typing import Any, Callable

import optuna

from autotune.errors import ConfigError
from autotune.search.objective import Scorer
from autotune.search.prune import SlowTrialPruner
from autotune.search.space import SearchSpace, parse_space
from autotune.search.stale import gone_here, owner, setup_heartbeat, stood_still
from autotune.search.storage import is_claim, open_storage, redact
from autotune.search.study import POLL_S
from autotune.model.task import Task
import autotune.search.optuna_adapter as study_data

# How long a process that joins a study waits for the process that created it to finish
# setting it up (profile, memory probe, model statistics), as long as that process's
# heartbeat goes on.
SETUP_WAIT_S = 3600.0


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
        study_data.put(study, "setup", "pending")
        study_data.put(study, "setup_by", owner())
        try:
            with setup_heartbeat(study):
                if prepare is not None:
                    space, scorer = prepare(study, space)
                _write_attrs(study, task, raw, space, fingerprint, seed, scorer)
        except BaseException:
            optuna.delete_study(study_name=name, storage=backend)
            raise
        study_data.put(study, "setup", "done")
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
        study_data.put(study, key, value)
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
    has set it up. Gives up when the creator is gone: its pid no longer runs here, or its
    ``setup_heartbeat`` stood still for STALE_AFTER_S (on any machine), or SETUP_WAIT_S passed."""
    deadline, said = time.monotonic() + SETUP_WAIT_S, False
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=backend)
        except KeyError:
            raise ConfigError(f"The process creating study {name!r} in {redact(storage)} failed, and deleted it.",
                              hint="Its own output says why; run again to create it.") from None
        attrs = study_data.attrs(study)
        if _is_set_up(attrs):
            return {**attrs, "_n_trials": len(study.get_trials(deepcopy=False))}
        creator = str(attrs.get("setup_by", ""))
        gone = gone_here(creator) or stood_still(("setup", storage, name, creator), attrs.get("setup_heartbeat"))
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
