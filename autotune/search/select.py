"""Selection: the best few trials re-measured side by side, with the untuned default.

A short trial on a busy machine can get lucky, and the best of many noisy measurements
is biased upwards (the winner's curse). So the ``top`` best distinct configs are measured
again in turns (A B C D, B C D A, ...) in fresh processes, with the default config among
them, and the pick is the candidate with the best round-adjusted level of those
re-measurements (``race.levels``: each round's machine speed taken out; ``race`` also
holds how the runs that go on are chosen).

A race run is shorter than a trial: ``run_windows`` timing windows (2) instead of the
trial's 5. Where a process runs fast or slow as a whole, the median of five windows
spreads across runs about as much as the median of two, so per second of measuring,
short runs tell more. The race spends that on more rounds and more candidates: the best
five trials, because the best config's own trial can be unlucky enough to rank it fifth,
with the runs clearly behind cut after two rounds (``cut``).

After ``rounds`` rounds, the candidates still within ``margin`` of the leader's level
(the contenders) are measured for more rounds, in turns, up to ``max_rounds``: two configs
a few percent apart cannot be told apart by three measurements on a machine whose timings
vary 10-30% between minutes, and the configs clearly behind cost nothing more.

Under goodput, a config at another effective batch than the reference (the model file's
``BASE`` batch) is picked only where it would beat the default even if its samples cost
the objective's margin more than predicted (``at_reference``): its goodput rests on a
predicted sample cost, the reference batch's on none. Among the configs that clear that
bar, and those at the reference batch, the best level wins.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autotune.config import TrainConfig
from autotune.errors import AutotuneError
from autotune.search.objective import Scorer
from autotune.search.study import scorer_of
from autotune.search.trial import TrialBudget, measure
from autotune.search.worker import run_isolated
from autotune.model.task import Task
import autotune.search.optuna_adapter as study_data
from autotune.search.race import Candidate, adjust, contenders, halve, levels, rotated


@dataclass
class Selection:
    picked: Candidate
    candidates: list[Candidate]  # the re-measured ones, best trial value first
    default: Candidate
    objective: str
    rounds: int = 2  # every run's measurements; contenders within margin got up to max_rounds
    max_rounds: int = 2
    margin: float = 0.0
    keep: int | None = None  # how many went on after the first round; None: all (no halving)
    run_windows: int | None = None  # timing windows of one race run (None: recorded before they were shorter)
    cut: float | None = None  # runs this far behind the best level after ``cut_after`` rounds left the race
    cut_after: int | None = None
    passed_over: dict[str, Any] | None = None  # the best level, at another batch, not safe enough to pick (``at_reference``)

    @property
    def trial_number(self) -> int | None:
        return self.picked.trial_number

    def over_default(self) -> tuple[float | None, float | None]:
        """The pick's samples/s and objective over the default's, each round's machine speed
        taken out (``levels``; the objective's are the runs' ``level``): the comparison the
        race picked on, so a pick that won it does not read as slower than the default by
        the plain medians of a few runs. None where either was not measured."""
        runs = self.candidates + ([self.default] if self.default not in self.candidates else [])
        speeds = levels([dict(zip(c.rounds or range(len(c.throughputs)), c.throughputs)) for c in runs])
        i, j = (next(k for k, c in enumerate(runs) if c is one) for one in (self.picked, self.default))
        a, b = self.picked.level, self.default.level
        return speeds[i] / speeds[j] if speeds[i] and speeds[j] else None, a / b if a and b else None  # type: ignore[operator]

    @property
    def config(self) -> TrainConfig:
        return self.picked.config

    @property
    def trial_attrs(self) -> dict[str, Any]:
        return self.picked.trial_attrs

    @classmethod
    def from_dict(cls, data: dict[str, Any], study: optuna.Study) -> Selection:
        """The selection recorded in ``study`` (user attribute ``remeasured``), rebuilt."""
        def candidate(d: dict[str, Any]) -> Candidate:
            attrs = dict(study.trials[d["trial"]].user_attrs) if d.get("trial") is not None else {}
            return Candidate(d.get("trial"), TrainConfig.from_dict(d["config"], source="the study's selection"), attrs,
                             d.get("trial_value"), list(d.get("values", [])), list(d.get("throughputs", [])),
                             list(d.get("rounds", [])), d.get("level", d.get("median")), d.get("trial_mean"),
                             bool(d.get("dropped", False)), list(d.get("windows", [])))

        candidates = [candidate(d) for d in data["candidates"]]
        default = next((c for c in candidates if c.config.to_dict() == data["default"]["config"]), None) or candidate(data["default"])
        if data.get("picked_default"):
            picked = default
        else:
            picked = next(c for c in candidates if c.trial_number == data["picked"])
        return cls(picked, candidates, default, data["objective"], data.get("rounds", 2), data.get("max_rounds", 2),
                   data.get("margin", 0.0), data.get("keep"), data.get("run_windows"), data.get("cut"), data.get("cut_after"),
                   data.get("passed_over"))

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "picked": self.picked.trial_number, "picked_default": self.picked is self.default,
                "candidates": [c.to_dict() for c in self.candidates], "default": self.default.to_dict(),
                "rounds": self.rounds, "max_rounds": self.max_rounds, "margin": self.margin, "keep": self.keep,
                "run_windows": self.run_windows, "cut": self.cut, "cut_after": self.cut_after,
                "passed_over": self.passed_over}


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials with a value, one per distinct config (its best trial), the config
    with the best mean of its measurements first (a config measured twice by the search,
    ``screen.RECHECK``, is ranked by both, not by its luckier one)."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        reasons = sorted({str(t.user_attrs.get("reason", t.state.name)) for t in study.trials})
        raise AutotuneError(
            f"No trial of the study finished with a measurement ({len(study.trials)} tried). "
            f"Reasons seen: {'; '.join(reasons) or 'none'}.",
            hint="Run with --debug, or look at the trials' `reason` in the study.",
        )
    ranked = sorted(_groups(complete), key=_trials_mean, reverse=True)
    return [max(trials, key=lambda t: t.value) for trials in ranked]


def _groups(trials: list[optuna.trial.FrozenTrial]) -> list[list[optuna.trial.FrozenTrial]]:
    """``trials`` grouped by config, in order of first appearance."""
    groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        groups.setdefault(repr(t.user_attrs.get("config")), []).append(t)
    return list(groups.values())


def _trials_mean(trials: list[optuna.trial.FrozenTrial]) -> float:
    # A repeat answered from an earlier trial copies its value: not a measurement.
    measured = [t.value for t in trials if t.user_attrs.get("status") != "duplicate"] or [trials[0].value]
    return statistics.fmean(measured)


def trial_means(study: optuna.Study) -> list[tuple[TrainConfig, float]]:
    """Each config the study measured, with the mean of its completed trials' values."""
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE and t.value is not None and t.user_attrs.get("config")]
    return [(TrainConfig.from_dict(g[0].user_attrs["config"], source=f"trial {g[0].number}"), _trials_mean(g))
            for g in _groups(complete)]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    return ranked_trials(study)[0]


def default_run(study: optuna.Study, task: Task, candidates: list[Candidate]) -> Candidate:
    """The candidate that is the untuned default config, or a new run of it when none is.
    The study's default trial spells out torch's thread count where the model file's BASE
    leaves it at 0, so both spellings are the default: racing them as two configs would
    measure one config twice a round."""
    plain = TrainConfig.from_base(task.base, micro_batch_size=task.base.batch_size)
    spelled = default_configs(study)
    return next((c for c in candidates if c.config == plain or c.config in spelled), None) or Candidate(None, plain, {})


def default_configs(study: optuna.Study) -> list[TrainConfig]:
    """The configs of the study's default trials, as they spelled the default out."""
    return [TrainConfig.from_dict(t.user_attrs["config"], source=f"trial {t.number}")
            for t in study.get_trials(deepcopy=False) if t.user_attrs.get("role") == "default" and t.user_attrs.get("config")]


def select(study: optuna.Study, task: Task, budget: TrialBudget, rounds: int = 4, top: int = 5, progress: bool = True,
           max_rounds: int = 6, margin: float = 0.08, keep: int | None = None, run_windows: int = 2,
           cut: float | None = 0.3, cut_after: int = 2) -> Selection:
    """Re-measure the ``top`` best configs and the default in turns; pick on the levels.

    Each run is a trial of ``budget`` with at most ``run_windows`` timing windows. After
    ``cut_after`` rounds, the runs more than ``cut`` (a fraction) behind the best level
    leave the race (``dropped``; None: none do). Where one run varies by 15%, two configs'
    two-run levels differ by about 15% by chance, and 30% is twice that: a config as fast
    as the leader is rarely cut, and the clearly slow ones (often the default) cost no
    more rounds.

    With ``keep``, only the ``keep`` best go on after the first round (``halve``; None, the
    default, or ``keep`` of at least the field: no halving). Those get ``rounds`` measurements; while more than one
    is within ``margin`` of the best level (round-adjusted, ``levels``), those get another
    round, up to ``max_rounds`` in all (6: races that went on past six rounds nearly
    always kept the pick they had after six, and the extra rounds cost more than a
    quarter of an exhaustive grid's time). The pick is the best level of the runs that went on. The re-measurement is recorded in
    the study (user attribute ``remeasured``).
    """
    scorer = scorer_of(study)
    means = trial_means(study)
    run_budget = dataclasses.replace(budget, windows=max(1, min(budget.windows, run_windows)))

    def mean_of(*configs: TrainConfig) -> float | None:
        return next((m for cfg, m in means if cfg in configs), None)

    candidates = [
        Candidate(t.number, TrainConfig.from_dict(t.user_attrs["config"], source=f"trial {t.number}"),
                  dict(t.user_attrs), t.value)
        for t in ranked_trials(study)[:top]
    ]
    for c in candidates:
        c.trial_mean = mean_of(c.config)
    default = default_run(study, task, candidates)
    runs = list(candidates)
    if default not in candidates:
        default.trial_mean = mean_of(default.config, *default_configs(study))
        runs.append(default)
    halving = keep is not None and keep < len(runs)
    bar = tqdm(total=len(runs) + (keep if halving else len(runs)) * (rounds - 1), desc="re-measure", unit="run",
               disable=not progress)
    batch, going = list(runs), list(runs)
    for done in range(max(rounds, max_rounds)):
        if done == 1 and halving:
            batch = going = halve(runs, keep)
        if cut is not None and done == cut_after and done < rounds:
            ahead = contenders(runs, cut, among=going)
            for c in going:
                c.dropped = c.dropped or c not in ahead
            bar.total -= (len(going) - len(ahead)) * (rounds - done)
            bar.refresh()
            batch = going = ahead
            if len(going) < 2:
                break
        if done >= rounds:
            batch = contenders(runs, margin, among=going)
            if len(batch) < 2:
                break
            bar.total += len(batch)
            bar.refresh()
        for c in rotated(batch, done):
            outcome = run_isolated(
                measure,
                {"model_path": str(task.path), "config": c.config.to_dict(), "budget": run_budget.to_dict()},
                run_budget.timeout_for(c.config),
            )
            value = scorer.value(c.config, outcome.value) if outcome.ok else None
            if value:
                c.values.append(value)
                c.throughputs.append(outcome.value["throughput_samples_per_s"])
                c.rounds.append(done)
                c.windows.append(int(outcome.value.get("windows") or 0))
            bar.update(1)
    bar.close()
    adjust(runs)
    # The default competes too: when no tuned config beats it side by side, it is kept.
    measured = [c for c in going if c.values] or [c for c in runs if c.values] or candidates[:1]
    picked, passed_over = at_reference(measured, default, scorer)
    selection = Selection(picked, candidates, default, scorer.objective, rounds, max(rounds, max_rounds), margin,
                          keep if halving else None, run_budget.windows, cut, cut_after, passed_over)
    study_data.put(study, "remeasured", selection.to_dict())
    return selection


def at_reference(runs: list[Candidate], default: Candidate, scorer: Scorer) -> tuple[Candidate, dict[str, Any] | None]:
    """The pick among ``runs``: the best level of those that are safe, with a record of the
    best one passed over (None when the best is safe).

    A run at the scorer's reference batch is safe: its goodput is measured throughput. A
    run at another effective batch is safe when its level is at least
    ``scorer.lead_needed`` times the default's: even with its samples costing that much
    more than the efficiency curve predicts, it would beat the default. (Where the default
    has no level, the best run at the reference batch stands in for it; where there is
    none either, the best level wins.)"""
    measured = [c for c in runs if c.level]
    best = max(measured or runs, key=lambda c: c.level or 0.0)
    home = [c for c in measured if c.config.effective_batch_size == scorer.reference_batch]
    base = default if default.level else max(home, key=lambda c: c.level or 0.0, default=None)
    if base is None:
        return best, None

    def safe(c: Candidate) -> bool:
        return c.level >= scorer.lead_needed(c.config.effective_batch_size) * base.level  # type: ignore[operator]

    if safe(best):
        return best, None
    picked = max([c for c in measured if safe(c)] or [base], key=lambda c: c.level or 0.0)
    return picked, {"trial": best.trial_number, "effective_batch": best.config.effective_batch_size,
                    "reference_batch": scorer.reference_batch, "lead": best.level / base.level,  # type: ignore[operator]
                    "needed": scorer.lead_needed(best.config.effective_batch_size)}


def throughput_pick(study: optuna.Study) -> dict[str, Any] | None:
    """The measured trial with the most samples/s over the full run: what the pick would have
    been under throughput alone, before the selection's race."""
    key = "effective_throughput_samples_per_s"
    ok = [t for t in study.trials if t.user_attrs.get("status") == "ok" and t.user_attrs.get(key)]
    if not ok:
        return None
    best = max(ok, key=lambda t: t.user_attrs[key])
    return {"trial": best.number, "config": best.user_attrs.get("config"), "samples_per_s": best.user_attrs[key],
            "goodput_samples_per_s": best.user_attrs.get("goodput_samples_per_s")}
