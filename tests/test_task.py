"""Tests for autotune.task: loading valid model files, and finding the blocks to checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from autotune.config import Base
from autotune.task import Task, call_model, detect_blocks, load_task

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


def test_call_model_spreads_tuples_and_dicts() -> None:
    class Record(nn.Module):
        def forward(self, *args, **kwargs):
            return args, kwargs

    model, x = Record(), torch.zeros(1)
    assert call_model(model, x) == ((x,), {})
    assert call_model(model, (x, x)) == ((x, x), {})
    assert call_model(model, [x]) == ((x,), {})
    assert call_model(model, {"a": x}) == ((), {"a": x})


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
