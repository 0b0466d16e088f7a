"""Screening: a new study first tries every searched choice once, then their best together.

After the default config, each other choice of each searched knob is measured with every
other knob at a base config (one factor at a time), which gives each knob's main effect.
On real hardware the main effects (a batch size, a dtype, a memory layout, a thread count)
decide most of the speed, and a sampler started from a dozen random configs over six or
more knobs often never tries the best value of one of them.

The micro-batch is screened first, around the default; the other knobs then around the
default with the best screened micro-batch (the base). How much a dtype, a thread count or
a DataLoader worker gains depends most on how much work a step holds: bf16 matmuls that
lose at 32 samples can win at 256. The knobs of each ``PAIRS`` entry (the AMP dtype and
channels_last) are also screened together, both changed at once: each can lose alone and
both win together. Then the config that takes, for every knob, the choice
that scored best in its screening trial (by at least 5% over the base's: less is noise;
a pair's choices when the pair gained more than its knobs' own choices together) is
measured, and then the neighbours of the best config so far (adjacent choices of an
ordered knob, every other choice of the rest, and the moves that keep the effective batch:
half the micro-batch with twice the accumulation, or the reverse): a knob's best choice
can still change with the others. They are measured one at a time (those that change the
micro-batch first, then the rest in the order the screening expects most of,
``screened_estimate``), and as soon as one is better by at least
3%, the neighbours of that one follow instead (a local search one knob at a time, first
improvement; a smaller lead is noise and would only send the climb sideways), until the
current config's neighbours are all measured; then the neighbours of the configs within
10% of it (a few trials cannot rank configs that close).

One trial of a config can be lucky by 10-20% on a busy machine, and every gain above is a
ratio to a reference config: a lucky reference hides every real gain, and a lucky
incumbent stops the climb. The machine's own speed also drifts by 20-30% over minutes:
a stage of seven choices measured in a slow minute, against a reference measured before
it in a fast one, loses every gain (in one benchmark run here bf16 was dropped so, and
the grid's best config was a bf16 one). So each stage's reference (the default for the
micro-batch; the base, a screened micro-batch or the default, for the other knobs) is
measured again after every ``REFERENCE_EVERY`` of its choices and after the last, and
each choice's gain is its value over the mean of the reference's measurements nearest
before and after it: no choice is more than two trials from a measurement of what it is
compared with. A base other than the default is also measured once more before its
choices: its one earlier measurement is the one that made it the base, so it is more
likely lucky than not, and would hide the gains of the first choices after it. A
config's score in the climb is the mean of its measurements, and when every neighbour
of the climb's config has been measured, that config is measured once more (a recheck)
before the climb is done with it: if its mean falls behind another config's, the climb
moves there. The sampler (TPE) goes on from all of these.

Range knobs (``low``/``high``) are not screened. Configs ruled out unrun (too big for the
memory limit, too few optimizer steps) cost nothing; a pruned trial counts as the value
it had reached; a knob whose alternatives all failed keeps its base choice in the
combination. A study screened by an older version (no ``screening_rest``) screened every
knob around the default at once, and is read that way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from autotune.search.space import SearchSpace

SCREENING, COMBINATION, REFINE, RECHECK = "screening", "combination", "refine", "recheck"
# Two trials of one config differ by a few percent on a quiet machine (5-10% on a busy
# one): a screened gain below this keeps the default in the combination.
MIN_GAIN = 1.05
# A neighbour must beat the climb's current config by this much to move the climb there.
MIN_MOVE = 1.03
# Once the climb is done, the neighbours of configs within this share of its config's
# score are measured too: a few trials cannot rank configs closer than this.
NEAR = 0.10
# Screened first; the other knobs are screened at its best choice.
LEAD = "micro_batch_size"
# A stage's reference config is measured again after every this many of its choices
# (and after the last): each choice is then compared with a measurement at most two
# trials away, for one extra trial per three choices.
REFERENCE_EVERY = 3
# Knobs screened together as well as alone: a mixed-precision dtype and a memory layout
# can each lose alone and win together (oneDNN's bf16 convolutions on the CPU and
# tensor-core convolutions on a GPU want channels_last; measured on the digits CNN here:
# bf16 alone 0.72 of the base, channels_last alone 0.86, both the grid's fastest).
PAIRS = (("amp", "channels_last"),)


def screening_configs(space: SearchSpace, default: dict[str, Any], knobs: list[str] | None = None) -> list[dict[str, Any]]:
    """The one-factor-at-a-time configs around ``default`` (the searched knobs' values),
    for ``knobs`` (default: every screened knob)."""
    out = []
    for name in _screened_knobs(space) if knobs is None else knobs:
        out += [{**default, name: c} for c in space.params[name].choices if c != default.get(name)]
    return out


def pair_configs(space: SearchSpace, base: dict[str, Any], knobs: list[str]) -> list[dict[str, Any]]:
    """The configs around ``base`` that change both knobs of a ``PAIRS`` entry (both in
    ``knobs``) to another choice each."""
    screened = _screened_knobs(space)
    out = []
    for a, b in PAIRS:
        if a in knobs and b in knobs and a in screened and b in screened:
            out += [{**base, a: ca, b: cb} for ca in space.params[a].choices if ca != base.get(a)
                    for cb in space.params[b].choices if cb != base.get(b)]
    return out


def _screened_knobs(space: SearchSpace) -> list[str]:
    return [n for n in space.searched() if space.params[n].choices is not None]


def enqueue_screening(study: optuna.Study, space: SearchSpace, default: dict[str, Any]) -> int:
    """Queue the first screening trials after whatever is queued already (the micro-batch's
    choices when it is searched with other knobs, else every knob's); returns how many.
    The rest follow from ``enqueue_second_stage`` once these have finished."""
    screened = _screened_knobs(space)
    first = [LEAD] if LEAD in screened and len(screened) > 1 else screened
    queued = _enqueue_stage(study, screening_configs(space, default, first) + pair_configs(space, default, first), default)
    study.set_user_attr("screening_default", default)
    study.set_user_attr("screening_rest", [n for n in screened if n not in first])
    return queued


def _enqueue_stage(study: optuna.Study, configs: list[dict[str, Any]], reference: dict[str, Any],
                   first: bool = False, **attrs: Any) -> int:
    """Queue one stage's screening ``configs`` with ``reference`` measured again after
    every ``REFERENCE_EVERY`` of them and after the last (and with ``first`` before
    them too); returns how many were queued."""
    queued = 0
    if first and configs:
        enqueue_recheck(study, reference, **attrs)
        queued += 1
    for i, knobs in enumerate(configs, 1):
        study.enqueue_trial(knobs, user_attrs={"role": SCREENING, **attrs})
        queued += 1
        if i % REFERENCE_EVERY == 0 or i == len(configs):
            enqueue_recheck(study, reference, **attrs)
            queued += 1
    return queued


def enqueue_recheck(study: optuna.Study, knobs: dict[str, Any], **attrs: Any) -> None:
    """Queue one more measurement of ``knobs``: it runs even though the config was
    measured before (any other repeated proposal is answered from the earlier trial)."""
    study.enqueue_trial(knobs, user_attrs={"role": RECHECK, "recheck": True, **attrs})


def _screened_done(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial] | None:
    """The default, screening and recheck trials, or None while one is still to run."""
    screened = [t for t in trials if t.user_attrs.get("role") in (SCREENING, "default", RECHECK)]
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in screened):
        return None
    return screened


def _gains(screened: list[optuna.trial.FrozenTrial], names: tuple[str, ...],
           ref: dict[str, Any]) -> dict[tuple[Any, ...], float]:
    """The mean gain of each combination of other choices of ``names`` (every one changed)
    with every other knob as in ``ref``. A trial's gain is its value over the mean of
    ``ref``'s measurements nearest before and after it (``reference_level``)."""
    refs = [(t.number, v) for t in screened
            if all(t.params.get(k) == v for k, v in ref.items()) and (v := _score(t)) is not None]
    gains: dict[tuple[Any, ...], list[float]] = {}
    for t in screened:
        if all(t.params.get(n) != ref.get(n) for n in names) \
                and all(t.params.get(k) == v for k, v in ref.items() if k not in names):
            value = _score(t)
            if value is not None:
                level = reference_level(refs, t.number)[0]
                gains.setdefault(tuple(t.params.get(n) for n in names), []).append(value / level if level else float("inf"))
    return {choice: sum(values) / len(values) for choice, values in gains.items()}


def _best_choice(screened: list[optuna.trial.FrozenTrial], name: str, ref: dict[str, Any],
                 min_gain: float) -> tuple[Any, float] | None:
    """The choice of ``name`` that gained most with every other knob as in ``ref``, and
    that gain (``_gains``); None when none gained ``min_gain``."""
    scores = _gains(screened, (name,), ref)
    if not scores:
        return None
    choice = max(scores, key=scores.get)
    return (choice[0], scores[choice]) if scores[choice] >= min_gain else None


def reference_level(refs: list[tuple[int, float]], number: int) -> tuple[float | None, list[int]]:
    """The level a screening trial ``number`` is compared with: the mean value of the
    reference config's measurements ``refs`` ((trial number, value) pairs) nearest
    before and after it, and their trial numbers; (None, []) without any."""
    before = [r for r in refs if r[0] < number]
    after = [r for r in refs if r[0] > number]
    near = ([max(before)] if before else []) + ([min(after)] if after else [])
    if not near:
        return None, []
    return sum(v for _, v in near) / len(near), [n for n, _ in near]


Claim = Callable[[str], bool]


def _alone(key: str) -> bool:
    return True


def in_stages(study: optuna.Study) -> bool:
    """Whether the study is still screening: what it queues next depends on the trials
    running now, so a process with nothing queued should wait for them."""
    if study.user_attrs.get("screening_default") is None:
        return False
    combined = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("role") == COMBINATION]
    return not combined or not combined[0].state.is_finished()


def enqueue_second_stage(study: optuna.Study, space: SearchSpace, min_gain: float = MIN_GAIN, claim: Claim = _alone) -> int:
    """Once the micro-batch's screening trials have finished, queue the other knobs'
    choices around the base: the default with the best screened micro-batch (when it beat
    the default's by ``min_gain``). Returns how many were queued; 0 when not due, or when
    another process sharing the study got ``claim("second-stage")`` first."""
    default, rest = study.user_attrs.get("screening_default"), study.user_attrs.get("screening_rest")
    if default is None or not rest or "screening_base" in study.user_attrs:
        return 0
    screened = _screened_done(study.get_trials(deepcopy=False))
    if screened is None or not claim("second-stage"):
        return 0
    best = _best_choice(screened, LEAD, default, min_gain)
    base = {**default, LEAD: best[0]} if best else dict(default)
    rest = [n for n in rest if n in space.params]
    configs = screening_configs(space, base, rest) + pair_configs(space, base, rest)
    queued = _enqueue_stage(study, configs, base, first=base != default, stage=2)
    # Last: the combination is due once this is set and every queued screening trial ran.
    study.set_user_attr("screening_base", base)
    return queued


def combination(study: optuna.Study, space: SearchSpace,
                feasible: Callable[[dict[str, Any]], bool] = lambda knobs: True, min_gain: float = MIN_GAIN) -> dict[str, Any] | None:
    """Each knob's best screened choice, once every screening trial has finished; None
    before that, when the study was not screened, or once the combination was queued. A
    choice must beat its base's value (the default's for the micro-batch, the base's for
    the rest) by ``min_gain`` (a ratio) to be taken: a smaller gain is within the noise of
    one trial, and the refinement still tries it.

    When the combination is not ``feasible`` (two changes that each fit may not together:
    a bigger micro-batch and more accumulation leave too few optimizer steps), the change
    that gained least in its screening trial goes back to its default, until it is.

    A pair of ``PAIRS`` screened together (both knobs changed) is taken instead of its
    knobs' own best choices when it gained more than the product of their gains."""
    default = study.user_attrs.get("screening_default")
    trials = study.get_trials(deepcopy=False)
    if default is None or any(t.user_attrs.get("role") == COMBINATION for t in trials):
        return None
    staged = study.user_attrs.get("screening_rest")
    if staged and "screening_base" not in study.user_attrs:
        return None  # the second stage has not been queued yet
    screened = _screened_done(trials)
    if screened is None:
        return None
    singles, pairs, _ = _screening_gains(study, space, screened)
    best, gains = dict(default), {}
    for name, scores in singles.items():
        choice = max(scores, key=scores.get) if scores else None
        if choice is not None and scores[choice] >= min_gain:
            best[name], gains[(name,)] = choice, scores[choice]
    # A pair screened together replaces its knobs' own choices when it gained more than
    # they do together (as far as one trial each tells: the product of their gains).
    for pair, scores in pairs.items():
        choices = max(scores, key=scores.get)
        alone = 1.0
        for n in pair:
            alone *= gains.get((n,), 1.0)
        if scores[choices] >= min_gain and scores[choices] > alone:
            for n, c in zip(pair, choices):
                best[n] = c
                gains.pop((n,), None)
            gains[pair] = scores[choices]
    while gains and not feasible(best):
        weakest = min(gains, key=gains.get)
        for n in weakest:
            best[n] = default[n]
        del gains[weakest]
    return best


def _screening_gains(study: optuna.Study, space: SearchSpace, screened: list[optuna.trial.FrozenTrial]
                     ) -> tuple[dict[str, dict[Any, float]], dict[tuple[str, ...], dict[tuple[Any, ...], float]], dict[str, Any]]:
    """Each screened knob's choices' gains over their reference, each screened pair's, and
    the reference each knob was screened at (its choice in the default, or in the base)."""
    default = study.user_attrs["screening_default"]
    staged = study.user_attrs.get("screening_rest")
    base = study.user_attrs.get("screening_base", default)
    singles, refs = {}, {}
    for name in _screened_knobs(space):
        # The micro-batch was screened around the default, the rest around the base.
        ref = default if (staged and name == LEAD) or name not in base else base
        # The micro-batch is judged as the second stage judged it: on the first stage's
        # trials (a later measurement of the default belongs to the other knobs' stage).
        pool = [t for t in screened if t.user_attrs.get("stage") != 2] if staged and name == LEAD else screened
        singles[name] = {c[0]: g for c, g in _gains(pool, (name,), ref).items()}
        refs[name] = ref.get(name)
    pairs = {}
    for pair in PAIRS:
        if all(n in singles and n in default for n in pair):
            scores = _gains(screened, pair, base if staged and LEAD not in pair else default)
            if scores:
                pairs[pair] = scores
    return singles, pairs, refs


def screened_estimate(study: optuna.Study, space: SearchSpace) -> Callable[[dict[str, Any]], float]:
    """The screening's estimate of a config's score, relative to the references: the
    product of its choices' screened gains, with a pair screened together counted as that
    pair's gain (1 for a choice the screening did not measure). Only its ratios mean
    anything: the climb tries the neighbours it expects most of first."""
    screened = [] if study.user_attrs.get("screening_default") is None else \
        _screened_done(study.get_trials(deepcopy=False)) or []
    if not screened:
        return lambda knobs: 1.0
    singles, pairs, refs = _screening_gains(study, space, screened)

    def estimate(knobs: dict[str, Any]) -> float:
        value, paired = 1.0, set()
        for pair, scores in pairs.items():
            choices = tuple(knobs.get(n) for n in pair)
            if choices in scores:
                value *= scores[choices]
                paired.update(pair)
        for name, scores in singles.items():
            if name not in paired and knobs.get(name) != refs[name]:
                value *= scores.get(knobs.get(name), 1.0)
        return value

    return estimate


def _score(trial: optuna.trial.FrozenTrial) -> float | None:
    """A screening trial's value: its objective, or for a pruned one the median it had
    reached (below half the best by construction); None when it has no measurement."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    values = sorted(trial.intermediate_values.values())
    return values[len(values) // 2] if trial.state == TrialState.PRUNED and values else None


def enqueue_combination(study: optuna.Study, space: SearchSpace,
                        feasible: Callable[[dict[str, Any]], bool] = lambda knobs: True, claim: Claim = _alone) -> bool:
    """Queue the combination when it is due (and this process got its claim). One equal
    to a config already measured is answered from that trial, as any repeated proposal is."""
    best = combination(study, space, feasible)
    if best is None or not claim("combination"):
        return False
    study.enqueue_trial(best, user_attrs={"role": COMBINATION})
    return True


def neighbours(space: SearchSpace, incumbent: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs one knob away from ``incumbent``: for numeric knobs the next smaller and
    larger choice, for the others every other choice. Then the moves that keep the
    effective batch: half the micro-batch with twice the accumulation, and the reverse
    (the same samples per optimizer step, so the same statistical efficiency, with another
    trade of memory traffic against per-step overhead: one knob at a time never gets
    there, since either change alone leaves the effective batch, or too few steps)."""
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


def enqueue_refinement(study: optuna.Study, space: SearchSpace, min_move: float = MIN_MOVE, claim: Claim = _alone) -> int:
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
    default = study.user_attrs.get("screening_default")
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
    around = study.user_attrs.get("refined_around", [])
    incumbent = best[0]
    if around and repr(around[-1]) in scores:
        if _mean(best[1]) < min_move * _mean(scores[repr(around[-1])][1]):
            incumbent = around[-1]
    if not around or around[-1] != incumbent:
        study.set_user_attr("refined_around", around + [incumbent])
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
