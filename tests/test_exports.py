"""Exports load in the real target libraries, map every knob or say why not.

The libraries are optional test dependencies (`pip install -e .[test,exports]`, which
.ci/run does); a test whose library is missing is skipped. DeepSpeed may not install on a
machine without a compiler setup: then its export is checked against the keys its
documentation names.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from autotune.cli import main
from autotune.config import TrainConfig, TunedConfig
from autotune.exports import DERIVED, TARGETS, export, write_export

# Every knob away from its default, so that each must be mapped or listed.
BUSY = TrainConfig(micro_batch_size=48, accumulation_steps=3, num_workers=2, pin_memory=True, persistent_workers=True,
                   cpu_threads=2, amp="bf16", checkpointing=True, channels_last=True, cudnn_benchmark=True,
                   compile="reduce-overhead", fp32_precision="tf32", optimizer_impl="fused", expandable_segments=True,
                   lr_rule="linear", base_lr=0.002, base_batch_size=16, lr=0.018, warmup=0.1, schedule="cosine",
                   epochs=7, weight_decay=0.05, grad_clip=0.5, seed=11)
TUNED = TunedConfig(train=BUSY, provenance={"model_file": "model.py", "model_sha256": "ab" * 32, "train_samples": 1000,
                                            "hardware": {"fingerprint": "cpu-test", "device": "cpu"}},
                    measured={"throughput_samples_per_s": 1234.0, "device": "cpu"})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("impl", ["fused", "foreach", "plain"])
def test_every_knob_is_mapped_or_listed_as_not_expressible(target, schedule, impl):
    import dataclasses

    tuned = dataclasses.replace(TUNED, train=dataclasses.replace(BUSY, schedule=schedule, optimizer_impl=impl))
    result = export(tuned, target)
    notes = " ".join(result.notes)
    for name in BUSY.to_dict():
        if name in DERIVED:
            continue
        assert name in result.mapped or re.search(rf"\b{name} = ", notes), (target, name, result.notes)
    if target in ("lightning", "accelerate"):  # YAML: the notes are in the file's header comment too
        header = "".join(line for line in result.text.splitlines(keepends=True) if line.startswith("#"))
        for note in result.notes:
            assert note in header


def test_lightning_export_builds_a_real_trainer(tmp_path):
    lightning = pytest.importorskip("lightning")
    doc = yaml.safe_load(export(TUNED, "lightning").text)
    assert doc["seed_everything"] == 11
    trainer = lightning.Trainer(**doc["trainer"], accelerator="cpu", logger=False, enable_checkpointing=False,
                                default_root_dir=str(tmp_path))
    assert trainer.accumulate_grad_batches == 3
    assert trainer.max_epochs == 7
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "norm"
    assert str(trainer.precision) == "bf16-mixed"
    assert doc["data"] == {"batch_size": 48, "num_workers": 2, "pin_memory": True, "persistent_workers": True}
    assert doc["model"]["lr"] == pytest.approx(0.018)


def test_hf_export_parses_as_real_training_arguments(tmp_path):
    transformers = pytest.importorskip("transformers")
    path, result = _written(tmp_path, "hf")
    parser = transformers.HfArgumentParser(transformers.TrainingArguments)
    (args,) = parser.parse_json_file(str(path))  # unknown keys are an error here
    assert args.per_device_train_batch_size == 48
    assert args.gradient_accumulation_steps == 3
    assert args.learning_rate == pytest.approx(0.018)
    assert args.num_train_epochs == 7 and args.seed == 11 and args.max_grad_norm == 0.5
    assert args.bf16 and not args.fp16 and args.activation_checkpointing and args.use_cpu
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (2, True)
    # Exported as tuned; TrainingArguments itself turns pinning off with use_cpu.
    assert json.loads(path.read_text())["dataloader_pin_memory"] is True
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert args.torch_compile and args.torch_compile_mode == "reduce-overhead"
    assert args.optim == "adamw_torch_fused" or getattr(args.optim, "value", None) == "adamw_torch_fused"
    # Tuned on the CPU: TF32 is not asked of TrainingArguments (it refuses it without an Ampere GPU).
    assert not args.tf32
    # The warmup fraction: 10% of 1,000 steps is 100.
    assert args.get_warmup_steps(1000) == 100


def test_accelerate_export_loads_with_accelerates_config_loader(tmp_path):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    path, _ = _written(tmp_path, "accelerate")
    cfg = load_config_from_file(str(path))  # rejects keys it does not know
    assert str(cfg.mixed_precision).lower().endswith("bf16")
    assert cfg.num_processes == 1 and cfg.use_cpu
    assert str(cfg.dynamo_config.get("dynamo_backend", "")).upper().endswith("INDUCTOR")
    assert cfg.dynamo_config["dynamo_mode"] == "reduce-overhead"


def test_gpu_knobs_reach_the_targets_that_have_settings_for_them():
    import dataclasses

    gpu = dataclasses.replace(TUNED, measured={**TUNED.measured, "device": "cuda"})
    hf = json.loads(export(gpu, "hf").text)
    assert hf["tf32"] is True and hf["optim"] == "adamw_torch_fused" and hf["torch_compile_mode"] == "reduce-overhead"
    plain = export(dataclasses.replace(gpu, train=dataclasses.replace(BUSY, optimizer_impl="plain",
                                                                     fp32_precision="ieee", compile="default")), "hf")
    doc = json.loads(plain.text)
    assert doc["optim"] == "adamw_torch" and doc["tf32"] is False and "torch_compile_mode" not in doc
    assert "optimizer_impl = plain: build the optimizer with foreach=False, fused=False" in plain.notes
    lightning = export(gpu, "lightning")
    assert 'compile = reduce-overhead: model = torch.compile(model, mode="reduce-overhead") before trainer.fit' \
        in lightning.notes
    assert any(n.startswith("fp32_precision = tf32: torch.backends.cuda.matmul.fp32_precision") for n in lightning.notes)
    assert any(n.startswith("expandable_segments = true: start training with PYTORCH_CUDA_ALLOC_CONF") for n in lightning.notes)
    deepspeed = export(gpu, "deepspeed")
    assert "optimizer_impl" in deepspeed.mapped and not any(n.startswith("optimizer_impl") for n in deepspeed.notes)


def test_deepspeed_export_is_read_by_deepspeeds_config_class_or_uses_its_documented_keys(tmp_path):
    path, result = _written(tmp_path, "deepspeed")
    doc = json.loads(path.read_text())
    steps_per_epoch = -(-(-(-1000 // 48)) // 3)  # ceil(ceil(1000 / 48) / 3) = 7
    assert doc["scheduler"]["params"]["total_num_steps"] == 7 * steps_per_epoch
    assert doc["scheduler"]["params"]["warmup_num_steps"] == round(0.1 * 7 * steps_per_epoch)
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except Exception:  # not installed, or installed without what it needs on this machine
        documented = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                      "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler"}
        assert set(doc) <= documented
        assert doc["scheduler"]["type"] in ("WarmupCosineLR", "OneCycle", "WarmupLR", "WarmupDecayLR")
        pytest.skip("deepspeed is not importable here; checked the documented keys instead")
    cfg = DeepSpeedConfig(str(path))
    assert cfg.train_micro_batch_size_per_gpu == 48
    assert cfg.gradient_accumulation_steps == 3
    assert cfg.train_batch_size == 48 * 3  # one process
    assert cfg.gradient_clipping == 0.5
    assert cfg.bfloat16_config.enabled and not cfg.float16_config.enabled
    assert cfg.optimizer_name == "adamw" and cfg.optimizer_params["lr"] == pytest.approx(0.018)
    assert cfg.scheduler_name == "WarmupCosineLR" and cfg.scheduler_params["total_num_steps"] == 7 * steps_per_epoch


def test_json_export_round_trips_the_tuned_config(tmp_path):
    path, _ = _written(tmp_path, "json")
    doc = json.loads(path.read_text())
    assert TrainConfig.from_dict(doc["train"]) == BUSY
    assert doc["provenance"]["train_samples"] == 1000


def test_without_the_training_set_size_deepspeed_gets_no_scheduler_and_says_so():
    import dataclasses

    result = export(dataclasses.replace(TUNED, provenance={}), "deepspeed")
    assert "scheduler" not in json.loads(result.text)
    assert any("optimizer steps" in n and "unknown" in n for n in result.notes)


def test_cli_export_writes_next_to_the_tuned_yaml_and_warns(tmp_path, capsys):
    TUNED.save(tmp_path / "tuned.yaml")
    assert main(["export", str(tmp_path / "tuned.yaml"), "--to", "hf"]) == 0
    out, err = capsys.readouterr()
    written = tmp_path / "hf_training_args.json"
    assert f"wrote {written}" in out and written.is_file()
    assert "warning: not in the hf file: cpu_threads = 2" in err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "tuned.yaml"), "--to", "nope"])
    assert main(["export", str(tmp_path / "missing.yaml"), "--to", "json"]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def _written(tmp_path: Path, target: str) -> tuple[Path, object]:
    TUNED.save(tmp_path / "tuned.yaml")
    return write_export(tmp_path / "tuned.yaml", target, tmp_path / f"out-{target}")


def test_the_export_module_imports_no_target_library():
    # Exporting must work without Lightning, transformers, Accelerate or DeepSpeed.
    import subprocess

    code = ("import sys, autotune.exports as e; e.export(e.TunedConfig(train=e.TrainConfig()), 'lightning'); "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
