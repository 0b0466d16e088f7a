"""The climb: from the screening's combination, the best config's neighbours one at a time.

Once the combination (``screen.py``) has been measured, the neighbours of the best config
so far are (adjacent choices of an ordered knob, every other choice of the rest, and the
moves that keep the effective batch: half the micro-batch with twice the accumulation, or
the reverse): a knob's best choice can still change with the others. They are measured one
at a time (those that change the micro-batch first, then the rest in the order the
screening expects most of, ``screen.screened_estimate``), and as soon as one is better by
at least 3%, the neighbours of that one follow instead (a local search one knob at a
time, first improvement; a smaller lead is noise and would only send the climb sideways),
until the current config's neighbours are all measured; then the neighbours of the
configs within 10% of it (a few trials cannot rank configs that close).

One trial of a config can be lucky by 10-20% on a busy machine, and a lucky incumbent
stops the climb. A config's score in the climb is the mean of its measurements, and when
every neighbour of the climb's config has been measured, that config is measured once
more (a recheck) before the climb is done with it: if its mean falls behind another
config's, the climb moves there. The sampler (TPE) goes on from all of these.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from autotune.search.screen import (
    COMBINATION, LEAD, RECHECK, REFINE, Claim, alone, enqueue_recheck, screened_estimate, screened_knobs,
)
from autotune.search.space import SearchSpace
import autotune.search.optuna_adapter as study_data

# A neighbour must beat the climb's current config by this much to move the climb there.
MIN_MOVE = 1.03
# Once the climb is done, the neighbours of configs within this share of its config's
# score are measured too: a few trials cannot rank configs closer than this.
NEAR = 0.10


def neighbours(space: SearchSpace, incumbent: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs one knob away from ``incumbent``: for numeric knobs the next smaller and
    larger choice, for the others every other choice. Then the moves that keep the
    effective batch: half the micro-batch with twice the accumulation, and the reverse
    (the same samples per optimizer step, so the same statistical efficiency, with another
    trade of memory traffic against per-step overhead: one knob at a time never gets
    there, since either change alone leaves the effective batch, or too few steps)."""
    out = []
    for name in screened_knobs(space):
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
    mb, acc = (space.params.get(n) for n in ("micro_batch_size", "accumulation_steps"))
    if mb is not None and acc is not None and mb.choices and acc.choices and len(mb.choices) > 1 and len(acc.choices) > 1:
        m, a = incumbent.get("micro_batch_size"), incumbent.get("accumulation_steps")
        for m2, a2 in ((m // 2 if m else None, a * 2 if a else None), (m * 2 if m else None, a // 2 if a else None)):
            if m2 in mb.choices and a2 in acc.choices:
                out.append({**incumbent, "micro_batch_size": m2, "accumulation_steps": a2})
    return out


def config_scores(trials: list[optuna.trial.FrozenTrial], default: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Each measured config's knobs and objective values (its completed trials; a repeated
    proposal answered from an earlier trial is not a measurement), by ``repr`` of its knobs."""
    out: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None and t.user_attrs.get("status") != "duplicate":
            knobs = {k: t.params.get(k, v) for k, v in default.items()}
            out.setdefault(repr(knobs), (knobs, []))[1].append(t.value)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def enqueue_refinement(study: optuna.Study, space: SearchSpace, min_move: float = MIN_MOVE, claim: Claim = alone) -> int:
    """Once the combination has finished, queue the next unmeasured neighbour of the
    climb's current config, one at a time; returns how many were queued (0 or 1).

    Configs are compared by the mean of their measurements. The current config is the
    best one, unless the config the climb is at already scored within ``min_move`` of it:
    then the climb stays (first improvement by a margin: when a neighbour turns out
    clearly better, the next ones are its neighbours). Once every neighbour of the current
    config is measured, the config itself is measured once more (``RECHECK``) if it was
    measured only once. Then the unmeasured neighbours of the configs within ``NEAR`` of
    it follow, best first (should one of them turn out clearly better, the climb moves
    there). Nothing is queued while a refinement or recheck is pending, nor once all of
    these are measured: the sampler goes on from there, and should it find a clearly
    better config, the climb starts again around it. Of several processes sharing the study, the one that gets the claim for
    this step of the climb queues it."""
    default = study_data.attrs(study).get("screening_default")
    trials = study.get_trials(deepcopy=False)
    combined = [t for t in trials if t.user_attrs.get("role") == COMBINATION]
    if default is None or not combined or not combined[0].state.is_finished():
        return 0
    if any(t.user_attrs.get("role") in (REFINE, RECHECK) and not t.state.is_finished() for t in trials):
        return 0
    scores = config_scores(trials, default)
    if not scores:
        return 0
    best = max(scores.values(), key=lambda s: _mean(s[1]))
    around = study_data.attrs(study).get("refined_around", [])
    incumbent = best[0]
    if around and repr(around[-1]) in scores:
        if _mean(best[1]) < min_move * _mean(scores[repr(around[-1])][1]):
            incumbent = around[-1]
    if not around or around[-1] != incumbent:
        study_data.put(study, "refined_around", around + [incumbent])
    tried = [{k: t.params.get(k, v) for k, v in default.items()} for t in trials if t.state.is_finished()]
    step = f"climb-{sum(t.user_attrs.get('role') in (REFINE, RECHECK) for t in trials)}"
    role, knobs = next(_climb_steps(space, scores, incumbent, tried, screened_estimate(study, space)), (None, None))
    if role is None or not claim(step):
        return 0
    if role == RECHECK:
        enqueue_recheck(study, knobs)
    else:
        study.enqueue_trial(knobs, user_attrs={"role": REFINE})
    return 1


def _climb_steps(space: SearchSpace, scores: dict[str, tuple[dict[str, Any], list[float]]], incumbent: dict[str, Any],
                 tried: list[dict[str, Any]], estimate: Callable[[dict[str, Any]], float] = lambda knobs: 1.0
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The climb's next trials, in order: the unmeasured neighbours of its config, that
    config again if it was measured once, then the unmeasured neighbours of the configs
    within NEAR of it, best first. (Those configs are as good as the climb's as far as a
    few noisy trials can tell: a climb from one of them can reach what none from the
    climb's config does.) A config's neighbours that change the micro-batch come first,
    as ``neighbours`` lists them: what a batch gains depends most on the other knobs (a
    step in bf16 with channels_last holds more work than the default's, which the
    micro-batch was screened at). The rest follow in the order of the screening's
    ``estimate`` of them, highest first: the budget may end before the last, and a choice
    that lost by half in its screening trial is the least likely to win now."""
    def ordered(config: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted(neighbours(space, config),
                      key=lambda knobs: (knobs.get(LEAD) == config.get(LEAD), -estimate(knobs)))

    for knobs in ordered(incumbent):
        if knobs not in tried:
            yield REFINE, knobs
    if len(scores[repr(incumbent)][1]) < 2:
        yield RECHECK, incumbent
    lead = _mean(scores[repr(incumbent)][1])
    near = sorted((s for s in scores.values() if s[0] != incumbent and _mean(s[1]) >= (1 - NEAR) * lead),
                  key=lambda s: -_mean(s[1]))
    for config, _ in near:
        for knobs in ordered(config):
            if knobs not in tried:
                yield REFINE, knobs
