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
channels_last; DataLoader workers and CPU threads, as splits of the cores) are also
screened together, both changed at once: each can lose alone and both win together. Then the config that takes, for every knob, the choice
that scored best in its screening trial (by at least 5% over the base's: less is noise;
a pair's choices when the pair gained more than its knobs' own choices together) is
measured. The climb from there (``climb.py``) tries its neighbours, ordered by the
screening's estimate of them (``screened_estimate``).

One trial of a config can be lucky by 10-20% on a busy machine, and every gain above is a
ratio to a reference config: a lucky reference hides every real gain. The machine's own
speed also drifts by 20-30% over minutes: a stage of seven choices measured in a slow
minute, against a reference measured before it in a fast one, loses every gain (in one
benchmark run here bf16 was dropped so, and the grid's best config was a bf16 one). So
each stage's reference (the default for the micro-batch; the base, a screened micro-batch
or the default, for the other knobs) is measured again after every ``REFERENCE_EVERY`` of
its choices and after the last, and each choice's gain is its value over the mean of the
reference's measurements nearest before and after it: no choice is more than two trials
from a measurement of what it is compared with. A base other than the default is also
measured once more before its choices: its one earlier measurement is the one that made
it the base, so it is more likely lucky than not, and would hide the gains of the first
choices after it.

Range knobs (``low``/``high``) are not screened. Configs ruled out unrun (too big for the
memory limit, too few optimizer steps) cost nothing; a pruned trial counts as the value
it had reached; a knob whose alternatives all failed keeps its base choice in the
combination. A study screened by an older version (no ``screening_rest``) screened every
knob around the default at once, and is read that way.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autotune.search.space import SearchSpace
import autotune.search.optuna_adapter as study_data

SCREENING, COMBINATION, REFINE, RECHECK = "screening", "combination", "refine", "recheck"
# Two trials of one config differ by a few percent on a quiet machine (5-10% on a busy
# one): a screened gain below this keeps the default in the combination.
MIN_GAIN = 1.05
# Screened first; the other knobs are screened at its best choice.
LEAD = "micro_batch_size"
# A stage's reference config is measured again after every this many of its choices
# (and after the last): each choice is then compared with a measurement at most two
# trials away, for one extra trial per three choices.
REFERENCE_EVERY = 3
# Knobs screened together as well as alone: a mixed-precision dtype and a memory layout
# can each lose alone and win together (oneDNN's bf16 convolutions on the CPU and
# tensor-core convolutions on a GPU want channels_last: on a small CNN each alone can be
# slower than the base, and both together the fastest of a grid).
#
# DataLoader workers and the trainer's CPU threads share the cores: a worker decoding
# images while two threads train on two cores slows both. Screened one at a time, the
# split that suits a data-bound model on a small machine (one worker loading, the rest
# training) is never tried; screened together they are tried as splits of the cores
# (``SPLIT``): each worker count with the most threads that leave the workers a core each.
SPLIT = ("num_workers", "cpu_threads")
PAIRS = (("amp", "channels_last"), SPLIT)


def screening_configs(space: SearchSpace, default: dict[str, Any], knobs: list[str] | None = None) -> list[dict[str, Any]]:
    """The one-factor-at-a-time configs around ``default`` (the searched knobs' values),
    for ``knobs`` (default: every screened knob)."""
    out = []
    for name in screened_knobs(space) if knobs is None else knobs:
        out += [{**default, name: c} for c in space.params[name].choices if c != default.get(name)]
    return out


def pair_configs(space: SearchSpace, base: dict[str, Any], knobs: list[str]) -> list[dict[str, Any]]:
    """The configs around ``base`` that change both knobs of a ``PAIRS`` entry (both in
    ``knobs``) to another choice each."""
    screened = screened_knobs(space)
    out = []
    for a, b in PAIRS:
        if a in knobs and b in knobs and a in screened and b in screened:
            out += [{**base, a: ca, b: cb} for ca, cb in _pair_choices(space, (a, b), base)]
    return out


def _pair_choices(space: SearchSpace, pair: tuple[str, str], base: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The choices a ``PAIRS`` entry is screened at around ``base``, both knobs changed:
    every combination of their other choices, or, for ``SPLIT``, each worker count (one
    or more) with the most thread choices that leave the workers a core each (the cores:
    the largest thread choice the gate left, which it caps at the machine's cores)."""
    a, b = pair
    ours = [c for c in space.params[a].choices if c != base.get(a)]
    theirs = [c for c in space.params[b].choices if c != base.get(b)]
    if pair != SPLIT:
        return [(ca, cb) for ca in ours for cb in theirs]
    cores = max(space.params[b].choices)
    out = []
    for workers in ours:
        fits = [t for t in theirs if workers >= 1 and t >= 1 and t + workers <= cores]
        if fits:
            out.append((workers, max(fits)))
    return out


def screening_trials(space: SearchSpace) -> int:
    """How many trials a new study's screening takes: the default, each other choice of
    each screened knob, the ``PAIRS`` configs, and the reference's re-measurements (one
    per ``REFERENCE_EVERY`` choices of a stage, and the base once more before the second
    stage). Exact when no choice repeats another config; a bound otherwise."""
    screened = screened_knobs(space)
    lead = [LEAD] if LEAD in screened and len(screened) > 1 else []
    rest = [n for n in screened if n not in lead]

    def others(names: list[str]) -> int:
        return sum(len(space.params[n].choices) - 1 for n in names)

    pairs = sum(len(_pair_choices(space, (a, b), {})) if (a, b) == SPLIT else others([a]) * others([b])
                for a, b in PAIRS if a in rest and b in rest)
    stages = [others(lead), others(rest) + pairs]
    return 1 + len(lead) + sum(n + math.ceil(n / REFERENCE_EVERY) for n in stages if n)


AFTER_SCREENING = 5  # trials a sized budget leaves after the screening: the combination, the climb


def sized_trials(n_trials: int, space: SearchSpace, study: optuna.Study | None = None) -> int:
    """A budget of at least ``n_trials`` that also holds the whole screening and
    ``AFTER_SCREENING`` trials after it: a GPU's space has many more choices than a
    CPU's, and a screening cut short never measures the knobs it reaches last. With
    ``study``, only where that study screens (a warm-started one does not)."""
    if study is not None and study_data.attrs(study).get("screening_default") is None:
        return n_trials
    return max(n_trials, screening_trials(space) + AFTER_SCREENING)


def screened_knobs(space: SearchSpace) -> list[str]:
    """The knobs with a list of choices: the ones screened, and moved by the climb."""
    return [n for n in space.searched() if space.params[n].choices is not None]


def enqueue_screening(study: optuna.Study, space: SearchSpace, default: dict[str, Any]) -> int:
    """Queue the first screening trials after whatever is queued already (the micro-batch's
    choices when it is searched with other knobs, else every knob's); returns how many.
    The rest follow from ``enqueue_second_stage`` once these have finished."""
    screened = screened_knobs(space)
    first = [LEAD] if LEAD in screened and len(screened) > 1 else screened
    queued = _enqueue_stage(study, screening_configs(space, default, first) + pair_configs(space, default, first), default)
    study_data.put(study, "screening_default", default)
    study_data.put(study, "screening_rest", [n for n in screened if n not in first])
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
        if changed_only(t, names, ref):
            value = _score(t)
            if value is not None:
                level = reference_level(refs, t.number)[0]
                gains.setdefault(tuple(t.params.get(n) for n in names), []).append(value / level if level else float("inf"))
    return {choice: sum(values) / len(values) for choice, values in gains.items()}


def changed_only(trial: optuna.trial.FrozenTrial, names: tuple[str, ...], ref: dict[str, Any]) -> bool:
    """Whether ``trial`` changed every knob of ``names`` from ``ref`` and no other: a
    screening trial of those knobs (together, for more than one)."""
    return all(trial.params.get(n) != ref.get(n) for n in names) \
        and all(trial.params.get(k) == v for k, v in ref.items() if k not in names)


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


# Of several processes sharing a study, the one that gets ``claim(key)`` queues that
# step (``storage.py``); a process searching alone always gets it.
Claim = Callable[[str], bool]


def alone(key: str) -> bool:
    return True


def in_stages(study: optuna.Study) -> bool:
    """Whether the study is still screening: what it queues next depends on the trials
    running now, so a process with nothing queued should wait for them."""
    if study_data.attrs(study).get("screening_default") is None:
        return False
    combined = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("role") == COMBINATION]
    return not combined or not combined[0].state.is_finished()


def enqueue_second_stage(study: optuna.Study, space: SearchSpace, min_gain: float = MIN_GAIN, claim: Claim = alone) -> int:
    """Once the micro-batch's screening trials have finished, queue the other knobs'
    choices around the base: the default with the best screened micro-batch (when it beat
    the default's by ``min_gain``). Returns how many were queued; 0 when not due, or when
    another process sharing the study got ``claim("second-stage")`` first."""
    default, rest = study_data.attrs(study).get("screening_default"), study_data.attrs(study).get("screening_rest")
    if default is None or not rest or "screening_base" in study_data.attrs(study):
        return 0
    screened = _screened_done(study.get_trials(deepcopy=False))
    if screened is None or not claim("second-stage"):
        return 0
    scores = _gains(screened, (LEAD,), default)
    best = max(scores, key=scores.get) if scores else None
    base = {**default, LEAD: best[0]} if best and scores[best] >= min_gain else dict(default)
    rest = [n for n in rest if n in space.params]
    configs = screening_configs(space, base, rest) + pair_configs(space, base, rest)
    queued = _enqueue_stage(study, configs, base, first=base != default, stage=2)
    # Last: the combination is due once this is set and every queued screening trial ran.
    study_data.put(study, "screening_base", base)
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
    default = study_data.attrs(study).get("screening_default")
    trials = study.get_trials(deepcopy=False)
    if default is None or any(t.user_attrs.get("role") == COMBINATION for t in trials):
        return None
    staged = study_data.attrs(study).get("screening_rest")
    if staged and "screening_base" not in study_data.attrs(study):
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
    default = study_data.attrs(study)["screening_default"]
    staged = study_data.attrs(study).get("screening_rest")
    base = study_data.attrs(study).get("screening_base", default)
    singles, refs = {}, {}
    for name in screened_knobs(space):
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
    screened = [] if study_data.attrs(study).get("screening_default") is None else \
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
                        feasible: Callable[[dict[str, Any]], bool] = lambda knobs: True, claim: Claim = alone) -> bool:
    """Queue the combination when it is due (and this process got its claim). One equal
    to a config already measured is answered from that trial, as any repeated proposal is."""
    best = combination(study, space, feasible)
    if best is None or not claim("combination"):
        return False
    study.enqueue_trial(best, user_attrs={"role": COMBINATION})
    return True
