"""The GPU acceptance check's time plan and clock: what each check is expected to cost
on one H100/H200, what the time limit leaves each `autotune run` and the single trials,
and the clock each check is started against (skipped, not failed, when it cannot fit).

The seconds come from the first H200 result file
(results/gpu_acceptance-nvidia-h200-2026-12-04.json: its "plan" next to each check's
"seconds", and the digits run's study), rounded up; where a step did not run there (the
ResNet and sequence runs, two GPUs) they are guesses from what it does. They decide only
what is tried in the time limit; no verdict depends on them.

An `autotune run` costs its setup (the hardware profile with its benchmarks, the memory
probe, a process per amp mode, the model's statistics), its trials in the order a cold
study queues them (screen.py: the default, the micro-batch's choices, then the other
knobs' one at a time, the reference re-measured after every three), and its tail: the
selection race (the best five and the default, 2 timing windows each in a fresh process,
4 rounds, the clearly slower cut after 2, contenders to 6: about 22 race runs), the final
run and the report. A run given less than its whole estimate gets a ``--timeout`` that
stops its search after the trials that fit (and, with a fixed ``--trials``, that many
trials); one that cannot hold ``MIN_TRIALS`` trials is skipped with the reason.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from _gpu_checks import Check

# A plain trial: a fresh process from the fork server, CUDA start, 3 warm-up steps, 5
# timing windows of 0.5 s, a few evaluation batches: 3.6-4.2 s on the H200.
PLAIN_TRIAL_S = 4.5
# A compiled trial, its cold Inductor compile included (each trial has a fresh cache): on
# the H200 22 s for default (digits) and reduce-overhead (a single ResNet trial), 79 s for
# max-autotune-no-cudagraphs, which benchmarks kernel candidates.
COMPILE_S = {"default": 25.0, "reduce-overhead": 30.0, "max-autotune-no-cudagraphs": 85.0}
# The selection race: about 22 runs of 2 windows, each in a fresh process. On the H200 the
# digits run's setup, race, final run and report took 94 s together.
RACE_S = 22 * 3.0
REPORT_S = 10.0  # report.md/html with its figures, parameter importances, the profile record
MIN_TRIALS = 3  # a run that cannot hold this many trials in what is left is skipped

# The checks that are not autotune runs, in seconds (the trials check is sized by
# ``pooled_s`` once the runs have said which labels they covered).
CHECK_S = {
    "nvml": 10.0,  # torch's CUDA start and the hardware profile with its short benchmarks (3 s)
    "matmul": 10.0,  # an 8192^3 bf16 matmul, timed after warm-up
    "bandwidth": 5.0,
    "probe": 40.0,  # the ResNet example's probes, each a fresh process, then 2 more (31 s)
    "nproc": 45.0,  # torchrun with 2 ranks (nccl start), 2 epochs of the digits CNN
    "knobs": 0.0,
    "mfu": 0.0,
}


@dataclass(frozen=True)
class RunCost:
    """The guessed seconds of one `autotune run`, by its parts; ``compiles`` maps the
    index of each compiled trial in the study's order (screen.py) to its compile mode, and
    ``free`` holds the indices of trials ruled out unrun (too few optimizer steps)."""

    setup_s: float
    final_s: float  # the final run: the model file's (or --epochs) epochs, evaluations included
    trial_s: float = PLAIN_TRIAL_S
    compiles: dict[int, str] = field(default_factory=dict)
    race_s: float = RACE_S
    free: frozenset[int] = frozenset()

    def trial(self, index: int) -> float:
        if index in self.free:
            return 0.0
        return COMPILE_S[self.compiles[index]] if index in self.compiles else self.trial_s

    def search_s(self, trials: int) -> float:
        """The seconds until ``trials`` trials have run, one after another: the budget counts
        only trials that ran (study.counts), so the free ones on the way cost nothing more."""
        total, index = 0.0, 0
        for _ in range(trials):
            while index in self.free:
                index += 1
            total, index = total + self.trial(index), index + 1
        return total

    def longest_s(self) -> float:
        """The longest trial: the one a search may have just started at its timeout."""
        return max([self.trial_s, *(COMPILE_S[mode] for mode in self.compiles.values())])

    def tail_s(self) -> float:
        return self.race_s + self.final_s + REPORT_S

    def whole_s(self, trials: int) -> float:
        return self.setup_s + self.search_s(trials) + self.tail_s()


@dataclass(frozen=True)
class Fit:
    """What a run gets in the seconds left: ``trials`` (0: skipped), the ``--timeout`` that
    stops its search after them, and its expected seconds."""

    trials: int
    timeout_s: float
    seconds: float
    whole_s: float  # what the run's full budget would take

    @property
    def cut(self) -> bool:
        return self.seconds < self.whole_s


def fit(cost: RunCost, trials: int, seconds: float) -> Fit:
    """The most of ``trials`` trials whose run fits in ``seconds``, and its --timeout: past
    the start of the last of them and half a plain trial short of the start of the next
    (a cut run), or the room left after setup and tail less the longest trial (a whole
    one: the budget ends the search, the timeout only guards against slow trials)."""
    whole = cost.whole_s(trials)
    n = max((k for k in range(trials + 1) if cost.whole_s(k) <= seconds), default=0)
    if n < MIN_TRIALS:
        return Fit(0, 0.0, 0.0, whole)
    if n == trials:
        room = seconds - cost.setup_s - cost.tail_s()
        timeout = max(room - cost.longest_s(), cost.search_s(n) - cost.trial_s / 2)
    else:
        timeout = cost.search_s(n) - cost.trial_s / 2
    return Fit(n, round(timeout), cost.whole_s(n), whole)


def label_s(knobs: dict[str, Any]) -> float:
    """One single trial of ``knobs``: a compiled one pays its cold compile."""
    mode = knobs.get("compile", "off")
    return COMPILE_S.get(mode, PLAIN_TRIAL_S) if mode != "off" else PLAIN_TRIAL_S


def pooled_s(seconds: Iterable[float], parallel: int) -> float:
    """Trials of ``seconds`` run ``parallel`` at a time: the longest, plus the rest shared
    out (contention between the processes is not counted)."""
    values = sorted(seconds, reverse=True)
    return values[0] + sum(values[1:]) / max(parallel, 1) if values else 0.0


def fit_labels(costs: dict[str, float], seconds: float, parallel: int) -> list[str]:
    """Of ``costs`` (label -> seconds, in priority order), the labels taken in that order
    while their pooled time still fits in ``seconds``; a label that does not fit is left
    out and the cheaper ones after it may still be taken."""
    chosen: list[str] = []
    for label, cost in costs.items():
        if pooled_s([costs[c] for c in chosen] + [cost], parallel) <= seconds:
            chosen.append(label)
    return chosen


def plan_lines(rows: list[tuple[str, float, str]], limit_s: float) -> list[str]:
    """The printed plan: one line per check (name, expected seconds, note) and the total."""
    lines = [f"plan for --time-limit {limit_s:.0f} s (expected seconds on an H100/H200, from an H200 run where one ran there):"]
    lines += [f"  {name:<13} {seconds:5.0f} s  {note}".rstrip() for name, seconds, note in rows]
    total = sum(seconds for _, seconds, _ in rows)
    lines.append(f"  {'total':<13} {total:5.0f} s  of {limit_s:.0f} s")
    return lines


# ------------------------------------------------------------------ the clock


class TimeBudget:
    """A running clock against a limit: a check starts only when its estimate still fits."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s, self.clock = limit_s, clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.limit_s - self.elapsed()

    def allows(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.limit_s

    def skip_reason(self, estimate_s: float) -> str:
        return (f"time limit: needs about {estimate_s:.0f} s, {max(self.remaining(), 0):.0f} s left "
                f"of {self.limit_s:.0f} s (--time-limit)")


def run_check(name: str, estimate_s: float, fn: Callable[[], tuple[str, str, dict[str, Any]]], budget: TimeBudget,
              log: Callable[[str], None] = print) -> Check:
    """Run ``fn`` (returning status, figure, detail) as check ``name`` and print its line.

    It is skipped, not failed, when ``estimate_s`` no longer fits in ``budget``; an
    exception from ``fn`` is a FAIL carrying the exception's line and traceback."""
    if not budget.allows(estimate_s):
        check = Check(name, "SKIP", budget.skip_reason(estimate_s))
    else:
        start = time.perf_counter()
        try:
            status, figure, detail = fn()
        except Exception as exc:  # a check that breaks is a failed check, and the rest go on
            status, figure = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            detail = {"traceback": traceback.format_exc()[-4000:]}
        check = Check(name, status, figure, round(time.perf_counter() - start, 1), detail)
    log(check.line())
    return check
