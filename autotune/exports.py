"""Export a tuned config to the files other training tools read.

``autotune export tuned.yaml --to lightning|hf|accelerate|deepspeed|json``:

- ``lightning``: a LightningCLI config (``python train.py fit --config FILE``): the
  ``trainer`` section holds ``lightning.Trainer``'s own arguments, ``seed_everything`` the
  seed; the knobs Lightning leaves to the user's code (micro-batch, DataLoader settings,
  learning rate and schedule) go under ``data`` and ``model`` by the names a
  LightningDataModule / LightningModule would take, with a comment saying so.
- ``hf``: a JSON file of Hugging Face ``TrainingArguments`` (``HfArgumentParser(
  TrainingArguments).parse_json_file(FILE)``, or ``TrainingArguments(**json.load(f))``).
- ``accelerate``: an Accelerate config file (``accelerate launch --config_file FILE``);
  the training-loop knobs it has no key for are listed in its header comment.
- ``deepspeed``: a DeepSpeed JSON config (``deepspeed.initialize(config=FILE)``):
  micro-batch per GPU, accumulation, precision, clipping, AdamW and a warmup-cosine
  schedule over the run's optimizer steps.
- ``json``: everything in tuned.yaml as JSON, for tools of your own.

Every knob of the tuned config is either mapped to the target's native name or listed
as not expressible there (a comment in YAML, a ``notes`` list returned and printed for
JSON targets, which cannot hold comments): nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.config import TrainConfig, TunedConfig, load_tuned, write_atomic
from autotune.errors import ConfigError

TARGETS = ("lightning", "hf", "accelerate", "deepspeed", "json")
# How lr was derived from the model file's reference (base_lr at base_batch_size, scaled by
# lr_rule): every target gets the resulting lr, so these need no key of their own.
DERIVED = ("lr_rule", "base_lr", "base_batch_size")
SUFFIX = {"lightning": "lightning.yaml", "hf": "hf_training_args.json", "accelerate": "accelerate_config.yaml",
          "deepspeed": "deepspeed_config.json", "json": "tuned.json"}


@dataclass
class Export:
    target: str
    text: str
    notes: list[str] = field(default_factory=list)  # knobs the target cannot express, and why
    mapped: dict[str, str] = field(default_factory=dict)  # our knob -> the target's key


def export(tuned: TunedConfig, target: str) -> Export:
    """The file ``target`` reads, for ``tuned``."""
    if target not in TARGETS:
        raise ConfigError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}.")
    return {"lightning": _lightning, "hf": _hf, "accelerate": _accelerate, "deepspeed": _deepspeed,
            "json": _json}[target](tuned)


def write_export(tuned_path: str | Path, target: str, out: str | Path | None = None) -> tuple[Path, Export]:
    """Read ``tuned_path``, export it to ``target`` and write it to ``out`` (default: next
    to the tuned YAML, named for the target); returns the path and the export."""
    tuned = load_tuned(tuned_path)
    result = export(tuned, target)
    path = Path(out) if out is not None else Path(tuned_path).with_name(SUFFIX[target])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, result.text), result


def _schedule_text(cfg: TrainConfig) -> str:
    if cfg.schedule == "onecycle":
        return "one-cycle (rise from lr/25 over the first 30% of steps, then fall)"
    return f"linear warmup over {cfg.warmup:.0%} of the optimizer steps, then cosine decay to 0"


def _total_steps(tuned: TunedConfig) -> int | None:
    """Optimizer steps of the whole run, per process, when the tuned YAML recorded the
    training set's size (autotune >= 0.1.0 runs made after exports existed)."""
    n = tuned.provenance.get("train_samples")
    if not isinstance(n, int) or n <= 0:
        return None
    cfg = tuned.train
    return math.ceil(math.ceil(n / cfg.micro_batch_size) / cfg.accumulation_steps) * cfg.epochs


def _header(tuned: TunedConfig, target: str, notes: list[str], extra: list[str] = ()) -> str:
    prov = tuned.provenance
    lines = [f"Exported by `autotune export --to {target}` from a tuned config.",
             f"model: {prov.get('model_file', '?')} (sha256 {str(prov.get('model_sha256', '?'))[:12]})",
             f"hardware: {(prov.get('hardware') or {}).get('fingerprint', '?')}; "
             f"measured {tuned.measured.get('throughput_samples_per_s', 0) or 0:.0f} samples/s there",
             *extra]
    if notes:
        lines.append("Not expressible here (set these in your own code):")
        lines += [f"  - {n}" for n in notes]
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def _common_notes(cfg: TrainConfig, skip: tuple[str, ...] = (), checkpointing: str | None = None,
                  compile: str | None = None) -> list[str]:
    """Knobs that no target's config file holds, with what to do instead; with
    ``checkpointing`` / ``compile``, how to do those in code where the target's file has
    no key for them (``compile`` may hold ``{call}``: the ``torch.compile`` call)."""
    notes = []
    if checkpointing and cfg.checkpointing:
        notes.append(f"checkpointing = true: {checkpointing}")
    if compile and cfg.compile != "off":
        notes.append(f"compile = {cfg.compile}: {compile.format(call=_compile_call(cfg))}")
    if "cpu_threads" not in skip and cfg.cpu_threads:
        notes.append(f"cpu_threads = {cfg.cpu_threads}: call torch.set_num_threads({cfg.cpu_threads}) before training "
                     "(CPU training only)")
    if "channels_last" not in skip and cfg.channels_last:
        notes.append("channels_last = true: model.to(memory_format=torch.channels_last) and the same for 4-D inputs")
    if "cudnn_benchmark" not in skip and cfg.cudnn_benchmark:
        notes.append("cudnn_benchmark = true: torch.backends.cudnn.benchmark = True")
    if "fp32_precision" not in skip and cfg.fp32_precision != "ieee":
        notes.append(f"fp32_precision = {cfg.fp32_precision}: torch.backends.cuda.matmul.fp32_precision = "
                     f"\"{cfg.fp32_precision}\" and torch.backends.cudnn.conv.fp32_precision = \"{cfg.fp32_precision}\" "
                     "before training (torch before 2.9: the allow_tf32 flags of both)")
    if "optimizer_impl" not in skip and cfg.optimizer_impl != "auto":
        notes.append(f"optimizer_impl = {cfg.optimizer_impl}: build the optimizer with {_IMPL_ARGS[cfg.optimizer_impl]}")
    if "expandable_segments" not in skip and cfg.expandable_segments:
        notes.append("expandable_segments = true: start training with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                     "in the environment")
    return notes


# The optimizer arguments of each implementation (torch's AdamW, SGD, ... take both).
_IMPL_ARGS = {"plain": "foreach=False, fused=False", "foreach": "foreach=True", "fused": "fused=True"}


def _compile_call(cfg: TrainConfig) -> str:
    mode = "" if cfg.compile in ("off", "default") else f', mode="{cfg.compile}"'
    return f"torch.compile(model{mode})"


def _device(tuned: TunedConfig) -> str:
    """Where the config was tuned: cpu or cuda."""
    return str(tuned.measured.get("device") or (tuned.provenance.get("hardware") or {}).get("device") or "cpu")


# Lightning -----------------------------------------------------------------------------

_LIGHTNING_PRECISION = {"off": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def _lightning(tuned: TunedConfig) -> Export:
    cfg = tuned.train
    trainer: dict[str, Any] = {
        "precision": _LIGHTNING_PRECISION[cfg.amp],
        "accumulate_grad_batches": cfg.accumulation_steps,
        "max_epochs": cfg.epochs,
        "benchmark": cfg.cudnn_benchmark,
    }
    if cfg.grad_clip > 0:
        trainer.update(gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm="norm")
    data = {"batch_size": cfg.micro_batch_size, "num_workers": cfg.num_workers, "pin_memory": cfg.pin_memory,
            "persistent_workers": cfg.persistent_workers}
    model = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "warmup": cfg.warmup, "schedule": cfg.schedule}
    notes = _common_notes(
        cfg, skip=("cudnn_benchmark",),
        checkpointing="wrap the model's repeated blocks in torch.utils.checkpoint.checkpoint inside your "
                      "LightningModule (no Trainer flag does it outside FSDP)",
        compile="model = {call} before trainer.fit")
    mapped = {"amp": "trainer.precision", "accumulation_steps": "trainer.accumulate_grad_batches",
              "epochs": "trainer.max_epochs", "cudnn_benchmark": "trainer.benchmark",
              "grad_clip": "trainer.gradient_clip_val", "seed": "seed_everything",
              "micro_batch_size": "data.batch_size", "num_workers": "data.num_workers",
              "pin_memory": "data.pin_memory", "persistent_workers": "data.persistent_workers",
              "lr": "model.lr", "weight_decay": "model.weight_decay", "warmup": "model.warmup",
              "schedule": "model.schedule"}
    extra = ["`trainer` holds lightning.Trainer arguments; `data` and `model` are init arguments your",
             "LightningDataModule and LightningModule should accept under these names (LightningCLI passes",
             "them): the DataLoader's batch_size is the micro-batch; build AdamW with lr and weight_decay and a",
             f"LambdaLR for: {_schedule_text(cfg)}, stepped every optimizer step."]
    doc = {"seed_everything": cfg.seed, "trainer": trainer, "data": data, "model": model}
    text = _header(tuned, "lightning", notes, extra) + yaml.safe_dump(doc, sort_keys=False)
    return Export("lightning", text, notes, mapped)


# Hugging Face --------------------------------------------------------------------------

def _hf(tuned: TunedConfig) -> Export:
    """Keys as transformers 5 names them (4.x: ``gradient_checkpointing`` and
    ``warmup_ratio`` instead of ``activation_checkpointing`` and a fractional
    ``warmup_steps``)."""
    cfg = tuned.train
    args: dict[str, Any] = {
        "output_dir": "hf_output",
        "per_device_train_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.accumulation_steps,
        "learning_rate": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "num_train_epochs": cfg.epochs,
        "max_grad_norm": cfg.grad_clip,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": cfg.amp == "bf16",
        "fp16": cfg.amp == "fp16",
        "activation_checkpointing": cfg.checkpointing,
        # Tuned on the CPU: train there (TrainingArguments refuses bf16 without a GPU otherwise).
        "use_cpu": _device(tuned) == "cpu",
        "dataloader_num_workers": cfg.num_workers,
        "dataloader_pin_memory": cfg.pin_memory,
        "dataloader_persistent_workers": cfg.persistent_workers,
        "torch_compile": cfg.compile != "off",
        "tf32": cfg.fp32_precision == "tf32" and _device(tuned) == "cuda",
        "optim": "adamw_torch_fused" if cfg.optimizer_impl == "fused" else "adamw_torch",
    }
    if cfg.compile not in ("off", "default"):
        args["torch_compile_mode"] = cfg.compile
    # TrainingArguments' adamw_torch is torch's AdamW with torch's own pick (foreach on a GPU).
    skip = ("fp32_precision",) + (("optimizer_impl",) if cfg.optimizer_impl != "plain" else ())
    notes = _common_notes(cfg, skip=skip)
    mapped = {"micro_batch_size": "per_device_train_batch_size", "accumulation_steps": "gradient_accumulation_steps",
              "lr": "learning_rate", "weight_decay": "weight_decay", "epochs": "num_train_epochs",
              "grad_clip": "max_grad_norm", "seed": "seed", "amp": "bf16/fp16", "checkpointing": "activation_checkpointing",
              "num_workers": "dataloader_num_workers", "pin_memory": "dataloader_pin_memory",
              "persistent_workers": "dataloader_persistent_workers", "compile": "torch_compile / torch_compile_mode",
              "fp32_precision": "tf32"}
    if cfg.optimizer_impl != "plain":
        mapped["optimizer_impl"] = "optim"
    if cfg.schedule == "cosine":
        args.update(lr_scheduler_type="cosine", warmup_steps=cfg.warmup)
        mapped.update(schedule="lr_scheduler_type", warmup="warmup_steps (a fraction below 1 is a ratio)")
    else:
        args.update(lr_scheduler_type="linear", warmup_steps=0.3)
        notes.append("schedule = onecycle (warmup = its fixed 30% rise): TrainingArguments has no one-cycle "
                     "schedule; exported as a linear warmup over 30% of the steps then linear decay, the closest "
                     "built-in shape (pass your own OneCycleLR to Trainer(optimizers=...) for the exact one)")
    text = json.dumps(args, indent=2) + "\n"
    return Export("hf", text, notes, mapped)


# Accelerate ----------------------------------------------------------------------------

def _accelerate(tuned: TunedConfig) -> Export:
    cfg = tuned.train
    device = _device(tuned)
    doc: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "NO",
        "mixed_precision": {"off": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.amp],
        "num_processes": 1,
        "num_machines": 1,
        "machine_rank": 0,
        "use_cpu": device == "cpu",
        "debug": False,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "downcast_bf16": "no",
    }
    mapped = {"amp": "mixed_precision"}
    if cfg.compile != "off":
        doc["dynamo_config"] = {"dynamo_backend": "INDUCTOR", "dynamo_mode": cfg.compile}
        mapped["compile"] = "dynamo_config.dynamo_backend / dynamo_mode"
    notes = _common_notes(cfg, checkpointing="wrap the model's repeated blocks in torch.utils.checkpoint.checkpoint")
    notes += [
        f"accumulation_steps = {cfg.accumulation_steps}: Accelerator(gradient_accumulation_steps="
        f"{cfg.accumulation_steps}) and `with accelerator.accumulate(model):`",
        f"micro_batch_size = {cfg.micro_batch_size}, num_workers = {cfg.num_workers}, pin_memory = "
        f"{str(cfg.pin_memory).lower()}, persistent_workers = {str(cfg.persistent_workers).lower()}: "
        "your DataLoader's arguments (the batch is per process)",
        f"lr = {cfg.lr:.6g}, weight_decay = {cfg.weight_decay:g}, schedule = {cfg.schedule}, warmup = "
        f"{cfg.warmup:g} ({_schedule_text(cfg)}): your AdamW and LR scheduler",
        f"grad_clip = {cfg.grad_clip:g}: accelerator.clip_grad_norm_(model.parameters(), {cfg.grad_clip:g})"
        if cfg.grad_clip > 0 else "grad_clip = 0: no clipping",
        f"epochs = {cfg.epochs}, seed = {cfg.seed}: your loop's epochs; accelerate.utils.set_seed({cfg.seed})",
    ]
    text = _header(tuned, "accelerate", notes) + yaml.safe_dump(doc, sort_keys=False)
    return Export("accelerate", text, notes, mapped)


# DeepSpeed -----------------------------------------------------------------------------

def _deepspeed(tuned: TunedConfig) -> Export:
    cfg = tuned.train
    doc: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.accumulation_steps,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.amp == "bf16"},
        "fp16": {"enabled": cfg.amp == "fp16"},
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay}},
    }
    mapped = {"micro_batch_size": "train_micro_batch_size_per_gpu", "accumulation_steps": "gradient_accumulation_steps",
              "grad_clip": "gradient_clipping", "amp": "bf16.enabled / fp16.enabled", "lr": "optimizer.params.lr",
              "weight_decay": "optimizer.params.weight_decay"}
    notes = _common_notes(
        cfg, checkpointing="call deepspeed.checkpointing.checkpoint (or torch.utils.checkpoint) around the model's "
                           "repeated blocks; the config's activation_checkpointing section only tunes that call",
        compile="engine.compile() after deepspeed.initialize, with compile_kwargs={{\"mode\": ...}} for a mode",
        skip=("optimizer_impl",) if cfg.optimizer_impl == "fused" else ())
    if cfg.optimizer_impl == "fused":  # DeepSpeed's AdamW is its own fused kernel (FusedAdam)
        mapped["optimizer_impl"] = "optimizer.type (DeepSpeed's AdamW is its fused FusedAdam)"
    total = _total_steps(tuned)
    if total is not None and cfg.schedule == "cosine":
        doc["scheduler"] = {"type": "WarmupCosineLR", "params": {
            "total_num_steps": total, "warmup_num_steps": max(1, round(cfg.warmup * total)), "warmup_type": "linear",
            "warmup_min_ratio": 0.0, "cos_min_ratio": 0.0}}
        mapped.update(schedule="scheduler.type", warmup="scheduler.params.warmup_num_steps",
                      epochs="scheduler.params.total_num_steps (epochs x steps per epoch)")
    elif total is not None:
        doc["scheduler"] = {"type": "OneCycle", "params": {
            "cycle_min_lr": cfg.lr / 25, "cycle_max_lr": cfg.lr, "cycle_first_step_size": max(1, round(0.3 * total)),
            "cycle_second_step_size": max(1, total - round(0.3 * total)), "decay_lr_rate": 0.0,
            "cycle_momentum": False}}
        mapped.update(schedule="scheduler.type", epochs="scheduler cycle sizes (epochs x steps per epoch)",
                      warmup="scheduler.params.cycle_first_step_size (one-cycle rises over a fixed 30%; warmup unused)")
    else:
        notes.append("schedule and warmup: the tuned YAML does not record the training set's size, so the run's "
                     "optimizer steps (a DeepSpeed scheduler's total) are unknown; re-run `autotune run` or add a "
                     "WarmupCosineLR scheduler by hand")
    notes.append(f"epochs = {cfg.epochs}, seed = {cfg.seed}: your loop's epochs and deepspeed.runtime.utils."
                 f"set_random_seed({cfg.seed}) (DeepSpeed's config has neither)")
    notes.append(f"num_workers = {cfg.num_workers}, pin_memory = {str(cfg.pin_memory).lower()}, persistent_workers = "
                 f"{str(cfg.persistent_workers).lower()}: your DataLoader's arguments")
    text = json.dumps(doc, indent=2) + "\n"
    return Export("deepspeed", text, notes, mapped)


# JSON ----------------------------------------------------------------------------------

def _json(tuned: TunedConfig) -> Export:
    doc = {"schema_version": tuned.schema_version, "train": tuned.train.to_dict(), "measured": tuned.measured,
           "provenance": tuned.provenance}
    mapped = {k: f"train.{k}" for k in tuned.train.to_dict()}
    return Export("json", json.dumps(doc, indent=2, default=str) + "\n", [], mapped)
