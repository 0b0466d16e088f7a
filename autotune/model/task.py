"""Load and validate a user's model file (``model.py``).

The model file is plain PyTorch and never imports autotune. It must define
``build_model()`` and ``build_datasets()``; it may define ``loss_fn``,
``build_optimizer``, ``BASE``, ``checkpoint_blocks``, ``CLASS_NAMES`` and ``collate_fn``
(see "The model file contract" in DESIGN.md). An optional name set to ``None`` counts as
absent. ``load_task`` imports the file, checks every one of these names, and (with
``validate=True``) builds the model and the datasets and runs one forward pass and loss on
a batch of 2 training items, so that a broken file fails here with one clear
``ModelFileError`` instead of a traceback from deep inside a trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import re
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from autotune.model import checks
from autotune.config import Base
from autotune.model import calling
from autotune.errors import ModelFileError

__all__ = ["Task", "detect_blocks", "load_task"]

# Items in the validation batch: 2, so that batch-dependent layers (BatchNorm) see a batch.
_VALIDATION_BATCH = 2
_module_ids = itertools.count()


@dataclass
class Task:
    """A loaded model file: its hooks, with the contract checked where they are called."""

    path: Path  # resolved
    name: str  # the file's stem
    sha256: str  # of the file's bytes, as imported
    module: types.ModuleType
    base: Base
    class_names: list[str] | None
    collate_fn: Callable[..., Any] | None
    has_custom_loss: bool
    has_custom_optimizer: bool
    _datasets: tuple[Dataset, Dataset] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _last_model: weakref.ref[nn.Module] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _form: str | None = field(default=None, init=False, repr=False, compare=False)
    _label_key: str | None = field(default=None, init=False, repr=False, compare=False)
    _items_read: bool = field(default=False, init=False, repr=False, compare=False)

    def build_model(self) -> nn.Module:
        """A fresh model from the user's ``build_model()``; a new object on every call."""
        with _folder_on_path(self.path.parent):
            model = checks.call_user(
                f"`build_model()` in {self.path}", self.path, self.module.build_model
            )
        checks.check_model(model, self.path)
        if self._last_model is not None and self._last_model() is model:
            raise ModelFileError(
                f"`build_model()` in {self.path} returned the same model object twice; "
                "it must build a new, untrained model on every call.",
                hint="Create the model inside the function instead of returning a global one.",
            )
        self._last_model = weakref.ref(model)
        return model

    def datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` from ``build_datasets()``, called once and then cached."""
        if self._datasets is None:
            with _folder_on_path(self.path.parent):
                value = checks.call_user(
                    f"`build_datasets()` in {self.path}", self.path, self.module.build_datasets
                )
            self._datasets = checks.check_datasets(value, self.path)
        return self._datasets

    def call(self, model: nn.Module, inputs: Any) -> Any:
        """``model`` called on a batch input, in the form its ``forward`` accepts
        (``calling.convention``), decided on the first call and kept."""
        if self._form is None:
            try:
                self._form = calling.convention(model, inputs)
            except TypeError as exc:
                raise ModelFileError(
                    f"The model from `build_model()` in {self.path} cannot be called on a batch "
                    f"whose input is {checks.describe(inputs)}: its {exc}.",
                    hint="Make `forward` take the input's parts by name (called as "
                    "model(**batch)) or the batch whole (called as model(batch)).",
                ) from exc
        return calling.call(model, inputs, self._form)

    @property
    def calling(self) -> str | None:
        """How the model is called, e.g. ``model(**batch)``; None before the first call."""
        return calling.describe_form(self._form) if self._form is not None else None

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The user's ``loss_fn(output, target)``, or cross-entropy on the output's logits
        (``calling.logits_of``) when there is none."""
        if self.has_custom_loss:
            return self.module.loss_fn(output, target)
        logits = calling.logits_of(output)
        if logits is None:
            raise ModelFileError(_no_logits(self.path, output), hint=_NO_LOGITS_HINT)
        return F.cross_entropy(logits, target)

    @property
    def target_source(self) -> str:
        """Where a batch's target comes from, in words for the report."""
        if self.collate_fn is not None:
            return "the batch `collate_fn` makes"
        self.collate  # reads item 0 once
        return f"each item's {self._label_key!r}" if self._label_key else "each item's second element"

    @property
    def collate(self) -> Callable[..., Any] | None:
        """The loaders' collate function: the file's ``collate_fn``; else, for dict items
        that hold their target under ``labels`` (or ``label``), one that batches them and
        takes the target out; else None (torch's default)."""
        if self.collate_fn is not None:
            return self.collate_fn
        if not self._items_read:
            train = self.datasets()[0]
            first = checks.call_user(f"Reading item 0 of the train dataset from {self.path}", self.path,
                                     train.__getitem__, 0)
            self._label_key = calling.label_key(first)
            self._items_read = True
        return calling.SplitLabels(self._label_key) if self._label_key is not None else None

    def make_optimizer(self, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The user's ``build_optimizer(params, lr)``, else AdamW with ``weight_decay``.

        A custom optimizer chooses its own weight decay; ``weight_decay`` is then unused.
        """
        if not self.has_custom_optimizer:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        subject = f"`build_optimizer(params, lr)` in {self.path}"
        optimizer = checks.call_user(
            subject, self.path, self.module.build_optimizer, params, lr
        )
        return checks.check_optimizer(optimizer, self.path)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Blocks for activation checkpointing: the user's ``checkpoint_blocks(model)``
        (checked to be submodules of ``model``), else ``detect_blocks(model)``."""
        hook = getattr(self.module, "checkpoint_blocks", None)
        if hook is None:
            return detect_blocks(model)
        subject = f"`checkpoint_blocks(model)` in {self.path}"
        value = checks.call_user(subject, self.path, hook, model)
        return checks.check_blocks(value, model, self.path)


def load_task(path: str | Path, *, validate: bool = True) -> Task:
    """Import the model file at ``path`` and check it against the contract.

    With ``validate=True`` the model and datasets are built and one forward pass and loss
    run on a batch of 2 training items (the global RNG state is left as it was). Every
    way the file can break the contract raises one ``ModelFileError``.
    """
    resolved = _check_path(path)
    source = resolved.read_bytes()
    module = _import_file(resolved, source)
    checks.check_hooks(module, resolved)
    task = Task(
        path=resolved,
        name=resolved.stem,
        sha256=hashlib.sha256(source).hexdigest(),
        module=module,
        base=checks.check_base(getattr(module, "BASE", None), resolved),
        class_names=checks.check_class_names(getattr(module, "CLASS_NAMES", None), resolved),
        collate_fn=getattr(module, "collate_fn", None),
        has_custom_loss=getattr(module, "loss_fn", None) is not None,
        has_custom_optimizer=getattr(module, "build_optimizer", None) is not None,
    )
    if validate:
        with torch.random.fork_rng(devices=[]):
            _validate(task)
    return task


def _check_path(path: str | Path) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise ModelFileError(
            f"Model file {resolved} does not exist.",
            hint=f"Check the path; a relative path is taken from {Path.cwd()}.",
        )
    if resolved.is_dir():
        raise ModelFileError(
            f"{resolved} is a folder, not a model file.",
            hint="Pass the path of the .py file inside it, e.g. "
            f"{resolved / 'model.py'}.",
        )
    if resolved.suffix != ".py":
        raise ModelFileError(
            f"Model file {resolved} is not a Python file: its name must end in .py.",
            hint="Pass the model.py that defines build_model() and build_datasets().",
        )
    return resolved


def _import_file(path: Path, source: bytes) -> types.ModuleType:
    """Run ``source`` as a module under a unique name, with its folder on sys.path."""
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        raise ModelFileError(
            f"{path} has a syntax error on line {exc.lineno}: {exc.msg.rstrip('.')}"
            + ("" if exc.msg.endswith(("?", "!")) else "."),
            hint=f"Line {exc.lineno} reads: {text}" if text else None,
        ) from exc
    except ValueError as exc:  # e.g. null bytes in the file
        raise ModelFileError(f"{path} is not Python source: {exc}.") from exc
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_autotune_model_{stem}_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses and pickle look the module up here
    try:
        with _folder_on_path(path.parent):
            exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ModelFileError(
            f"Importing {path} raised {checks.describe_exception(exc, path)}.",
            hint="Top-level code runs on import: keep scripts under "
            "`if __name__ == \"__main__\":`; the file's folder is on sys.path.",
        ) from exc
    return module


@contextlib.contextmanager
def _folder_on_path(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on sys.path, so the file can import its siblings."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _validate(task: Task) -> None:
    """Build everything once and run one forward pass and loss, without gradients."""
    model = task.build_model()
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelFileError(
            f"The model from `build_model()` in {task.path} has no trainable parameters.",
            hint="Register the layers as attributes of the module (e.g. `self.fc = "
            "nn.Linear(...)`) or in an nn.ModuleList, not in a plain list.",
        )
    train, val = task.datasets()
    items = _sample_items(task, train, val)
    inputs, target = _collate(task, items)
    model.eval()
    with torch.no_grad():
        output = _forward(task, model, inputs, len(items))
        _check_loss(task, output, target, len(items))
    task.blocks(model)
    task.make_optimizer(model.parameters(), lr=task.base.lr, weight_decay=task.base.weight_decay)


def _sample_items(task: Task, train: Dataset, val: Dataset) -> list[Any]:
    """Read and check item 0 of both datasets; return the first training items."""
    raw_ok = task.collate_fn is not None
    count = min(_VALIDATION_BATCH, len(train))  # type: ignore[arg-type]
    items = []
    for role, dataset, indices in (("train", train, range(count)), ("val", val, [0])):
        for index in indices:
            item = checks.call_user(
                f"Reading item {index} of the {role} dataset from {task.path}",
                task.path,
                dataset.__getitem__,
                index,
            )
            checks.check_item(role, index, item, task.path, raw_ok=raw_ok)
            if role == "train":
                items.append(item)
    return items


def _collate(task: Task, items: list[Any]) -> tuple[Any, Any]:
    n = len(items)
    if task.collate_fn is None:
        batch = checks.call_user(
            f"Batching {checks.training_items(n)} from {task.path} "
            "with torch's default collate",
            task.path,
            task.collate or default_collate,
            items,
            hint="Items are stacked, so their tensors need equal shapes: pad them in the "
            "dataset, or define `collate_fn(items)` in the file.",
        )
        return batch[0], batch[1]
    subject = f"Batching {checks.training_items(n)} with `collate_fn` in {task.path}"
    batch = checks.call_user(subject, task.path, task.collate_fn, items)
    return checks.check_batch(batch, n, task.path)


def _forward(task: Task, model: nn.Module, inputs: Any, n: int) -> Any:
    try:
        return task.call(model, inputs)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"The forward pass of the model from {task.path} raised "
            f"{checks.describe_exception(exc, task.path)} "
            f"on a batch of {checks.training_items(n)} "
            f"(input: {checks.describe(inputs)}).",
            hint=f"The batch was passed as {task.calling}; check that the model accepts the "
            "batched dataset input.",
        ) from exc


def _check_loss(task: Task, output: Any, target: Any, n: int) -> None:
    what = "`loss_fn`" if task.has_custom_loss else "the default cross-entropy"
    if not task.has_custom_loss and calling.logits_of(output) is None:
        raise ModelFileError(_no_logits(task.path, output), hint=_NO_LOGITS_HINT)
    try:
        loss = task.loss(output, target)
    except Exception as exc:
        hint = (
            "The default loss is F.cross_entropy(output, target): class logits [N, C] and "
            "integer class targets [N]. Define `loss_fn(output, target)` for anything else."
            if not task.has_custom_loss
            else "Check `loss_fn(output, target)` against the model output and batched target."
        )
        raise ModelFileError(
            f"The loss ({what}) in {task.path} raised "
            f"{checks.describe_exception(exc, task.path)} "
            f"on a batch of {checks.training_items(n)} "
            f"(output: {checks.describe(output)}; target: {checks.describe(target)}).",
            hint=hint,
        ) from exc
    checks.check_loss(loss, what, n, task.path)


_NO_LOGITS_HINT = ("Return the logits as a tensor, as `.logits` / `[\"logits\"]`, or as the first "
                   "tensor of a tuple; or define `loss_fn(output, target)` in the file.")


def _no_logits(path: Path, output: Any) -> str:
    return (f"The default cross-entropy loss needs class logits, but the model from {path} "
            f"returned {checks.describe(output)}, which holds no tensor.")


_CONTAINERS = (nn.ModuleList, nn.Sequential)


def detect_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, for activation checkpointing; [] when there are none.

    Candidates are the children of every nn.ModuleList and nn.Sequential in the model, at
    any depth, that hold parameters and have submodules of their own: a block is a unit
    like a transformer layer or a residual block, not a single leaf layer, so the Linear
    layers of a plain ``Sequential(Linear, ReLU, Linear)`` MLP are not blocks. Candidates
    are grouped by class across containers (the blocks of every ResNet stage form one
    group); a block nested inside another of its group is dropped. Of the groups with at
    least two blocks, the one with the most parameters wins (ties: more blocks, then
    the first found); its blocks are returned in model order.
    """
    groups: dict[type, list[nn.Module]] = {}
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, _CONTAINERS):
            continue
        for child in module.children():
            if id(child) not in seen and _is_block(child):
                seen.add(id(child))
                groups.setdefault(type(child), []).append(child)
    best: list[nn.Module] = []
    best_key = (0, 0)
    for members in groups.values():
        members = _outermost(members)
        key = (_parameter_count(members), len(members))
        if len(members) >= 2 and key > best_key:
            best, best_key = members, key
    return best


def _is_block(module: nn.Module) -> bool:
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # no forward to checkpoint
        return False
    has_children = next(module.children(), None) is not None
    return has_children and next(module.parameters(), None) is not None


def _outermost(members: list[nn.Module]) -> list[nn.Module]:
    """``members`` without those nested inside another member."""
    nested = {id(sub) for m in members for sub in m.modules() if sub is not m}
    return [m for m in members if id(m) not in nested]


def _parameter_count(modules: list[nn.Module]) -> int:
    unique = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(unique.values())
