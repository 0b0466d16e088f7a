"""Shared test fixtures: small real model files, one torch thread for steady timing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"

torch.set_num_threads(1)


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    """A copy of tests/assets/tiny_mlp.py in a temporary folder."""
    path = tmp_path / "tiny_mlp.py"
    shutil.copy(ASSETS / "tiny_mlp.py", path)
    return path


@pytest.fixture
def tiny_task(tiny_model_file: Path):
    from autotune.model.task import load_task

    return load_task(tiny_model_file)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback: the one AUTOTUNE_TEST_POSTGRES names (.ci/run
    starts one), else one started here for the session (tests/pg_server.py), else skip."""
    import os
    import tempfile

    url = os.environ.get("AUTOTUNE_TEST_POSTGRES")
    if url:
        yield url
        return
    import pg_server

    folder = tempfile.mkdtemp(prefix="autotune-pg-")
    try:
        url = pg_server.start(folder)
    except (pg_server.ServerError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    try:
        import psycopg  # noqa: F401  (the driver SQLAlchemy uses for postgresql:// URLs)
    except ImportError:
        pg_server.stop(folder)
        pytest.skip('PostgreSQL runs, but its driver is not installed: pip install -e ".[postgres]"')
    yield url
    pg_server.stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
