"""Pruning: a trial clearly slower than the best so far stops after a few timing windows.

The trial runs in its own process, so it reports to the study through the study's
storage: after each timing window it loads its own trial, reports the window's value in
the objective's units, and asks the pruner. Only clearly slow configs are stopped (below
half the best completed value, by default): a trial that might still win is measured in
full, so the pruner cannot crown a lucky one or drop a close one on noise.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState


class SlowTrialPruner(optuna.pruners.BasePruner):
    """Prune when, after ``min_windows`` reports, the median reported value is below
    ``ratio`` times the best completed trial's value. ``ratio`` 0 never prunes."""

    def __init__(self, ratio: float = 0.5, min_windows: int = 2) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"`ratio` must be in [0, 1), but got {ratio}.")
        if min_windows < 1:
            raise ValueError(f"`min_windows` must be >= 1, but got {min_windows}.")
        self.ratio = ratio
        self.min_windows = min_windows

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = list(trial.intermediate_values.values())
        if self.ratio == 0.0 or len(values) < self.min_windows:
            return False
        best = best_completed(study)
        return best is not None and statistics.median(values) < self.ratio * best


def best_completed(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max((v for v in values if v is not None), default=None)


@dataclass(frozen=True)
class Reporting:
    """Where a trial process reports its windows, and how they are judged."""

    storage: str
    study_name: str
    trial_id: int
    scale: float  # objective per sample/s: the statistical efficiency for goodput, else 1
    ratio: float = 0.5
    min_windows: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_reporter(spec: dict[str, Any]) -> Callable[[list[float]], None]:
    """A ``ThroughputMeter.on_window`` callback that reports each window to the study and
    raises ``optuna.TrialPruned`` when the pruner says so."""
    r = Reporting(**spec)
    study = optuna.load_study(study_name=r.study_name, storage=r.storage, pruner=SlowTrialPruner(r.ratio, r.min_windows))
    trial = optuna.Trial(study, r.trial_id)

    def report(rates: list[float]) -> None:
        step = len(rates) - 1
        trial.report(rates[-1] * r.scale, step=step)
        if trial.should_prune():
            best = best_completed(study) or 0.0
            median = statistics.median(rates) * r.scale
            raise optuna.TrialPruned(
                f"clearly slow: median {median:,.0f} after {len(rates)} timing windows, below "
                f"{r.ratio:g} x the best completed trial's {best:,.0f}"
            )

    return report
