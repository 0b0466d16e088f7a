"""Writing a trial's measurements: in one transaction on a database, one by one on the
journal, and the same values either way."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy

from autotune.search.optuna_adapter import write_trial
from autotune.search.storage import open_storage
from tests.storages import storage_url

ATTRS = {f"measured_{i}": i * 1.5 for i in range(30)} | {"status": "ok", "config": {"micro_batch_size": 32}}
WINDOWS = {0: 1200.0, 1: 1250.5, 2: 1190.25}


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_write_trial_leaves_what_one_call_per_value_leaves(kind, tmp_path, request):
    url = storage_url(kind, tmp_path, request)
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    batched, single = study.ask(), study.ask()
    write_trial(batched, ATTRS, WINDOWS)
    for key, value in ATTRS.items():
        single.set_user_attr(key, value)
    for step, value in WINDOWS.items():
        single.report(value, step)
    assert batched.user_attrs == single.user_attrs == ATTRS  # the trial object sees them at once
    study.tell(batched, 1.0)
    study.tell(single, 2.0)
    # ... and so does anyone who loads the study afresh.
    again = optuna.load_study(study_name="s", storage=optuna.storages.get_storage(open_storage(url)))
    a, b = again.trials
    assert a.user_attrs == b.user_attrs == ATTRS
    assert a.intermediate_values == b.intermediate_values == WINDOWS
    assert (a.value, b.value) == (1.0, 2.0)


def test_on_sqlite_a_trial_is_written_in_one_commit(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    commits = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda _conn: commits.append(1))
    batched, single = study.ask(), study.ask()
    commits.clear()
    write_trial(batched, ATTRS, WINDOWS)
    assert len(commits) == 1
    commits.clear()
    for key, value in ATTRS.items():  # what the search did before: a commit a value
        single.set_user_attr(key, value)
    assert len(commits) == len(ATTRS)


def test_a_finished_trial_takes_none_of_the_values(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial(trial, ATTRS, WINDOWS)
    assert study.trials[0].user_attrs == {} and study.trials[0].intermediate_values == {}


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_a_second_write_replaces_keys_and_steps_and_keeps_infinities(kind, tmp_path, request):
    url = storage_url(kind, tmp_path, request)
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = study.ask()
    write_trial(trial, {"status": "running", "heartbeat": 1.0}, {0: 10.0, 1: 11.0})
    write_trial(trial, {"status": "ok", "reason": ""}, {1: float("inf"), 2: float("-inf")})
    study.tell(trial, 1.0)
    again = optuna.load_study(study_name="s", storage=optuna.storages.get_storage(open_storage(url))).trials[0]
    assert again.user_attrs == {"status": "ok", "heartbeat": 1.0, "reason": ""}
    assert again.intermediate_values == {0: 10.0, 1: float("inf"), 2: float("-inf")}


def test_on_sqlite_a_trial_takes_a_few_statements_not_one_per_value(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    statements = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    write_trial(trial, ATTRS, WINDOWS)
    # the trial's state, one upsert of the 32 attributes and one of the 3 values
    assert len([s for s in statements if not s.lstrip().upper().startswith(("BEGIN", "COMMIT", "PRAGMA"))]) <= 4
    assert len(ATTRS) + len(WINDOWS) > 30
