"""What report.json holds of a run, built from the task, the final run's result, the
study and the selection (``pipeline`` calls these; ``report/`` renders the result).

Kept apart from ``pipeline`` so that module only wires the stages together.
"""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata
from typing import Any

import torch

from autotune.config import TrainConfig, TunedConfig
from autotune.engine.loop import TrainResult
from autotune.workflow.final import FinalOptions
from autotune.hardware import HardwareProfile
from autotune.report import evaluation_metrics, knob_effects, param_importances
from autotune.search import SearchBudget
from autotune.search.screen import LEAD
from autotune.search.select import Selection
from autotune.search.space import SearchSpace
from autotune.model.task import Task
import autotune.search.optuna_adapter as study_data


def versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on."""
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for dist in ("autotune", "optuna", "scikit-learn", "numpy", "nvidia-ml-py", "pyyaml", "tqdm", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def report_data(task: Task, cfg: TrainConfig, result: TrainResult, profile: HardwareProfile | None,
                 final: FinalOptions = FinalOptions(), measured: dict[str, Any] | None = None) -> dict[str, Any]:
    ev = result.evaluation
    data: dict[str, Any] = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"file": str(task.path), "sha256": task.sha256, "calling": task.calling, "target": task.target_source},
        "config": result.config or cfg.to_dict(),
        "final": {
            "epochs_run": len(result.history),
            "history": result.history,
            "seconds": result.seconds,
            "samples_per_s": result.samples / result.seconds if result.seconds else None,
            "peak_memory_bytes": result.peak_memory_bytes,
            "val_loss": ev.loss,
            "val_accuracy": ev.accuracy,
            "mfu": _final_mfu(result, measured or {}),
            "accounting": accounting(result, measured or {}),
            "processes": result.processes,
            "resumed_at": result.resumed_at,
        },
        "versions": versions(),
    }
    if final.target_accuracy is not None:
        data["final"]["time_to_target"] = {"target": final.target_accuracy, "metric": "val_accuracy",
                                           "seconds": result.time_to_target_s, "epoch": result.target_epoch}
    evaluation = evaluation_metrics(ev.y_true, ev.y_pred, task.class_names)
    if evaluation is not None:
        data["evaluation"] = evaluation
    if profile is not None:
        data["hardware"] = {
            "fingerprint": profile.fingerprint,
            "device": profile.device,
            "cpu_model": profile.host.get("cpu_model"),
            "logical_cores": profile.host.get("logical_cores"),
            "memory_total_bytes": profile.host.get("memory_total_bytes"),
            "gpus": [str(g.get("name")) for g in profile.gpus],
            "nvml": profile.nvml.get("message") or "",
        }
    return data


# A final run's training steps slower or faster than the selection measured by more than
# this share are flagged, with the likely cause.
GAP = 0.15


def accounting(result: TrainResult, measured: dict[str, Any]) -> dict[str, Any] | None:
    """The final run against the search's prediction: the selection's measured samples/s
    for the config, the samples/s its training steps achieved (``Ledger.training``, per
    process), their ratio, where the rest of the wall time went, and, when the ratio is
    off by more than ``GAP``, the likely cause. None without a ledger (an old result)."""
    ledger = result.ledger
    if not ledger or not ledger.get("total"):
        return None
    processes = max(result.processes, 1)
    samples = ledger.get("samples", result.samples / processes)  # this process's, rank 0's under torchrun
    achieved = samples / ledger["training"] if ledger.get("training", 0) > 0 else None
    selected = measured.get("throughput_samples_per_s")
    ratio = achieved / selected if achieved and selected else None
    parts = {k: ledger.get(k, 0.0) for k in ("setup", "epoch_start", "training", "compile", "evaluation", "checkpoints")}
    out: dict[str, Any] = {
        "selected_samples_per_s": selected,
        "achieved_samples_per_s": achieved,
        "ratio": ratio,
        "seconds": {**parts, "data_wait": ledger.get("data_wait", 0.0),
                    "other": max(0.0, ledger["total"] - sum(parts.values())), "total": ledger["total"]},
        "end_to_end_samples_per_s": samples / ledger["total"],
        "gap": None,
    }
    if ratio is not None and abs(ratio - 1) > GAP:
        out["gap"] = _likely_cause(ratio, ledger, measured, result.config)
    return out


def _likely_cause(ratio: float, ledger: dict[str, float], measured: dict[str, Any], config: dict[str, Any]) -> str:
    """The likeliest reason a final run's training steps ran at ``ratio`` of the selection's
    figure, from what the run itself measured."""
    from autotune.hardware import usable_cores

    waited = ledger.get("data_wait", 0.0) / ledger["training"] if ledger.get("training") else 0.0
    trial_waited = measured.get("data_wait_fraction") or 0.0
    threads, workers = config.get("cpu_threads") or 0, config.get("num_workers") or 0
    if ratio < 1 and waited > trial_waited + 0.10:
        return (f"data loading: the training steps waited for batches {waited:.0%} of the time, "
                f"the trials {trial_waited:.0%}")
    if ratio < 1 and threads and workers and threads + workers > usable_cores():
        return (f"oversubscribed cores: {threads} trainer thread(s) and {workers} DataLoader worker(s) "
                f"on {usable_cores()} usable core(s)")
    if ratio < 1:
        return "the machine was slower or busier during the final run than during the search"
    return "the machine was faster or less busy during the final run than during the search"


def _final_mfu(result: TrainResult, measured: dict[str, Any]) -> float | None:
    """The final run's MFU per device: its training samples/s (evaluations excluded) over
    the tuned trial's, times the MFU measured with it (same FLOPs a sample, same peak)."""
    seconds = sum(row.get("seconds") or 0.0 for row in result.history)
    samples = sum(row.get("samples") or 0 for row in result.history)
    tps, mfu = measured.get("throughput_samples_per_s"), measured.get("mfu")
    if not (seconds > 0 and samples and tps and mfu is not None):
        return None
    return mfu * (samples / seconds / max(result.processes, 1)) / tps


def search_data(study: Any, space: SearchSpace, budget: SearchBudget) -> dict[str, Any]:
    trials = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name.lower(), "value": t.value, **t.user_attrs}
        row.pop("traceback", None)
        trials.append(row)
    choices = {n: list(space.params[n].choices) for n in space.searched() if space.params[n].choices is not None}
    attrs = study_data.attrs(study)
    return {
        "space": space.to_dict(),
        "gated": space.gated,
        "warm_start": study_data.attrs(study).get("warm_start"),
        "memory_probe": study_data.attrs(study).get("memory_probe"),
        "budget": {"n_trials": budget.n_trials, "timeout_s": budget.timeout_s, "prune_below": budget.prune_below,
                   "max_tuning_share": budget.max_tuning_share, "trial": budget.trial.to_dict()},
        "tuning_estimate": attrs.get("tuning_estimate"),
        "stopped_by": attrs.get("stopped_by"),
        "objective": study_data.attrs(study).get("objective", "throughput"),
        "trials": trials,
        "param_importances": param_importances(study),
        "knob_effects": knob_effects(study.get_trials(deepcopy=False), study_data.attrs(study).get("screening_default"), choices,
                                     study_data.attrs(study).get("screening_base"), LEAD),
    }


def selection_data(sel: Selection, tuned: TunedConfig) -> dict[str, Any]:
    keys = ("throughput_samples_per_s", "goodput_samples_per_s", "statistical_efficiency", "mfu",
            "default_throughput_samples_per_s", "speedup_vs_default", "goodput_vs_default", "gradient_noise_scale",
            "noise_scale", "tuning_seconds")
    return {**sel.to_dict(), **{k: tuned.measured.get(k) for k in keys}}
