"""Tests for autotune.model.task: every contract error of a model file, by its words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autotune.errors import ModelFileError
from autotune.model.task import load_task

from tests.model_files import GOOD, fails, line_of, write


# --- where the file is and whether it imports -----------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = fails(tmp_path / "nope.py", "Model file {path} does not exist.")
    assert "relative path" in err.hint


def test_folder_instead_of_file(tmp_path: Path) -> None:
    fails(tmp_path, "{path} is a folder, not a model file.")


def test_not_a_py_file(tmp_path: Path) -> None:
    fails(write(tmp_path, name="model.txt"),
          "Model file {path} is not a Python file: its name must end in .py.")


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x = 1\ndef broken(:\n    pass\n", base="")
    err = fails(path, "{path} has a syntax error on line 2: ")
    assert "def broken(:" in err.hint and isinstance(err.__cause__, SyntaxError)


def test_syntax_error_message_ending_in_a_question(tmp_path: Path) -> None:
    path = write(tmp_path, "x = [1 2]\n", base="")
    err = fails(path, "{path} has a syntax error on line 1: invalid syntax. Perhaps you forgot a "
                      "comma?")
    assert str(err).endswith("comma?")


def test_exception_while_importing(tmp_path: Path) -> None:
    path = write(tmp_path, "raise ValueError('no data here')\n")
    line = line_of(path, "no data here")
    err = fails(path, f"Importing {{path}} raised ValueError: no data here "
                      f"(line {line} of model.py).")
    assert isinstance(err.__cause__, ValueError)


def test_failed_sibling_import(tmp_path: Path) -> None:
    path = write(tmp_path, "import no_such_sibling_module_xyz\n")
    fails(path, "Importing {path} raised ModuleNotFoundError: "
                "No module named 'no_such_sibling_module_xyz'")


def test_sys_exit_while_importing(tmp_path: Path) -> None:
    fails(write(tmp_path, "import sys\nsys.exit(2)\n"), "Importing {path} raised SystemExit: 2")


# --- top-level names ------------------------------------------------------------------


def test_missing_build_model(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("def build_model", "def build_modle"), base="")
    err = fails(path, "{path} has no `build_model()` function; it is required.")
    assert "`def build_model():`" in err.hint
    assert "Did you mean to name `build_modle` `build_model`?" in err.hint


def test_missing_build_datasets(tmp_path: Path) -> None:
    path = write(tmp_path, "import torch\ndef build_model():\n    return torch.nn.Linear(1, 1)\n",
                 base="")
    err = fails(path, "{path} has no `build_datasets()` function; it is required.")
    assert "(train, val)" in err.hint and "Did you mean" not in err.hint


@pytest.mark.parametrize("name", ["build_model", "build_datasets"])
def test_required_function_not_callable(tmp_path: Path, name: str) -> None:
    fails(write(tmp_path, f"{name} = 3\n"),
          f"`{name}` in {{path}} must be a function, but got int.")


@pytest.mark.parametrize("name", ["loss_fn", "build_optimizer", "checkpoint_blocks",
                                  "collate_fn"])
def test_optional_hook_not_callable(tmp_path: Path, name: str) -> None:
    err = fails(write(tmp_path, f"{name} = 'mse'\n"),
                f"`{name}` in {{path}} must be callable, but got str.")
    assert f"`def {name}(" in err.hint and "remove it" in err.hint


def test_base_not_a_dict(tmp_path: Path) -> None:
    fails(write(tmp_path, "BASE = [0.1, 32]\n"), "`BASE` in {path} must be a dict, but got list.")


def test_base_unknown_key(tmp_path: Path) -> None:
    err = fails(write(tmp_path, "BASE = {'lr': 0.1, 'lrr': 0.1}\n"),
                "`BASE` in {path} has an unknown key 'lrr'; allowed keys: lr, batch_size, "
                "epochs, weight_decay, warmup, grad_clip, seed.")
    assert err.hint == "Did you mean 'lr'?"


@pytest.mark.parametrize("entry, text", [
    ("'lr': '1e-3'", "`BASE['lr']` in {path} must be a number > 0, but got '1e-3' (str)."),
    ("'epochs': True", "`BASE['epochs']` in {path} must be an integer >= 1, but got True (bool)."),
    ("'batch_size': 32.0",
     "`BASE['batch_size']` in {path} must be an integer >= 1, but got 32.0 (float)."),
    ("'warmup': None", "`BASE['warmup']` in {path} must be a number in [0, 0.5], but got None "
                       "(NoneType)."),
])
def test_base_value_of_wrong_type(tmp_path: Path, entry: str, text: str) -> None:
    fails(write(tmp_path, f"BASE = {{{entry}}}\n"), text)


@pytest.mark.parametrize("entry, text", [
    ("'lr': -1", "`BASE['lr']` in {path} must be a number > 0, but got -1."),
    ("'lr': 0", "`BASE['lr']` in {path} must be a number > 0, but got 0."),
    ("'lr': float('inf')", "`BASE['lr']` in {path} must be a number > 0, but got inf."),
    ("'warmup': 0.9", "`BASE['warmup']` in {path} must be a number in [0, 0.5], but got 0.9."),
    ("'batch_size': 0", "`BASE['batch_size']` in {path} must be an integer >= 1, but got 0."),
    ("'seed': -3", "`BASE['seed']` in {path} must be an integer in [0, 4294967295], but got -3."),
])
def test_base_value_out_of_range(tmp_path: Path, entry: str, text: str) -> None:
    fails(write(tmp_path, f"BASE = {{{entry}}}\n"), text)


@pytest.mark.parametrize("value, text", [
    ("'cat,dog'", "`CLASS_NAMES` in {path} must be a list of strings, but got str."),
    ("['cat', 2]", "`CLASS_NAMES` in {path} must be a list of strings, but item 1 is 2 (int)."),
    ("[]", "`CLASS_NAMES` in {path} is an empty list."),
])
def test_class_names_not_a_list_of_str(tmp_path: Path, value: str, text: str) -> None:
    fails(write(tmp_path, f"CLASS_NAMES = {value}\n"), text)


# --- build_model --------------------------------------------------------------------


def test_build_model_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_model():\n    raise RuntimeError('needs a GPU')\n")
    line = line_of(path, "needs a GPU")
    err = fails(path, f"`build_model()` in {{path}} raised RuntimeError: needs a GPU "
                      f"(line {line} of model.py).")
    assert isinstance(err.__cause__, RuntimeError)
    assert "--debug" in err.hint


@pytest.mark.parametrize("returned, got, hint", [
    ("{'net': nn.Linear(4, 3)}", "dict", "Return the model itself"),
    ("None", "NoneType", "Add `return model`"),
    ("nn.Linear", "type", "It returned the class itself; return an instance: `return Linear()`."),
])
def test_build_model_returning_a_non_module(tmp_path: Path, returned: str, got: str,
                                            hint: str) -> None:
    path = write(tmp_path, f"def build_model():\n    return {returned}\n")
    err = fails(path, f"`build_model()` in {{path}} must return a torch.nn.Module, but got {got}.")
    assert err.hint.startswith(hint)


def test_build_model_returning_the_same_object_twice(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "MODEL = nn.Linear(4, 3)\ndef build_model():\n"
                                     "    return MODEL\n"))
    with pytest.raises(ModelFileError, match=re.escape(
            f"`build_model()` in {task.path} returned the same model object twice; it must "
            "build a new, untrained model on every call.")):
        task.build_model()


def test_model_without_trainable_parameters(tmp_path: Path) -> None:
    fails(write(tmp_path, "def build_model():\n    return nn.Identity()\n"),
          "The model from `build_model()` in {path} has no trainable parameters.")


# --- build_datasets and items ---------------------------------------------------------


def test_build_datasets_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n    raise FileNotFoundError('data/x.csv')\n")
    fails(path, "`build_datasets()` in {path} raised FileNotFoundError: data/x.csv (line ")


@pytest.mark.parametrize("returned, got", [
    ("TensorDataset(torch.ones(2, 4), torch.ones(2))", "a TensorDataset"),
    ("(1, 2, 3)", "a tuple of 3 items (int, int, int)"),
])
def test_build_datasets_not_a_pair(tmp_path: Path, returned: str, got: str) -> None:
    path = write(tmp_path, f"def build_datasets():\n    return {returned}\n")
    fails(path, f"`build_datasets()` in {{path}} must return a pair (train, val), but got {got}.")


@pytest.mark.parametrize("train, got", [
    ("iter([(torch.ones(4), 0)])", "a list_iterator"),
    ("Stream()", "a Stream"),
])
def test_dataset_not_map_style(tmp_path: Path, train: str, got: str) -> None:
    body = f"""
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.ones(4), 0

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.ones(4), 0

    def build_datasets():
        return {train}, [(torch.ones(4), 0)]
    """
    err = fails(write(tmp_path, body),
                "The train dataset from `build_datasets()` in {path} must be a Dataset with "
                f"__len__ and __getitem__, but got {got}.")
    assert "map-style" in err.hint


@pytest.mark.parametrize("train, val, role", [
    ("[]", "[(torch.ones(4), 0)]", "train"),
    ("[(torch.ones(4), 0)]", "[]", "val"),
])
def test_empty_dataset(tmp_path: Path, train: str, val: str, role: str) -> None:
    path = write(tmp_path, f"def build_datasets():\n    return {train}, {val}\n")
    fails(path, f"The {role} dataset from `build_datasets()` in {{path}} is empty.")


def test_reading_an_item_raising(tmp_path: Path) -> None:
    body = """
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise KeyError(i)

    def build_datasets():
        return Broken(), Broken()
    """
    fails(write(tmp_path, body),
          "Reading item 0 of the train dataset from {path} raised KeyError: 0")


def test_item_not_a_pair(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n    d = TensorDataset(torch.ones(3, 4))\n"
                           "    return d, d\n")
    err = fails(path, "Item 0 of the train dataset from {path} must be an (input, target) pair or a dict "
                      "holding `labels`, but got a tuple of 1 item (float32 tensor [4]).")
    assert "return self.x[i], self.y[i]" in err.hint


@pytest.mark.parametrize("item, got", [
    ("([1.0, 2.0], 0)", "a list whose element 0 is a float"),
    ("('text', 0)", "a str"),
    ("({'a': torch.ones(4), 'b': [1]}, 0)", "a dict whose value for 'b' is a list"),
    ("((), 0)", "an empty tuple"),
])
def test_input_of_wrong_type(tmp_path: Path, item: str, got: str) -> None:
    path = write(tmp_path, f"def build_datasets():\n    d = [{item}] * 2\n    return d, d\n")
    err = fails(path, "The input of item 0 of the train dataset from {path} must be a tensor, "
                      f"or a tuple/list/dict of tensors, but got {got}.")
    assert "collate_fn" in err.hint


def test_target_of_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n    d = [(torch.ones(4), 'cat')] * 2\n"
                           "    return d, d\n")
    fails(path, "The target of item 0 of the train dataset from {path} must be a tensor, an int "
                "or a float, but got 'cat' (str).")


def test_val_items_are_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n"
                           "    return [(torch.ones(4), 0)] * 2, [torch.ones(4)]\n")
    fails(path, "Item 0 of the val dataset from {path} must be an (input, target) pair or a dict "
                "holding `labels`, but got a float32 tensor of shape [4].")


# --- batching, forward and loss -------------------------------------------------------


def test_default_collate_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n"
                           "    d = [(torch.ones(4), 0), (torch.ones(5), 1)]\n    return d, d\n")
    err = fails(path, "Batching 2 training items from {path} with torch's default collate "
                      "raised RuntimeError: stack expects each tensor to be equal size")
    assert "pad them" in err.hint


def test_custom_collate_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def collate_fn(items):\n    raise TypeError('bad items')\n")
    fails(path, "Batching 2 training items with `collate_fn` in {path} raised TypeError: bad "
                "items (line ")


def test_custom_collate_returning_a_non_pair(tmp_path: Path) -> None:
    path = write(tmp_path, "def collate_fn(items):\n"
                           "    return torch.stack([x for x, _ in items])\n")
    fails(path, "The batch that `collate_fn` in {path} made from 2 training items must be an "
                "(input, target) pair, but got a float32 tensor of shape [2, 4].")


def test_custom_collate_returning_a_bad_input(tmp_path: Path) -> None:
    path = write(tmp_path, "def collate_fn(items):\n    return 'x', torch.tensor([0, 1])\n")
    fails(path, "The input of the batch that `collate_fn` in {path} made from 2 training items "
                "must be a tensor, or a tuple/list/dict of tensors, but got 'x' (str).")


def test_forward_pass_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_model():\n    return nn.Linear(5, 3)\n")
    err = fails(path, "The forward pass of the model from {path} raised RuntimeError: ")
    assert str(err).endswith("on a batch of 2 training items (input: a float32 tensor of shape "
                             "[2, 4]).")
    assert isinstance(err.__cause__, RuntimeError)


def test_forward_accepting_neither_calling_form(tmp_path: Path) -> None:
    body = """
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, features, weight):
            return self.fc(features) * weight

    def build_model():
        return Two()

    def build_datasets():
        d = [({"tokens": torch.ones(4)}, 0)] * 2
        return d, d
    """
    err = fails(write(tmp_path, body),
                "The model from `build_model()` in {path} cannot be called on a batch whose input is "
                "a dict with keys 'tokens': its forward(features, weight) accepts neither "
                "model(**batch) (got an unexpected keyword argument 'tokens') nor model(batch) "
                "(missing a required argument: 'weight').")
    assert "model(**batch)" in err.hint and "model(batch)" in err.hint


def test_output_without_logits_under_the_default_loss(tmp_path: Path) -> None:
    body = """
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return {"note": "no tensor here"}

    def build_model():
        return Named()
    """
    err = fails(write(tmp_path, body),
                "The default cross-entropy loss needs class logits, but the model from {path} "
                "returned a dict with keys 'note', which holds no tensor.")
    assert "loss_fn(output, target)" in err.hint and ".logits" in err.hint


@pytest.mark.parametrize("item, text", [
    ("{'input_ids': torch.ones(4), 'attention_mask': torch.ones(4)}",
     "is a dict with keys 'input_ids', 'attention_mask' but no target: none is named 'labels' or 'label'."),
    ("{'labels': torch.tensor(1)}",
     "is a dict that holds only its target 'labels'; the model's input is missing."),
])
def test_dict_item_without_a_usable_target(tmp_path: Path, item: str, text: str) -> None:
    path = write(tmp_path, f"def build_datasets():\n    d = [{item}] * 2\n    return d, d\n")
    fails(path, "Item 0 of the train dataset from {path} " + text)


def test_default_loss_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n    d = [(torch.ones(4), 7)] * 3\n"
                           "    return d, d\n")
    err = fails(path, "The loss (the default cross-entropy) in {path} raised IndexError: "
                      "Target 7 is out of bounds on a batch of 2 training items (output: a "
                      "float32 tensor of shape [2, 3]; target: an int64 tensor of shape [2]).")
    assert "Define `loss_fn(output, target)`" in err.hint


def test_custom_loss_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def loss_fn(output, target):\n    raise ValueError('no')\n")
    fails(path, "The loss (`loss_fn`) in {path} raised ValueError: no (line ")


@pytest.mark.parametrize("returned, got", [
    ("nn.functional.cross_entropy(output, target, reduction='none')",
     "a float32 tensor of shape [2]"),
    ("0.5", "0.5 (float)"),
])
def test_loss_not_a_scalar_tensor(tmp_path: Path, returned: str, got: str) -> None:
    path = write(tmp_path, f"def loss_fn(output, target):\n    return {returned}\n")
    err = fails(path, "The loss (`loss_fn`) in {path} must be a scalar floating-point tensor, "
                      f"but got {got} on a batch of 2 training items.")
    assert ".mean()" in err.hint


def test_single_training_item_makes_a_batch_of_one(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_datasets():\n    d = [(torch.ones(4), 0)]\n    return d, d\n"
                           "def loss_fn(output, target):\n    return output.sum(dim=1)\n")
    fails(path, "The loss (`loss_fn`) in {path} must be a scalar floating-point tensor, "
                "but got a float32 tensor of shape [1] on a batch of 1 training item.")


# --- optimizer and checkpoint blocks ------------------------------------------------


def test_build_optimizer_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_optimizer(params, lr):\n    raise ValueError('lr?')\n")
    fails(path, "`build_optimizer(params, lr)` in {path} raised ValueError: lr? (line ")


def test_build_optimizer_returning_a_non_optimizer(tmp_path: Path) -> None:
    path = write(tmp_path, "def build_optimizer(params, lr):\n    return list(params)\n")
    fails(path, "`build_optimizer(params, lr)` in {path} must return a torch.optim.Optimizer, "
                "but got a list of 2 items (float32 tensor [3, 4], float32 tensor [3]).")


@pytest.mark.parametrize("returned, text", [
    ("model", "must return a list of nn.Module, but got a Linear."),
    ("[model, 1]", "must return a list of nn.Module, but item 1 is 1 (int)."),
    ("[nn.Linear(4, 3)]", "must return submodules of the model it is given, but item 0 "
                          "(a Linear) is not part of that model."),
])
def test_checkpoint_blocks_returning_bad_blocks(tmp_path: Path, returned: str, text: str) -> None:
    path = write(tmp_path, f"def checkpoint_blocks(model):\n    return {returned}\n")
    fails(path, "`checkpoint_blocks(model)` in {path} " + text)


def test_checkpoint_blocks_raising(tmp_path: Path) -> None:
    path = write(tmp_path, "def checkpoint_blocks(model):\n    return model.layers\n")
    fails(path, "`checkpoint_blocks(model)` in {path} raised AttributeError: ")
