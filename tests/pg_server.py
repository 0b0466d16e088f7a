"""A throwaway PostgreSQL server on loopback, for the tests of studies shared by workers.

It uses the server programs of Debian's ``postgresql`` package (or any ``initdb`` and
``pg_ctl`` on PATH): a new cluster in a folder of ours, listening on 127.0.0.1 on a free
port, trust authentication, fsync off. PostgreSQL refuses to run as root, so as root the
programs run as the ``postgres`` user the package creates.

    python tests/pg_server.py start DIR   # prints: export AUTOTUNE_TEST_POSTGRES=postgresql://...
    python tests/pg_server.py stop DIR

The tests use the server named by AUTOTUNE_TEST_POSTGRES (``.ci/run`` starts one), or
start their own, or skip saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "autotune"


class ServerError(RuntimeError):
    pass


def _program(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServerError(f"no PostgreSQL `{name}` on PATH or in /usr/lib/postgresql (install Debian's postgresql package)")
    return found


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise ServerError("running as root, and no `runuser` to start PostgreSQL as the postgres user")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ServerError(f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: str | Path) -> str:
    """Start a new server with its cluster in ``folder``; returns its URL."""
    folder = Path(folder).resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError("running as root, and there is no postgres user to run the server as") from None
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    _run([_program("initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"])
    _run([_program("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
          "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200", "start"])
    (folder / "url").write_text(f"postgresql://{USER}@127.0.0.1:{port}/postgres")
    return (folder / "url").read_text()


def stop(folder: str | Path) -> None:
    data = Path(folder).resolve() / "data"
    if data.exists():
        _run([_program("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
    try:
        if sys.argv[1] == "start":
            print(f"export AUTOTUNE_TEST_POSTGRES={start(sys.argv[2])}")
        else:
            stop(sys.argv[2])
    except (ServerError, OSError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"pg_server: {exc}")
