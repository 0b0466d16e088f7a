"""The climb: the neighbours of the best config so far, one at a time, on real Optuna
studies whose trials are given their values by hand."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from autotune.search.climb import enqueue_refinement, neighbours
from tests.screenings import DEFAULT, DISTS, SPACE, _finish_waiting, _run_queued, _study
from tests.spaces import _space
import autotune.search.optuna_adapter as study_data


def _three_amps():
    """A space of three micro-batches and three amp modes, with its distributions."""
    return (_space({"micro_batch_size": {"choices": [8, 16, 32]}, "amp": {"choices": ["off", "bf16", "fp16"]}}),
            {**DISTS, "amp": CategoricalDistribution(["off", "bf16", "fp16"])})


def test_refinement_climbs_one_knob_at_a_time_until_no_neighbour_is_better():
    space, dists = _three_amps()
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", 90.0),
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 120.0),
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", 95.0),
        ({"micro_batch_size": 32, "amp": "fp16"}, "screening", 80.0),
        ({"micro_batch_size": 16, "amp": "off"}, "combination", 120.0),
    ], dists)
    values = {(16, "bf16"): 150.0, (16, "fp16"): 99.0, (8, "bf16"): 160.0, (32, "bf16"): 95.0, (8, "fp16"): 10.0}
    climbed = []
    while enqueue_refinement(study, space):
        assert enqueue_refinement(study, space) == 0  # one at a time
        climbed += _finish_waiting(study, values, dists)
    # Around (16, off), 8 and 32 were measured: (16, bf16) is next and better, so its
    # neighbours follow at once ((16, off, fp16) is never tried), those that change the
    # micro-batch first; around (8, bf16), (16, bf16) is known and (8, fp16) is worse:
    # the climb ends there, once (8, bf16) is measured a second time. Then (16, bf16),
    # within 10% of it, has its last neighbour measured: (16, fp16), which is worse, and
    # nothing is left within 10%.
    assert climbed == [{"micro_batch_size": 16, "amp": "bf16"}, {"micro_batch_size": 8, "amp": "bf16"},
                       {"micro_batch_size": 8, "amp": "fp16"}, {"micro_batch_size": 8, "amp": "bf16"},
                       {"micro_batch_size": 16, "amp": "fp16"}]
    assert [t.user_attrs["role"] for t in study.trials[-2:]] == ["recheck", "refine"]
    assert study_data.attrs(study)["refined_around"] == [
        {"micro_batch_size": 16, "amp": "off"}, {"micro_batch_size": 16, "amp": "bf16"}, {"micro_batch_size": 8, "amp": "bf16"}]


def test_the_climb_stays_where_it_is_for_a_lead_within_the_noise():
    space, dists = _three_amps()
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 16, "amp": "off"}, "combination", 120.0),
    ], dists)
    # (8, off) leads (16, off) by 1%: the climb stays at (16, off) and measures all of its
    # neighbours; (16, fp16) leads by 10% and moves it.
    values = {(8, "off"): 121.0, (16, "bf16"): 110.0, (16, "fp16"): 132.0, (8, "fp16"): 100.0, (32, "fp16"): 90.0,
              (8, "bf16"): 80.0}
    climbed = []
    while enqueue_refinement(study, space):
        climbed += _finish_waiting(study, values, dists)
    assert climbed[:3] == [{"micro_batch_size": 8, "amp": "off"}, {"micro_batch_size": 16, "amp": "bf16"},
                           {"micro_batch_size": 16, "amp": "fp16"}]
    assert study_data.attrs(study)["refined_around"][:2] == [{"micro_batch_size": 16, "amp": "off"},
                                                       {"micro_batch_size": 16, "amp": "fp16"}]
    assert {"micro_batch_size": 8, "amp": "off"} not in study_data.attrs(study)["refined_around"]



def test_no_refinement_before_the_combination_has_finished():
    study = _study([(DEFAULT, "default", 100.0), ({"micro_batch_size": 8, "amp": "off"}, "screening", 90.0)])
    assert enqueue_refinement(study, SPACE) == 0
    study.enqueue_trial({"micro_batch_size": 8, "amp": "bf16"}, user_attrs={"role": "combination"})
    assert enqueue_refinement(study, SPACE) == 0



def test_neighbours_are_adjacent_for_numbers_and_every_other_choice_otherwise():
    space = _space({"micro_batch_size": {"choices": [16, 64, 32, 8]}, "amp": {"choices": ["off", "bf16", "fp16"]},
                    "checkpointing": {"choices": [False, True]}})
    got = neighbours(space, {"micro_batch_size": 16, "amp": "bf16", "checkpointing": False})
    assert got == [
        {"micro_batch_size": 8, "amp": "bf16", "checkpointing": False},
        {"micro_batch_size": 32, "amp": "bf16", "checkpointing": False},
        {"micro_batch_size": 16, "amp": "off", "checkpointing": False},
        {"micro_batch_size": 16, "amp": "fp16", "checkpointing": False},
        {"micro_batch_size": 16, "amp": "bf16", "checkpointing": True},
    ]
    assert neighbours(space, {"micro_batch_size": 64, "amp": "off", "checkpointing": True})[:1] == [
        {"micro_batch_size": 32, "amp": "off", "checkpointing": True}]



def test_neighbours_include_the_moves_that_keep_the_effective_batch():
    space = _space({"micro_batch_size": {"choices": [64, 128, 256]}, "accumulation_steps": {"choices": [1, 2, 4]}})
    got = neighbours(space, {"micro_batch_size": 256, "accumulation_steps": 1})
    # 128 x 2: the same 256 samples per optimizer step; 512 x 1/2 is not in the space.
    assert got[-1] == {"micro_batch_size": 128, "accumulation_steps": 2}
    assert {"micro_batch_size": 128, "accumulation_steps": 2} not in got[:-1]
    middle = neighbours(space, {"micro_batch_size": 128, "accumulation_steps": 2})
    assert middle[-2:] == [{"micro_batch_size": 64, "accumulation_steps": 4}, {"micro_batch_size": 256, "accumulation_steps": 1}]



def test_a_lucky_incumbent_is_measured_again_and_the_climb_moves_on():
    study = _study([
        (DEFAULT, "default", 100.0),
        ({"micro_batch_size": 8, "amp": "off"}, "screening", 105.0),
        ({"micro_batch_size": 16, "amp": "off"}, "screening", 150.0),  # lucky: 60 when measured again
        ({"micro_batch_size": 32, "amp": "bf16"}, "screening", 95.0),
    ])
    # The combination repeated (16, off), so it was answered from the screening trial.
    study.add_trial(create_trial(params={"micro_batch_size": 16, "amp": "off"}, distributions=DISTS, value=150.0,
                                 user_attrs={"role": "combination", "status": "duplicate"}))
    values = iter([110.0, 60.0, 130.0, 125.0])
    done = []
    while enqueue_refinement(study, SPACE):
        trial = study.ask()
        params = {k: trial.suggest_categorical(k, d.choices) for k, d in DISTS.items()}
        study.tell(trial, next(values))
        done.append((params["micro_batch_size"], params["amp"], trial.user_attrs["role"]))
    # (16, bf16) is the last unmeasured neighbour of (16, off); (16, off) is then measured
    # again (a repeat answered from an earlier trial is not a measurement): its mean of
    # 105 falls behind (16, bf16)'s 110, so the climb moves there, finds (8, bf16), and
    # ends once that one is measured twice with every neighbour.
    assert done == [(16, "bf16", "refine"), (16, "off", "recheck"), (8, "bf16", "refine"), (8, "bf16", "recheck")]
    assert study_data.attrs(study)["refined_around"] == [
        {"micro_batch_size": 16, "amp": "off"}, {"micro_batch_size": 16, "amp": "bf16"}, {"micro_batch_size": 8, "amp": "bf16"}]



def test_the_climb_measures_first_the_neighbours_the_screening_expects_most_of():
    # The space lists cpu_threads before amp, and so do the neighbours.
    space = _space({"micro_batch_size": {"choices": [16, 32, 64]}, "cpu_threads": {"choices": [1, 2]},
                    "amp": {"choices": ["off", "bf16"]}})
    dists = {"micro_batch_size": CategoricalDistribution([16, 32, 64]), "cpu_threads": CategoricalDistribution([1, 2]),
             "amp": CategoricalDistribution(["off", "bf16"])}
    default = {"micro_batch_size": 32, "cpu_threads": 2, "amp": "off"}
    assert [n["cpu_threads"] != 2 for n in neighbours(space, {**default, "micro_batch_size": 64})] == [False, True, False]
    study = optuna.create_study(direction="maximize")
    study_data.put(study, "screening_default", default)
    for params, role, value in [
        (default, "default", 100.0),
        ({**default, "micro_batch_size": 16}, "screening", 80.0),
        ({**default, "micro_batch_size": 64}, "screening", 120.0),
        ({**default, "cpu_threads": 1}, "screening", 45.0),  # lost by more than half
        ({**default, "amp": "bf16"}, "screening", 97.0),
        ({**default, "micro_batch_size": 64}, "combination", 120.0),
    ]:
        study.add_trial(create_trial(params=params, distributions=dists, value=value, user_attrs={"role": role}))
    speed = {(64, 2, "bf16"): 118.0, (64, 1, "off"): 60.0, (64, 2, "off"): 120.0, (64, 1, "bf16"): 55.0,
             (32, 2, "bf16"): 97.0}
    climbed = []
    while enqueue_refinement(study, space):
        climbed += [key for key, _ in _run_queued(study, dists, speed)]
    # bf16 (screened at 0.97) is expected to do better than one thread (0.45): it goes
    # first. (64, 2, off) was measured twice already (no recheck); then (64, 2, bf16),
    # within 10% of it, has its one unmeasured neighbour measured.
    assert climbed == [(64, 2, "bf16"), (64, 1, "off"), (64, 1, "bf16")]
