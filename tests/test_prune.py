"""Pruning of clearly slow trials: the pruner's rule on a real study, and trial processes
that judge their own timing windows, stop when clearly slow, and whose windows the tuner
reports to a real SQLite study."""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.trial import TrialState

from autotune.search import SearchBudget, TrialBudget, open_study, parse_space, run_search
from autotune.search.prune import SlowTrialPruner, clearly_slow

BUDGET = TrialBudget(warmup_steps=2, window_s=0.05, windows=6, max_eval_batches=1, timeout_s=60)


def _study_with_best(best: float, running: list[float]) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=best))
    trial = study.ask()
    for step, value in enumerate(running):
        trial.report(value, step)
    return study, study.trials[-1]


@pytest.mark.parametrize(
    "running, pruned",
    [
        ([40.0, 45.0], True),  # median 42.5 < 0.5 x 100
        ([40.0], False),  # one window is not enough to judge
        ([40.0, 60.0], False),  # median 50 is not below half of 100
        ([10.0, 90.0, 80.0], False),  # one slow window does not condemn a trial
    ],
)
def test_slow_trial_pruner_rule(running, pruned):
    study, trial = _study_with_best(100.0, running)
    assert SlowTrialPruner(ratio=0.5, min_windows=2).prune(study, trial) is pruned


def test_pruner_without_a_completed_trial_or_with_ratio_zero_never_prunes():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for step in range(3):
        trial.report(1.0, step)
    assert not SlowTrialPruner().prune(study, study.trials[-1])
    study, frozen = _study_with_best(100.0, [1.0, 1.0, 1.0])
    assert not SlowTrialPruner(ratio=0.0).prune(study, frozen)


@pytest.mark.parametrize("kwargs, message", [({"ratio": 1.0}, "`ratio` must be in [0, 1), but got 1.0."),
                                             ({"min_windows": 0}, "`min_windows` must be >= 1, but got 0.")])
def test_pruner_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SlowTrialPruner(**kwargs)


def _search(tmp_path, task, micro: list[int], prune_below: float):
    # One thread: two threads on a busy 2-core machine wait for each other at every op,
    # and the timings then say more about the load than about the batch size.
    space = parse_space({"name": "t", "params": {"micro_batch_size": {"choices": micro}, "cpu_threads": {"choices": [1]}}},
                        source="test space")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study, space = open_study(storage, "s", task, space, space, "fp-test", 0)
    for m in micro:
        study.enqueue_trial({"micro_batch_size": m})
    budget = SearchBudget(n_trials=len(micro), trial=BUDGET, prune_below=prune_below, prune_after_windows=2)
    run_search(study, task, space, budget, progress=False)
    return study


def test_a_clearly_slow_trial_is_pruned_from_its_own_process(tiny_task, tmp_path):
    # Micro-batch 1 pays the per-step cost for every sample: far below half the samples/s
    # of micro-batch 96 (the whole training set) on this tiny model.
    study = _search(tmp_path, tiny_task, [96, 1], prune_below=0.5)
    fast, slow = study.trials
    assert fast.state == TrialState.COMPLETE and fast.user_attrs["windows"] == 6
    assert 0 < fast.user_attrs["warmup_seconds"] < fast.user_attrs["timed_seconds"]
    assert slow.state == TrialState.PRUNED
    assert slow.user_attrs["status"] == "pruned"
    assert slow.user_attrs["reason"].startswith("clearly slow: median ")
    # The trial process stopped at its second window; both are in the study, and Optuna's
    # pruner on the study gives the same verdict.
    assert sorted(slow.intermediate_values) == [0, 1]
    assert max(slow.intermediate_values.values()) < 0.5 * fast.value
    assert slow.user_attrs["windows"] == 2
    assert SlowTrialPruner().prune(study, slow)
    assert sorted(fast.intermediate_values) == list(range(6))
    assert slow.user_attrs["trial_seconds"] > 0


def test_with_pruning_off_the_slow_trial_is_measured_in_full(tiny_task, tmp_path):
    study = _search(tmp_path, tiny_task, [96, 1], prune_below=0.0)
    slow = study.trials[1]
    assert slow.state == TrialState.COMPLETE and slow.user_attrs["windows"] == 6
    assert clearly_slow(list(slow.intermediate_values.values()), study.trials[0].value, 0.5, 2)
