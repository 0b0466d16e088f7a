"""Screening: a new study first tries every searched choice once, then their best together.

After the default config, each other choice of each searched knob is measured with every
other knob at its default (one factor at a time): 1 + sum(choices - 1) trials that give
each knob's main effect. On real hardware the main effects (a batch size, a dtype, a
memory layout, a thread count) decide most of the speed, and a sampler started from a
dozen random configs over six or more knobs often never tries the best value of one of
them. Then the config that takes, for every knob, the choice that scored best in its
screening trial (by at least 5% over the default's: less is noise) is measured, and then
the single-knob neighbours of the best config so
far (adjacent choices of an ordered knob, every other choice of the rest): a knob's best
choice can change with the others (more threads help a small batch, not a large one).
They are measured one at a time, and as soon as one is better, the neighbours of that one
follow instead (a local search one knob at a time, first improvement), until the best
config's neighbours are all measured.
The sampler (TPE) goes on from all of these.

Range knobs (``low``/``high``) are not screened. Configs ruled out unrun (too big for the
memory limit, too few optimizer steps) cost nothing; a pruned trial counts as the value
it had reached; a knob whose alternatives all failed keeps its default in the combination.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autotune.search.space import SearchSpace

SCREENING, COMBINATION, REFINE = "screening", "combination", "refine"
# Two trials of one config differ by a few percent on a quiet machine (5-10% on a busy
# one): a screened gain below this keeps the default in the combination.
MIN_GAIN = 1.05


def screening_configs(space: SearchSpace, default: dict[str, Any]) -> list[dict[str, Any]]:
    """The one-factor-at-a-time configs around ``default`` (the searched knobs' values)."""
    out = []
    for name in _screened_knobs(space):
        out += [{**default, name: c} for c in space.params[name].choices if c != default.get(name)]
    return out


def _screened_knobs(space: SearchSpace) -> list[str]:
    return [n for n in space.searched() if space.params[n].choices is not None]


def enqueue_screening(study: optuna.Study, space: SearchSpace, default: dict[str, Any]) -> int:
    """Queue the screening trials after whatever is queued already; returns how many."""
    configs = screening_configs(space, default)
    for knobs in configs:
        study.enqueue_trial(knobs, user_attrs={"role": SCREENING})
    study.set_user_attr("screening_default", default)
    return len(configs)


def combination(study: optuna.Study, space: SearchSpace,
                feasible: Callable[[dict[str, Any]], bool] = lambda knobs: True, min_gain: float = MIN_GAIN) -> dict[str, Any] | None:
    """Each knob's best screened choice, once every screening trial has finished; None
    before that, when the study was not screened, or once the combination was queued. A
    choice must beat the default's value by ``min_gain`` (a ratio) to be taken: a smaller
    gain is within the noise of one trial, and the refinement still tries it.

    When the combination is not ``feasible`` (two changes that each fit may not together:
    a bigger micro-batch and more accumulation leave too few optimizer steps), the change
    that gained least in its screening trial goes back to its default, until it is."""
    default = study.user_attrs.get("screening_default")
    trials = study.get_trials(deepcopy=False)
    if default is None or any(t.user_attrs.get("role") == COMBINATION for t in trials):
        return None
    screened = [t for t in trials if t.user_attrs.get("role") in (SCREENING, "default")]
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in screened):
        return None
    best, gains = dict(default), {}
    for name in _screened_knobs(space):
        scores = {}
        for t in screened:
            if all(t.params.get(k) == v for k, v in default.items() if k != name):
                value = _score(t)
                if value is not None:
                    scores[t.params.get(name)] = value
        if scores and max(scores, key=scores.get) != default[name]:
            choice = max(scores, key=scores.get)
            base = scores.get(default[name])
            gain = scores[choice] / base if base else float("inf")
            if gain >= min_gain:
                best[name], gains[name] = choice, gain
    while gains and not feasible(best):
        weakest = min(gains, key=gains.get)
        best[weakest] = default[weakest]
        del gains[weakest]
    return best


def _score(trial: optuna.trial.FrozenTrial) -> float | None:
    """A screening trial's value: its objective, or for a pruned one the median it had
    reached (below half the best by construction); None when it has no measurement."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    values = sorted(trial.intermediate_values.values())
    return values[len(values) // 2] if trial.state == TrialState.PRUNED and values else None


def enqueue_combination(study: optuna.Study, space: SearchSpace,
                        feasible: Callable[[dict[str, Any]], bool] = lambda knobs: True) -> bool:
    """Queue the combination when it is due. One equal to a config already measured is
    answered from that trial, as any repeated proposal is."""
    best = combination(study, space, feasible)
    if best is None:
        return False
    study.enqueue_trial(best, user_attrs={"role": COMBINATION})
    return True


def neighbours(space: SearchSpace, incumbent: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs one knob away from ``incumbent``: for numeric knobs the next smaller and
    larger choice, for the others every other choice."""
    out = []
    for name in _screened_knobs(space):
        choices, current = list(space.params[name].choices), incumbent.get(name)
        if current not in choices:
            continue
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            ordered = sorted(choices)
            i = ordered.index(current)
            near = ordered[max(0, i - 1): i] + ordered[i + 1: i + 2]
        else:
            near = [c for c in choices if c != current]
        out += [{**incumbent, name: c} for c in near]
    return out


def enqueue_refinement(study: optuna.Study, space: SearchSpace) -> int:
    """Once the combination has finished, queue the next unmeasured neighbour of the best
    completed trial, one at a time (first improvement: when a neighbour turns out better,
    the next ones are its neighbours); returns how many were queued (0 or 1). Nothing is
    queued while a refinement trial is pending, nor once every neighbour of the best is
    measured: the sampler goes on from there, and should it find a better config, the
    climb starts again around it."""
    default = study.user_attrs.get("screening_default")
    trials = study.get_trials(deepcopy=False)
    combined = [t for t in trials if t.user_attrs.get("role") == COMBINATION]
    if default is None or not combined or not combined[0].state.is_finished():
        return 0
    if any(t.user_attrs.get("role") == REFINE and not t.state.is_finished() for t in trials):
        return 0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return 0
    incumbent = {k: max(complete, key=lambda t: t.value).params.get(k, v) for k, v in default.items()}
    around = study.user_attrs.get("refined_around", [])
    if not around or around[-1] != incumbent:
        study.set_user_attr("refined_around", around + [incumbent])
    tried = [{k: t.params.get(k) for k in incumbent} for t in trials if t.state.is_finished()]
    for knobs in neighbours(space, incumbent):
        if knobs not in tried:
            study.enqueue_trial(knobs, user_attrs={"role": REFINE})
            return 1
    return 0
