"""Screening: one factor at a time around the default, then each knob's best choice
together; on real Optuna studies, and through run_search on a real SQLite study."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autotune.report import knob_effects
from autotune.search import SearchBudget, TrialBudget, enqueue_default, open_study, run_search
from autotune.search.screen import combination, screening_configs, screening_trials
from tests.screenings import DEFAULT, DISTS, SPACE, _finish_waiting, _run_queued, _study
from tests.spaces import _space
import autotune.search.optuna_adapter as study_data
from autotune.search.climb import neighbours

FAST = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, timeout_s=60)


def test_screening_changes_one_searched_choice_at_a_time():
    # The fixed knob and the range knob are not screened.
    assert screening_configs(SPACE, DEFAULT) == [
        {"micro_batch_size": 8, "amp": "off"},
        {"micro_batch_size": 16, "amp": "off"},
        {"micro_batch_size": 32, "amp": "bf16"},
    ]


def test_combination_takes_each_knobs_best_screened_choice():
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", TrialState.PRUNED),  # reached a median of 35
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 140.0),
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", 120.0),
        # A later trial with two knobs changed is not a screening result.
        ({"micro_batch_size": 8, "amp": "bf16"}, "", 999.0),
    ])
    assert combination(study, SPACE) == {"micro_batch_size": 16, "amp": "bf16"}


def test_a_knob_whose_alternatives_failed_keeps_its_default():
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", 150.0),
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 90.0),
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", TrialState.FAIL),
    ])
    assert combination(study, SPACE) == {"micro_batch_size": 8, "amp": "off"}


def test_no_combination_before_the_screening_ends_or_twice_or_without_screening():
    study = _study([(DEFAULT, "default", 100.0)])
    study.enqueue_trial({"micro_batch_size": 8, "amp": "off"}, user_attrs={"role": "screening"})
    assert combination(study, SPACE) is None  # one is still waiting
    done = _study([(DEFAULT, "default", 100.0), ({"micro_batch_size": 16, "amp": "bf16"}, "combination", 1.0)])
    assert combination(done, SPACE) is None
    plain = optuna.create_study(direction="maximize")
    plain.add_trial(create_trial(params=DEFAULT, distributions=DISTS, value=1.0, user_attrs={"role": "default"}))
    assert combination(plain, SPACE) is None


def test_a_new_study_screens_then_measures_the_combination(tiny_task, tmp_path):
    space = _space({"micro_batch_size": {"choices": [8, 16, 32]}, "accumulation_steps": {"choices": [1, 2]}})
    study, space = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", tiny_task, space, space, "fp-test", 0)
    assert enqueue_default(study, space, screening=True)
    run_search(study, tiny_task, space, SearchBudget(n_trials=9, trial=FAST, prune_below=0.0), progress=False)
    by_role = {}
    for t in study.trials:
        by_role.setdefault(t.user_attrs.get("role"), []).append(t)
    (default,), (small, micro, accum), (combined,) = by_role["default"], by_role["screening"], by_role["combination"]
    assert [t.user_attrs.get("role") for t in study.trials[:4]] == ["default", "screening", "screening", "recheck"]
    assert (small.params, micro.params) == ({"micro_batch_size": 8, "accumulation_steps": 1}, {"micro_batch_size": 16, "accumulation_steps": 1})
    # The default is measured a second time (not answered from its first trial), and the
    # micro-batch's gain is judged against the mean of the two.
    again = study.trials[3]
    assert again.params == default.params and again.user_attrs["status"] == "ok" and again.value != default.value
    ref = (default.value + again.value) / 2
    # The micro-batch first; accumulation then at its best choice, taken only when it beat
    # the default by 5%; a new base is measured twice as well.
    best = max((small, micro), key=lambda t: t.value)
    base = best if best.value >= 1.05 * ref else default
    assert study_data.attrs(study)["screening_base"] == {"micro_batch_size": base.params["micro_batch_size"], "accumulation_steps": 1}
    assert accum.params == {"micro_batch_size": base.params["micro_batch_size"], "accumulation_steps": 2}
    # The base is measured again after its choices (a recheck with ``stage: 2``), also
    # when it is the default; a new base before them too. So it has three measurements.
    base_values = [t.value for t in study.trials[:combined.number] if t.params == base.params]
    assert len(base_values) == 3
    before, after = study.trials[accum.number - 1], study.trials[accum.number + 1]
    assert before.params == base.params and after.params == base.params and after.user_attrs["stage"] == 2
    assert before.user_attrs["role"] == "recheck"
    # Accumulation's gain is over the base's measurements on either side of it.
    expected = {"micro_batch_size": base.params["micro_batch_size"],
                "accumulation_steps": 2 if accum.value >= 1.05 * (before.value + after.value) / 2 else 1}
    assert combined.params == expected
    # The screening took what ``screening_trials`` counts: one fewer where the default
    # stayed the base (it is not measured again before the second stage).
    assert combined.number == screening_trials(space) - (base is default)
    # Then the unmeasured neighbours of the best so far: each one knob away (or at the same
    # effective batch) from a config the search was refined around or, once those are
    # measured, from a config measured before it that scored near the climb's (which of
    # them were near depends on timing); none a config measured before.
    around = study_data.attrs(study).get("refined_around", [])
    assert around and around[0] in [t.params for t in study.trials[:combined.number + 1]]
    def same_effective_batch(t, a):
        return t.params["micro_batch_size"] * t.params["accumulation_steps"] == a["micro_batch_size"] * a["accumulation_steps"]

    refines = [(i, t) for i, t in enumerate(study.trials) if t.user_attrs.get("role") == "refine"]
    assert refines
    # The first step of the climb is a neighbour of the config it starts from, as the
    # climb lists them (in a space this small most configs are one knob from something).
    first = refines[0][1].params
    assert {**around[0], **first} in [{**around[0], **n} for n in neighbours(space, around[0])]
    for i, t in refines:
        measured = [u.params for u in study.trials[:i] if u.value is not None]
        assert any(sum(t.params[k] != a[k] for k in a) == 1 or same_effective_batch(t, a) for a in around + measured)
        assert t.params not in [u.params for u in study.trials[:i]]


def test_an_infeasible_combination_gives_back_its_smallest_gain_first():
    space = _space({"micro_batch_size": {"choices": [8, 16, 32]}, "amp": {"choices": ["off", "bf16"]}})
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", 200.0),  # gain 2.0
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 90.0),
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", 110.0),  # gain 1.1
    ])
    both = {"micro_batch_size": 8, "amp": "bf16"}
    assert combination(study, space) == both
    # Say micro-batch 8 with bf16 cannot run: bf16 gained less, so it goes back to "off".
    assert combination(study, space, feasible=lambda knobs: knobs != both) == {"micro_batch_size": 8, "amp": "off"}
    # Nothing feasible but the default: every change goes back.
    assert combination(study, space, feasible=lambda knobs: knobs == DEFAULT) == DEFAULT


def test_a_two_stage_screening_compares_the_other_knobs_with_the_base():
    from autotune.search.screen import enqueue_screening, enqueue_second_stage

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(DEFAULT, user_attrs={"role": "default"})
    # The micro-batch's two other choices only, then the default again.
    assert enqueue_screening(study, SPACE, DEFAULT) == 3
    assert study_data.attrs(study)["screening_rest"] == ["amp"]
    assert enqueue_second_stage(study, SPACE) == 0 and combination(study, SPACE) is None  # not run yet
    _finish_waiting(study, {(32, "off"): 100.0, (8, "off"): 90.0, (16, "off"): 130.0})
    assert combination(study, SPACE) is None  # the second stage is still to queue
    # The new base again (its one measurement is the one that made it the base), bf16 at
    # it, then the base once more.
    assert enqueue_second_stage(study, SPACE) == 3
    assert study_data.attrs(study)["screening_base"] == {"micro_batch_size": 16, "amp": "off"}
    assert study.trials[-2].params == {} and study.trials[-2].system_attrs["fixed_params"] == {"micro_batch_size": 16, "amp": "bf16"}
    for again in (study.trials[-3], study.trials[-1]):
        assert again.system_attrs["fixed_params"] == {"micro_batch_size": 16, "amp": "off"}
        assert again.user_attrs["role"] == "recheck" and again.user_attrs["stage"] == 2
    assert enqueue_second_stage(study, SPACE) == 0  # once
    # bf16 gains 10% over the base (16, off), though it would be 40% over the default.
    _finish_waiting(study, {(16, "off"): 130.0, (16, "bf16"): 143.0})
    assert combination(study, SPACE) == {"micro_batch_size": 16, "amp": "bf16"}
    effects = knob_effects(study.trials, DEFAULT, {"micro_batch_size": [8, 16, 32], "amp": ["off", "bf16"]},
                           study_data.attrs(study)["screening_base"], "micro_batch_size")
    assert effects["lead"] == "micro_batch_size" and effects["base_trial"] == 2
    amp = {r["choice"]: r for r in effects["knobs"]["amp"]}
    assert amp["bf16"]["relative"] == pytest.approx(1.1) and amp["bf16"]["base_trial"] == 2
    assert [r["relative"] for r in effects["knobs"]["micro_batch_size"]] == pytest.approx([0.9, 1.3, 1.0])


def test_a_second_stage_without_a_clear_micro_batch_gain_screens_around_the_default():
    from autotune.search.screen import enqueue_screening, enqueue_second_stage

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(DEFAULT, user_attrs={"role": "default"})
    enqueue_screening(study, SPACE, DEFAULT)
    _finish_waiting(study, {(32, "off"): 100.0, (8, "off"): 90.0, (16, "off"): 102.0})  # no micro-batch gains 5%
    assert enqueue_second_stage(study, SPACE) == 2  # bf16 at the default, then the default a third time
    assert study_data.attrs(study)["screening_base"] == DEFAULT
    # The machine slows by a fifth during the second stage: bf16 (10% faster) measures 88,
    # and so does the default's third measurement, 80.
    _finish_waiting(study, {(32, "bf16"): 88.0, (32, "off"): 80.0})
    roles = [(t.params, t.user_attrs["role"]) for t in study.trials]
    assert roles[-2:] == [({"micro_batch_size": 32, "amp": "bf16"}, "screening"), (DEFAULT, "recheck")]
    defaults = [t.value for t in study.trials if t.params == DEFAULT]
    assert defaults == [100.0, 100.0, 80.0]
    # Against the first two only, bf16 would have lost 12%; against the default's
    # measurements on either side of it (100 and 80), 2%: still no gain of 5%.
    assert 88.0 / statistics.fmean(defaults[1:]) == pytest.approx(0.978, abs=1e-3)
    assert combination(study, SPACE) == DEFAULT


def test_each_choice_is_compared_with_the_reference_measured_next_to_it():
    """The machine slows by 30% from the default's second measurement to the end of the
    second stage's first three choices, then recovers. bf16 (15% faster) measures 80.5 in
    the slow spell: against the mean of all the default's measurements (85) it would
    lose 5%; against the two nearest it (70 each, in the spell too) it gains its 15%."""
    from autotune.search.screen import REFERENCE_EVERY, enqueue_screening, enqueue_second_stage, reference_level

    assert REFERENCE_EVERY == 3
    space = _space({"micro_batch_size": {"choices": [8, 16, 32]}, "amp": {"choices": ["off", "bf16"]},
                    "num_workers": {"choices": [0, 1, 2]}, "cpu_threads": {"choices": [1, 2]}})
    default = {"micro_batch_size": 32, "amp": "off", "num_workers": 0, "cpu_threads": 2}
    dists = {"micro_batch_size": CategoricalDistribution([8, 16, 32]), "amp": CategoricalDistribution(["off", "bf16"]),
             "num_workers": CategoricalDistribution([0, 1, 2]), "cpu_threads": CategoricalDistribution([1, 2])}
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(default, user_attrs={"role": "default"})
    assert enqueue_screening(study, space, default) == 3  # 8, 16, the default again
    speed = {(32, "off", 0, 2): 100.0, (8, "off", 0, 2): 80.0, (16, "off", 0, 2): 85.0,
             (32, "bf16", 0, 2): 115.0, (32, "off", 1, 2): 90.0, (32, "off", 2, 2): 85.0, (32, "off", 0, 1): 60.0,
             (32, "off", 1, 1): 70.0}
    slow = {3, 4, 5, 6, 7}  # the trials measured in the slow spell
    order = []

    def run_queued():
        while any(t.state == TrialState.WAITING for t in study.trials):
            trial = study.ask()
            key = tuple(trial.suggest_categorical(k, d.choices) for k, d in dists.items())
            study.tell(trial, speed[key] * (0.7 if trial.number in slow else 1.0))
            order.append((key, trial.user_attrs["role"]))

    run_queued()
    # No micro-batch gains 5%: the other knobs are screened around the default, which is
    # measured again after every three of their five choices (the fifth: one worker and
    # one thread, a split of the two cores) and after the last.
    assert enqueue_second_stage(study, space) == 7
    run_queued()
    assert [role for _, role in order[4:]] == ["screening"] * 3 + ["recheck"] + ["screening"] * 2 + ["recheck"]
    assert [key for key, _ in order[4:7]] == [(32, "bf16", 0, 2), (32, "off", 1, 2), (32, "off", 2, 2)]
    refs = [(t.number, t.value) for t in study.trials if t.params == default]
    assert [n for n, _ in refs] == [0, 3, 7, 10]
    assert reference_level(refs, 4) == (pytest.approx(70.0), [3, 7])
    assert reference_level(refs, 8) == (pytest.approx(85.0), [7, 10])
    assert combination(study, space) == {**default, "amp": "bf16"}
    assert 115.0 * 0.7 / statistics.fmean(v for _, v in refs) < 1.0


def test_a_screened_gain_within_the_noise_keeps_the_default_in_the_combination():
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", 104.0),  # +4%: noise
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 90.0),
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", 106.0),  # +6%
    ])
    assert combination(study, SPACE) == {"micro_batch_size": 32, "amp": "bf16"}
    assert combination(study, SPACE, min_gain=1.0) == {"micro_batch_size": 8, "amp": "bf16"}


def test_a_lucky_default_measured_twice_no_longer_hides_a_gain():
    """One lucky default trial (130 here, against 90 the second time) would hide the
    micro-batch's 9% gain over the default's mean; the second measurement shows it."""
    from autotune.search.screen import enqueue_screening, enqueue_second_stage

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(DEFAULT, user_attrs={"role": "default"})
    enqueue_screening(study, SPACE, DEFAULT)
    answers = iter([130.0, 90.0, 120.0, 90.0])  # default, (8, off), (16, off), the default again
    while any(t.state == TrialState.WAITING for t in study.trials):
        trial = study.ask()
        for k, d in DISTS.items():
            trial.suggest_categorical(k, d.choices)
        study.tell(trial, next(answers))
    assert enqueue_second_stage(study, SPACE) == 3  # the new base, bf16 at it, the base again
    assert study_data.attrs(study)["screening_base"] == {"micro_batch_size": 16, "amp": "off"}


LAYOUT_SPACE = _space({"micro_batch_size": {"choices": [32, 64]}, "amp": {"choices": ["off", "bf16"]},
                       "channels_last": {"choices": [False, True]}})
LAYOUT_DEFAULT = {"micro_batch_size": 32, "amp": "off", "channels_last": False}
LAYOUT_DISTS = {"micro_batch_size": CategoricalDistribution([32, 64]), "amp": CategoricalDistribution(["off", "bf16"]),
                "channels_last": CategoricalDistribution([False, True])}


def test_a_dtype_and_a_layout_that_lose_alone_but_win_together_are_taken_together():
    """As measured on the digits CNN here: bf16 alone 0.72 of the base, channels_last
    alone 0.86, both together the fastest config."""
    from autotune.search.screen import enqueue_screening, enqueue_second_stage, pair_configs

    assert pair_configs(LAYOUT_SPACE, LAYOUT_DEFAULT, ["amp", "channels_last"]) == [
        {**LAYOUT_DEFAULT, "amp": "bf16", "channels_last": True}]
    assert pair_configs(LAYOUT_SPACE, LAYOUT_DEFAULT, ["amp"]) == []  # the pair's other knob is not in this stage
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(LAYOUT_DEFAULT, user_attrs={"role": "default"})
    enqueue_screening(study, LAYOUT_SPACE, LAYOUT_DEFAULT)
    speed = {(32, "off", False): 100.0, (64, "off", False): 120.0, (64, "bf16", False): 86.0,
             (64, "off", True): 103.0, (64, "bf16", True): 150.0, (32, "bf16", True): 110.0}
    _run_queued(study, LAYOUT_DISTS, speed)
    # The base again, bf16, channels_last, both, the base again.
    assert enqueue_second_stage(study, LAYOUT_SPACE) == 5
    order = _run_queued(study, LAYOUT_DISTS, speed)
    assert order == [((64, "off", False), "recheck"), ((64, "bf16", False), "screening"), ((64, "off", True), "screening"),
                     ((64, "bf16", True), "screening"), ((64, "off", False), "recheck")]
    assert combination(study, LAYOUT_SPACE) == {"micro_batch_size": 64, "amp": "bf16", "channels_last": True}
    effects = knob_effects(study.trials, LAYOUT_DEFAULT, {n: d.choices for n, d in LAYOUT_DISTS.items()},
                           study_data.attrs(study)["screening_base"], "micro_batch_size")
    # The pair's trial is no row of either knob's own effects; it has a row of its own.
    assert [r["choice"] for r in effects["knobs"]["amp"]] == ["off", "bf16"]
    (pair,) = effects["pairs"]["amp + channels_last"]
    assert pair["choice"] == ["bf16", True] and pair["relative"] == pytest.approx(1.25)


def test_a_pair_that_gains_less_than_its_knobs_alone_leaves_their_own_choices():
    from autotune.search.screen import enqueue_screening, enqueue_second_stage

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(LAYOUT_DEFAULT, user_attrs={"role": "default"})
    enqueue_screening(study, LAYOUT_SPACE, LAYOUT_DEFAULT)
    # bf16 gains 20%, channels_last loses 5%, together they gain 10%: bf16 alone wins.
    speed = {(32, "off", False): 100.0, (64, "off", False): 100.0, (32, "bf16", False): 120.0,
             (32, "off", True): 95.0, (32, "bf16", True): 110.0}
    _run_queued(study, LAYOUT_DISTS, speed)
    enqueue_second_stage(study, LAYOUT_SPACE)  # no micro-batch gain: around the default
    _run_queued(study, LAYOUT_DISTS, speed)
    assert combination(study, LAYOUT_SPACE) == {**LAYOUT_DEFAULT, "amp": "bf16"}




SPLIT_SPACE = _space({"micro_batch_size": {"choices": [32, 64]}, "num_workers": {"choices": [0, 1, 2, 4]},
                      "cpu_threads": {"choices": [1, 2, 4, 8]}})


def test_workers_and_threads_are_screened_together_as_splits_of_the_cores():
    from autotune.search.screen import pair_configs

    default = {"micro_batch_size": 32, "num_workers": 0, "cpu_threads": 0}
    knobs = ["num_workers", "cpu_threads"]
    # Cores: the largest thread choice (8). Each worker count with the most threads beside it.
    assert pair_configs(SPLIT_SPACE, default, knobs) == [
        {**default, "num_workers": 1, "cpu_threads": 4}, {**default, "num_workers": 2, "cpu_threads": 4},
        {**default, "num_workers": 4, "cpu_threads": 4}]
    two_cores = _space({"num_workers": {"choices": [0, 1, 2]}, "cpu_threads": {"choices": [1, 2]}})
    assert pair_configs(two_cores, {"num_workers": 0, "cpu_threads": 2}, knobs) == [{"num_workers": 1, "cpu_threads": 1}]
    # A base already on one of the thread choices: the split takes another.
    assert pair_configs(two_cores, {"num_workers": 0, "cpu_threads": 1}, knobs) == []
    # The default; 2 worker counts, 1 thread count and the split; a recheck after every 3 and the last.
    assert screening_trials(two_cores) == 1 + 4 + 2


def test_a_sized_budget_holds_the_whole_screening_of_a_gpus_space():
    import dataclasses

    from autotune.search.gate import Facts, gate
    from autotune.search.screen import AFTER_SCREENING, sized_trials
    from autotune.search.space import load_space

    gpu = gate(load_space("default"), Facts("cuda", {"fp16": None, "bf16": None}, 16, True, 60_000, has_conv=True))
    cpu = gate(load_space("default"), Facts("cpu", {"fp16": "slow", "bf16": None}, 2, False, 1_437, has_conv=True))
    # On the GPU: 5 other micro-batches; then 2 accumulations, 3 worker counts, pinning, 2
    # dtypes, checkpointing, channels_last, cuDNN benchmark, 3 compile modes, TF32, 3
    # optimizer implementations, expandable segments and the 2 dtype x channels_last pairs
    # (no worker x thread splits: threads are not searched on a GPU).
    assert screening_trials(gpu) == 1 + (5 + 2) + 1 + (21 + 7)
    assert sized_trials(24, gpu) == screening_trials(gpu) + AFTER_SCREENING > 24
    # On a 2-core CPU, 12 choices after the micro-batch's, one of them the split of the
    # cores into a worker and a thread: 21 trials, 26 with the 5 after them.
    assert screening_trials(cpu) == 1 + (2 + 1) + 1 + (12 + 4)
    assert sized_trials(24, cpu) == 26 and sized_trials(60, gpu) == 60
    assert screening_trials(dataclasses.replace(cpu, params={})) == 1
    # Only a study that screens gets more: a warm-started one starts from another
    # machine's configs instead.
    study = optuna.create_study(direction="maximize")
    assert sized_trials(24, gpu, study) == 24
    study_data.put(study, "screening_default", {"micro_batch_size": 32})
    assert sized_trials(24, gpu, study) == screening_trials(gpu) + AFTER_SCREENING
