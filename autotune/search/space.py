"""Search spaces: YAML in, validated, gated by the hardware and the model, suggested.

This is the only module that calls ``trial.suggest_*``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from autotune.config import (AMP_MODES, COMPILE_MODES, FP32_PRECISIONS, LR_RULES, OPTIMIZER_IMPLS, SCHEDULES,
                             TrainConfig, compile_mode, read_yaml)
from autotune.errors import ConfigError

# Knobs a search space may tune, with the type their values must have.
TUNABLE: dict[str, type] = {
    f.name: type(f.default)
    for f in fields(TrainConfig)
    if f.name
    in (
        "micro_batch_size",
        "accumulation_steps",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "cpu_threads",
        "amp",
        "checkpointing",
        "channels_last",
        "cudnn_benchmark",
        "compile",
        "fp32_precision",
        "optimizer_impl",
        "expandable_segments",
        "lr_rule",
        "warmup",
        "schedule",
    )
}
_ALLOWED_STRINGS = {"amp": AMP_MODES, "lr_rule": LR_RULES, "schedule": SCHEDULES, "compile": COMPILE_MODES,
                    "fp32_precision": FP32_PRECISIONS, "optimizer_impl": OPTIMIZER_IMPLS}
_TOP_KEYS = ("name", "description", "params", "limits")
_LIMIT_KEYS = {"min_total_steps": int, "max_micro_batch": dict}
# Allowed value range of numeric knobs, for choices and ranges alike (as TrainConfig checks).
_BOUNDS: dict[str, tuple[float, float]] = {
    "micro_batch_size": (1, math.inf),
    "accumulation_steps": (1, math.inf),
    "num_workers": (0, math.inf),
    "cpu_threads": (0, math.inf),
    "warmup": (0.0, 0.5),
}
_CHOICE_KEYS = {"choices"}
_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched knob: a list of ``choices`` or a numeric range [low, high]."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: dict[str, Param]
    description: str = ""
    min_total_steps: int = 0
    # Largest micro-batch that fits in memory per "amp/checkpointing" pair (from the
    # memory probe, e.g. {"off/false": 4685}); a pair not listed has no limit.
    max_micro_batch: dict[str, int] = field(default_factory=dict)
    source: str = ""
    # Choices removed for this machine or model: {knob: {choice: reason}}.
    gated: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": {k: p.to_dict() for k, p in self.params.items()},
            "limits": {"min_total_steps": self.min_total_steps, "max_micro_batch": dict(self.max_micro_batch)},
        }

    @property
    def sha256(self) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The knob values for an Optuna trial; fixed knobs are set without suggesting."""
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.fixed:
                values[name] = p.choices[0]
            elif p.choices is not None:
                values[name] = trial.suggest_categorical(name, list(p.choices))
            elif TUNABLE[name] is int:
                step = int(p.step or 1)
                values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=step, log=p.log)
            else:
                values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        return values

    def searched(self) -> list[str]:
        return [n for n, p in self.params.items() if not p.fixed]

    def contains(self, knobs: dict[str, Any]) -> bool:
        """True when every searched knob's value in ``knobs`` lies in the space."""
        for name in self.searched():
            p, value = self.params[name], knobs.get(name)
            if p.choices is not None and value not in p.choices:
                return False
            if p.choices is None and (value is None or not p.low <= value <= p.high):
                return False
        return True

    def infeasible(self, cfg: TrainConfig, train_size: int) -> str | None:
        """Why ``cfg`` should not be run at all, or None when it is feasible."""
        limit = self.max_micro_batch.get(memory_key(cfg.amp, cfg.checkpointing))
        if limit is not None and cfg.micro_batch_size > limit:
            return (
                f"micro-batch {cfg.micro_batch_size} is above the largest that fits in the memory "
                f"limit with amp {cfg.amp} and checkpointing {str(cfg.checkpointing).lower()} ({limit})"
            )
        # Full micro-batches only: a training epoch drops its short last one, and keeps the
        # one short batch of a set smaller than a micro-batch (engine.data.make_loader).
        steps = math.ceil(max(1, train_size // cfg.micro_batch_size) / cfg.accumulation_steps)
        total = steps * cfg.epochs
        if total < self.min_total_steps:
            return (
                f"effective batch {cfg.effective_batch_size} leaves {total} optimizer steps "
                f"in {cfg.epochs} epochs over {train_size} samples; the space asks for at "
                f"least {self.min_total_steps} (limits.min_total_steps)"
            )
        return None

    def without(self, name: str, choice: Any, reason: str) -> "SearchSpace":
        """A copy with ``choice`` removed from knob ``name``, the reason recorded."""
        p = self.params.get(name)
        if p is None or p.choices is None or choice not in p.choices:
            return self
        left = tuple(c for c in p.choices if c != choice)
        gated = {k: dict(v) for k, v in self.gated.items()}
        gated.setdefault(name, {})[str(choice)] = reason
        if not left:
            why = "; ".join(f"{c}: {r}" for c, r in gated[name].items())
            raise ConfigError(
                f"{self.source or self.name}: every choice of `{name}` was ruled out on this "
                f"machine or model ({why}).",
                hint=f"Add a choice of `{name}` that this machine can use.",
            )
        params = dict(self.params)
        params[name] = dataclasses.replace(p, choices=left)
        return dataclasses.replace(self, params=params, gated=gated)

    def fixed_to(self, name: str, value: Any, reason: str) -> "SearchSpace":
        """A copy with knob ``name`` fixed to ``value`` (listed or not), the reason recorded
        for each choice it drops, or for the range; unchanged when the space does not list
        ``name`` or already fixes it to ``value``."""
        p = self.params.get(name)
        if p is None or p.choices == (value,):
            return self
        dropped = [c for c in p.choices if c != value] if p.choices is not None else [f"[{p.low}, {p.high}]"]
        gated = {k: dict(v) for k, v in self.gated.items()}
        gated.setdefault(name, {}).update({str(c): reason for c in dropped})
        params = {**self.params, name: Param(name, choices=(value,))}
        return dataclasses.replace(self, params=params, gated=gated)


def memory_key(amp: str, checkpointing: bool) -> str:
    """The key of an (amp, checkpointing) pair in ``max_micro_batch``: "bf16/true"."""
    return f"{amp}/{str(checkpointing).lower()}"


def builtin_space_dir() -> Path:
    """The folder of the built-in spaces: the installed package, else the checkout."""
    try:
        return Path(str(resources.files("autotune.search_spaces")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "search_spaces"


def load_space(name_or_path: str | Path = "default") -> SearchSpace:
    """A built-in space by name (``default``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = builtin_space_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in builtin_space_dir().glob("*.yaml"))
            raise ConfigError(
                f"No built-in search space named {str(name_or_path)!r}; built-in spaces: "
                f"{', '.join(known)}.",
                hint="Pass a name from that list or the path of a .yaml file.",
            )
    return parse_space(read_yaml(path), source=str(path))


def parse_space(data: Any, source: str) -> SearchSpace:
    """Validate a space's YAML data; every problem names the file and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search space must be a mapping, but got {type(data).__name__}.")
    _no_unknown(data, _TOP_KEYS, source, "top-level key")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: `name` must be a non-empty string, but got {name!r}.")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(
            f"{source}: `params` must be a non-empty mapping of knob names to choices or "
            f"ranges, but got {raw_params!r}."
        )
    params = {key: _parse_param(key, spec, source) for key, spec in raw_params.items()}
    limits = data.get("limits", {})
    limits = {} if limits is None else limits
    if not isinstance(limits, dict):
        raise ConfigError(f"{source}: `limits` must be a mapping.")
    _no_unknown(limits, tuple(_LIMIT_KEYS), source, "key in `limits`")
    min_steps = limits.get("min_total_steps", 0)
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 0:
        raise ConfigError(f"{source}: `limits.min_total_steps` must be an integer >= 0, but got {min_steps!r}.")
    return SearchSpace(
        name=name,
        params=params,
        description=str(data.get("description", "")),
        min_total_steps=min_steps,
        max_micro_batch=_parse_max_micro_batch(limits.get("max_micro_batch", {}), source),
        source=source,
    )


def _parse_max_micro_batch(value: Any, source: str) -> dict[str, int]:
    where = f"{source}: `limits.max_micro_batch`"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of \"amp/checkpointing\" to a micro-batch, but got {value!r}.")
    allowed = [memory_key(a, c) for a in AMP_MODES for c in (False, True)]
    for key, limit in value.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}.")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{where}: `{key}` must be an integer >= 0, but got {limit!r}.")
    return dict(value)


def _no_unknown(data: dict[str, Any], allowed: tuple[str, ...], source: str, what: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"{source}: unknown {what} {unknown[0]!r}; allowed: {', '.join(allowed)}.")


def _parse_param(key: Any, spec: Any, source: str) -> Param:
    where = f"{source}: `params.{key}`"
    if key not in TUNABLE:
        raise ConfigError(f"{source}: unknown knob {key!r} under `params`; tunable knobs: {', '.join(TUNABLE)}.")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping with `choices` or `low`/`high`, but got {spec!r}.")
    keys = set(spec)
    if "choices" in keys:
        if keys - _CHOICE_KEYS:
            raise ConfigError(f"{where}: `choices` cannot be combined with {', '.join(sorted(keys - _CHOICE_KEYS))}.")
        return Param(key, choices=_parse_choices(key, spec["choices"], where))
    if keys - _RANGE_KEYS or not {"low", "high"} <= keys:
        raise ConfigError(f"{where} must have either `choices` or both `low` and `high` (optional `log`, `step`); got keys {', '.join(sorted(map(str, keys))) or '(none)'}.")
    return _parse_range(key, spec, where)


def _parse_choices(key: str, choices: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: `choices` must be a non-empty list, but got {choices!r}.")
    kind = TUNABLE[key]
    if key == "compile":  # spaces written when compile was a switch: false/true
        choices = [compile_mode(c) for c in choices]
    for c in choices:
        if kind is str and isinstance(c, bool) and key == "amp":
            raise ConfigError(
                f"{where}: choice {c!r} is not a string; YAML reads unquoted off/on/no/yes as "
                f"booleans.",
                hint='Quote it: "off".',
            )
        ok = isinstance(c, kind) and not (kind is not bool and isinstance(c, bool))
        if kind is float and isinstance(c, int) and not isinstance(c, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{where}: choice {c!r} must be of type {kind.__name__}.")
        if key in _ALLOWED_STRINGS and c not in _ALLOWED_STRINGS[key]:
            raise ConfigError(f"{where}: choice {c!r} is not allowed; allowed: {', '.join(_ALLOWED_STRINGS[key])}.")
        _check_bounds(key, c, f"{where}: choice {c}")
    if len(set(choices)) != len(choices):
        raise ConfigError(f"{where}: `choices` has duplicates: {choices!r}.")
    return tuple(choices)


def _check_bounds(key: str, value: float, what: str) -> None:
    if key not in _BOUNDS:
        return
    low, high = _BOUNDS[key]
    if not low <= value <= high:
        allowed = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigError(f"{what} is out of range: `{key}` must be {allowed}.")


def _parse_range(key: str, spec: dict[str, Any], where: str) -> Param:
    kind = TUNABLE[key]
    if kind not in (int, float):
        raise ConfigError(f"{where}: a range needs a numeric knob; `{key}` takes {kind.__name__} values, so use `choices`.")
    low, high = spec["low"], spec["high"]
    for label, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: `{label}` must be a number, but got {v!r}.")
        if kind is int and not isinstance(v, int):
            raise ConfigError(f"{where}: `{label}` must be an integer for `{key}`, but got {v!r}.")
    if not low <= high:
        raise ConfigError(f"{where}: `low <= high` must hold, but got (low={low}, high={high}).")
    _check_bounds(key, low, f"{where}: `low` {low}")
    _check_bounds(key, high, f"{where}: `high` {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: `log` must be true or false, but got {log!r}.")
    if log and low <= 0:
        raise ConfigError(f"{where}: `log: true` needs `low` > 0, but got low={low}.")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: `step` must be a number > 0, but got {step!r}.")
    if step is not None and kind is int and not isinstance(step, int):
        raise ConfigError(f"{where}: `step` must be an integer for `{key}`, but got {step!r}.")
    if step is not None and log:
        raise ConfigError(f"{where}: `log: true` and `step` cannot be combined; use one of them.")
    return Param(key, low=low, high=high, log=log, step=step)
