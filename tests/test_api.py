"""The Python API end to end with in-memory objects, and the study in Optuna's own CLI.

The model factory, the datasets' builder and the loss are defined here at the top level:
trials run in fresh processes, which import them by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import autotune
import autotune.search.optuna_adapter as study_data
from autotune.search import TrialBudget

ASSETS = Path(__file__).parent / "assets"
FAST = TrialBudget(warmup_steps=1, window_s=0.02, windows=2, max_eval_batches=1, timeout_s=60)
BASE = {"lr": 0.01, "batch_size": 8, "epochs": 1, "warmup": 0.0, "grad_clip": 0.0, "seed": 0}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2))

    def forward(self, x):
        return self.body(x)


def build_model() -> nn.Module:
    return Net()


def make_datasets():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(160, 5, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])


def smoothed_loss(output, target):
    return nn.functional.cross_entropy(output, target, label_smoothing=0.05)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "toy"
    logs: list[str] = []
    run = autotune.run(build_model, make_datasets, out=out, space=str(ASSETS / "tiny_space.yaml"), trials=3,
                       progress=False, trial_budget=FAST, log=logs.append, loss_fn=smoothed_loss, BASE=BASE,
                       CLASS_NAMES=["neg", "pos"])
    return out, run, logs


@pytest.mark.slow
def test_run_tunes_trains_and_reports_objects_given_in_memory(api_run):
    out, run, logs = api_run
    assert (out / "toy.py").is_file() and (out / "task.pkl").is_file()  # the generated model file
    for name in ("tuned.yaml", "study.db", "report.json", "report.html", "model.pt"):
        assert (out / name).is_file(), name
    assert run.tuning.study.study_name == "toy"
    tuned = autotune.load_config(run.paths["tuned"])
    assert tuned.train == run.config == run.tuning.tuned.train
    assert tuned.train.base_lr == 0.01 and tuned.train.epochs == 1  # BASE given as a keyword
    assert tuned.provenance["train_samples"] == 128
    ev = run.result.evaluation
    assert ev.samples == 32
    report = json.loads((out / "report.json").read_text())
    assert set(report["evaluation"]["report"]) >= {"neg", "pos"}  # CLASS_NAMES given as a keyword
    assert isinstance(run.result.model, nn.Module)


@pytest.mark.slow
def test_train_with_datasets_as_objects_and_a_config_object(api_run, tmp_path):
    _, run, _ = api_run
    train, val = make_datasets()
    again = autotune.train(build_model, (train, val), config=run.tuning.tuned, out=tmp_path / "again",
                           epochs=2, progress=False, log=lambda *_: None, BASE=BASE)
    assert len(again.result.history) == 2
    assert again.config.micro_batch_size == run.config.micro_batch_size
    # A plain dict of knobs works too.
    third = autotune.train(build_model, (train, val), config={"micro_batch_size": 16, "epochs": 1, "lr": 0.02},
                           out=tmp_path / "third", progress=False, log=lambda *_: None)
    assert third.config.micro_batch_size == 16 and third.result.steps == 8


@pytest.mark.slow
def test_export_and_profile_from_the_api(api_run, tmp_path):
    out, run, _ = api_run
    result = autotune.export(run.paths["tuned"], "json", tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["train"]["micro_batch_size"] == run.config.micro_batch_size
    assert result.notes == []
    hw = autotune.profile(save=tmp_path / "hw.yaml", bench=False)
    assert (tmp_path / "hw.yaml").is_file() and hw.fingerprint in (tmp_path / "hw.yaml").read_text()


@pytest.mark.slow
def test_the_optuna_cli_reads_the_study_and_its_measured_fields(api_run):
    out, run, _ = api_run
    storage = f"sqlite:///{out / 'study.db'}"
    exe = shutil.which("optuna", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from optuna.cli import main; sys.exit(main())"]
    done = subprocess.run([*cmd, "trials", "--storage", storage, "--study-name", "toy", "-f", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    trials = json.loads(done.stdout)
    measured = [t for t in trials if t["state"] == "COMPLETE" and t["user_attrs"].get("status") == "ok"]
    assert measured
    attrs = measured[0]["user_attrs"]
    for key in ("throughput_samples_per_s", "goodput_samples_per_s", "peak_memory_bytes", "timed_seconds",
                "data_wait_fraction", "val_loss"):
        assert key in attrs, key
    assert attrs["throughput_samples_per_s"] > 0
    studies = subprocess.run([*cmd, "studies", "--storage", storage, "-f", "json"], capture_output=True, text=True,
                             timeout=120)
    assert studies.returncode == 0, studies.stderr
    (study,) = [s for s in json.loads(studies.stdout) if "~claim~" not in s["name"]]
    assert study["name"] == "toy"
    # What a user browses stays short; the bulk (space, probe, profile, race) is kept apart.
    assert set(study["user_attrs"]) <= set(study_data.SHOWN) and study["user_attrs"]["objective"] in ("goodput", "throughput")
    table = subprocess.run([*cmd, "studies", "--storage", storage], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and max(len(line) for line in table.stdout.splitlines()) < 300, table.stdout


def test_a_lambda_or_a_nested_function_is_refused_with_the_reason(tmp_path):
    with pytest.raises(autotune.ConfigError, match="top level of a module"):
        autotune.tune(lambda: Net(), make_datasets, out=tmp_path / "x")

    def nested():
        return Net()

    with pytest.raises(autotune.ConfigError, match="defined inside another function"):
        autotune.tune(nested, make_datasets, out=tmp_path / "x")
    with pytest.raises(autotune.ConfigError, match="needs `datasets`"):
        autotune.tune(build_model, out=tmp_path / "x")
    with pytest.raises(autotune.ConfigError, match="must be a function that builds"):
        autotune.tune(build_model(), make_datasets, out=tmp_path / "x")
    with pytest.raises(autotune.ConfigError, match="unknown model file hook 'loss'"):
        autotune.tune(build_model, make_datasets, out=tmp_path / "x", loss=smoothed_loss)


def test_a_function_from_a_notebook_is_refused_with_a_hint(tmp_path, monkeypatch):
    import types

    session = types.ModuleType("__main__")  # an interactive __main__ has no __file__
    monkeypatch.setitem(sys.modules, "__main__", session)
    exec("def build():\n    return None\n", session.__dict__)
    with pytest.raises(autotune.ConfigError, match="interactive session") as err:
        autotune.tune(session.build, make_datasets, out=tmp_path / "x")
    assert "into a .py file" in err.value.hint


def test_a_script_main_function_is_found_by_a_fresh_process(tmp_path):
    # A script that calls the API from its __main__ block: the trial processes import
    # the script under another name to find its functions.
    script = tmp_path / "train_me.py"
    script.write_text(
        "import sys, torch\n"
        "from torch import nn\n"
        "from torch.utils.data import TensorDataset\n"
        "from autotune.model.inmemory import write_task\n"
        "def build():\n"
        "    return nn.Linear(3, 2)\n"
        "def data():\n"
        "    x = torch.randn(40, 3); y = (x[:, 0] > 0).long()\n"
        "    return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])\n"
        "if __name__ == '__main__':\n"
        "    print(write_task(sys.argv[1], 'scripted', build, data))\n"
    )
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, text=True)
    check = ("import sys; from autotune.model.task import load_task; t = load_task(sys.argv[1]); "
             "print(type(t.build_model()).__name__, len(t.datasets()[0]))")
    done = subprocess.run([sys.executable, "-c", check, str(out / "scripted.py")], capture_output=True, text=True,
                          cwd=tmp_path.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Linear", "32"]


def test_import_autotune_is_light():
    code = "import sys, autotune; print('torch' in sys.modules, callable(autotune.tune))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


@pytest.mark.slow
def test_the_api_example_runs_as_a_script(tmp_path):
    # Its functions live in the script's __main__: the trial processes must find them.
    example = Path(__file__).parents[1] / "examples" / "api" / "tune_in_python.py"
    out = tmp_path / "wine"
    done = subprocess.run([sys.executable, str(example), "--trials", "3", "--epochs", "2", "--out", str(out),
                           "--space", str(ASSETS / "tiny_space.yaml")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation accuracy: " in done.stdout
    assert (out / "wine.py").is_file() and (out / "lightning.yaml").is_file() and (out / "report.html").is_file()
    import optuna

    study = optuna.load_study(study_name="wine", storage=f"sqlite:///{out / 'study.db'}")
    # Trials that trained in their own processes: measured in full, or stopped early as
    # clearly slow (which of the two depends on the machine's noise).
    trained = [t for t in study.trials if t.user_attrs.get("status") in ("ok", "pruned")]
    assert len(trained) >= 2 and all(t.user_attrs.get("window_samples_per_s") for t in trained)
