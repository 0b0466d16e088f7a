"""How a model file's batches meet its model: the calling convention, the logits in an
output, and the target inside a Hugging Face style item.

People write ``forward`` two ways for a structured input: taking its parts by name
(``forward(self, input_ids, attention_mask)``, called as ``model(**batch)``) or taking the
batch whole (``forward(self, batch)``, called as ``model(batch)``). ``convention`` reads
``forward``'s signature once and picks the form it accepts, so neither has to be rewritten.
Outputs come as a tensor, a Hugging Face ``ModelOutput``, a dict or a tuple; ``logits_of``
applies one rule to all of them. Nothing here imports the user's file or ``autotune.model.task``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

__all__ = ["LABEL_KEYS", "SplitLabels", "call", "convention", "describe_form", "item_input", "label_key", "logits_of", "unwrap"]

# The conventions: the input passed as one argument, spread as positional arguments, or
# spread as keyword arguments.
WHOLE, POSITIONAL, KEYWORDS = "x", "*x", "**x"
# Keys that hold the target in a dict item, in the order they are looked for.
LABEL_KEYS = ("labels", "label")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile's and DistributedDataParallel's wrappers,
    whose own ``forward`` takes ``*args, **kwargs`` and so says nothing about the call."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else None
        )
        if inner is None:
            return model
        model = inner


def convention(model: nn.Module, inputs: Any) -> str:
    """How to call ``model`` on a batch input: ``WHOLE`` for a tensor (or anything that is
    not a tuple, list or dict); for a dict, ``KEYWORDS`` when ``forward`` binds its keys as
    arguments, else ``WHOLE``; for a tuple or list, ``POSITIONAL`` when ``forward`` binds
    its elements as arguments, else ``WHOLE``. When ``forward`` binds both forms (its
    signature is ``*args, **kwargs``), the spread form wins. Raises ``TypeError`` naming
    both attempts when neither binds."""
    if isinstance(inputs, Mapping):
        spread, spread_args, spread_kwargs = KEYWORDS, (), dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        spread, spread_args, spread_kwargs = POSITIONAL, tuple(inputs), {}
    else:
        return WHOLE
    try:
        signature = inspect.signature(unwrap(model).forward)
    except (TypeError, ValueError):  # no signature to read (a builtin): the spread form
        return spread
    problems = []
    for form, args, kwargs in ((spread, spread_args, spread_kwargs), (WHOLE, (inputs,), {})):
        try:
            signature.bind(*args, **kwargs)
            return form
        except TypeError as exc:
            problems.append(f"{describe_form(form)} ({_unexpected(signature, kwargs) or str(exc).rstrip('.')})")
    raise TypeError(f"forward{signature} accepts neither {problems[0]} nor {problems[1]}")


def _unexpected(signature: inspect.Signature, kwargs: dict[str, Any]) -> str | None:
    """"got an unexpected keyword argument 'x'" for the keys no parameter takes: said first,
    since a key the model does not know is the likelier mistake than one it misses."""
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    extra = [repr(k) for k in kwargs if k not in named]
    if not extra:
        return None
    return f"got an unexpected keyword argument {', '.join(extra)}" if len(extra) == 1 else \
        f"got unexpected keyword arguments {', '.join(extra)}"


def call(model: nn.Module, inputs: Any, form: str) -> Any:
    """``model`` called on ``inputs`` in the ``form`` that ``convention`` picked."""
    if form == KEYWORDS:
        return model(**inputs)
    if form == POSITIONAL:
        return model(*inputs)
    return model(inputs)


def describe_form(form: str) -> str:
    """The call as the report and messages write it, e.g. ``model(**batch)``."""
    return {WHOLE: "model(batch)", POSITIONAL: "model(*batch)", KEYWORDS: "model(**batch)"}[form]


def logits_of(output: Any) -> torch.Tensor | None:
    """The class logits (or predictions) in a model's output, by one rule: a tensor is
    itself; otherwise its ``.logits`` attribute (a Hugging Face ``ModelOutput``), its
    ``"logits"`` key (a dict), else its first tensor (a tuple, list or dict, in order).
    None when there is no tensor to take."""
    if isinstance(output, torch.Tensor):
        return output
    found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        return None
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def label_key(item: Any) -> str | None:
    """The key that holds the target of a dict item (``labels``, else ``label``); None
    when ``item`` is not a dict or holds neither."""
    if isinstance(item, Mapping):
        return next((key for key in LABEL_KEYS if key in item), None)
    return None


def item_input(item: Any) -> Any:
    """The input part of a dataset item: a dict item without its target key, else the
    first element of an ``(input, target)`` pair."""
    key = label_key(item)
    if key is not None:
        return {k: v for k, v in item.items() if k != key}
    return item[0]


class SplitLabels:
    """A collate function for dict items that carry their target under ``key``: the
    items are batched with torch's default collate, then the target is taken out, so the
    loader yields ``(inputs, target)`` as for pair items. A class, not a closure, so that
    DataLoader workers can unpickle it."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, items: list[Any]) -> tuple[dict[str, Any], Any]:
        batch = default_collate(items)
        return {k: v for k, v in batch.items() if k != self.key}, batch[self.key]

    def __repr__(self) -> str:
        return f"SplitLabels({self.key!r})"
