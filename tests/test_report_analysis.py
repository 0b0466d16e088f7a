"""What the report computes: the Pareto front, each screened knob's effect (on a real
in-memory Optuna study), Optuna's parameter importances and the regression metrics."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autotune.report import evaluation_metrics, knob_effects, param_importances, pareto_front, regression_metrics
from autotune.report.render import render_markdown

DISTS = {"micro_batch_size": CategoricalDistribution([8, 16, 32, 64]), "amp": CategoricalDistribution(["off", "bf16"])}
CHOICES = {"micro_batch_size": [8, 16, 32, 64], "amp": ["off", "bf16"]}
DEFAULT = {"micro_batch_size": 32, "amp": "off"}


def _trial(mb, amp, value=None, role="screening", state=TrialState.COMPLETE, windows=None, **attrs):
    return create_trial(
        params={"micro_batch_size": mb, "amp": amp}, distributions=DISTS, value=value, state=state,
        intermediate_values=dict(enumerate(windows or [])), user_attrs={"role": role, "status": "ok", **attrs},
    )


def _study(trials):
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both():
    # (throughput, loss): higher throughput and lower loss are better.
    points = [(100, 1.0), (200, 1.2), (150, 0.9), (50, 2.0), (200, 1.2), (120, 1.1)]
    # (100, 1.0) and (120, 1.1) lose to (150, 0.9) on both; (50, 2.0) to everything; the
    # two equal (200, 1.2) points beat each other on neither, so both stay.
    assert pareto_front(points) == [2, 1, 4]
    assert pareto_front([(5.0, 3.0)]) == [0]
    assert pareto_front([]) == []
    # A straight trade-off: every point is on the front, in order of throughput.
    assert pareto_front([(3, 3), (1, 1), (2, 2)]) == [1, 2, 0]


def test_knob_effects_compare_each_screened_choice_with_the_default():
    study = _study([
        _trial(32, "off", 100.0, role="default"),
        _trial(8, "off", 50.0),
        _trial(16, "off", 80.0),
        _trial(64, "off", state=TrialState.PRUNED, windows=[20.0, 30.0, 25.0], status="pruned"),
        _trial(32, "bf16", 120.0),
        # Neither of these is a screening trial, though the first has the other knob at default.
        _trial(16, "off", 999.0, role="combination"),
        _trial(8, "bf16", 200.0, role="refine"),
    ])
    effects = knob_effects(study.trials, DEFAULT, CHOICES)

    assert effects["default_trial"] == 0 and effects["default_value"] == 100.0 and effects["reason"] is None
    mb = effects["knobs"]["micro_batch_size"]
    assert [r["choice"] for r in mb] == [8, 16, 32, 64]
    assert [r["trial"] for r in mb] == [1, 2, 0, 3]
    # The pruned trial counts as the median of the windows it reached: 25.
    assert [r["relative"] for r in mb] == pytest.approx([0.5, 0.8, 1.0, 0.25])
    assert mb[3]["note"] == "stopped early as clearly slow"
    amp = effects["knobs"]["amp"]
    assert [(r["choice"], r["value"]) for r in amp] == [("off", 100.0), ("bf16", 120.0)]
    assert amp[1]["relative"] == pytest.approx(1.2)


def test_knob_effects_compare_each_choice_with_the_reference_measured_next_to_it():
    # The default measured again after three choices (the machine had slowed by half)
    # and after the last: each choice is over the default's measurements around it.
    study = _study([
        _trial(32, "off", 100.0, role="default"),
        _trial(8, "off", 60.0),
        _trial(16, "off", 45.0),
        _trial(64, "off", 40.0),
        _trial(32, "off", 50.0, role="recheck"),
        _trial(32, "bf16", 66.0),
        _trial(32, "off", 60.0, role="recheck"),
    ])
    effects = knob_effects(study.trials, DEFAULT, CHOICES)
    mb = {r["choice"]: r for r in effects["knobs"]["micro_batch_size"]}
    assert [mb[c]["reference_trials"] for c in (8, 16, 64, 32)] == [[0, 4], [0, 4], [0, 4], [0]]
    assert [mb[c]["relative"] for c in (8, 16, 64, 32)] == pytest.approx([0.8, 0.6, 40 / 75, 1.0])
    (off, bf16) = effects["knobs"]["amp"]
    assert bf16["reference_trials"] == [4, 6] and bf16["relative"] == pytest.approx(1.2)
    # The rechecks are references, not rows of their own.
    assert [r["trial"] for r in effects["knobs"]["amp"]] == [0, 5]


def test_a_choice_without_a_measurement_has_no_value_and_says_why():
    study = _study([
        _trial(32, "off", 100.0, role="default"),
        _trial(64, "off", state=TrialState.PRUNED, status="infeasible", reason="fewer than 10 optimizer steps"),
        _trial(8, "off", state=TrialState.FAIL, status="oom", reason="out of memory"),
    ])
    rows = knob_effects(study.trials, DEFAULT, CHOICES)["knobs"]["micro_batch_size"]
    assert [(r["choice"], r["value"], r["relative"], r["note"]) for r in rows] == [
        (8, None, None, "out of memory"), (32, 100.0, 1.0, ""), (64, None, None, "fewer than 10 optimizer steps")]
    assert "amp" not in knob_effects(study.trials, DEFAULT, CHOICES)["knobs"]


def test_knob_effects_say_why_when_the_study_was_not_screened():
    study = _study([_trial(32, "off", 100.0, role="warm_start")])
    effects = knob_effects(study.trials, None, CHOICES)
    assert effects["knobs"] == {} and "did not screen the knobs one at a time" in effects["reason"]
    assert knob_effects(study.trials, DEFAULT, CHOICES)["reason"] == "the default trial has not finished"


def test_param_importances_rank_the_knob_that_decides_the_value_first():
    # The value depends on the micro-batch only.
    trials = [_trial(mb, amp, mb * 10.0, role="refine")
              for mb in (8, 16, 32, 64) for amp in ("off", "bf16") for _ in range(3)]
    imp = param_importances(_study(trials))
    assert imp["reason"] is None and imp["trials"] == 24
    assert set(imp["importances"]) == {"micro_batch_size", "amp"}
    assert imp["importances"]["micro_batch_size"] > imp["importances"]["amp"]
    assert sum(imp["importances"].values()) == pytest.approx(1.0)


def test_param_importances_record_why_they_cannot_be_computed():
    one = param_importances(_study([_trial(32, "off", 100.0), _trial(8, "off", state=TrialState.FAIL)]))
    assert one["importances"] is None
    assert one["reason"] == "needs at least 2 completed trials, but the study has 1"
    same = param_importances(_study([_trial(32, "off", 100.0), _trial(32, "off", 90.0)]))
    assert same["importances"] is None and same["reason"] == "no knob took more than one value in the completed trials"
    # A repeated proposal copies an earlier value: it is not a second measurement.
    dup = param_importances(_study([_trial(32, "off", 100.0), _trial(8, "off", 100.0, status="duplicate")]))
    assert dup["trials"] == 1 and dup["importances"] is None


def test_regression_metrics_match_hand_computed_values():
    y_true, y_pred = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0]
    # errors 0.5, 0, -1, 1: MAE 2.5/4; MSE (0.25+0+1+1)/4; R^2 = 1 - 2.25 / sum((y - 2.5)^2) = 1 - 2.25/5.
    m = regression_metrics(y_true, y_pred)
    assert m["kind"] == "regression" and m["samples"] == 4 and m["outputs"] == 1
    assert m["mae"] == pytest.approx(0.625)
    assert m["mse"] == pytest.approx(0.5625)
    assert m["rmse"] == pytest.approx(0.75)
    assert m["r2"] == pytest.approx(0.55)


def test_regression_metrics_average_over_outputs_and_refuse_bad_input():
    # Output 1 as above; output 2 exact: MAE (0.625 + 0)/2, R^2 (0.55 + 1)/2, MSE (0.5625 + 0)/2.
    y_true = [[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]]
    y_pred = [[1.5, 0.0], [2.0, 1.0], [2.0, 0.0], [5.0, 1.0]]
    m = regression_metrics(y_true, y_pred)
    assert m["outputs"] == 2
    assert (m["mae"], m["mse"], m["r2"]) == pytest.approx((0.3125, 0.28125, 0.775))
    assert m["rmse"] == pytest.approx(math.sqrt(0.28125))
    assert regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"] is None  # targets that do not vary
    with pytest.raises(ValueError, match="must have the same length, but got 2 and 1"):
        regression_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="need at least one sample"):
        regression_metrics([], [])


def test_evaluation_metrics_pick_by_the_targets_type():
    assert evaluation_metrics([], [], None) is None
    assert evaluation_metrics([0, 1, 1], [0, 1, 0], ["no", "yes"])["kind"] == "classification"
    assert evaluation_metrics([0.5, 1.5], [0.5, 1.0], None)["kind"] == "regression"


def test_the_markdown_has_the_regression_table():
    data = {"model": {"file": "m.py"}, "evaluation": regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0])}
    text = render_markdown(data)
    assert "| MAE (mean absolute error) | 0.625 |" in text
    assert "| RMSE (root mean squared error) | 0.75 |" in text
    assert "| R^2 (coefficient of determination) | 0.55 |" in text
    assert "RMSE **0.75**, R^2 0.5500" in text.splitlines()[2]


def test_the_final_runs_facts_name_its_processes_resume_mfu_and_time_to_target():
    from autotune.report.format import final_facts

    base = {"epochs_run": 3, "seconds": 12.0, "samples_per_s": 100.0, "peak_memory_bytes": 2**20}
    assert not any("process" in f or "resumed" in f or "reach" in f for f in final_facts({**base, "processes": 1}))
    facts = final_facts({**base, "processes": 2, "resumed_at": {"epoch": 1, "epoch_batches": 4, "steps": 8}, "mfu": 0.25,
                         "time_to_target": {"target": 0.97, "metric": "val_accuracy", "seconds": 4.31, "epoch": 2}})
    assert "2 processes (DistributedDataParallel)" in facts
    assert "resumed from a checkpoint after 1 epoch(s) and 8 steps" in facts
    assert "reached val_accuracy 0.97 after **4.3 s** (epoch 2)" in facts
    missed = final_facts({**base, "time_to_target": {"target": 0.99, "metric": "val_accuracy", "seconds": None, "epoch": None}})
    assert "did not reach val_accuracy 0.99" in missed
