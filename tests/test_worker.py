"""run_isolated on real processes: results, errors, a real OOM, a crash, a timeout, and
the fork server's environment (a model file's CUDA check at import must not poison it).

The functions run in the child live in tests/assets/worker_funcs.py. The child unpickles
them by module name, so tests/assets goes on sys.path here; that is enough for the child
too: each forkserver child is sent the parent's sys.path as it is when the process starts
(multiprocessing's preparation data) and sets it before unpickling its target.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from autotune.search.worker import run_isolated
from tests.child_env import child_env

ASSETS = Path(__file__).parent / "assets"
if str(ASSETS) not in sys.path:
    sys.path.insert(0, str(ASSETS))

import fork_server_funcs  # noqa: E402  (needs tests/assets on sys.path)
import worker_funcs  # noqa: E402

# Generous: the first call also starts the fork server, which imports torch.
TIMEOUT_S = 60.0
MIB = 2**20
GIB = 2**30


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ok_returns_the_value_from_a_fresh_process_each_call():
    first = run_isolated(worker_funcs.echo, {"x": 1, "name": "a"}, TIMEOUT_S)
    second = run_isolated(worker_funcs.echo, {"x": 2, "name": "b"}, TIMEOUT_S)

    assert first.ok and first.status == "ok"
    assert (first.reason, first.detail) == ("", "")
    assert {k: v for k, v in first.value.items() if k != "pid"} == {"x": 1, "name": "a"}
    assert second.value["x"] == 2
    assert first.value["pid"] != os.getpid()
    assert second.value["pid"] not in (os.getpid(), first.value["pid"])
    assert multiprocessing.active_children() == []


def test_exception_is_an_error_with_the_reason_and_the_traceback():
    outcome = run_isolated(worker_funcs.raise_value_error, {"message": "bad knob\nsecond line"}, TIMEOUT_S)

    assert outcome.status == "error"
    assert not outcome.ok
    assert outcome.value == {}
    # Only the first line of the message goes into the one-line reason.
    assert outcome.reason == "ValueError: bad knob"
    assert outcome.detail.startswith("Traceback (most recent call last):")
    assert "in raise_value_error" in outcome.detail
    assert outcome.detail.rstrip().endswith("ValueError: bad knob\nsecond line")


def test_cpu_allocation_failure_is_oom():
    # The child caps its address space at its current size + 256 MiB, then asks for 2 GiB.
    outcome = run_isolated(
        worker_funcs.allocate_past_address_space_limit,
        {"headroom_bytes": 256 * MIB, "alloc_bytes": 2 * GIB},
        TIMEOUT_S,
    )

    assert outcome.status == "oom", outcome.reason
    assert outcome.reason.startswith("RuntimeError: ")
    assert "DefaultCPUAllocator: can't allocate memory" in outcome.reason
    assert "Traceback" in outcome.detail


def test_abort_is_a_crash_naming_the_signal():
    outcome = run_isolated(worker_funcs.abort, {}, TIMEOUT_S)

    assert outcome.status == "crash"
    assert outcome.reason == "the trial process was killed by SIGABRT"
    assert outcome.value == {}


def test_call_after_a_crash_works():
    assert run_isolated(worker_funcs.abort, {}, TIMEOUT_S).status == "crash"

    outcome = run_isolated(worker_funcs.echo, {"x": 3}, TIMEOUT_S)

    assert outcome.ok
    assert outcome.value["x"] == 3


def test_timeout_kills_the_process_promptly(tmp_path):
    pid_file = tmp_path / "pid"
    # The fork server first, so that the clock below holds the call's own time only (a
    # first start imports torch, which takes seconds on a machine with CUDA).
    assert run_isolated(worker_funcs.echo, {"x": 1}, timeout_s=TIMEOUT_S).ok
    start = time.monotonic()

    outcome = run_isolated(worker_funcs.spin_forever, {"pid_file": str(pid_file)}, timeout_s=2)

    elapsed_s = time.monotonic() - start
    assert outcome.status == "timeout"
    assert outcome.reason == "no result within 2 s; the trial process was killed"
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    assert not _is_running(pid)
    assert multiprocessing.active_children() == []
    # Killed at its timeout, not after a join's grace (5 s) or the reaper's (10 s).
    assert elapsed_s < 4.5, f"timeout 2 s, but run_isolated returned after {elapsed_s:.1f} s"


def test_preload_for_adds_the_model_files_imports_that_this_process_has(tmp_path, monkeypatch):
    from autotune.search import worker

    monkeypatch.setattr(worker, "_extra", [])
    model = tmp_path / "model.py"
    model.write_text(
        "import json, torch\nfrom xml.dom import minidom\nfrom . import sibling\n"
        "import not_imported_anywhere_xyz\n\ndef f():\n    import csv\n"
    )
    import xml.dom  # noqa: F401  (so that this process has it, as after loading a model file)

    # torch is preloaded already; the relative import, a module this process never imported
    # and an import inside a function are left out.
    assert worker.preload_for(model) == ["json", "xml.dom"]
    assert worker.preload_for(model) == []  # each module once
    assert worker.preload_for(tmp_path / "missing.py") == []


def test_the_isolated_call_starts_processes_as_the_caller_does():
    # Not through a fork server of its own: DataLoader workers would wait >1 s for it.
    import multiprocessing

    outcome = run_isolated(worker_funcs.start_method, {}, TIMEOUT_S)
    assert outcome.value == {"method": multiprocessing.get_start_method()}


def test_the_fork_server_asks_nvml_so_a_model_files_cuda_check_cannot_poison_it(tmp_path):
    # A library the model file imports asks torch.cuda.is_available() at import, as
    # accelerate or bitsandbytes do; it is preloaded into the fork server.
    (tmp_path / f"{fork_server_funcs.PROBE_MODULE}.py").write_text(fork_server_funcs.PROBE_SOURCE)
    model = tmp_path / "model_with_cuda_check.py"
    shutil.copy(ASSETS / "tiny_mlp.py", model)
    model.write_text(f"import {fork_server_funcs.PROBE_MODULE}\n" + model.read_text())
    root = ASSETS.parents[1]
    env = child_env(root, tmp_path, ASSETS)
    env.pop(fork_server_funcs.NVML_CHECK, None)
    done = subprocess.run([sys.executable, str(ASSETS / "fork_server_funcs.py"), str(model)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert fork_server_funcs.PROBE_MODULE in got["added"]
    assert got["first_status"] == "ok"  # else the isolated call's error
    first = got["first"]
    # The server runs with the variable; the module was imported there, under it; CUDA
    # was not initialised there, so the forked process may use it.
    assert first["server_env"] == "1" and first["probe_imported_in_server"] and first["probe_saw"] == "1"
    assert (first["cuda_initialized"], first["in_bad_fork"]) == (False, False)
    if torch.cuda.is_available():  # asked of NVML in the server, and CUDA works in the forked process
        assert first["probe_found_cuda"] is True and first["cuda_sum"] == 4.0
    # The call itself, and this process after it, have the variable as the caller had it.
    assert first["child_env"] is None and got["env_after_first"] is None
    assert got["second"]["child_env"] == "0" and got["second"]["server_env"] == "1"
    assert got["env_after_second"] == "0"
    assert got["flops_per_sample"] > 0  # the model's own measurement ran in a forked process
