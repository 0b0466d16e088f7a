"""The one module that reaches into Optuna's internals: it names what it relies on, and a
study's bulk data stays out of what Optuna's own tools show."""

from __future__ import annotations

import optuna
import pytest

import autotune.search.optuna_adapter as study_data


def test_this_optuna_has_every_internal_the_adapter_relies_on():
    study_data.check()


def test_an_optuna_without_one_of_them_fails_loudly_naming_it(monkeypatch):
    monkeypatch.delattr(optuna.storages.RDBStorage, "_set_trial_intermediate_value_without_commit")
    with pytest.raises(RuntimeError, match=r"lacks .*RDBStorage\._set_trial_intermediate_value_without_commit"):
        study_data.check()


def test_only_the_shown_keys_are_user_attributes_and_everything_reads_back(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db'}")
    study_data.put(study, "objective", "goodput")
    study_data.put(study, "search_space", {"micro_batch_size": {"choices": list(range(100))}})
    assert study.user_attrs == {"objective": "goodput"}
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db'}")
    assert study_data.attrs(again) == {"objective": "goodput",
                                       "search_space": {"micro_batch_size": {"choices": list(range(100))}}}


def test_a_study_written_with_everything_in_user_attributes_reads_the_same():
    study = optuna.create_study()
    study.set_user_attr("remeasured", {"rounds": 4})
    assert study_data.attrs(study)["remeasured"] == {"rounds": 4}
    study_data.put(study, "remeasured", {"rounds": 6})  # a newer write wins
    assert study_data.attrs(study)["remeasured"] == {"rounds": 6}


def test_a_trial_of_another_process_is_read_and_failed_through_the_storage():
    study = optuna.create_study()
    trial = study.ask()
    study_data.set_trial_attr(study, trial, "heartbeat", 1.0)
    study_data.fail_trial(study, study_data.fetch_trial(study, trial), {"status": "stale", "reason": "gone"})
    frozen = study_data.fetch_trial(study, trial)
    assert frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs == {"heartbeat": 1.0, "status": "stale",
                                                                                   "reason": "gone"}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study_data.fail_trial(study, frozen, {"status": "stale"})


def test_no_other_module_reaches_into_optuna():
    import re
    from pathlib import Path

    package = Path(study_data.__file__).resolve().parents[1]
    private = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b|_cached_frozen_trial|optuna\.storages\._")
    found = [f"{p.relative_to(package.parent)}:{n}" for p in sorted(package.rglob("*.py")) if p.name != "optuna_adapter.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert found == []
