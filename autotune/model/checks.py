"""The checks behind ``autotune.model.task``.

Each function here turns one way a model file can break the contract into one
``ModelFileError`` whose message names the file, what was wrong and what was got, and
whose hint (where a message alone would run long) says how to fix it. Nothing here
imports the user's file; ``autotune.model.task`` does that and calls these checks.
"""

from __future__ import annotations

import difflib
import math
import numbers
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from autotune.model.calling import LABEL_KEYS, label_key
from autotune.config import BASE_RANGES, Base
from autotune.errors import ModelFileError

# How to write each hook the loader looks for, for the hints: (definition, what it returns).
HOOK_SIGNATURES: dict[str, tuple[str, str]] = {
    "build_model": ("def build_model():", "a fresh, untrained torch.nn.Module on the CPU"),
    "build_datasets": ("def build_datasets():", "(train, val), two torch.utils.data.Dataset"),
    "loss_fn": ("def loss_fn(output, target):", "a scalar tensor"),
    "build_optimizer": ("def build_optimizer(params, lr):", "a torch.optim.Optimizer"),
    "checkpoint_blocks": ("def checkpoint_blocks(model):", "a list of the model's submodules"),
    "collate_fn": ("def collate_fn(items):", "an (input, target) batch"),
}
OPTIONAL_HOOKS = ("loss_fn", "build_optimizer", "checkpoint_blocks", "collate_fn")
_MAX_DETAIL_CHARS = 300
DEBUG_HINT = "Fix the error in the file; run autotune with --debug to see the full traceback."


def type_name(value: Any) -> str:
    """The short class name of ``value``, e.g. ``Tensor``, ``ndarray``, ``NoneType``."""
    return type(value).__qualname__


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an int64", "a Linear"."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def a_type(value: Any) -> str:
    """The class name of ``value`` with its article, e.g. "a Tensor", "an ndarray"."""
    return _a(type_name(value))


def describe(value: Any) -> str:
    """A short description of a value for a message: its kind and, for tensors, shape."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{_a(dtype)} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        if not value:
            return f"an empty {type_name(value)}"
        parts = ", ".join(_short(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        count = f"{len(value)} item" + ("" if len(value) == 1 else "s")
        return f"{a_type(value)} of {count} ({parts})"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:6])
        return f"a dict with keys {keys}" if keys else "an empty dict"
    if isinstance(value, (bool, numbers.Number, str)) or value is None:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"{text} ({type_name(value)})"
    return a_type(value)


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor {list(value.shape)}"
    return type_name(value)


def training_items(n: int) -> str:
    """The count with its noun, e.g. 2 training items, 1 training item."""
    return f"{n} training item" + ("" if n == 1 else "s")


def describe_exception(exc: BaseException, path: Path) -> str:
    """``Type: first line of the message (line N of model.py)``, without a final period."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[:_MAX_DETAIL_CHARS] + "..."
    detail = type(exc).__name__ + (f": {text.rstrip('.')}" if text else "")
    line = _line_in_file(exc, path)
    if line is not None:
        detail += f" (line {line} of {path.name})"
    return detail


def _line_in_file(exc: BaseException, path: Path) -> int | None:
    """The line of ``path`` closest to where ``exc`` was raised, if it passed through it."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return line


def call_user(subject: str, path: Path, fn: Callable[..., Any], *args: Any,
              hint: str | None = None) -> Any:
    """Call the user's ``fn``; an exception becomes one ModelFileError, worded
    "<subject> raised <Type>: <message> (line N of model.py)."."""
    try:
        return fn(*args)
    except Exception as exc:
        detail = describe_exception(exc, path)
        raise ModelFileError(f"{subject} raised {detail}.", hint=hint or DEBUG_HINT) from exc


def check_hooks(module: Any, path: Path) -> None:
    """Check the required functions exist and every hook present is callable."""
    for name in ("build_model", "build_datasets"):
        if not hasattr(module, name):
            raise ModelFileError(
                f"{path} has no `{name}()` function; it is required.",
                hint=f"Add {_signature(name)}.{_did_you_mean(name, module)}",
            )
        value = getattr(module, name)
        # A model object is callable too, but calling it runs its forward pass.
        if not callable(value) or isinstance(value, nn.Module):
            raise ModelFileError(
                f"`{name}` in {path} must be a function, but got {type_name(value)}.",
                hint=f"Define it as {_signature(name)}"
                + (f", e.g. `def {name}(): return {type_name(value)}(...)`."
                   if isinstance(value, nn.Module) else "."),
            )
    for name in OPTIONAL_HOOKS:
        value = getattr(module, name, None)
        if value is not None and not callable(value):
            raise ModelFileError(
                f"`{name}` in {path} must be callable, but got {type_name(value)}.",
                hint=f"Define it as {_signature(name)}, or remove it to use the default.",
            )


def _signature(name: str) -> str:
    definition, returns = HOOK_SIGNATURES[name]
    return f"`{definition}` returning {returns}"


def _did_you_mean(name: str, module: Any) -> str:
    names = [n for n in vars(module) if not n.startswith("_") and n not in HOOK_SIGNATURES]
    close = difflib.get_close_matches(name, names, 1, cutoff=0.8)
    return f" Did you mean to name `{close[0]}` `{name}`?" if close else ""


def check_base(value: Any, path: Path) -> Base:
    """The file's ``BASE`` dict as a ``Base``; keys it leaves out keep their defaults."""
    if value is None:
        return Base()
    allowed = ", ".join(BASE_RANGES)
    if not isinstance(value, dict):
        raise ModelFileError(
            f"`BASE` in {path} must be a dict, but got {type_name(value)}.",
            hint=f'Write it like `BASE = {{"lr": 1e-3, "batch_size": 32}}`; keys: {allowed}.',
        )
    for key in value:
        if key not in BASE_RANGES:
            close = difflib.get_close_matches(str(key), list(BASE_RANGES), 1)
            raise ModelFileError(
                f"`BASE` in {path} has an unknown key {key!r}; allowed keys: {allowed}.",
                hint=f"Did you mean {close[0]!r}?" if close else None,
            )
    return Base(**{key: _base_value(key, v, path) for key, v in value.items()})


def _base_value(key: str, value: Any, path: Path) -> int | float:
    kind, low, high, low_inclusive = BASE_RANGES[key]
    want = _range_text(kind, low, high, low_inclusive)
    where = f"`BASE[{key!r}]` in {path}"
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or (kind is int and not isinstance(value, numbers.Integral)):
        raise ModelFileError(f"{where} must be {want}, but got {value!r} ({type_name(value)}).")
    number = int(value) if kind is int else float(value)
    above = number >= low if low_inclusive else number > low
    if not (above and number <= high and math.isfinite(number)):
        raise ModelFileError(f"{where} must be {want}, but got {value!r}.")
    return number


def _range_text(kind: type, low: float, high: float, low_inclusive: bool) -> str:
    noun = "an integer" if kind is int else "a number"
    if math.isinf(high):
        return f"{noun} {'>=' if low_inclusive else '>'} {_fmt(low)}"
    return f"{noun} in {'[' if low_inclusive else '('}{_fmt(low)}, {_fmt(high)}]"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def check_class_names(value: Any, path: Path) -> list[str] | None:
    """``CLASS_NAMES`` as a list of str (a tuple is accepted too), or None when absent."""
    if value is None:
        return None
    where = f"`CLASS_NAMES` in {path}"
    example = 'e.g. `CLASS_NAMES = ["cat", "dog"]`, one name per class index.'
    if not isinstance(value, (list, tuple)):
        raise ModelFileError(
            f"{where} must be a list of strings, but got {type_name(value)}.", hint=example
        )
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise ModelFileError(
                f"{where} must be a list of strings, but item {i} is {name!r} "
                f"({type_name(name)}).",
                hint=example,
            )
    if not value:
        raise ModelFileError(f"{where} is an empty list.", hint=f"List the names, {example}")
    return list(value)


def check_model(value: Any, path: Path) -> nn.Module:
    """What ``build_model()`` returned must be an ``nn.Module`` instance."""
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, type) and issubclass(value, nn.Module):
        hint = f"It returned the class itself; return an instance: `return {value.__name__}()`."
    elif value is None:
        hint = "Add `return model` at the end of the function."
    else:
        hint = "Return the model itself, e.g. `return Net()`."
    raise ModelFileError(
        f"`build_model()` in {path} must return a torch.nn.Module, but got {type_name(value)}.",
        hint=hint,
    )


def check_datasets(value: Any, path: Path) -> tuple[Any, Any]:
    """``build_datasets()`` must return two non-empty map-style datasets."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        got = describe(value) if isinstance(value, (tuple, list)) else a_type(value)
        raise ModelFileError(
            f"`build_datasets()` in {path} must return a pair (train, val), but got {got}.",
            hint="End it with `return train_dataset, val_dataset`.",
        )
    for role, dataset in zip(("train", "val"), value):
        _check_dataset(role, dataset, path)
    return value[0], value[1]


def _check_dataset(role: str, dataset: Any, path: Path) -> None:
    source = f"{role} dataset from `build_datasets()` in {path}"
    where = f"The {source}"
    map_style = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    if not map_style or isinstance(dataset, torch.utils.data.IterableDataset):
        raise ModelFileError(
            f"{where} must be a Dataset with __len__ and __getitem__, "
            f"but got {a_type(dataset)}.",
            hint="Return a map-style torch.utils.data.Dataset (e.g. TensorDataset); "
            "iterable datasets and generators are not supported.",
        )
    size = call_user(f"`len()` of the {source}", path, len, dataset)
    if size == 0:
        raise ModelFileError(
            f"{where} is empty.",
            hint="Both datasets need at least one item; check the data path and the split.",
        )


def check_item(role: str, index: int, item: Any, path: Path, *, raw_ok: bool) -> None:
    """An item must be an ``(input, target)`` pair, or a dict that holds its target under
    ``labels`` (or ``label``) beside the input's parts, as a tokenized Hugging Face dataset
    yields; without a custom ``collate_fn`` (``raw_ok=False``) the input must be tensors
    and the target a tensor or number."""
    where = f"item {index} of the {role} dataset from {path}"
    key = label_key(item)
    if key is not None:
        inputs, target = {k: v for k, v in item.items() if k != key}, item[key]
        if not inputs:
            raise ModelFileError(
                f"{where[0].upper()}{where[1:]} is a dict that holds only its target {key!r}; "
                "the model's input is missing.",
                hint="Return the input's tensors beside it, e.g. `{\"input_ids\": ..., \"labels\": ...}`.",
            )
    elif isinstance(item, Mapping):
        raise ModelFileError(
            f"{where[0].upper()}{where[1:]} is {describe(item)} but no target: "
            f"none is named {' or '.join(repr(k) for k in LABEL_KEYS)}.",
            hint="Put the target under `labels` (as Hugging Face datasets do), or make "
            "`__getitem__` return an `(input, target)` pair.",
        )
    elif not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ModelFileError(
            f"{where[0].upper()}{where[1:]} must be an (input, target) pair or a dict "
            f"holding `labels`, but got {describe(item)}.",
            hint="Make `__getitem__` return `(input, target)`, "
            "e.g. `return self.x[i], self.y[i]`.",
        )
    else:
        inputs, target = item
    if raw_ok:
        return
    problem = input_problem(inputs)
    if problem is not None:
        raise ModelFileError(
            f"The input of {where} must be a tensor, or a tuple/list/dict of tensors, "
            f"but got {problem}.",
            hint="Convert it with torch.as_tensor(...) in `__getitem__`, or define "
            "`collate_fn(items)` in the file to batch raw items yourself.",
        )
    if not _is_target(target):
        raise ModelFileError(
            f"The target of {where} must be a tensor, an int or a float, "
            f"but got {describe(target)}.",
            hint="Convert it with torch.as_tensor(...) in `__getitem__`.",
        )


def input_problem(value: Any) -> str | None:
    """None when ``value`` is a valid model input, else what is wrong with it."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, (tuple, list)):
        if not value:
            return f"an empty {type_name(value)}"
        for i, element in enumerate(value):
            if not isinstance(element, torch.Tensor):
                return f"{a_type(value)} whose element {i} is {a_type(element)}"
        return None
    if isinstance(value, Mapping):
        if not value:
            return "an empty dict"
        for key, element in value.items():
            if not isinstance(key, str):
                return f"a dict whose key {key!r} is not a string"
            if not isinstance(element, torch.Tensor):
                return f"a dict whose value for {key!r} is {a_type(element)}"
        return None
    return a_type(value)


def _is_target(value: Any, depth: int = 0) -> bool:
    """A tensor or a number; one level of tuple/list/dict of those for multi-part targets."""
    if isinstance(value, (torch.Tensor, numbers.Real)):
        return True
    if depth == 0 and isinstance(value, (tuple, list)):
        return bool(value) and all(_is_target(v, 1) for v in value)
    if depth == 0 and isinstance(value, Mapping):
        return bool(value) and all(_is_target(v, 1) for v in value.values())
    return False


def check_batch(batch: Any, n: int, path: Path) -> tuple[Any, Any]:
    """A batch made by the user's ``collate_fn`` must be an ``(input, target)`` pair."""
    where = f"The batch that `collate_fn` in {path} made from {training_items(n)}"
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ModelFileError(
            f"{where} must be an (input, target) pair, but got {describe(batch)}.",
            hint="Make `collate_fn(items)` return `(inputs, targets)`.",
        )
    if not isinstance(batch[0], (torch.Tensor, tuple, list, Mapping)):
        raise ModelFileError(
            f"The input of the batch that `collate_fn` in {path} made from "
            f"{training_items(n)} must be a tensor, or a tuple/list/dict of tensors, "
            f"but got {describe(batch[0])}.",
            hint="Make `collate_fn(items)` return `(inputs, targets)` with the inputs as "
            "tensors; the model is called as model(x), model(*x) or model(**x).",
        )
    return batch[0], batch[1]


def check_loss(loss: Any, what: str, n: int, path: Path) -> None:
    """The loss must be a scalar floating-point tensor (so ``backward()`` works)."""
    if isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.is_floating_point():
        return
    raise ModelFileError(
        f"The loss ({what}) in {path} must be a scalar floating-point tensor, "
        f"but got {describe(loss)} on a batch of {training_items(n)}.",
        hint="Reduce it to one number, e.g. `return loss.mean()`.",
    )


def check_blocks(value: Any, model: nn.Module, path: Path) -> list[nn.Module]:
    """``checkpoint_blocks(model)`` must return a list of submodules of ``model``."""
    what = f"`checkpoint_blocks(model)` in {path}"
    example = "Return the model's repeated blocks, e.g. `return list(model.layers)`."
    if not isinstance(value, (list, tuple)):
        raise ModelFileError(
            f"{what} must return a list of nn.Module, but got {a_type(value)}.",
            hint=example,
        )
    members = {id(m) for m in model.modules()}
    for i, block in enumerate(value):
        if not isinstance(block, nn.Module):
            raise ModelFileError(
                f"{what} must return a list of nn.Module, but item {i} is {describe(block)}.",
                hint=example,
            )
        if id(block) not in members:
            raise ModelFileError(
                f"{what} must return submodules of the model it is given, but item {i} "
                f"({a_type(block)}) is not part of that model.",
                hint="Take the blocks from the `model` argument, not from a model built "
                "elsewhere (e.g. a global one).",
            )
    return list(value)


def check_optimizer(value: Any, path: Path) -> torch.optim.Optimizer:
    """What ``build_optimizer(params, lr)`` returned must be an optimizer."""
    if isinstance(value, torch.optim.Optimizer):
        return value
    raise ModelFileError(
        f"`build_optimizer(params, lr)` in {path} must return a torch.optim.Optimizer, "
        f"but got {describe(value)}.",
        hint="e.g. `return torch.optim.SGD(params, lr=lr, momentum=0.9)`.",
    )
