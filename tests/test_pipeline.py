"""`autotune run` and `autotune train` end to end: real Optuna on SQLite, real trials in
their own processes, real training, on the tiny model with a tiny search space."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import autotune.search.optuna_adapter as study_data
from autotune.report import format as f
from autotune.workflow import pipeline
from autotune.machines import results
from autotune.hardware import load_profile
from autotune.cli import main
from autotune.config import TrainConfig, TunedConfig, load_tuned
from autotune.errors import ConfigError
from autotune.search import SearchBudget, TrialBudget

ASSETS = Path(__file__).parent / "assets"
FAST_TRIAL = TrialBudget(warmup_steps=1, window_s=0.05, windows=2, max_eval_batches=2, timeout_s=60)


def _opts(out: Path, n_trials: int) -> pipeline.RunOptions:
    return pipeline.RunOptions(
        out=out,
        space=str(ASSETS / "tiny_space.yaml"),
        budget=SearchBudget(n_trials=n_trials, trial=FAST_TRIAL),
        progress=False,
    )


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny_mlp", storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.slow
def test_run_writes_everything_and_a_second_run_resumes(tiny_model_file, tmp_path):
    out = tmp_path / "run"
    logs: list[str] = []
    paths = pipeline.run(tiny_model_file, _opts(out, 2), log=logs.append)
    for name in ("tuned.yaml", "study.db", "report.md", "report.json", "model.pt", "hardware.yaml"):
        assert (out / name).is_file(), name
    assert set(paths) >= {"tuned", "json", "markdown", "weights"}

    tuned = load_tuned(out / "tuned.yaml")
    first = {t.number: (t.params, t.value, t.state) for t in _study(out).trials if t.state.is_finished()}
    # amp is searched only where the profile found bf16 faster than fp32 (a CPU with
    # AVX-512 BF16); elsewhere the gate leaves it at off, and it is no parameter.
    amp = {} if "bf16" in tuned.provenance["search_space"]["gated"].get("amp", {}) else {"amp": "off"}
    # The default trial trains at the model file's BASE batch (8), which the space holds.
    assert first[0][0] == {"micro_batch_size": 8, "accumulation_steps": 2 // 2, **amp}
    assert _study(out).trials[0].user_attrs["role"] == "default"

    report = json.loads((out / "report.json").read_text())
    assert report["config"] == tuned.train.to_dict()
    assert tuned.provenance["search_space"]["name"] == "tiny"
    assert tuned.provenance["seeds"] == {"train": 0, "sampler": 0}
    assert tuned.provenance["versions"]["torch"] == str(torch.__version__)
    assert tuned.provenance["hardware"]["fingerprint"].startswith("cpu-")
    assert tuned.measured["throughput_samples_per_s"] > 0
    assert tuned.measured["default_throughput_samples_per_s"] > 0
    assert report["evaluation"]["labels"] == ["a", "b", "c"]
    assert sum(map(sum, report["evaluation"]["confusion_matrix"])) == 32
    assert "classification_report" in (out / "report.md").read_text()
    noise = tuned.measured["noise_scale"]  # goodput says whether it trusted the noise scale, and why
    assert noise["basis"] and any(noise["basis"] in line for line in logs)
    assert (noise["used"] is None) == ("goodput equals throughput" in noise["basis"])
    assert tuned.measured["gradient_noise_scale"] == noise["used"]
    assert noise["check"]["batches"] == [8, 32] and noise["throughput_pick"]["trial"] in first
    assert report["selection"]["noise_scale"]["basis"] == noise["basis"]
    assert f"Statistical efficiency: {noise['basis']}." in (out / "report.md").read_text()
    if noise["estimate"]:
        assert f"Gradient noise scale {noise['estimate']:,.0f} (" in (out / "report.md").read_text()
    weights = torch.load(out / "model.pt", weights_only=True)
    assert "out.weight" in weights
    # The report answers first: the card, from this run's own figures.
    sel, md = report["selection"], (out / "report.md").read_text()
    assert sel["tuning_seconds"] == tuned.measured["tuning_seconds"] > 0
    assert md.index("## Summary") < md.index("## Hardware")
    assert f"| Tuning took | {f.duration(sel['tuning_seconds'])} |" in md
    speedup = sel["goodput_vs_default"] if sel["objective"] == "goodput" and sel.get("goodput_vs_default") else \
        sel["speedup_vs_default"]
    back = f.payback_seconds(sel["tuning_seconds"], speedup)
    assert (f"after {f.duration(back)} of training" in md) if back else ("| Pays back | never" in md)
    assert 'id="summary"' in (out / "report.html").read_text()

    pipeline.run(tiny_model_file, _opts(out, 4), log=logs.append)
    second = _study(out).trials
    assert any("resuming the study" in line for line in logs)
    # Screening trials beyond the budget stay queued (WAITING) for a later run.
    counted = [t for t in second if t.state.is_finished() and t.user_attrs.get("status") not in ("infeasible", "duplicate")]
    assert len(counted) == 4
    for number, (params, value, state) in first.items():
        assert (second[number].params, second[number].value, second[number].state) == (params, value, state)


@pytest.mark.slow
def test_resume_refuses_a_changed_model_file(tiny_model_file, tmp_path):
    out = tmp_path / "run"
    pipeline.run(tiny_model_file, _opts(out, 1), log=lambda _: None)
    tiny_model_file.write_text(tiny_model_file.read_text() + "\n# edited\n")
    with pytest.raises(ConfigError, match="was made for a different version of the model file"):
        pipeline.run(tiny_model_file, _opts(out, 2), log=lambda _: None)


def test_train_with_a_saved_config_uses_it(tiny_model_file, tmp_path):
    cfg = TrainConfig(micro_batch_size=24, accumulation_steps=2, epochs=2, lr=0.01, base_lr=0.01, warmup=0.0)
    TunedConfig(train=cfg, provenance={"note": "written by a test"}).save(tmp_path / "tuned.yaml")
    rc = main(["train", str(tiny_model_file), "--config", str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / "t"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["config"] == cfg.to_dict()
    # 96 samples in micro-batches of 24, 2 per optimizer step: 2 steps and 96 samples an epoch.
    assert [row["samples"] for row in report["final"]["history"]] == [96, 96]
    assert (tmp_path / "t" / "model.pt").is_file()


def test_tuned_yaml_round_trips(tmp_path):
    tuned = TunedConfig(
        train=TrainConfig.from_base(pipeline.load_task(ASSETS / "tiny_mlp.py").base, micro_batch_size=16, amp="bf16"),
        provenance={"seeds": {"train": 0}, "versions": {"torch": "2.13.0"}},
        measured={"throughput_samples_per_s": 1234.5, "peak_memory_bytes": 10},
    )
    path = tuned.save(tmp_path / "tuned.yaml")
    assert load_tuned(path) == tuned
    text = path.read_text()
    assert text.startswith("# autotune tuned configuration (schema version 1).")
    assert "amp: bf16  # autocast dtype" in text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(extra=1), "unknown top-level key 'extra'"),
        (lambda d: d["train"].update(micro_batch=3), "train: unknown key 'micro_batch'"),
        (lambda d: d["train"].update(micro_batch_size="big"), "`micro_batch_size` must be an integer, but got 'big'"),
        (lambda d: d["train"].update(amp="fp8"), "`amp` must be one of off, fp16, bf16, but got 'fp8'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
    ],
)
def test_tuned_yaml_errors_name_the_problem(tmp_path, edit, message):
    path = TunedConfig(train=TrainConfig()).save(tmp_path / "tuned.yaml")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_tuned(path)
    assert str(path) in str(info.value)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.py"
    cmd = [sys.executable, "-m", "autotune", "run", str(missing), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"autotune: error: Model file {missing} does not exist." in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "autotune", "--debug", *cmd[3:]], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "model.py", "--trials", "0"])
    assert info.value.code == 2
    assert "--trials: must be >= 1, but got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_records_its_result_and_the_next_study_starts_from_it(tiny_model_file, tmp_path):
    profiles = tmp_path / "profiles"
    logs: list[str] = []
    first = pipeline.run(tiny_model_file, dataclasses.replace(_opts(tmp_path / "a", 2), profiles=profiles), log=logs.append)
    entry = results.entry_for(load_profile(first["profile"]), "tiny_mlp")
    assert entry["best"]["config"] == load_tuned(tmp_path / "a" / "tuned.yaml").train.to_dict()
    assert entry["top"][0]["throughput_samples_per_s"] >= entry["top"][-1]["throughput_samples_per_s"]

    pipeline.run(tiny_model_file, dataclasses.replace(_opts(tmp_path / "b", 2), profiles=profiles), log=logs.append)
    assert any(line.startswith("autotune: warm start: ") for line in logs)
    trials = _study(tmp_path / "b").trials
    assert trials[0].user_attrs["role"] == "default"
    assert trials[1].user_attrs["role"] == "warm_start"
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["search"]["warm_start"]["source_fingerprint"] == load_profile(first["profile"]).fingerprint

    # --no-warm-start: the same saved results are there, and a new study screens instead.
    logs.clear()
    cold = dataclasses.replace(_opts(tmp_path / "c", 2), profiles=profiles, warm_start=False)
    pipeline.run(tiny_model_file, cold, log=logs.append)
    assert not any(line.startswith("autotune: warm start: ") for line in logs)
    assert [t.user_attrs.get("role") for t in _study(tmp_path / "c").trials[:2]] == ["default", "screening"]
    assert json.loads((tmp_path / "c" / "report.json").read_text())["search"]["warm_start"] is None


@pytest.mark.slow
def test_run_resume_keeps_the_selection_and_goes_on_from_the_last_checkpoint(tiny_model_file, tmp_path):
    out = tmp_path / "run"
    pipeline.run(tiny_model_file, _opts(out, 2), log=lambda _: None)
    tuned_before = load_tuned(out / "tuned.yaml").train
    remeasured = study_data.attrs(_study(out))["remeasured"]
    weights = torch.load(out / "model.pt", weights_only=True)
    logs: list[str] = []
    resumed = dataclasses.replace(_opts(out, 2), final=pipeline.FinalOptions(resume=True))
    pipeline.run(tiny_model_file, resumed, log=logs.append)
    # No trial and no re-measurement ran again: the same pick, trained no further (the
    # final run had finished, so its last checkpoint is its end).
    assert "autotune: the study was complete; using its earlier selection" in logs
    assert study_data.attrs(_study(out))["remeasured"] == remeasured
    assert load_tuned(out / "tuned.yaml").train == tuned_before
    assert f"autotune: the checkpointed final run had finished its {tuned_before.epochs} epochs; nothing is left to train" in logs
    again = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    report = json.loads((out / "report.json").read_text())
    assert len(report["final"]["history"]) == tuned_before.epochs
