"""Faults cost the trial they happen in, never the study or the tuner: real out-of-memory
under a memory cap, a real abort, a real hang ended by the trial timeout, an infinite
loss, an exception in the user's dataset; a tuner stopped with Ctrl-C or killed with
SIGKILL resumes with every finished trial kept and the interrupted ones queued again once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autotune.search import SearchBudget, TrialBudget, open_study, parse_space, run_search
from autotune.search.worker import run_isolated
from autotune.model.task import load_task
from tests.child_env import child_env

ASSETS = Path(__file__).parent / "assets"
ROOT = Path(__file__).parents[1]
# A short timeout so the hang costs seconds; a cap well above what a normal trial needs.
BUDGET = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, timeout_s=8,
                     memory_limit_bytes=2 * 2**30)
FAULTS = [  # (micro-batch, workers) -> (state, status, words in the reason)
    ((8, 0), (TrialState.COMPLETE, "ok", "")),
    ((12, 0), (TrialState.FAIL, "error", "training loss became")),
    ((16, 0), (TrialState.FAIL, "crash", "SIGABRT")),
    ((24, 0), (TrialState.FAIL, "timeout", "no result within 8 s")),
    ((32, 0), (TrialState.PRUNED, "oom", "")),
    ((8, 2), (TrialState.FAIL, "error", "cannot be read in a worker")),
]


def _children() -> set[int]:
    """Live child processes of this process (from /proc)."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.add(int(entry))
    return out


def _noop() -> dict:
    return {}


def _again_without_cuda(test_id: str) -> None:
    """Run the test ``test_id`` again in a fresh pytest with CUDA hidden; fail if it fails.

    Trials pick the GPU when torch sees one, but the faults staged here are the CPU's (8
    GiB of host memory against an address-space cap). The trials are forked from a
    server that may be running already with CUDA visible, so only a fresh interpreter
    pins them to the CPU."""
    done = subprocess.run([sys.executable, "-m", "pytest", test_id, "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap and /proc are Linux's")
def test_each_fault_costs_only_its_trial_and_is_recorded_with_its_reason(tmp_path, request):
    if torch.cuda.is_available():
        return _again_without_cuda(request.node.nodeid)
    task = load_task(ASSETS / "faulty_mlp.py")
    space = parse_space({"name": "faults", "params": {"micro_batch_size": {"choices": [8, 12, 16, 24, 32]},
                                                     "num_workers": {"choices": [0, 2]}, "amp": {"choices": ["off"]}}},
                        source="fault space")
    study, space = open_study(f"sqlite:///{tmp_path / 'study.db'}", "faults", task, space, space, "fp-test", 0)
    for (micro, workers), _ in FAULTS:
        study.enqueue_trial({"micro_batch_size": micro, "num_workers": workers, "amp": "off"})
    run_isolated(_noop, {}, 60)  # the fork server is up before the baseline is taken
    children, fds = _children(), len(os.listdir("/proc/self/fd"))

    run_search(study, task, space, SearchBudget(n_trials=len(FAULTS), trial=BUDGET, prune_below=0.0), progress=False)

    trials = study.trials
    assert len(trials) == len(FAULTS)  # the tuner went through every one: none lost, no crash
    for t, ((micro, workers), (state, status, words)) in zip(trials, FAULTS):
        assert (t.params["micro_batch_size"], t.params["num_workers"]) == (micro, workers)
        assert (t.state, t.user_attrs.get("status")) == (state, status), (micro, workers, t.user_attrs.get("reason"))
        assert words in t.user_attrs.get("reason", ""), t.user_attrs.get("reason")
    assert trials[0].value > 0
    # Nothing left behind: no process (the hung and the aborted ones included), no open file.
    deadline = time.monotonic() + 10
    while _children() - children and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children() - children == set()
    assert len(os.listdir("/proc/self/fd")) <= fds + 1


def _cli(out: Path, profiles: Path) -> list[str]:
    return [sys.executable, "-m", "autotune", "run", str(ASSETS / "tiny_mlp.py"), "--out", str(out), "--trials", "8",
            "--space", str(ASSETS / "tiny_space.yaml"), "--profiles", str(profiles), "--no-progress", "--epochs", "1"]


def _rows(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
        except sqlite3.OperationalError:
            return []


def _wait_for(db: Path, proc: subprocess.Popen, finished: int, timeout: float = 240) -> None:
    """Until the study holds ``finished`` finished trials and one running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(db)
        if sum(s in ("COMPLETE", "PRUNED", "FAIL") for _, s in rows) >= finished and any(s == "RUNNING" for _, s in rows):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"the study did not reach {finished} finished trials: {rows}")


@pytest.mark.slow
def test_ctrl_c_and_sigkill_lose_no_trial_and_the_same_command_resumes(tmp_path):
    out, profiles = tmp_path / "run", tmp_path / "profiles"
    db = out / "study.db"
    env = child_env(ROOT)

    # Ctrl-C (SIGINT) while a trial runs: a clean stop that says how to resume. (A shell
    # starts background jobs with SIGINT ignored, and Python keeps it so: give the tuner
    # the default disposition a terminal would.)
    proc = subprocess.Popen(_cli(out, profiles), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(db, proc, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err
    # No traceback of ours. (A Ctrl-C that lands in a garbage-collection callback is
    # dropped by Python with an "Exception ignored" note; the tuner then stops at the next
    # trial, which the exit status above shows.)
    assert err.count("Traceback") == err.count("Exception ignored"), err
    after_int = {n: s for n, s in _rows(db)}

    # SIGKILL while a trial runs: nothing can be said or saved at that moment.
    proc = subprocess.Popen(_cli(out, profiles), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(db, proc, sum(s != "RUNNING" for s in after_int.values()) + 3)  # +1: the stale one
    proc.kill()
    proc.wait(timeout=30)
    after_kill = {n: s for n, s in _rows(db)}

    done = subprocess.run(_cli(out, profiles), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "tuned.yaml").is_file() and (out / "report.json").is_file()

    study = optuna.load_study(study_name="tiny_mlp", storage=f"sqlite:///{db}")
    trials = study.trials
    # Every trial finished before a stop is there unchanged.
    for before in (after_int, after_kill):
        for n, state in before.items():
            if state not in ("RUNNING", "WAITING"):
                assert trials[n].state.name == state
    # Each trial cut short is failed as stale and its config was queued again, once (a
    # trial stopped between Optuna's ask and drawing its knobs had no config to retry).
    stale = [t for t in trials if t.user_attrs.get("status") == "stale"]
    assert len(stale) == 2
    for t in stale:
        config = t.params or t.system_attrs.get("fixed_params")
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retries) == (1 if config else 0), (t.number, config)
        if config:  # run with the same knobs, or still queued when the budget ran out first
            retry = retries[0]
            assert retry.state == TrialState.WAITING or (
                retry.state.is_finished() and {k: retry.params.get(k) for k in config} == config), (retry, config)
    assert all(t.state.is_finished() or t.state == TrialState.WAITING for t in trials)
    measured = [t for t in trials if t.state.is_finished() and t.user_attrs.get("status") not in ("infeasible", "duplicate", "stale")]
    assert len(measured) == 8  # the budget, with no trial lost to the stops
