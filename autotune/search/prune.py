"""Pruning: a trial clearly slower than the best so far stops after a few timing windows.

The rule (``clearly_slow``): after ``min_windows`` windows, the median window value in the
objective's units is below ``ratio`` (0.5 by default) times the best completed trial's
value. Only clearly slow configs are stopped: a trial that might still win is measured in
full, so pruning cannot drop a close contender on noise.

A trial runs in its own process and judges itself after each window against the best
value the study had when it started (``Reporting``), so it needs no storage access while
it is timed. The tuner then reports its windows to the study (``trial.report``), where
Optuna's tools show them and ``SlowTrialPruner`` gives the same verdict.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState


def clearly_slow(values: list[float], best: float | None, ratio: float, min_windows: int) -> bool:
    """Whether windows ``values`` show a trial clearly below ``best`` (see the module)."""
    if best is None or ratio == 0.0 or len(values) < min_windows:
        return False
    return statistics.median(values) < ratio * best


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
        return clearly_slow(values, best_completed(study), self.ratio, self.min_windows)


def best_completed(study: optuna.Study) -> float | None:
    return best_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def best_of(trials: list[optuna.trial.FrozenTrial]) -> float | None:
    """The best value of the completed ``trials``; None without one."""
    return max((t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None), default=None)


@dataclass(frozen=True)
class Reporting:
    """How a trial process judges its own windows."""

    best: float | None  # the study's best completed value when the trial started
    scale: float  # objective per sample/s: the statistical efficiency for goodput, else 1
    ratio: float = 0.5
    min_windows: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_judge(spec: dict[str, Any]) -> Callable[[list[float]], None]:
    """A ``ThroughputMeter.on_window`` callback that raises ``optuna.TrialPruned`` once
    the windows so far (samples/s) are clearly slow."""
    r = Reporting(**spec)

    def judge(rates: list[float]) -> None:
        values = [rate * r.scale for rate in rates]
        if clearly_slow(values, r.best, r.ratio, r.min_windows):
            raise optuna.TrialPruned(
                f"clearly slow: median {statistics.median(values):,.0f} after {len(values)} timing windows, "
                f"below {r.ratio:g} x the best completed trial's {r.best:,.0f}"
            )

    return judge
