"""Where a study lives: a storage URL opened as Optuna's storage, and atomic claims on it.

Three kinds of URL are accepted, for three ways of sharing a study:

- ``sqlite:///PATH``: one machine (the default, ``OUT/study.db``); any number of worker
  processes on that machine.
- ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (driver psycopg 3, the ``postgres`` extra;
  ``postgresql+psycopg2://`` for psycopg2; MySQL URLs work the same way): many machines
  sharing one database server.
- ``journal:PATH``: Optuna's journal file, an append-only log that workers on a shared
  filesystem (NFS) lock and append to, for when there is no database server.

A claim is a test-and-set that every one of these storages does atomically: creating a
study whose name is taken fails for every process but one. The search uses claims where
two workers could otherwise both queue the same next trials (``screen``), and where two
could both retry the same stale trial.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.study import StudyDirection

from autotune.errors import ConfigError

FORMS = "sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB, or journal:PATH"
_open: dict[str, Any] = {}  # one storage object per URL in a process


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def redact(url: str) -> str:
    """``url`` with its password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """Optuna's storage for ``url`` (see the module's docstring), opened once per process.

    A SQLite file is opened in write-ahead-log mode with ``synchronous=NORMAL``: a trial
    writes some forty values, and with SQLite's default every commit waits for the disk
    (0.30 s a trial here when each value was its own commit, against 0.04 s). A crash of the tuner
    loses nothing; a power loss may lose the last trials."""
    if url in _open:
        return _open[url]
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):].removeprefix("//"))
        if not url[len("journal:"):]:
            raise ConfigError(f"The storage URL {url!r} names no journal file.", hint=f"Use one of: {FORMS}.")
        if path.is_dir():
            raise ConfigError(f"The journal storage {path} is a folder; it must name a file.",
                              hint="For example journal:/shared/studies/digits.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    elif re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", url):
        storage = _rdb(url)
    else:
        raise ConfigError(f"{url!r} is not a storage URL autotune can open.", hint=f"Use one of: {FORMS}.")
    _open[url] = storage
    return storage


def _rdb(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("postgres://"):  # the scheme libpq accepts, which SQLAlchemy does not
        url = "postgresql://" + url[len("postgres://"):]
    # pool_pre_ping: a connection the server closed while a long trial ran is replaced
    # instead of failing the next write.
    kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError):
            # Two processes making the tables of a new database at once: one of them finds
            # them half made. Once more, when they are there.
            time.sleep(1.0)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as exc:  # Optuna's, raised from the driver's ModuleNotFoundError
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "its driver"
        raise ConfigError(
            f"Opening {redact(url)} needs the database driver {missing!r}, which is not installed.",
            hint='For PostgreSQL: pip install "autotune[postgres]" (psycopg 3).',
        ) from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ConfigError(f"Cannot open the study storage {redact(url)}: {first}",
                          hint="Check that the server runs, and the host, port, user, password and database.") from exc
    if url.startswith("sqlite:"):
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()  # connections made before the listener are closed
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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


def is_claim(name: str) -> bool:
    return "~claim~" in name


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
