"""Selection: the best trial, re-measured side by side with the untuned default config."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.errors import AutotuneError
from autotune.search.study import OBJECTIVE
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import run_isolated
from autotune.task import Task


@dataclass
class Selection:
    trial_number: int
    config: TrainConfig
    trial_attrs: dict[str, Any]
    # Re-measured samples/s, interleaved in one run: {"tuned": [...], "default": [...]}.
    remeasured: dict[str, list[float]] = field(default_factory=dict)

    def median(self, role: str) -> float | None:
        values = self.remeasured.get(role) or []
        return statistics.median(values) if values else None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        reasons = sorted({str(t.user_attrs.get("reason", t.state.name)) for t in study.trials})
        raise AutotuneError(
            f"No trial of the study finished with a measurement ({len(study.trials)} tried). "
            f"Reasons seen: {'; '.join(reasons) or 'none'}.",
            hint="Run with --debug, or look at the trials' `reason` in the study.",
        )
    return max(complete, key=lambda t: t.value)


def select(study: optuna.Study, task: Task, budget: TrialBudget, rounds: int = 2, progress: bool = True) -> Selection:
    """Pick the best trial and re-measure it against the default config, interleaved.

    The two configs are measured in turns (tuned, default, tuned, default, ...) in fresh
    processes, so both see the same machine conditions; the medians are what the tuned
    config reports as its throughput and its speed-up.
    """
    best = best_trial(study)
    tuned = TrainConfig.from_dict(best.user_attrs["config"], source=f"trial {best.number}")
    default = TrainConfig.from_base(task.base)
    configs = {"tuned": tuned}
    if default != tuned:
        configs["default"] = default
    remeasured: dict[str, list[float]] = {role: [] for role in configs}
    bar = tqdm(total=rounds * len(configs), desc="re-measure", unit="run", disable=not progress)
    for _ in range(rounds):
        for role, cfg in configs.items():
            outcome = run_isolated(
                measure,
                {"model_path": str(task.path), "config": cfg.to_dict(), "budget": budget.to_dict()},
                budget.timeout_s,
            )
            if outcome.ok and outcome.value.get(OBJECTIVE):
                remeasured[role].append(outcome.value[OBJECTIVE])
            bar.update(1)
    bar.close()
    if "default" not in configs:
        remeasured["default"] = list(remeasured["tuned"])
    study.set_user_attr("remeasured", {"trial": best.number, **remeasured})
    return Selection(best.number, tuned, dict(best.user_attrs), remeasured)
