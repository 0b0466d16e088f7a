"""Everything autotune does with Optuna beyond its public API, in one place.

Three things need more than ``Study`` and ``Trial`` offer:

- **The storage and its ids.** Claims, stale trials and a busy trial's state are read and
  written through the study's storage with the study's and the trial's storage ids
  (``Study._storage``, ``Study._study_id``, ``Trial._trial_id``, ``FrozenTrial._trial_id``).
- **One transaction per measured trial** (``write_trial``): on an RDB storage, Optuna's
  table models and session scope (``optuna.storages._rdb``) and two of its storage's
  write-without-commit methods; where those moved, it falls back to one call per value.
- **Study data kept out of sight** (``put``, ``attrs``): what autotune stores with a
  study is in the storage's study *system* attributes, except the few ``SHOWN`` ones a
  user browses in ``optuna studies`` or optuna-dashboard, which stay user attributes; the
  search space, the probe, the profile and the race would make those tools' tables
  thousands of characters wide.

``check()`` names each internal this module relies on and fails, saying which, on an
Optuna release that changed one; the tests call it.

A claim is a test-and-set that every storage does atomically: creating a study whose
name is taken fails for every process but one. The search uses claims where two workers
could otherwise both queue the same next trials (``screen``), and where two could both
retry the same stale trial.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

# Study attributes shown in Optuna's own tools; everything else autotune stores with a
# study is a system attribute under PREFIX.
SHOWN = ("model_file", "objective", "hardware_fingerprint", "search_space_name", "seed")
PREFIX = "autotune:"


def storage_of(study: optuna.Study) -> Any:
    """The storage object the study reads and writes through."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    return trial._trial_id


def fetch_trial(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The trial as the storage holds it now (another process may have finished it)."""
    return study._storage.get_trial(trial._trial_id)


def set_trial_attr(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """A user attribute of any trial of the study, running in this process or not."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` on a running trial of any process and fail it; raises Optuna's
    ``UpdateFinishedTrialError`` when it has finished meanwhile."""
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def put(study: optuna.Study, key: str, value: Any) -> None:
    """Store ``value`` with the study under ``key``: as a user attribute when ``key`` is
    one of ``SHOWN``, else as a system attribute that Optuna's tools do not show."""
    if key in SHOWN:
        study.set_user_attr(key, value)
    else:
        study._storage.set_study_system_attr(study._study_id, PREFIX + key, value)


def attrs(study: optuna.Study) -> dict[str, Any]:
    """Everything ``put`` stored with the study, by key (a study written before the split,
    with all of it in user attributes, reads the same)."""
    system = study._storage.get_study_system_attrs(study._study_id)
    return {**study.user_attrs, **{k[len(PREFIX):]: v for k, v in system.items() if k.startswith(PREFIX)}}


def claim(study: optuna.Study, key: str) -> bool:
    """True for exactly one process that claims ``key`` for ``study``, whichever storage
    holds it; False for every other (now or later). The claim is an empty study named
    ``<study>~<id>~claim~<key>`` in the same storage (the id: a study deleted and made
    again under its old name starts with no claims)."""
    try:
        study._storage.create_new_study([StudyDirection.MAXIMIZE], f"{study.study_name}~{study._study_id}~claim~{key}")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def write_trial(trial: optuna.Trial, attrs: dict[str, Any] | None = None,
                intermediate: dict[int, float] | None = None) -> None:
    """Set many user attributes and intermediate values of a running trial at once.

    On a database storage they are written in one transaction, which also means that
    nobody reading the study sees a trial half recorded: a measured trial has some thirty
    values, and a commit for each would cost more than the rest of ask and tell. On SQLite
    and PostgreSQL the transaction holds one multi-row upsert for the attributes and one
    for the values (``_bulk_upsert``): one statement per value costs milliseconds each,
    about a tenth of a second for a measured trial.
    Other databases take one statement per value, other storages (the journal) one call
    per value. Either way the trial object sees them as ``trial.set_user_attr`` and
    ``trial.report`` would leave them.
    """
    attrs = dict(attrs or {})
    intermediate = {int(step): float(value) for step, value in (intermediate or {}).items()}
    if not attrs and not intermediate:
        return
    rdb = _rdb_backend(trial.storage)
    if rdb is None:
        for key, value in attrs.items():
            trial.storage.set_trial_user_attr(trial._trial_id, key, value)
        for step, value in intermediate.items():
            trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
    else:
        storage, models, scoped = rdb
        with scoped(storage.scoped_session, True) as session:
            if not _bulk_upsert(storage, models, session, trial._trial_id, attrs, intermediate):
                _one_by_one(storage, models, session, trial._trial_id, attrs, intermediate)
    trial._cached_frozen_trial.user_attrs.update(attrs)
    trial._cached_frozen_trial.intermediate_values.update(intermediate)


def _one_by_one(storage: Any, models: Any, session: Any, trial_id: int, attrs: dict[str, Any],
                intermediate: dict[int, float]) -> None:
    for key, value in attrs.items():
        storage._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
    for step, value in intermediate.items():
        storage._set_trial_intermediate_value_without_commit(session, trial_id, step, value)


def _bulk_upsert(storage: Any, models: Any, session: Any, trial_id: int, attrs: dict[str, Any],
                 intermediate: dict[int, float]) -> bool:
    """Write ``attrs`` and ``intermediate`` of a running trial as two multi-row upserts
    (insert, or replace the value of a key or step already there), as Optuna's own
    one-row upsert does on SQLite and PostgreSQL; False on another database, or an
    Optuna whose table models moved (nothing written then)."""
    name = storage.engine.name
    try:
        if name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            return False
        attr_cls, value_cls = models.TrialUserAttributeModel, models.TrialIntermediateValueModel
        stored = value_cls.intermediate_value_to_stored_repr
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
    except AttributeError:
        return False
    storage.check_trial_is_updatable(trial_id, trial.state)
    if attrs:
        stmt = insert(attr_cls).values([{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])
        session.execute(stmt.on_conflict_do_update(index_elements=[attr_cls.trial_id, attr_cls.key],
                                                   set_={"value_json": stmt.excluded.value_json}))
    if intermediate:
        rows = []
        for step, value in intermediate.items():
            number, kind = stored(value)
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": number, "intermediate_value_type": kind})
        stmt = insert(value_cls).values(rows)
        session.execute(stmt.on_conflict_do_update(
            index_elements=[value_cls.trial_id, value_cls.step],
            set_={"intermediate_value": stmt.excluded.intermediate_value,
                  "intermediate_value_type": stmt.excluded.intermediate_value_type}))
    return True


def _rdb_backend(storage: Any) -> tuple[Any, Any, Any] | None:
    """Optuna's RDB storage behind ``storage`` (it wraps it in a cache), with its table
    models and session scope, for writes in one transaction; None for other storages, or
    an Optuna whose internals moved (then every value is written on its own, as before)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:
        return None
    needed = ("_set_trial_attr_without_commit", "_set_trial_intermediate_value_without_commit", "scoped_session")
    if not all(hasattr(backend, name) for name in needed):
        return None
    return backend, models, _create_scoped_session


def check() -> None:
    """Fail, naming it, when this Optuna lacks an internal this module relies on."""
    study = optuna.create_study()
    trial = study.ask()
    missing = [name for obj, name in ((study, "_storage"), (study, "_study_id"), (trial, "_trial_id"),
                                      (trial, "_cached_frozen_trial")) if not hasattr(obj, name)]
    storage = getattr(study, "_storage", None)
    missing += [f"storage.{name}" for name in ("get_study_system_attrs", "set_study_system_attr", "create_new_study",
                                               "set_trial_user_attr", "set_trial_state_values", "get_trial")
                if not hasattr(storage, name)]
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError as exc:
        missing.append(f"optuna.storages._rdb ({exc})")
    else:
        missing += [f"models.{name}" for name in ("TrialUserAttributeModel", "TrialIntermediateValueModel", "TrialModel")
                    if not hasattr(models, name)]
    missing += [f"RDBStorage.{name}" for name in ("_set_trial_attr_without_commit",
                                                  "_set_trial_intermediate_value_without_commit")
                if not hasattr(optuna.storages.RDBStorage, name)]
    if missing:
        raise RuntimeError(f"optuna {optuna.__version__} lacks what autotune.search.optuna_adapter relies on: "
                           + ", ".join(missing))
