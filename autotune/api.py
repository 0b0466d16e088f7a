"""The Python API: what the command line does, as functions.

    import autotune

    tuning = autotune.tune("examples/digits_cnn.py", trials=12)     # or a model factory
    run = autotune.train(build_model, (train_set, val_set), config=tuning.tuned)
    cfg = autotune.load_config("runs/digits_cnn/tuned.yaml")
    hw = autotune.profile()

``model`` is a model file's path, or a function that builds a new ``nn.Module``; with a
function, ``datasets`` is a ``(train, val)`` pair of datasets or a function returning one,
and the model file's optional names (``loss_fn``, ``build_optimizer``, ``BASE``,
``checkpoint_blocks``, ``CLASS_NAMES``, ``collate_fn``) are keyword arguments. Objects are
handed to the trial processes as ``OUT/model_task.py`` (see ``autotune.model.inmemory``), so
functions must be defined at the top level of a module or script. Errors a user can cause
raise ``autotune.AutotuneError`` (``ConfigError``, ``ModelFileError``, ...), whose
``message`` and ``hint`` say what to change.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from autotune.config import TrainConfig, TunedConfig, load_tuned
from autotune.errors import ConfigError

def _model_file(model: Any, datasets: Any, out: Path, hooks: dict[str, Any]) -> Path:
    """The model file to run: ``model`` itself, or one written from in-memory objects,
    named after ``out`` (the study and the saved results go by that name)."""
    if isinstance(model, (str, Path)):
        if datasets is not None or hooks:
            raise ConfigError(
                "`datasets` and model file hooks are for a model given as a function; a model file defines its own.",
                hint="Pass either a model file's path, or build_model and datasets as objects.",
            )
        return Path(model)
    from autotune.model.inmemory import write_task

    if datasets is None:
        raise ConfigError("a model given as a function needs `datasets`: a (train, val) pair or a function returning one.")
    return write_task(out, re.sub(r"[^A-Za-z0-9_-]", "_", out.resolve().name) or "model", model, datasets, **hooks)


def _default_out(model: Any, suffix: str = "") -> Path:
    name = Path(model).stem if isinstance(model, (str, Path)) else getattr(model, "__name__", "model")
    return Path("runs") / f"{name}{suffix}"


def _options(out: Path, objective: str, trials: int, timeout: float | None, space: str, memory_limit: int | str | None,
             headroom: float, seed: int | None, epochs: int | None, profiles: str | Path | None, warm_start: bool,
             progress: bool, final: Any, trial_budget: Any = None, max_tuning_share: float | None = None) -> Any:
    from autotune.workflow import pipeline
    from autotune.engine.memory import parse_size
    from autotune.search import SearchBudget, TrialBudget

    if objective not in ("goodput", "throughput"):
        raise ConfigError(f"objective must be 'goodput' or 'throughput', not {objective!r}.")
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a whole number >= 1, not {trials!r}.")
    if max_tuning_share is not None and not (isinstance(max_tuning_share, (int, float)) and max_tuning_share > 0):
        raise ConfigError(f"max_tuning_share must be a number > 0, not {max_tuning_share!r}.")
    limit = parse_size(memory_limit) if isinstance(memory_limit, str) else memory_limit
    return pipeline.RunOptions(
        out=out, space=space,
        budget=SearchBudget(n_trials=trials, timeout_s=timeout, max_tuning_share=max_tuning_share,
                            trial=dataclasses.replace(trial_budget or TrialBudget(), memory_limit_bytes=limit)),
        memory_limit=limit, headroom=headroom, objective=objective, seed=seed, epochs=epochs, progress=progress,
        profiles=Path(profiles) if profiles is not None else None, warm_start=warm_start, final=final,
    )


def _final(resume: bool, target_accuracy: float | None, checkpoint_every: int | None, nproc: int) -> Any:
    from autotune.workflow.final import FinalOptions

    return FinalOptions(resume=resume, target_accuracy=target_accuracy, checkpoint_every_steps=checkpoint_every,
                        nproc=nproc)


def tune(model: Any, datasets: Any = None, *, out: str | Path | None = None, objective: str = "goodput",
         trials: int = 24, timeout: float | None = None, space: str = "default",
         memory_limit: int | str | None = None, headroom: float = 0.1, seed: int | None = None,
         profiles: str | Path | None = None, warm_start: bool = True, progress: bool = True,
         trial_budget: Any = None, max_tuning_share: float | None = None, log: Callable[..., Any] = print,
         **hooks: Any) -> Any:
    """Profile this machine, probe the largest micro-batches, search and re-measure, and
    write ``OUT/tuned.yaml`` (``autotune run`` without the final training). Returns a
    ``pipeline.Tuning``: ``.tuned`` (the ``TunedConfig``), ``.path``, ``.study`` (the
    Optuna study), ``.selection`` and ``.profile``. Calling it again on the same ``out``
    resumes the study. ``profiles``: a folder of saved hardware profiles to record the
    result in and warm-start from (default: none). ``trial_budget``: a
    ``search.TrialBudget`` for how long each trial measures (default: autotune's).
    ``max_tuning_share``: stop tuning at this share of the full run's estimated time
    (``--max-tuning-share``)."""
    from autotune.workflow import pipeline

    out = Path(out) if out is not None else _default_out(model)
    path = _model_file(model, datasets, out, hooks)
    opts = _options(out, objective, trials, timeout, space, memory_limit, headroom, seed, None, profiles,
                    warm_start, progress, _final(False, None, None, 1), trial_budget, max_tuning_share)
    return pipeline.tune(path, opts, log)


def run(model: Any, datasets: Any = None, *, out: str | Path | None = None, objective: str = "goodput",
        trials: int = 24, timeout: float | None = None, space: str = "default",
        memory_limit: int | str | None = None, headroom: float = 0.1, seed: int | None = None,
        epochs: int | None = None, profiles: str | Path | None = None, warm_start: bool = True,
        resume: bool = False, target_accuracy: float | None = None, checkpoint_every: int | None = None,
        nproc: int = 1, progress: bool = True, trial_budget: Any = None, max_tuning_share: float | None = None,
        log: Callable[..., Any] = print, **hooks: Any) -> Any:
    """``autotune run``: tune, train with the result, and report. Returns a
    ``pipeline.RunResult``: ``.paths`` (tuned.yaml, the report, the weights), ``.result``
    (the final run's ``TrainResult``, with ``.model`` and ``.evaluation``), ``.config``
    and ``.tuning``."""
    from autotune.workflow import pipeline

    out = Path(out) if out is not None else _default_out(model)
    path = _model_file(model, datasets, out, hooks)
    opts = _options(out, objective, trials, timeout, space, memory_limit, headroom, seed, epochs, profiles,
                    warm_start, progress, _final(resume, target_accuracy, checkpoint_every, nproc), trial_budget,
                    max_tuning_share)
    return pipeline.run_all(path, opts, log)


def train(model: Any, datasets: Any = None, *, config: str | Path | TunedConfig | TrainConfig | dict[str, Any],
          out: str | Path | None = None, epochs: int | None = None, resume: bool = False,
          target_accuracy: float | None = None, checkpoint_every: int | None = None, nproc: int = 1,
          progress: bool = True, log: Callable[..., Any] = print, **hooks: Any) -> Any:
    """``autotune train``: train with a tuned config and report. ``config`` is a tuned
    YAML's path, a ``TunedConfig`` (``tune(...).tuned``, ``load_config(...)``), a
    ``TrainConfig``, or a dict of knobs (the rest at their defaults; ``lr`` is taken as
    given). Returns a ``pipeline.RunResult``."""
    from autotune.workflow import pipeline

    out = Path(out) if out is not None else _default_out(model, "-train")
    path = _model_file(model, datasets, out, hooks)
    return pipeline.train_all(path, _tuned(config), out, epochs, progress, log,
                              _final(resume, target_accuracy, checkpoint_every, nproc))


def _tuned(config: Any) -> Any:
    if isinstance(config, TunedConfig):
        return config
    if isinstance(config, TrainConfig):
        return TunedConfig(train=config)
    if isinstance(config, dict):
        return TunedConfig(train=TrainConfig.from_dict(config, source="the config given to autotune.train"))
    if isinstance(config, (str, Path)):
        return load_tuned(config)
    raise ConfigError(f"config must be a tuned YAML's path, a TunedConfig, a TrainConfig or a dict, not a "
                      f"{type(config).__name__}.")


def load_config(path: str | Path) -> TunedConfig:
    """Read a tuned YAML: ``.train`` (a ``TrainConfig``), ``.measured``, ``.provenance``."""
    return load_tuned(path)


def profile(save: str | Path | None = None, bench: bool = True) -> Any:
    """Profile this machine (NVML and, with ``bench``, short microbenchmarks); with
    ``save``, also write it as YAML there. Returns a ``HardwareProfile`` (``.summary()``
    prints like ``autotune profile``)."""
    from autotune.hardware import collect_profile

    hw = collect_profile(measure=bench)
    if save is not None:
        from autotune.machines.results import save_profile

        save_profile(save, hw)
    return hw


def export(tuned: str | Path | TunedConfig, to: str, out: str | Path | None = None) -> Any:
    """``autotune export``: the tuned config as ``to``'s file (lightning, hf, accelerate,
    deepspeed or json). Returns an ``exports.Export`` (``.text``, ``.notes`` for what the
    target cannot express, ``.mapped``); with ``out`` (or a path as ``tuned``, which
    writes next to it when ``out`` is None) the file is written too."""
    from autotune import exports as ex

    if isinstance(tuned, TunedConfig):
        result = ex.export(tuned, to)
        if out is not None:
            from autotune.config import write_atomic

            write_atomic(out, result.text)
        return result
    return ex.write_export(tuned, to, out)[1]
