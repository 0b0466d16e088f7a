"""The race's arithmetic: the runs it measures, their round-adjusted levels, and who goes on.

Round-adjusted: on a shared machine the speed of the whole machine drifts over tens of
seconds, so the runs of one round tend to be fast or slow together. Each run's level is
fitted with each round's own speed factored out (a median polish of the log values: run
effect plus round effect), so a run that happened to be measured in the slow rounds is
not ranked down for it. A level is in the objective's units (samples/s), close to the plain
median where the rounds ran at one speed.

With ``select(keep=...)``, the race halves after its first round (successive halving,
``halve``): the first round measures ``top`` configs and the default once each, and only
the ``keep`` best by that round and their trials together (the geometric mean of the two
looks) go on. It is off by default: where one run of a config varies by 10-25%, one
unlucky first-round run can drop the best config, and halving saves less than it risks.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from autotune.config import TrainConfig


@dataclass
class Candidate:
    trial_number: int | None  # None for the default config when no trial ran it
    config: TrainConfig
    trial_attrs: dict[str, Any]
    trial_value: float | None = None  # the objective as the trial measured it
    values: list[float] = field(default_factory=list)  # the objective, re-measured
    throughputs: list[float] = field(default_factory=list)  # samples/s, re-measured
    rounds: list[int] = field(default_factory=list)  # the round of each value; empty: 0, 1, 2, ...
    windows: list[int] = field(default_factory=list)  # timing windows each re-measured value is the median of
    level: float | None = None  # the objective, round-adjusted (``levels``); None until measured
    trial_mean: float | None = None  # the mean of the config's own trials' objective (the study's look)
    dropped: bool = False  # left the race before its end (``halve``, or ``cut`` in ``select``)

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def by_round(self) -> dict[int, float]:
        """Each re-measured value keyed by the round it was measured in."""
        return dict(zip(self.rounds or range(len(self.values)), self.values))

    def median_throughput(self) -> float | None:
        return statistics.median(self.throughputs) if self.throughputs else None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial_number, "config": self.config.to_dict(), "values": self.values,
                "throughputs": self.throughputs, "rounds": self.rounds, "median": self.median(),
                "level": self.level, "trial_value": self.trial_value, "trial_mean": self.trial_mean,
                "dropped": self.dropped, "windows": self.windows}


def levels(table: list[dict[int, float]], sweeps: int = 20) -> list[float | None]:
    """Each row's level with the columns' effects taken out: ``table[i]`` maps a round to
    run i's value in it (positive; any round may be missing). Fits log value = run effect +
    round effect by medians (Tukey's median polish), and returns exp(run effect + the
    median round effect), in the values' own units; None for a row with no values.

    A round in which every run measured 20% slow moves no level; one run's unlucky round
    moves only its own, and by less than a mean would."""
    cells = [{r: math.log(v) for r, v in row.items() if v and v > 0} for row in table]
    run = [0.0] * len(cells)
    rnd: dict[int, float] = {r: 0.0 for row in cells for r in row}
    for _ in range(sweeps):
        run = [statistics.median(x - rnd[r] for r, x in row.items()) if row else 0.0 for row in cells]
        moved = 0.0
        for r in rnd:
            new = statistics.median(x[r] - run[i] for i, x in enumerate(cells) if r in x)
            moved, rnd[r] = max(moved, abs(new - rnd[r])), new
        if moved < 1e-9:
            break
    typical = statistics.median(rnd.values()) if rnd else 0.0
    return [math.exp(a + typical) if row else None for a, row in zip(run, cells)]


def adjust(runs: list[Candidate]) -> None:
    """Set each run's ``level`` from all runs' re-measurements (``levels``)."""
    for c, level in zip(runs, levels([c.by_round() for c in runs])):
        c.level = level


def halve(runs: list[Candidate], keep: int) -> list[Candidate]:
    """The ``keep`` runs that go on after the race's first round, in ``runs``' order; the
    others are marked ``dropped``. Ranked on the geometric mean of the first round's level
    and the config's trial mean (the round's level alone for a run the study never
    measured, such as a default whose trial was not kept): two noisy looks, one from the
    search and one side by side, rank closer to the truth than either."""
    adjust(runs)
    measured = [c for c in runs if c.values]

    def score(c: Candidate) -> float:
        level = c.level or 0.0
        return math.sqrt(level * c.trial_mean) if c.trial_mean and level > 0 else level

    kept = sorted(measured, key=score, reverse=True)[:keep]
    for c in runs:
        c.dropped = c not in kept
    return [c for c in runs if c in kept]


def contenders(runs: list[Candidate], margin: float, among: list[Candidate] | None = None) -> list[Candidate]:
    """The measured runs (of ``among``, default all) whose level is within ``margin`` (a
    fraction) of the best level; levels are fitted on all ``runs``.

    A run's single measurement that reaches the leader's level does not keep it racing:
    where timings vary by a third between minutes (tiny models on a busy CPU), nearly
    every run has one, and racing them all costs more than the search itself."""
    adjust(runs)
    measured = [c for c in (runs if among is None else among) if c.values]
    if not measured:
        return []
    lead = max(c.level or 0.0 for c in measured)
    return [c for c in measured if (c.level or 0.0) >= (1.0 - margin) * lead]


def rotated(items: list[Any], round_: int) -> list[Any]:
    """``items`` in round ``round_``'s order: each round starts one further along (A B C D,
    B C D A, ...), so no run always follows the same one, or always comes first."""
    turn = round_ % len(items)
    return items[turn:] + items[:turn]
