"""``autotune worker`` and ``autotune finalize``: the processes that share one study.

A worker joins a study that ``autotune run`` (or another worker) created on a shared
storage (``search/storage.py``), runs trials until the study's budget is spent, and then,
if no trial runs any more and it claims the finalization first, selects, writes
tuned.yaml, trains and reports: once, from whichever process finished last.
``autotune finalize`` does that last part by hand. The stages themselves are
``pipeline``'s; starting workers from ``autotune run`` is ``parallel``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import autotune.search.optuna_adapter as study_data
from autotune.errors import AutotuneError, ConfigError
from autotune.workflow import pipeline
from autotune.workflow.parallel import trial_device


def work(model_path: str | Path, storage: str, name: str, out: Path, finalize: bool = True, progress: bool = True,
         cpus: list[int] | None = None, create: Any = None, log: Any = print) -> bool:
    """``autotune worker``: join the study, run trials until its budget is spent, and
    finalize when this process is the first to find every trial done (and ``finalize``). Where there is no
    such study, it is created as ``autotune run`` would with ``create`` (``RunOptions``:
    the space and budget); several workers may try that at once, and one does it.
    Returns whether it finalized."""
    from autotune.hardware import collect_profile
    from autotune.search import run_search
    from autotune.search import worker as trial_worker
    from autotune.search.storage import redact
    from autotune.search.opening import join_study, study_exists
    from autotune.model.task import load_task

    if cpus:
        # First: the trial processes fork from a server that ``preload_for`` starts, and
        # inherit its CPUs.
        os.sched_setaffinity(0, cpus)
    task = load_task(model_path)
    if create is not None and not study_exists(storage, name):
        pipeline.setup_study(model_path, create, log, own_budget=False)
    trial_worker.preload_for(task.path)
    profile = collect_profile(measure=False)
    study, space = join_study(storage, name, task, trial_device(profile), log)
    budget = pipeline.study_budget(study, None)
    if budget is None:
        raise ConfigError(f"The study {name!r} in {redact(storage)} has no budget: it was not made by `autotune run`.")
    log(f"autotune: worker joined study {name!r} in {redact(storage)} ({len(study.trials)} trials so far)")
    run_search(study, task, space, budget, progress=progress)
    if not finalize:
        return False
    if not is_last(study):
        log("autotune: the study's budget is spent; another worker finalizes once its trials are done")
        return False
    finalize_study(model_path, storage, name, out, progress=progress, log=log)
    return True


def is_last(study: Any) -> bool:
    """Whether this process should finalize the study: no trial runs any more, and of
    the processes that find so, this one claims it first (a claim on the storage, for the
    study as it stands, counted in finished trials: a study given more budget later is
    finalized again). Trials still queued when the budget ran out, such as screening
    trials of a small budget, stay queued; they are not counted, since a worker's last
    trial may queue one (a step of the climb) between two workers' looks, and the two
    would then claim different keys and both finalize."""
    from optuna.trial import TrialState

    from autotune.search.optuna_adapter import claim

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return False
    return claim(study, f"finalize-{sum(t.state.is_finished() for t in trials)}")


def finalize_study(model_path: str | Path, storage: str, name: str, out: Path, progress: bool = True,
                   epochs: int | None = None, log: Any = print) -> Any:
    """``autotune finalize``: select from the study, write tuned.yaml into ``out``, train
    and report, as ``autotune run`` does after its search. The hardware profile is the one
    the study was created with."""
    import dataclasses

    from optuna.trial import TrialState

    from autotune.hardware import HardwareProfile, collect_profile
    from autotune.search.opening import join_study
    from autotune.search.stale import fail_stale_trials
    from autotune.model.task import load_task

    task = load_task(model_path)
    if epochs is not None:
        task = dataclasses.replace(task, base=dataclasses.replace(task.base, epochs=epochs))
    study, space = join_study(storage, name, task, trial_device(collect_profile(measure=False)), log)
    fail_stale_trials(study)
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if running:
        raise AutotuneError(f"Trials {running} of study {name!r} are still running; finalize once they have finished.",
                            hint="Workers that are still running finalize by themselves when the budget is spent.")
    data = study_data.attrs(study).get("hardware_profile")
    profile = HardwareProfile.from_dict(data, source=f"study {name!r}") if data else collect_profile()
    out.mkdir(parents=True, exist_ok=True)
    opts = pipeline.RunOptions(out=out, storage=storage, study=name, progress=progress, profiles=None)
    tuning = pipeline.select_and_save(task, profile, study, space, storage, opts, 1, log)
    return pipeline.finish(tuning, opts, log)
