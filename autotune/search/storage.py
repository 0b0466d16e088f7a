"""Where a study lives: a storage URL opened as Optuna's storage, and atomic claims on it.

Three kinds of URL are accepted, for three ways of sharing a study:

- ``sqlite:///PATH``: one machine (the default, ``OUT/study.db``); any number of worker
  processes on that machine.
- ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (driver psycopg 3, the ``postgres`` extra;
  ``postgresql+psycopg2://`` for psycopg2; MySQL URLs work the same way): many machines
  sharing one database server.
- ``journal:PATH``: Optuna's journal file, an append-only log that workers on a shared
  filesystem (NFS) lock and append to, for when there is no database server.

Claims on a study and the writes that reach into Optuna's internals are in
``optuna_adapter``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

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


def is_claim(name: str) -> bool:
    return "~claim~" in name
