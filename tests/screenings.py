"""Helpers shared by the screening and climb tests: a small space, and studies whose
trials are given their values by hand."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tests.spaces import _space
import autotune.search.optuna_adapter as study_data

SPACE = _space({"micro_batch_size": {"choices": [8, 16, 32]}, "amp": {"choices": ["off", "bf16"]},
                "lr_rule": {"choices": ["sqrt"]}, "warmup": {"low": 0.0, "high": 0.2}})
DEFAULT = {"micro_batch_size": 32, "amp": "off"}
DISTS = {"micro_batch_size": CategoricalDistribution([8, 16, 32]), "amp": CategoricalDistribution(["off", "bf16"])}


def _study(results: list[tuple[dict, str, object]], dists: dict = DISTS) -> optuna.Study:
    """A study holding the default and screening trials: (params, role, value or state)."""
    study = optuna.create_study(direction="maximize")
    study_data.put(study, "screening_default", DEFAULT)
    for params, role, outcome in results:
        if isinstance(outcome, TrialState):
            trial = create_trial(params=params, distributions=dists, state=outcome, user_attrs={"role": role},
                                 intermediate_values={0: 30.0, 1: 40.0, 2: 35.0} if outcome == TrialState.PRUNED else None)
        else:
            trial = create_trial(params=params, distributions=dists, value=outcome, user_attrs={"role": role})
        study.add_trial(trial)
    return study


def _finish_waiting(study: optuna.Study, values: dict, dists: dict = DISTS) -> list:
    """Run the queued trials by hand: each gets the value ``values`` gives its params."""
    done = []
    while any(t.state == TrialState.WAITING for t in study.trials):
        trial = study.ask()
        params = {k: trial.suggest_categorical(k, d.choices) for k, d in dists.items()}
        study.tell(trial, values[(params["micro_batch_size"], params["amp"])])
        done.append(params)
    return done


def _run_queued(study: optuna.Study, dists: dict, speed: dict) -> list[tuple[tuple, str]]:
    """Run the queued trials by hand: each gets ``speed`` of its choices (in ``dists``'s order)."""
    done = []
    while any(t.state == TrialState.WAITING for t in study.trials):
        trial = study.ask()
        key = tuple(trial.suggest_categorical(k, d.choices) for k, d in dists.items())
        study.tell(trial, speed[key])
        done.append((key, trial.user_attrs["role"]))
    return done
