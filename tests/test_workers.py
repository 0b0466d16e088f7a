"""Many processes on one study: real worker processes on a real PostgreSQL server, on
Optuna's journal file and on SQLite; claims, stale trials and the worker plan."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autotune.errors import ConfigError
from autotune.hardware import SCHEMA_VERSION, HardwareProfile
from autotune.workflow.parallel import plan_workers
from autotune.search.optuna_adapter import claim
from autotune.search.storage import is_claim, open_storage, redact
from tests.child_env import child_env
from tests.storages import storage_url
import autotune.search.optuna_adapter as study_data

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
COUNTED = ("infeasible", "duplicate", "stale")


def _check_study(storage: str, name: str, trials_budget: int) -> list[optuna.trial.FrozenTrial]:
    """What every shared study must show when its workers are done; returns its trials."""
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(trials)  # every trial number once
    assert sorted(numbers) == list(range(len(trials)))
    # No trial lost: none left running (a queued one the budget did not reach may stay
    # queued), and the budget is held in measured trials.
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    measured = [t for t in trials if t.state.is_finished() and t.user_attrs.get("status") not in COUNTED]
    assert len(measured) >= trials_budget
    # None run twice: every measured config is measured once, but for a recheck on purpose.
    first = Counter(repr(t.user_attrs["config"]) for t in measured if not t.user_attrs.get("recheck"))
    assert max(first.values()) == 1, first.most_common(3)
    # Each queued stage once, and only once the trials it depends on had finished.
    roles = Counter(t.user_attrs.get("role") for t in trials)
    assert roles["default"] == 1 and roles["combination"] <= 1
    staged = [t for t in trials if t.user_attrs.get("role") in ("default", "screening", "recheck") and t.datetime_complete]
    for t in trials:
        if t.user_attrs.get("role") == "combination" and t.datetime_start is not None:
            assert t.datetime_start >= max(u.datetime_complete for u in staged if u.number < t.number)
    # The combined best is the best of the workers' own bests.
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and t.user_attrs.get("worker")]
    bests: dict[str, float] = {}
    for t in complete:
        bests[t.user_attrs["worker"]] = max(bests.get(t.user_attrs["worker"], t.value), t.value)
    assert study.best_value == max(bests.values())
    return trials


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune", *args]


def _env() -> dict[str, str]:
    return child_env(ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_run_with_two_workers_fills_one_study(kind, tmp_path, request):
    storage = storage_url(kind, tmp_path, request)
    out = tmp_path / "run"
    done = subprocess.run(_cli("run", str(ASSETS / "tiny_mlp.py"), "--out", str(out), "--trials", "8", "--workers", "2",
                               "--storage", storage, "--study", "tiny", "--space", str(ASSETS / "tiny_space.yaml"),
                               "--profiles", str(tmp_path / "profiles"), "--no-progress", "--epochs", "1"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _check_study(storage, "tiny", 8)
    # Both workers ran trials, each on its own share of the CPUs.
    workers = Counter(t.user_attrs.get("worker") for t in trials if t.user_attrs.get("status") == "ok")
    assert len(workers) == 2, workers
    assert "worker 0 on CPUs" in done.stdout and "worker 1 on CPUs" in done.stdout
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert tuned["provenance"]["study"]["name"] == "tiny"
    assert (out / "report.json").is_file() and (out / "worker-0.log").is_file()


@pytest.mark.slow
def test_workers_started_at_once_create_the_study_once_and_finalize_once(tmp_path, request):
    storage = storage_url("postgresql", tmp_path, request)
    procs = [subprocess.Popen(_cli("worker", str(ASSETS / "tiny_mlp.py"), "--storage", storage, "--study", "race",
                                   "--trials", "7", "--space", str(ASSETS / "tiny_space.yaml"), "--out", str(tmp_path / f"w{i}"),
                                   "--no-progress"),
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
    assert [n for n in names if not is_claim(n)] == ["race"]
    _check_study(storage, "race", 7)
    finalized = [i for i in range(2) if (tmp_path / f"w{i}" / "tuned.yaml").exists()]
    assert len(finalized) == 1, outputs


def _claim_in_process(url: str, name: str, key: str, queue) -> None:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    queue.put(claim(study, key))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_claim_goes_to_exactly_one_of_many_processes(kind, tmp_path, request):
    storage = storage_url(kind, tmp_path, request)
    optuna.create_study(study_name="s", storage=open_storage(storage))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(storage, "s", "second-stage", queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert results == [False, False, False, True]
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    assert claim(study, "combination") and not claim(study, "combination")


def test_stale_is_a_dead_process_here_or_a_heartbeat_that_stands_still(tiny_task, tmp_path, monkeypatch):
    from autotune.search import open_study, parse_space
    from autotune.search.stale import _here, fail_stale_trials

    monkeypatch.setenv("AUTOTUNE_STALE_AFTER_S", "0.5")
    space = parse_space({"name": "t", "params": {"micro_batch_size": {"choices": [8, 16]}}}, source="test")
    study, _ = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", tiny_task, space, space, "fp", 0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # Heartbeats from another machine's clock, an hour apart from ours: only change counts.
    cases = {"dead here": f"{_here()}:{gone.pid}", "alive here": f"{_here()}:{os.getpid()}",
             "silent elsewhere": "other-host:1", "beating elsewhere": "other-host:2"}
    trials = {}
    for name, worker in cases.items():
        trial = study.ask()
        trial.suggest_categorical("micro_batch_size", [8, 16])
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("heartbeat", time.time() - 3600)
        trials[name] = trial
    assert fail_stale_trials(study) == 1  # the dead pid at once; the others are being watched
    time.sleep(0.7)
    trials["beating elsewhere"].set_user_attr("heartbeat", time.time() - 3590)
    trials["alive here"].set_user_attr("heartbeat", time.time() - 3590)
    assert fail_stale_trials(study) == 1  # the heartbeat that stood still for 0.7 s
    states = {name: study.trials[t.number].state for name, t in trials.items()}
    assert states == {"dead here": TrialState.FAIL, "alive here": TrialState.RUNNING,
                      "silent elsewhere": TrialState.FAIL, "beating elsewhere": TrialState.RUNNING}
    retries = [t.user_attrs.get("retry_of") for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(retries) == sorted([trials["dead here"].number, trials["silent elsewhere"].number])
    assert fail_stale_trials(study) == 0  # failed once, queued again once


def test_joiners_wait_while_the_creator_beats_and_stop_when_it_is_gone(tiny_task, tmp_path, monkeypatch):
    import threading

    from autotune.search import open_study, parse_space
    from autotune.search.opening import join_study

    # Beats every 0.5 s against a 1.5 s limit: a busy machine that holds a beat back by a
    # second still does not make the creator look gone.
    monkeypatch.setenv("AUTOTUNE_STALE_AFTER_S", "1.5")
    space = parse_space({"name": "t", "params": {"micro_batch_size": {"choices": [8, 16]}}}, source="test")
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def slow_prepare(study, gated):  # a probe that takes well over STALE_AFTER_S
        time.sleep(4.0)
        return gated, None

    made: dict[str, float] = {}

    def create() -> None:
        open_study(storage, "s", tiny_task, space, space, "fp", 0, prepare=slow_prepare)
        made["at"] = time.monotonic()

    creator = threading.Thread(target=create)
    creator.start()
    time.sleep(0.3)
    # The creator's heartbeat goes on: the joiner waits for it, however long it takes.
    study, _ = open_study(storage, "s", tiny_task, space, space, "fp", 0)
    joined = time.monotonic()
    creator.join()
    assert study_data.attrs(study)["setup"] == "done" and joined >= made["at"]

    # A creator on another machine that stopped beating mid-setup: the joiner stops within
    # about STALE_AFTER_S, with an error that says so, instead of waiting for SETUP_WAIT_S.
    half = optuna.create_study(study_name="half", storage=open_storage(storage))
    study_data.put(half, "setup", "pending")
    study_data.put(half, "setup_by", "other-host:pid:[1]:7")
    study_data.put(half, "setup_heartbeat", time.time() - 3600)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="was never set up"):
        join_study(storage, "half", tiny_task, "cpu")
    assert time.monotonic() - start < 10  # not SETUP_WAIT_S


def test_workers_split_the_cpus_or_take_one_gpu_each():
    assert [p.cpus for p in plan_workers(2, gpu_count=0, cpus=[0, 1, 2])] == [[0, 1], [2]]
    assert [p.gpu for p in plan_workers(2, gpu_count=4, env={})] == ["0", "1"]
    with pytest.raises(ConfigError, match=r"^--workers 3 asks for more workers than the GPUs this process sees \(2\); "
                                          r"each worker runs its trials on a GPU of its own\.$"):
        plan_workers(3, gpu_count=2, env={})
    with pytest.raises(ConfigError, match="more workers than this process has CPUs"):
        plan_workers(3, gpu_count=0, cpus=[0, 1])


UUID_A = "GPU-11111111-2222-3333-4444-555555555555"
UUID_B = "GPU-66666666-7777-8888-9999-000000000000"
MIG_A = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_B = "MIG-ffffffff-0000-1111-2222-333333333333"


@pytest.mark.parametrize("parent, expected, first", [
    (None, ["0", "1"], "GPU 0"),  # unset: CUDA's own numbering
    ("4,5", ["4", "5"], "GPU 4"),  # this process was given GPUs 4 and 5: so are the workers, not 0 and 1
    (" 5 , 4 ,7", ["5", "4"], "GPU 5"),  # the parent's order; spaces as CUDA reads them
    (f"{UUID_B},{UUID_A}", [UUID_B, UUID_A], UUID_B),
    (f"{MIG_A},{MIG_B}", [MIG_A, MIG_B], MIG_A),
])
def test_each_gpu_worker_sees_its_entry_of_the_parents_visible_devices(parent, expected, first, monkeypatch):
    env = {} if parent is None else {"CUDA_VISIBLE_DEVICES": parent}
    plans = plan_workers(2, gpu_count=2, env=env)
    assert [p.gpu for p in plans] == expected
    assert plans[0].describe() == first
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent or "0,1,2,3")
    assert [p.env()["CUDA_VISIBLE_DEVICES"] for p in plans] == expected


def test_more_gpu_workers_than_the_parent_sees_is_an_error_naming_its_devices():
    for count in (2, 8):  # torch's count follows CUDA_VISIBLE_DEVICES; a larger one is cut to the list
        with pytest.raises(ConfigError, match=r"^--workers 3 asks for more workers than the GPUs this process sees "
                                              r"\(2, CUDA_VISIBLE_DEVICES=4,5\); "):
            plan_workers(3, gpu_count=count, env={"CUDA_VISIBLE_DEVICES": "4,5"})
    assert [p.gpu for p in plan_workers(2, gpu_count=8, env={"CUDA_VISIBLE_DEVICES": "4,5"})] == ["4", "5"]
    # MIG slices: each worker process uses one, however many one process may enumerate.
    mig = plan_workers(2, gpu_count=1, env={"CUDA_VISIBLE_DEVICES": f"{MIG_A},{MIG_B}"})
    assert [p.gpu for p in mig] == [MIG_A, MIG_B]
    # A repeated entry: CUDA sees no device at all.
    with pytest.raises(ConfigError, match=r"sees \(0, CUDA_VISIBLE_DEVICES=\)"):
        plan_workers(1, gpu_count=1, env={"CUDA_VISIBLE_DEVICES": "4,4"})


def _profile(device: str, gpus: list[dict]) -> HardwareProfile:
    return HardwareProfile(schema_version=SCHEMA_VERSION, created="", device=device, gpus=gpus, amp={}, software={},
                           host={"cpu_model": "Test CPU", "memory_total_bytes": 64 * 2**30},
                           nvml={"driver_version": "550.54.15"})


def test_a_worker_describes_the_device_torch_gives_it_not_the_profiles_first_gpu():
    from types import SimpleNamespace

    from autotune.hardware.devices import device_facts
    from autotune.workflow.parallel import trial_device

    # NVML lists an A100 first and an H100 second (without an SM count, as for a GPU torch
    # cannot see); with CUDA_VISIBLE_DEVICES=1 this process's device 0 is the H100.
    a100 = {"name": "NVIDIA A100-SXM4-40GB", "uuid": UUID_A, "memory_total_bytes": 40 * 2**30, "sm_count": 108}
    h100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": UUID_B, "memory_total_bytes": 80 * 2**30, "sm_count": "N/A"}
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", uuid=UUID_B[4:], total_memory=int(79.2 * 2**30),
                            multi_processor_count=132)
    profile = _profile("cuda", [a100, h100])
    assert trial_device(profile, [device_facts(props)]) == "GPU NVIDIA H100 80GB HBM3, 79 GiB, 132 SMs, driver 550"
    # Where torch sees no device: the profile's first GPU.
    assert trial_device(profile, []) == "GPU NVIDIA A100-SXM4-40GB, 40 GiB, 108 SMs, driver 550"


def test_a_cpu_trial_device_is_the_cpu_even_where_nvml_lists_gpus():
    from autotune.workflow.parallel import trial_device

    gpu = {"name": "NVIDIA H100 80GB HBM3", "uuid": UUID_A, "memory_total_bytes": 80 * 2**30, "sm_count": 132}
    assert trial_device(_profile("cpu", [gpu])) == "CPU Test CPU, 64 GiB"  # torch without CUDA trains on the CPU


def test_bad_storage_urls_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a storage URL"):
        open_storage("mongodb://localhost/x")
    with pytest.raises(ConfigError, match="is a folder"):
        open_storage(f"journal:{tmp_path}")
    # Nothing listens on this port: the error names the server, without the password.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://user:secret@127.0.0.1:{port}/db"
    if importlib.util.find_spec("psycopg") is None:
        with pytest.raises(ConfigError, match="driver"):
            open_storage(url)
        return
    with pytest.raises(ConfigError) as err:
        open_storage(url)
    assert "Cannot open the study storage" in err.value.message and "secret" not in err.value.message
    assert redact(url) == f"postgresql://user:***@127.0.0.1:{port}/db"


def test_a_worker_without_a_study_to_join_says_what_the_storage_holds(tiny_model_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="other", storage=open_storage(storage))
    done = subprocess.run(_cli("finalize", str(tiny_model_file), "--storage", storage, "--study", "missing"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "There is no study 'missing'" in done.stderr and "other" in done.stderr


def test_the_finalize_claim_does_not_count_a_trial_queued_between_two_workers_looks(tmp_path):
    # One worker looks, then the other's last trial queues a step of the climb and looks:
    # both find the same finished trials, so only the first finalizes; more budget (a
    # new finished trial) is finalized again.
    from autotune.workflow.workers import is_last

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert is_last(study)
    study.enqueue_trial({"x": 0.5})
    assert not is_last(study)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert is_last(study) and not is_last(study)


@pytest.mark.slow
def test_finalize_by_hand_selects_trains_and_reports_from_a_worker_that_did_not(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--storage", storage, "--study", "byhand", "--no-progress"]
    worker = subprocess.run(_cli("worker", str(ASSETS / "tiny_mlp.py"), *common, "--trials", "3", "--no-finalize",
                                 "--space", str(ASSETS / "tiny_space.yaml"), "--out", str(tmp_path / "w")),
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert not (tmp_path / "w" / "tuned.yaml").exists()  # --no-finalize: the study's trials only
    done = subprocess.run(_cli("finalize", str(ASSETS / "tiny_mlp.py"), *common, "--out", str(tmp_path / "f"),
                               "--epochs", "1"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = yaml.safe_load((tmp_path / "f" / "tuned.yaml").read_text())
    assert tuned["provenance"]["study"]["name"] == "byhand" and tuned["train"]["epochs"] == 1
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["selection"]["picked"] is not None and len(report["final"]["history"]) == 1
    assert (tmp_path / "f" / "model.pt").is_file()
