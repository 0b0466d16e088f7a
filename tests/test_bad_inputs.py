"""A corpus of bad inputs, each with the exact one-line error a user sees.

Every case runs ``autotune.cli.main`` in this process, as the command line would, on a
file from ``tests/bad_inputs/`` (or a bad argument), and asserts the exact error line on
stderr, the exit status (1 for autotune's own errors, 2 for argparse's) and that no
traceback is printed. ``tests/bad_inputs/README.md`` lists the same cases as a table; a
test keeps the two in step.

In the messages, ``{dir}`` stands for tests/bad_inputs, ``{tmp}`` for the test's temporary
folder and ``{tiny}`` for tests/assets/tiny_mlp.py (a valid model file), all absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from autotune.cli import main

TESTS = Path(__file__).resolve().parent
BAD = TESTS / "bad_inputs"
TINY = TESTS / "assets" / "tiny_mlp.py"
README = BAD / "README.md"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # the command line after `autotune`, with placeholders
    wrong: str  # what is wrong with the input, for the README
    message: str  # the error line after "autotune: error: " (argparse: "autotune CMD: error: ")
    status: int = 1  # 1: autotune's error; 2: argparse's

    @property
    def input(self) -> str:
        return "autotune " + " ".join(self.argv)

    @property
    def line(self) -> str:
        """The whole error line as printed, with placeholders."""
        prefix = "autotune: error: " if self.status == 1 else f"autotune {self.argv[0]}: error: "
        return prefix + self.message


def _run(model: str, *extra: str) -> tuple[str, ...]:
    return ("run", model, "--out", "{tmp}/out", "--no-progress", *extra)


def _model(name: str) -> tuple[str, ...]:
    return _run("{dir}/models/" + name)


def _space(name: str) -> tuple[str, ...]:
    return _run("{tiny}", "--space", "{dir}/spaces/" + name)


def _tuned(name: str) -> tuple[str, ...]:
    return ("train", "{tiny}", "--config", "{dir}/tuned/" + name, "--out", "{tmp}/out", "--no-progress")


def _compare(name: str) -> tuple[str, ...]:
    return ("compare", "{dir}/profiles/valid.yaml", "{dir}/profiles/" + name)


CASES: list[Case] = [
    # --- model files ----------------------------------------------------------------
    Case("model-missing", _model("no_such_model.py"), "the model file does not exist",
        "Model file {dir}/models/no_such_model.py does not exist."),
    Case("model-folder", _model(""), "a folder given as the model file",
        "{dir}/models is a folder, not a model file."),
    Case("model-not-py", _model("not_python.txt"), "the model file is not a .py file",
        "Model file {dir}/models/not_python.txt is not a Python file: its name must end in .py."),
    Case("model-syntax-error", _model("syntax_error.py"), "a `def` line without its colon",
        "{dir}/models/syntax_error.py has a syntax error on line 7: expected ':'."),
    Case("model-raises-at-import", _model("raises_at_import.py"), "top-level code opens a file that is not there",
        "Importing {dir}/models/raises_at_import.py raised FileNotFoundError: [Errno 2] No such file or directory: 'labels_that_do_not_exist.txt' (line 6 of raises_at_import.py)."),
    Case("model-no-build-model", _model("no_build_model.py"), "no `build_model` (it is misspelt `build_modle`)",
        "{dir}/models/no_build_model.py has no `build_model()` function; it is required."),
    Case("model-build-model-not-callable", _model("build_model_not_callable.py"), "`build_model` is a model object, not a function",
        "`build_model` in {dir}/models/build_model_not_callable.py must be a function, but got Linear."),
    Case("model-build-model-returns-none", _model("build_model_returns_none.py"), "`build_model()` forgets to return the model",
        "`build_model()` in {dir}/models/build_model_returns_none.py must return a torch.nn.Module, but got NoneType."),
    Case("model-build-model-returns-class", _model("build_model_returns_class.py"), "`build_model()` returns the class, not an instance",
        "`build_model()` in {dir}/models/build_model_returns_class.py must return a torch.nn.Module, but got type."),
    Case("model-build-model-same-object", _model("build_model_same_object.py"), "`build_model()` returns one global model on every call",
        "`build_model()` in {dir}/models/build_model_same_object.py returned the same model object twice; it must build a new, untrained model on every call."),
    Case("model-no-trainable-parameters", _model("no_trainable_parameters.py"), "the layers are in a plain list, so the model has no parameters",
        "The model from `build_model()` in {dir}/models/no_trainable_parameters.py has no trainable parameters."),
    Case("model-no-build-datasets", _model("no_build_datasets.py"), "no `build_datasets`",
        "{dir}/models/no_build_datasets.py has no `build_datasets()` function; it is required."),
    Case("model-datasets-one-dataset", _model("build_datasets_one_dataset.py"), "`build_datasets()` returns the training set alone",
        "`build_datasets()` in {dir}/models/build_datasets_one_dataset.py must return a pair (train, val), but got a TensorDataset."),
    Case("model-datasets-raise", _model("build_datasets_raises.py"), "`build_datasets()` raises (tensors of unequal length)",
        "`build_datasets()` in {dir}/models/build_datasets_raises.py raised AssertionError: Size mismatch between tensors (line 14 of build_datasets_raises.py)."),
    Case("model-datasets-empty-val", _model("build_datasets_empty_val.py"), "the validation set is empty",
        "The val dataset from `build_datasets()` in {dir}/models/build_datasets_empty_val.py is empty."),
    Case("model-item-not-a-pair", _model("item_not_a_pair.py"), "items are (input, target, weight) triples",
        "Item 0 of the train dataset from {dir}/models/item_not_a_pair.py must be an (input, target) pair or a dict holding `labels`, but got a tuple of 3 items (float32 tensor [4], int64 tensor [], float32 tensor [])."),
    Case("model-item-input-not-tensor", _model("item_input_not_tensor.py"), "an item's input is a list of floats",
        "The input of item 0 of the train dataset from {dir}/models/item_input_not_tensor.py must be a tensor, or a tuple/list/dict of tensors, but got a list whose element 0 is a float."),
    Case("model-items-unequal-shape", _model("items_of_unequal_shape.py"), "items of different lengths and no `collate_fn`",
        "Batching 2 training items from {dir}/models/items_of_unequal_shape.py with torch's default collate raised RuntimeError: stack expects each tensor to be equal size, but got [4] at entry 0 and [5] at entry 1."),
    Case("model-forward-fails", _model("forward_fails.py"), "the model wants 6 features, the data has 4",
        "The forward pass of the model from {dir}/models/forward_fails.py raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x4 and 6x3) on a batch of 2 training items (input: a float32 tensor of shape [2, 4])."),
    Case("model-forward-takes-neither-form", _model("forward_takes_neither_form.py"), "a dict input whose keys `forward` does not take",
        "The model from `build_model()` in {dir}/models/forward_takes_neither_form.py cannot be called on a batch whose input is a dict with keys 'tokens': its forward(features, weight) accepts neither model(**batch) (got an unexpected keyword argument 'tokens') nor model(batch) (missing a required argument: 'weight')."),
    Case("model-output-without-logits", _model("output_without_logits.py"), "`forward` returns no tensor, and there is no `loss_fn`",
        "The default cross-entropy loss needs class logits, but the model from {dir}/models/output_without_logits.py returned a dict with keys 'summary', which holds no tensor."),
    Case("model-dict-item-without-labels", _model("dict_item_without_labels.py"), "dict items with the target under \"target\"",
        "Item 0 of the train dataset from {dir}/models/dict_item_without_labels.py is a dict with keys 'input_ids', 'target' but no target: none is named 'labels' or 'label'."),
    Case("model-loss-not-scalar", _model("loss_not_scalar.py"), "`loss_fn` returns one loss per item",
        "The loss (`loss_fn`) in {dir}/models/loss_not_scalar.py must be a scalar floating-point tensor, but got a float32 tensor of shape [2] on a batch of 2 training items."),
    Case("model-loss-fn-not-callable", _model("loss_fn_not_callable.py"), "`loss_fn` is a string",
        "`loss_fn` in {dir}/models/loss_fn_not_callable.py must be callable, but got str."),
    Case("model-base-unknown-key", _model("base_unknown_key.py"), "`BASE` has `learning_rate` instead of `lr`",
        "`BASE` in {dir}/models/base_unknown_key.py has an unknown key 'learning_rate'; allowed keys: lr, batch_size, epochs, weight_decay, warmup, grad_clip, seed."),
    Case("model-base-wrong-type", _model("base_wrong_type.py"), "`BASE['batch_size']` is a string",
        "`BASE['batch_size']` in {dir}/models/base_wrong_type.py must be an integer >= 1, but got '32' (str)."),
    Case("model-base-negative-lr", _model("base_negative_lr.py"), "`BASE['lr']` is negative",
        "`BASE['lr']` in {dir}/models/base_negative_lr.py must be a number > 0, but got -0.001."),
    Case("model-base-not-a-dict", _model("base_not_a_dict.py"), "`BASE` is a list of pairs",
        "`BASE` in {dir}/models/base_not_a_dict.py must be a dict, but got list."),
    Case("model-class-names-wrong-type", _model("class_names_wrong_type.py"), "`CLASS_NAMES` is one string",
        "`CLASS_NAMES` in {dir}/models/class_names_wrong_type.py must be a list of strings, but got str."),
    Case("model-class-names-not-strings", _model("class_names_not_strings.py"), "`CLASS_NAMES` holds ints",
        "`CLASS_NAMES` in {dir}/models/class_names_not_strings.py must be a list of strings, but item 0 is 0 (int)."),
    Case("model-checkpoint-blocks-non-modules", _model("checkpoint_blocks_non_modules.py"), "`checkpoint_blocks()` returns names, not modules",
        "`checkpoint_blocks(model)` in {dir}/models/checkpoint_blocks_non_modules.py must return a list of nn.Module, but item 0 is '0' (str)."),
    Case("model-checkpoint-blocks-foreign", _model("checkpoint_blocks_foreign.py"), "`checkpoint_blocks()` returns a block of another model",
        "`checkpoint_blocks(model)` in {dir}/models/checkpoint_blocks_foreign.py must return submodules of the model it is given, but item 0 (a Sequential) is not part of that model."),
    # --- search spaces (`--space`, with a valid model file) ---------------------------
    Case("space-missing", _space("no_such_space.yaml"), "the space file does not exist",
        "{dir}/spaces/no_such_space.yaml: no such file."),
    Case("space-unknown-name", _run("{tiny}", "--space", "fast"), "no built-in space of that name",
        "No built-in search space named 'fast'; built-in spaces: default."),
    Case("space-malformed", _space("malformed.yaml"), "a flow list that is never closed",
        "{dir}/spaces/malformed.yaml: not valid YAML: line 4, column 38: expected ',' or ']', but got '}' (while parsing a flow sequence started at line 4, column 31)."),
    Case("space-not-a-mapping", _space("not_a_mapping.yaml"), "a YAML list instead of a mapping",
        "{dir}/spaces/not_a_mapping.yaml: a search space must be a mapping, but got list."),
    Case("space-unknown-top-level-key", _space("unknown_top_level_key.yaml"), "`param` instead of `params`",
        "{dir}/spaces/unknown_top_level_key.yaml: unknown top-level key 'param'; allowed: name, description, params, limits."),
    Case("space-unknown-knob", _space("unknown_knob.yaml"), "`batch_size` is not a knob",
        "{dir}/spaces/unknown_knob.yaml: unknown knob 'batch_size' under `params`; tunable knobs: micro_batch_size, accumulation_steps, num_workers, pin_memory, persistent_workers, cpu_threads, amp, checkpointing, channels_last, cudnn_benchmark, compile, fp32_precision, optimizer_impl, expandable_segments, lr_rule, warmup, schedule."),
    Case("space-empty-choices", _space("empty_choices.yaml"), "`choices: []`",
        "{dir}/spaces/empty_choices.yaml: `params.micro_batch_size`: `choices` must be a non-empty list, but got []."),
    Case("space-low-above-high", _space("low_above_high.yaml"), "a range with low 64, high 16",
        "{dir}/spaces/low_above_high.yaml: `params.micro_batch_size`: `low <= high` must hold, but got (low=64, high=16)."),
    Case("space-choices-wrong-type", _space("choices_wrong_type.yaml"), "micro-batch choices quoted as strings",
        "{dir}/spaces/choices_wrong_type.yaml: `params.micro_batch_size`: choice '16' must be of type int."),
    Case("space-amp-unknown-mode", _space("amp_unknown_mode.yaml"), "amp choice `fp32`",
        "{dir}/spaces/amp_unknown_mode.yaml: `params.amp`: choice 'fp32' is not allowed; allowed: off, fp16, bf16."),
    Case("space-amp-unquoted-off", _space("amp_unquoted_off.yaml"), "amp choice `off` unquoted (a YAML boolean)",
        "{dir}/spaces/amp_unquoted_off.yaml: `params.amp`: choice False is not a string; YAML reads unquoted off/on/no/yes as booleans."),
    Case("space-range-on-bool-knob", _space("range_on_bool_knob.yaml"), "a numeric range for `pin_memory`",
        "{dir}/spaces/range_on_bool_knob.yaml: `params.pin_memory`: a range needs a numeric knob; `pin_memory` takes bool values, so use `choices`."),
    Case("space-warmup-out-of-range", _space("warmup_out_of_range.yaml"), "warmup choice 0.8 (at most 0.5)",
        "{dir}/spaces/warmup_out_of_range.yaml: `params.warmup`: choice 0.8 is out of range: `warmup` must be in [0.0, 0.5]."),
    Case("space-unknown-limit", _space("unknown_limit.yaml"), "`limits.max_trials`",
        "{dir}/spaces/unknown_limit.yaml: unknown key in `limits` 'max_trials'; allowed: min_total_steps, max_micro_batch."),
    Case("space-amp-fp16-only", _space("amp_fp16_only.yaml"), "fp16 as the only AMP choice on a CPU-only machine",
        "{dir}/spaces/amp_fp16_only.yaml: every choice of `amp` was ruled out on this machine or model (fp16: fp16 autocast on the CPU is supported but slow (17-66x slower than fp32 where measured: no fast fp16 matmul kernels); not searched on the CPU)."),
    # --- tuned configs (`train --config`, `export`) -----------------------------------
    Case("tuned-missing", _tuned("no_such_tuned.yaml"), "the config file does not exist",
        "{dir}/tuned/no_such_tuned.yaml: no such file."),
    Case("tuned-malformed", _tuned("malformed.yaml"), "a tab-indented line",
        "{dir}/tuned/malformed.yaml: not valid YAML: line 4, column 1: found character '\\t' that cannot start any token."),
    Case("tuned-not-a-mapping", _tuned("not_a_mapping.yaml"), "a YAML list at the top level",
        "{dir}/tuned/not_a_mapping.yaml: expected a mapping at the top level, got list."),
    Case("tuned-unknown-key", _tuned("unknown_key.yaml"), "`knobs` instead of `train`",
        "{dir}/tuned/unknown_key.yaml: unknown top-level key 'knobs'; allowed keys: schema_version, train, provenance, measured."),
    Case("tuned-other-schema-version", _tuned("other_schema_version.yaml"), "schema_version 2",
        "{dir}/tuned/other_schema_version.yaml: schema_version 2 is not supported; this autotune reads schema_version 1."),
    Case("tuned-no-schema-version", _tuned("no_schema_version.yaml"), "no schema_version",
        "{dir}/tuned/no_schema_version.yaml: missing the key `schema_version`; this autotune reads schema_version 1."),
    Case("tuned-missing-train", _tuned("missing_train.yaml"), "no `train` section",
        "{dir}/tuned/missing_train.yaml: missing the `train` section."),
    Case("tuned-train-not-a-mapping", _tuned("train_not_a_mapping.yaml"), "`train` is a list",
        "{dir}/tuned/train_not_a_mapping.yaml: train: expected a mapping, but got list."),
    Case("tuned-unknown-knob", _tuned("unknown_knob.yaml"), "`train.batch_size` is not a knob",
        "{dir}/tuned/unknown_knob.yaml: train: unknown key 'batch_size'; allowed keys: micro_batch_size, accumulation_steps, num_workers, pin_memory, persistent_workers, cpu_threads, amp, checkpointing, channels_last, cudnn_benchmark, compile, fp32_precision, optimizer_impl, expandable_segments, lr_rule, base_lr, base_batch_size, lr, warmup, schedule, epochs, weight_decay, grad_clip, seed."),
    Case("tuned-knob-wrong-type", _tuned("knob_wrong_type.yaml"), "`micro_batch_size: \"32\"`, a string",
        "{dir}/tuned/knob_wrong_type.yaml: train: `micro_batch_size` must be an integer, but got '32'."),
    Case("tuned-micro-batch-zero", _tuned("micro_batch_zero.yaml"), "`micro_batch_size: 0`",
        "{dir}/tuned/micro_batch_zero.yaml: train: `micro_batch_size` must be >= 1, but got 0."),
    Case("tuned-amp-unknown-mode", _tuned("amp_unknown_mode.yaml"), "`amp: fp32`",
        "{dir}/tuned/amp_unknown_mode.yaml: train: `amp` must be one of off, fp16, bf16, but got 'fp32'."),
    Case("export-micro-batch-zero", ("export", "{dir}/tuned/micro_batch_zero.yaml", "--to", "json", "--out", "{tmp}/tuned.json"), "`autotune export` of a config with `micro_batch_size: 0`",
        "{dir}/tuned/micro_batch_zero.yaml: train: `micro_batch_size` must be >= 1, but got 0."),
    # --- hardware profiles (`compare`) ---------------------------------------------------
    Case("profile-other-schema-version", _compare("other_schema_version.yaml"), "schema_version 3",
        "{dir}/profiles/other_schema_version.yaml: hardware profile schema_version 3 is not supported; this autotune reads schema_version 1. Collect the profile again with `autotune profile`."),
    Case("profile-missing-keys", _compare("missing_keys.yaml"), "the `device` and `amp` sections deleted",
        "{dir}/profiles/missing_keys.yaml: hardware profile is missing the keys 'device', 'amp'."),
    Case("profile-not-yaml", _compare("not_yaml.yaml"), "a stray closing brace",
        "{dir}/profiles/not_yaml.yaml: not valid YAML: line 2, column 57: expected '<document start>', but found '}'."),
    Case("profile-not-a-mapping", _compare("not_a_mapping.yaml"), "a bare string",
        "{dir}/profiles/not_a_mapping.yaml: a hardware profile must be a mapping, got str."),
    Case("profile-unknown-key", _compare("unknown_key.yaml"), "a hand-added key `owner`",
        "{dir}/profiles/unknown_key.yaml: unknown key 'owner' in hardware profile; allowed keys: schema_version, created, host, nvml, gpus, software, device, amp, measured, fingerprint, tuned."),
    Case("profile-amp-without-reason", _compare("amp_without_reason.yaml"), "`amp.fp16` lost its `reason`",
        "{dir}/profiles/amp_without_reason.yaml: amp.fp16 must be a mapping with a 'reason'."),
    Case("profile-missing", _compare("no_such_profile.yaml"), "the profile file does not exist",
        "{dir}/profiles/no_such_profile.yaml: no such file."),
    Case("compare-one-profile", ("compare", "{dir}/profiles/valid.yaml"), "only one profile to compare",
        "compare needs at least 2 hardware profiles, but got 1 ({dir}/profiles/valid.yaml)."),
    # --- arguments ------------------------------------------------------------------
    Case("arg-trials-zero", _run("{tiny}", "--trials", "0"), "`--trials 0`",
        "argument --trials: must be >= 1, but got 0", status=2),
    Case("arg-memory-limit-bad-unit", _run("{tiny}", "--memory-limit", "3GX"), "`--memory-limit 3GX`, an unknown unit",
        "argument --memory-limit: Cannot read the size '3GX': write a number and a unit such as 512MiB, 3GiB or 2GB (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000).", status=2),
    Case("arg-headroom-too-big", _run("{tiny}", "--headroom", "1.5"), "`--headroom 1.5`",
        "argument --headroom: must be in [0.0, 0.9), but got 1.5", status=2),
    Case("arg-seed-negative", _run("{tiny}", "--seed", "-1"), "`--seed -1`",
        "argument --seed: must be in [0, 4294967296), but got -1", status=2),
    Case("arg-nproc-zero", _tuned("valid.yaml") + ("--nproc", "0"), "`--nproc 0`",
        "argument --nproc: must be >= 1, but got 0", status=2),
    Case("arg-target-accuracy-percent", _tuned("valid.yaml") + ("--target-accuracy", "97"), "`--target-accuracy 97`, a percentage",
        "argument --target-accuracy: must be in (0.0, 1.0), but got 97.0", status=2),
    Case("arg-export-unknown-target", ("export", "{dir}/tuned/valid.yaml", "--to", "onnx"), "`--to onnx`",
        "argument --to: invalid choice: 'onnx' (choose from 'lightning', 'hf', 'accelerate', 'deepspeed', 'json')", status=2),
    Case("arg-compare-unknown-format", _compare("valid.yaml") + ("--format", "html"), "`--format html`",
        "argument --format: invalid choice: 'html' (choose from 'text', 'markdown', 'json')", status=2),
    Case("report-no-report-json", ("report", "{dir}/models"), "`report` on a folder without report.json",
        "{dir}/models/report.json: no such file."),
    Case("report-missing-folder", ("report", "{tmp}/no_such_run"), "`report` on a folder that does not exist",
        "{tmp}/no_such_run: no such run directory."),
    Case("export-missing-file", ("export", "{tmp}/tuned.yaml", "--to", "hf"), "`export` of a file that does not exist",
        "{tmp}/tuned.yaml: no such file."),
    Case("profile-out-is-a-folder", ("profile", "--no-bench", "--out", "{tmp}"), "`profile --out` names a folder",
        "--out {tmp} is a folder; it must name the YAML file to write."),
    Case("profile-out-under-a-file", ("profile", "--no-bench", "--out", "{dir}/models/not_python.txt/profile.yaml"), "`profile --out` inside a path that is a file",
        "--out {dir}/models/not_python.txt/profile.yaml cannot be written: {dir}/models/not_python.txt is a file, not a folder."),
]


def _fill(text: str, tmp: Path) -> str:
    for name, value in (("{dir}", BAD), ("{tmp}", tmp), ("{tiny}", TINY)):
        text = text.replace(name, str(value))
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_message(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [_fill(a, tmp_path) for a in case.argv]
    if case.status == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        status = info.value.code
    else:
        status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if re.match(r"autotune( \w+)?: error: ", line)]
    assert lines == [_fill(case.line, tmp_path)], err
    assert status == case.status, err
    assert "Traceback" not in err


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def readme_table() -> str:
    """The README's table of cases, one row per case, from ``CASES``."""
    rows = ["| case | input | what is wrong | the message |", "| --- | --- | --- | --- |"]
    for c in CASES:
        rows.append(f"| {c.id} | `{_cell(c.input)}` | {_cell(c.wrong)} | {_cell(c.line)} |")
    return "\n".join(rows) + "\n"


def test_readme_lists_every_case() -> None:
    text = README.read_text()
    assert readme_table() in text, "tests/bad_inputs/README.md is out of date: run python tests/test_bad_inputs.py"


def _write_readme() -> None:
    """Replace the table in README.md with ``readme_table()``."""
    head, _, rest = README.read_text().partition("| case | input |")
    tail = rest.split("\n\n", 1)[1] if "\n\n" in rest else ""
    README.write_text(head + readme_table() + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    _write_readme()
