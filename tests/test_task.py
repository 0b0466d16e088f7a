"""Tests for autotune.model.task: loading valid model files, and finding the blocks to checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from autotune.config import Base
from autotune.model import calling
from autotune.model.task import Task, detect_blocks, load_task

from tests.model_files import write


# --- happy paths --------------------------------------------------------------------


def test_tensor_input_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path)
    task = load_task(path)
    assert isinstance(task, Task)
    assert task.path == path and task.name == "model"
    assert task.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert task.base == Base()
    assert task.class_names is None and task.collate_fn is None
    assert not task.has_custom_loss and not task.has_custom_optimizer
    out = task.build_model()(torch.zeros(2, 4))
    loss = task.loss(out, torch.tensor([0, 1]))
    assert torch.allclose(loss, nn.functional.cross_entropy(out, torch.tensor([0, 1])))


def test_datasets_are_built_once_and_cached(tmp_path: Path) -> None:
    task = load_task(write(tmp_path))
    first = task.datasets()
    assert task.datasets() is first
    assert task.module.CALLS == [1]


def test_build_model_gives_a_fresh_model_each_call(tmp_path: Path) -> None:
    task = load_task(write(tmp_path))
    a, b = task.build_model(), task.build_model()
    assert a is not b and isinstance(a, nn.Linear)


def test_validate_false_builds_nothing(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "def build_model():\n    raise RuntimeError('x')\n"),
                     validate=False)
    assert task.module.CALLS == []


def test_load_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    path = write(tmp_path)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_task(path)
    assert torch.equal(torch.rand(3), expected)


def test_each_load_imports_under_a_new_module_name(tmp_path: Path) -> None:
    path = write(tmp_path)
    a, b = load_task(path, validate=False), load_task(path, validate=False)
    assert a.module is not b.module and a.module.__name__ != b.module.__name__


def test_file_can_import_its_siblings(tmp_path: Path) -> None:
    (tmp_path / "sibling_width_mod.py").write_text("WIDTH = 4\n")
    body = """
    from sibling_width_mod import WIDTH

    def build_model():
        return nn.Linear(WIDTH, 3)
    """
    assert load_task(write(tmp_path, body)).module.WIDTH == 4


TUPLE_INPUT = """
class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, a, b):
        return self.a(a) + self.b(b)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n, as_dict):
        self.n, self.as_dict = n, as_dict

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        a, b = torch.ones(4) * i, torch.ones(2)
        return ({"a": a, "b": b} if self.as_dict else (a, b)), i % 3


def build_model():
    return Two()


def build_datasets():
    return Pairs(4, AS_DICT), Pairs(2, AS_DICT)
"""


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_tuple_and_dict_inputs(tmp_path: Path, as_dict: bool) -> None:
    task = load_task(write(tmp_path, f"AS_DICT = {as_dict}\n" + TUPLE_INPUT))
    assert isinstance(task.build_model(), nn.Module)


class _Record(nn.Module):
    def forward(self, *args, **kwargs):
        return args, kwargs


class _ByName(nn.Module):
    def forward(self, tokens, mask=None):
        return tokens


class _Whole(nn.Module):
    def forward(self, batch):
        return batch


class _Two(nn.Module):
    def forward(self, a, b):
        return a


@pytest.mark.parametrize("model, inputs, form", [
    (_Record(), torch.zeros(1), "x"),
    (_Record(), (1, 2), "*x"),  # both forms bind a signature of *args, **kwargs: the spread one wins
    (_Record(), {"a": 1}, "**x"),
    (_ByName(), {"tokens": 1, "mask": 2}, "**x"),
    (_ByName(), {"tokens": 1}, "**x"),
    (_Whole(), {"tokens": 1, "mask": 2}, "x"),  # a dict taken whole
    (_Whole(), (1, 2), "x"),  # a tuple taken whole
    (_Two(), (1, 2), "*x"),
    (_Two(), [1, 2], "*x"),
], ids=["tensor", "args-tuple", "kwargs-dict", "names", "names-default", "dict-whole", "tuple-whole",
        "tuple-spread", "list-spread"])
def test_the_calling_convention_follows_the_forward_signature(model, inputs, form) -> None:
    assert calling.convention(model, inputs) == form


def test_the_convention_looks_through_compile_and_ddp_wrappers() -> None:
    wrapped = torch.compile(_Whole())
    assert calling.unwrap(wrapped).__class__ is _Whole
    assert calling.convention(wrapped, {"tokens": 1}) == "x"


def test_call_passes_the_input_in_the_chosen_form() -> None:
    model, x = _Record(), torch.zeros(1)
    assert calling.call(model, x, "x") == ((x,), {})
    assert calling.call(model, (x, x), "*x") == ((x, x), {})
    assert calling.call(model, {"a": x}, "**x") == ((), {"a": x})
    assert calling.call(model, {"a": x}, "x") == (({"a": x},), {})


def test_a_forward_that_binds_neither_form_is_named_with_both_attempts() -> None:
    with pytest.raises(TypeError) as err:
        calling.convention(_Two(), {"tokens": 1})
    text = str(err.value)
    assert text.startswith("forward(a, b) accepts neither model(**batch) (")
    assert "'tokens'" in text and "nor model(batch) (" in text and "'b'" in text


class _Output(dict):
    """A stand-in with the two faces of transformers' ModelOutput: keys and attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def test_logits_by_one_rule() -> None:
    logits, loss = torch.randn(2, 3), torch.tensor(1.0)
    assert calling.logits_of(logits) is logits
    assert calling.logits_of(_Output(loss=loss, logits=logits)) is logits  # .logits before first tensor
    assert calling.logits_of({"loss": loss, "logits": logits}) is logits
    assert calling.logits_of({"scores": logits, "extra": loss}) is logits
    assert calling.logits_of((logits, loss)) is logits
    assert calling.logits_of(["text", logits]) is logits
    assert calling.logits_of({"text": "no tensor"}) is None
    assert calling.logits_of("text") is None


def test_split_labels_batches_dict_items_and_takes_the_target_out() -> None:
    items = [{"ids": torch.tensor([i, i]), "labels": torch.tensor(i % 2)} for i in range(3)]
    inputs, target = calling.SplitLabels("labels")(items)
    assert set(inputs) == {"ids"} and inputs["ids"].shape == (3, 2)
    assert target.tolist() == [0, 1, 0]
    assert calling.label_key({"label": 1, "labels": 2}) == "labels"
    assert calling.label_key({"label": 1}) == "label"
    assert calling.label_key((1, 2)) is None and calling.label_key({"y": 1}) is None


DICT_MODELS = """
class Scorer(nn.Module):
    # takes the batch whole, as recommender and multi-input code often does
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, batch):
        return {"logits": self.fc(batch["features"] * batch["weight"]), "aux": batch["weight"]}


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"features": torch.ones(4) * i, "weight": torch.ones(1), LABEL: torch.tensor(i % 3)}


def build_model():
    return Scorer()


def build_datasets():
    return Items(), Items()
"""


@pytest.mark.parametrize("label", ["labels", "label"])
def test_dict_items_with_labels_and_a_forward_taking_the_batch_whole(tmp_path: Path, label: str) -> None:
    task = load_task(write(tmp_path, f"LABEL = {label!r}\n" + DICT_MODELS))
    assert task.calling == "model(batch)"
    loader = torch.utils.data.DataLoader(task.datasets()[0], batch_size=4, collate_fn=task.collate)
    inputs, target = next(iter(loader))
    assert set(inputs) == {"features", "weight"} and target.tolist() == [0, 1, 2, 0]
    output = task.call(task.build_model(), inputs)
    loss = task.loss(output, target)  # the default loss reads output["logits"]
    assert torch.allclose(loss, nn.functional.cross_entropy(output["logits"], target))


def test_custom_loss_is_used(tmp_path: Path) -> None:
    body = """
    def loss_fn(output, target):
        return output.sum() * 0 + 42.0
    """
    task = load_task(write(tmp_path, body))
    assert task.has_custom_loss
    assert task.loss(torch.zeros(2, 3), torch.tensor([0, 1])).item() == 42.0


def test_custom_optimizer_is_used(tmp_path: Path) -> None:
    body = """
    def build_optimizer(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=0.5)
    """
    task = load_task(write(tmp_path, body))
    opt = task.make_optimizer(nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.3)
    assert task.has_custom_optimizer and isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.5


def test_default_optimizer_is_adamw_with_weight_decay(tmp_path: Path) -> None:
    task = load_task(write(tmp_path))
    opt = task.make_optimizer(nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.3


def test_base_overrides_and_defaults(tmp_path: Path) -> None:
    body = 'BASE = {"lr": 1, "batch_size": 64, "warmup": 0.5, "seed": 0}\n'
    base = load_task(write(tmp_path, body)).base
    assert base == Base(lr=1.0, batch_size=64, warmup=0.5, seed=0)
    assert isinstance(base.lr, float) and base.epochs == Base().epochs


def test_class_names_tuple_becomes_a_list(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, 'CLASS_NAMES = ("a", "b", "c")\n'))
    assert task.class_names == ["a", "b", "c"]


def test_optional_names_set_to_none_count_as_absent(tmp_path: Path) -> None:
    body = "loss_fn = None\nbuild_optimizer = None\nBASE = None\ncollate_fn = None\n"
    task = load_task(write(tmp_path, body))
    assert not task.has_custom_loss and task.base == Base() and task.collate_fn is None


def test_custom_collate_fn_batches_raw_items(tmp_path: Path) -> None:
    body = """
    WORDS = ["ab", "abc", "a", "abcd"]

    class Words(torch.utils.data.Dataset):
        def __len__(self):
            return len(WORDS)

        def __getitem__(self, i):
            return WORDS[i], i % 3

    def collate_fn(items):
        x = torch.tensor([[float(len(w))] * 4 for w, _ in items])
        return x, torch.tensor([y for _, y in items])

    def build_datasets():
        return Words(), Words()
    """
    task = load_task(write(tmp_path, body))
    assert task.collate_fn is task.module.collate_fn
    # The raw items (a string and a label) batch through it, as the trials' loaders take them.
    loader = torch.utils.data.DataLoader(task.datasets()[0], batch_size=4, collate_fn=task.collate)
    x, y = next(iter(loader))
    assert x.shape == (4, 4) and x[:, 0].tolist() == [2.0, 3.0, 1.0, 4.0] and y.tolist() == [0, 1, 2, 0]


# --- detect_blocks and checkpoint_blocks ----------------------------------------------


class Block(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


class BigBlock(Block):
    def __init__(self) -> None:
        super().__init__(width=16)


def test_detect_blocks_in_a_module_list() -> None:
    model = nn.Module()
    model.embed = nn.Linear(4, 4)
    model.layers = nn.ModuleList([Block(), Block(), Block()])
    assert detect_blocks(model) == list(model.layers)


def test_detect_blocks_ignores_leaf_layers_of_a_plain_mlp() -> None:
    assert detect_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))) == []
    assert detect_blocks(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])) == []
    assert detect_blocks(nn.Sequential(Block(), nn.Linear(4, 4))) == []


def test_detect_blocks_groups_nested_stages_in_model_order() -> None:
    model = nn.Module()
    model.stage1 = nn.Sequential(Block(), Block())
    model.stage2 = nn.Sequential(nn.Sequential(Block(), Block()))
    expected = [*model.stage1, *model.stage2[0]]
    assert detect_blocks(model) == expected


def test_detect_blocks_picks_the_group_with_most_parameters() -> None:
    model = nn.Sequential(Block(), Block(), Block(), nn.ModuleList([BigBlock(), BigBlock()]))
    assert detect_blocks(model) == list(model[3])


def test_detect_blocks_drops_blocks_nested_in_their_own_group() -> None:
    inner = nn.Sequential(Block(), Block())
    outer = nn.Sequential(nn.Sequential(inner, nn.Linear(4, 4)), nn.Sequential(Block(), Block()))
    assert detect_blocks(outer) == [outer[0], outer[1]]


def test_task_blocks_default_to_detected(tmp_path: Path) -> None:
    task = load_task(write(tmp_path))
    model = nn.Sequential(Block(), Block())
    assert task.blocks(model) == [model[0], model[1]]


def test_user_checkpoint_blocks_are_used(tmp_path: Path) -> None:
    body = """
    def checkpoint_blocks(model):
        return [model]
    """
    task = load_task(write(tmp_path, body))
    model = task.build_model()
    assert task.blocks(model) == [model]
