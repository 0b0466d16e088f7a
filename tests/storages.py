"""A fresh study storage of each kind for a test: SQLite, Optuna's journal file, or a
database of its own on the test PostgreSQL server (``postgres_url``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
        # A database of its own for each test, so that names never clash across tests.
        import psycopg

        db = f"t{os.getpid()}_{time.time_ns() % 10**12}"
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {db}")
        return url.rsplit("/", 1)[0] + "/" + db
    if kind == "journal":
        return f"journal:{tmp_path / 'study.log'}"
    return f"sqlite:///{tmp_path / 'study.db'}"
