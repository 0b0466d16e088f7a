"""Configuration dataclasses and the tuned YAML file.

This module imports neither torch nor optuna, so reading and exporting a tuned config
works on a machine without either.

- ``Base``: the model file's reference hyperparameters (its ``BASE`` dict, validated).
- ``TrainConfig``: every knob of one training run; the same object drives a short trial
  and the final run.
- ``TunedConfig``: a ``TrainConfig`` plus where it came from (seeds, versions, hardware
  fingerprint, search space) and what it measured; written as ``tuned.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import ConfigError

# The knobs a user sets and a tuned config is told by: what `autotune compare` sets side
# by side and the report's summary says changed from the default.
TUNED_KNOBS = (
    "micro_batch_size",
    "accumulation_steps",
    "amp",
    "checkpointing",
    "num_workers",
    "cpu_threads",
    "channels_last",
    "cudnn_benchmark",
    "compile",
    "fp32_precision",
    "optimizer_impl",
    "expandable_segments",
    "lr",
)


SCHEMA_VERSION = 1
AMP_MODES = ("off", "fp16", "bf16")
LR_RULES = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "onecycle")
# How fp32 matmuls and convolutions run on a GPU: true fp32, or TF32 tensor cores (sm_80+).
FP32_PRECISIONS = ("ieee", "tf32")
# The optimizer's implementation: torch's own pick, a per-parameter loop, one kernel per
# op over all parameters (foreach), or one fused kernel for the whole step.
OPTIMIZER_IMPLS = ("auto", "plain", "foreach", "fused")
# torch.compile off, or on in one of its modes ("reduce-overhead" adds CUDA graphs).
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field whose reason is kept in metadata (written into tuned.yaml)."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class Base:
    """Reference hyperparameters from the model file's ``BASE`` dict."""

    lr: float = _doc("learning rate chosen for `batch_size`", default=1e-3)
    batch_size: int = _doc("the effective batch that `lr` was chosen for", default=32)
    epochs: int = _doc("epochs of the final run", default=10)
    weight_decay: float = _doc("passed to the default AdamW optimizer", default=0.01)
    warmup: float = _doc("linear warmup as a fraction of all optimizer steps", default=0.05)
    grad_clip: float = _doc("max gradient norm; 0 turns clipping off", default=1.0)
    seed: int = _doc("seed for torch, numpy, random and the data order", default=0)


# The allowed range of each BASE key: (type, lower bound, upper bound, lower inclusive).
BASE_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "lr": (float, 0.0, math.inf, False),
    "batch_size": (int, 1, math.inf, True),
    "epochs": (int, 1, math.inf, True),
    "weight_decay": (float, 0.0, math.inf, True),
    "warmup": (float, 0.0, 0.5, True),
    "grad_clip": (float, 0.0, math.inf, True),
    "seed": (int, 0, 2**32 - 1, True),
}


def scaled_lr(base_lr: float, base_batch: int, effective_batch: int, rule: str) -> float:
    """The learning rate for ``effective_batch`` under a scaling rule.

    linear: lr grows with the batch (Goyal et al. 2017, for SGD);
    sqrt: lr grows with the square root of the batch (the usual rule for Adam-type
    optimizers); none: lr stays as chosen for ``base_batch``.
    """
    ratio = effective_batch / base_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ConfigError(f"Unknown lr_rule {rule!r}; allowed: {', '.join(LR_RULES)}.")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run. Defaults are the untuned reference run."""

    micro_batch_size: int = _doc(
        "samples per forward/backward pass; the largest that fits is usually fastest",
        default=32,
    )
    accumulation_steps: int = _doc(
        "micro-batches summed into one optimizer step (effective batch = micro x steps)",
        default=1,
    )
    num_workers: int = _doc(
        "DataLoader worker processes; 0 loads data in the training process", default=0
    )
    pin_memory: bool = _doc(
        "page-locked host buffers for faster copies to the GPU; pointless without one",
        default=False,
    )
    persistent_workers: bool = _doc(
        "keep DataLoader workers alive between epochs (only with num_workers > 0)",
        default=False,
    )
    cpu_threads: int = _doc(
        "torch intra-op threads when training on the CPU; 0 keeps torch's default",
        default=0,
    )
    amp: str = _doc(
        "autocast dtype: off (fp32), fp16 (with a GradScaler) or bf16", default="off"
    )
    checkpointing: bool = _doc(
        "recompute activations of the model's repeated blocks in backward to save memory",
        default=False,
    )
    channels_last: bool = _doc(
        "model and 4-D image inputs in channels_last memory format (faster convs on GPUs, often on CPUs)",
        default=False,
    )
    cudnn_benchmark: bool = _doc(
        "GPU: let cuDNN time its conv algorithms per input shape and keep the fastest",
        default=False,
    )
    compile: str = _doc(
        "torch.compile mode: off, default, max-autotune-no-cudagraphs or reduce-overhead (CUDA graphs); "
        "its compile time is counted against the run it serves",
        default="off",
    )
    fp32_precision: str = _doc(
        "GPU: fp32 matmuls and convolutions as ieee (true fp32) or tf32 (tensor cores, sm_80+)", default="ieee")
    optimizer_impl: str = _doc(
        "GPU: the optimizer's implementation: auto (torch's pick), plain, foreach or fused", default="auto")
    expandable_segments: bool = _doc(
        "GPU: the CUDA caching allocator grows segments in place instead of adding new ones "
        "(less fragmentation in long runs)", default=False)
    lr_rule: str = _doc("how lr follows the effective batch: linear, sqrt or none", default="sqrt")
    base_lr: float = _doc("lr the model file chose for base_batch_size", default=1e-3)
    base_batch_size: int = _doc("the batch base_lr was chosen for", default=32)
    lr: float = _doc(
        "the learning rate actually used: base_lr scaled by lr_rule to the effective batch",
        default=1e-3,
    )
    warmup: float = _doc(
        "linear warmup from 0 as a fraction of all optimizer steps, then cosine decay to 0",
        default=0.05,
    )
    schedule: str = _doc(
        "lr schedule: cosine (warmup, then cosine decay to 0) or onecycle (rise over the "
        "first 30% of steps from lr/25, then fall; ignores warmup)",
        default="cosine",
    )
    epochs: int = _doc("passes over the training set in the final run", default=10)
    weight_decay: float = _doc("weight decay of the default AdamW", default=0.01)
    grad_clip: float = _doc("max global gradient norm; 0 turns clipping off", default=1.0)
    seed: int = _doc("seed for torch, numpy, random and the data order", default=0)

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # configs written when compile was a switch
            object.__setattr__(self, "compile", compile_mode(self.compile))
        _check_train_config(self)

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps

    @classmethod
    def from_base(cls, base: Base, **knobs: Any) -> "TrainConfig":
        """A config for ``knobs`` with lr scaled from ``base`` by the config's lr rule."""
        values: dict[str, Any] = {
            "base_lr": base.lr,
            "base_batch_size": base.batch_size,
            "warmup": base.warmup,
            "epochs": base.epochs,
            "weight_decay": base.weight_decay,
            "grad_clip": base.grad_clip,
            "seed": base.seed,
        }
        values.update(knobs)
        rule = values.get("lr_rule", cls.lr_rule)
        effective = values.get("micro_batch_size", 32) * values.get("accumulation_steps", 1)
        values["lr"] = scaled_lr(values["base_lr"], values["base_batch_size"], effective, rule)
        if not values.get("num_workers", 0):
            values["persistent_workers"] = False
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "TrainConfig":
        values = _typed_fields(cls, data, source)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from None


def compile_mode(value: Any) -> Any:
    """A compile choice as a mode: ``False`` (also how YAML reads an unquoted ``off``) is
    "off" and ``True`` is "default"; anything else is returned as it is."""
    if isinstance(value, bool):
        return "default" if value else "off"
    return value


_STRING_CHOICES = {"amp": AMP_MODES, "lr_rule": LR_RULES, "schedule": SCHEDULES, "compile": COMPILE_MODES,
                   "fp32_precision": FP32_PRECISIONS, "optimizer_impl": OPTIMIZER_IMPLS}


def _check_train_config(cfg: TrainConfig) -> None:
    positive = ("micro_batch_size", "accumulation_steps", "base_batch_size", "epochs")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"`{name}` must be >= 1, but got {getattr(cfg, name)}.")
    if cfg.num_workers < 0:
        raise ConfigError(f"`num_workers` must be >= 0, but got {cfg.num_workers}.")
    if cfg.cpu_threads < 0:
        raise ConfigError(f"`cpu_threads` must be >= 0, but got {cfg.cpu_threads}.")
    for name, allowed in _STRING_CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"`{name}` must be one of {', '.join(allowed)}, but got {getattr(cfg, name)!r}.")
    if not (cfg.lr > 0 and cfg.base_lr > 0):
        raise ConfigError(f"`lr` and `base_lr` must be > 0, but got {cfg.lr} and {cfg.base_lr}.")
    if not 0 <= cfg.warmup <= 0.5:
        raise ConfigError(f"`warmup` must be in [0, 0.5], but got {cfg.warmup}.")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise ConfigError("`weight_decay` and `grad_clip` must be >= 0.")
    if cfg.persistent_workers and cfg.num_workers == 0:
        raise ConfigError("`persistent_workers: true` needs `num_workers` > 0.")


def _typed_fields(cls: type, data: Any, source: str) -> dict[str, Any]:
    """Check ``data`` against the dataclass ``cls``: a mapping, known keys, right types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, but got {type(data).__name__}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(known)}."
        )
    out: dict[str, Any] = {}
    for name, value in data.items():
        default = known[name].default
        if name == "compile":
            value = compile_mode(value)
        out[name] = _coerce(value, type(default), f"{source}: `{name}`")
    return out


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, but got {value!r}.")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, but got {value!r}.")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, but got {value!r}.")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, but got {value!r}.")
    return value


@dataclass(frozen=True)
class TunedConfig:
    """The result of a search: the config to train with, and how it was found.

    ``provenance`` records seeds, package versions, the hardware fingerprint, the search
    space and the study, so a result can be traced; ``measured`` holds what the chosen
    config measured (units in the key names).
    """

    train: TrainConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_yaml(self) -> str:
        return _render_tuned_yaml(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_atomic(path, self.to_yaml())


_TUNED_HEADER = """\
# autotune tuned configuration (schema version {version}).
#
# train:       the knobs to train with; `autotune train MODEL --config THIS_FILE` uses them.
#              `lr` is the rate actually used: base_lr scaled by lr_rule from
#              base_batch_size to the effective batch (micro_batch_size x accumulation_steps).
#              If you edit the batch knobs, edit lr too: it is not recomputed.
# measured:    what the chosen config measured on this machine (units in the key names);
#              final_run: what the final run achieved against it, and where its time went.
# provenance:  seeds, package versions, hardware fingerprint, search space and study,
#              so that the result can be traced and reproduced.
"""


def _render_tuned_yaml(tuned: TunedConfig) -> str:
    lines = [_TUNED_HEADER.format(version=tuned.schema_version)]
    lines.append(f"schema_version: {tuned.schema_version}")
    lines.append("train:")
    docs = {f.name: f.metadata.get("doc", "") for f in fields(TrainConfig)}
    for name, value in tuned.train.to_dict().items():
        scalar = yaml.safe_dump(value, default_flow_style=True).strip()
        scalar = scalar.removesuffix("\n...").strip()
        lines.append(f"  {name}: {scalar}  # {docs[name]}")
    for section in ("measured", "provenance"):
        body = getattr(tuned, section)
        dumped = yaml.safe_dump({section: body}, sort_keys=False, default_flow_style=False)
        lines.append(dumped.rstrip())
    return "\n".join(lines) + "\n"


def load_tuned(path: str | os.PathLike[str]) -> TunedConfig:
    """Read a tuned YAML, rejecting unknown keys and other schema versions by name."""
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}.")
    allowed = ("schema_version", "train", "provenance", "measured")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {unknown[0]!r}; allowed keys: {', '.join(allowed)}."
        )
    version = data.get("schema_version")
    if "schema_version" not in data:
        raise ConfigError(
            f"{source}: missing the key `schema_version`; this autotune reads schema_version "
            f"{SCHEMA_VERSION}.",
            hint=f"Add `schema_version: {SCHEMA_VERSION}` if the file was written for this "
            "version, or re-run `autotune run` to write it again.",
        )
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: schema_version {version!r} is not supported; this autotune reads "
            f"schema_version {SCHEMA_VERSION}.",
            hint="Re-run `autotune run` to produce a config for this version.",
        )
    if "train" not in data:
        raise ConfigError(f"{source}: missing the `train` section.")
    train = TrainConfig.from_dict(data["train"], source=f"{source}: train")
    for section in ("provenance", "measured"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{source}: `{section}` must be a mapping.")
    return TunedConfig(
        train=train,
        provenance=data.get("provenance") or {},
        measured=data.get("measured") or {},
        schema_version=version,
    )


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Safe-load a YAML file; a missing file or bad syntax is a ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file.")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        hint = "YAML indents with spaces: replace the tab." if "'\\t'" in str(exc) else None
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}.", hint=hint) from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: where, what, and where the construct
    it was reading began (lines and columns counted from 1)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return " ".join(str(exc).split()).rstrip(".")
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem.rstrip('.')}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None:
        text += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
    return text


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
