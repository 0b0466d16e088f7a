"""autotune compare: the committed CPU profile against GPU test fixtures.

The GPU profiles under tests/fixtures/ are made up (see their header comments); expected
ratios are computed here from the YAML values, not copied from the output.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune.machines.compare import TUNED_KNOBS, compare, compare_command
from autotune.machines.compare_render import render_json, render_markdown, render_text
from autotune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "tests" / "fixtures" / "fixture_cpu_profile.yaml"
FIXTURES = Path(__file__).parent / "fixtures"
H100 = FIXTURES / "fixture_gpu_h100_profile.yaml"
A100 = FIXTURES / "fixture_gpu_a100_profile.yaml"
GIB = 1024**3
KNOBS = ("micro_batch_size", "accumulation_steps", "amp", "checkpointing", "num_workers", "lr")

SPEC_NAMES = [
    "device", "CPU model", "logical cores", "physical cores", "host memory", "GPUs", "GPU memory",
    "SM count", "compute capability", "max SM clock", "max memory clock", "power limit", "PCIe",
    "NVIDIA driver", "CUDA (driver)", "CUDA (torch build)", "torch", "Python", "bf16 allowed",
    "fp16 allowed",
]

# What digits_cnn tuned to on the CPU (the example in autotune/machines/results.py's docstring).
CPU_DIGITS_ENTRY = {
    "model": "digits_cnn",
    "model_sha256": "08c9b39b1d270307d28b1eb72832c05d401d94be2dbe552b679c9dfcc5ab9396",
    "created": "2026-11-21T10:00:00+00:00",
    "search_space": "default",
    "device": "cpu",
    "best": {
        "config": {
            "micro_batch_size": 256, "accumulation_steps": 1, "num_workers": 0, "pin_memory": False,
            "persistent_workers": False, "amp": "bf16", "checkpointing": False, "lr_rule": "sqrt",
            "base_lr": 0.002, "base_batch_size": 32, "lr": 0.005656854249492381, "warmup": 0.05,
            "epochs": 20, "weight_decay": 0.0001, "grad_clip": 1.0, "seed": 0,
        },
        "throughput_samples_per_s": 11783.4,
        "default_throughput_samples_per_s": 5826.5,
        "speedup_vs_default": 2.02,
        "peak_memory_bytes": 404717568,
    },
    "top": [],
}


def raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def rows_by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows}


def line_of(text: str, name: str) -> str:
    """The one table line whose row name is ``name``."""
    found = [line for line in text.splitlines() if re.match(rf"  {re.escape(name)}(  |$)", line)]
    assert len(found) == 1, (name, found)
    return found[0]


def md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row (escaped pipes stay inside a cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


@pytest.fixture
def cpu_tuned(tmp_path: Path) -> Path:
    """A copy of the committed CPU profile with a tuned entry for digits_cnn."""
    data = raw(CPU)
    data["tuned"] = [CPU_DIGITS_ENTRY]
    path = tmp_path / CPU.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------ two profiles


def test_cpu_and_h100_specs_with_ratios_to_the_cpu() -> None:
    cpu, gpu = raw(CPU), raw(H100)
    data = compare([CPU, H100])
    assert [p["label"] for p in data["profiles"]] == [
        f"{cpu['fingerprint']} ({CPU.name})",
        f"{gpu['fingerprint']} ({H100.name})",
    ]
    specs = rows_by_key(data["specs"])
    assert specs["device"]["values"] == ["cpu", "cuda"]
    assert specs["sm_count"]["values"] == [None, 132]
    assert specs["compute_capability"]["values"] == [None, "9.0"]
    assert specs["compute_capability"]["ratios"] is None  # a text row
    assert specs["sm_count"]["ratios"] == [None, None]  # the CPU has no SMs to divide by
    for key in ("logical_cores", "physical_cores", "memory_total_bytes"):
        assert specs[key]["ratios"] == pytest.approx([1.0, gpu["host"][key] / cpu["host"][key]])

    text = render_text(data)
    for name in SPEC_NAMES:
        line_of(text, name)
    cores = gpu["host"]["logical_cores"] / cpu["host"]["logical_cores"]
    assert line_of(text, "logical cores").split() == [
        "logical", "cores", str(cpu["host"]["logical_cores"]),
        str(gpu["host"]["logical_cores"]), f"({cores:.2f}x)",
    ]
    memory = gpu["host"]["memory_total_bytes"] / cpu["host"]["memory_total_bytes"]
    assert f"({memory:.2f}x)" in line_of(text, "host memory")
    gpu_memory = f"{gpu['gpus'][0]['memory_total_bytes'] / GIB:.1f} GiB"
    assert line_of(text, "GPU memory").split() == ["GPU", "memory", "-", *gpu_memory.split()]
    assert line_of(text, "SM count").split() == ["SM", "count", "-", "132"]
    assert line_of(text, "compute capability").split()[-2:] == ["-", "9.0"]
    assert line_of(text, "max SM clock").endswith("1980 MHz")
    assert line_of(text, "power limit").endswith("700 W")
    assert line_of(text, "PCIe").endswith("gen 5 x16")
    assert line_of(text, "fp16 allowed").split()[-2:] == ["no", "yes"]


def test_cpu_and_h100_measured_peaks() -> None:
    cpu, gpu = raw(CPU)["measured"], raw(H100)["measured"]
    data = compare([CPU, H100])
    measured = rows_by_key(data["measured"])
    assert set(cpu) | set(gpu) <= set(measured)
    for key in cpu:  # the CPU figures both machines measured
        assert measured[key]["ratios"] == pytest.approx([1.0, gpu[key] / cpu[key]])
    assert measured["cuda_matmul_fp32_tflops"]["values"] == [None, gpu["cuda_matmul_fp32_tflops"]]
    assert measured["cuda_matmul_fp32_tflops"]["ratios"] == [None, None]
    # On the training device: the CPU's peak against the GPU's.
    device_fp32 = gpu["cuda_matmul_fp32_tflops"] / cpu["cpu_matmul_fp32_tflops"]
    assert measured["device_matmul_fp32_tflops"]["ratios"] == pytest.approx([1.0, device_fp32])

    text = render_text(data)
    line = line_of(text, "cpu_matmul_fp32_tflops")
    ratio = gpu["cpu_matmul_fp32_tflops"] / cpu["cpu_matmul_fp32_tflops"]
    assert line.split()[1:] == [
        str(cpu["cpu_matmul_fp32_tflops"]), "TFLOP/s",
        str(gpu["cpu_matmul_fp32_tflops"]), "TFLOP/s", f"({ratio:.2f}x)",
    ]
    assert line_of(text, "cuda_matmul_fp32_tflops").split()[1:] == ["-", "51.2", "TFLOP/s"]
    assert f"({device_fp32:.2f}x)" in line_of(text, "fp32 matmul on the training device")


# ---------------------------------------------------------------- three profiles


def test_three_profiles_three_columns_ratios_to_the_first() -> None:
    data = compare([CPU, H100, A100])
    assert [p["index"] for p in data["profiles"]] == [1, 2, 3]
    for row in data["specs"] + data["measured"]:
        assert len(row["values"]) == 3
        if row["ratios"] is None:
            continue
        first = row["values"][0]
        for value, ratio in zip(row["values"], row["ratios"]):
            if first and value is not None:
                assert ratio == pytest.approx(value / first)
            else:
                assert ratio is None

    cpu, h100, a100 = (raw(p)["host"]["logical_cores"] for p in (CPU, H100, A100))
    text = render_text(data)
    assert re.search(r"^\s+\[1\]\s+\[2\]\s+\[3\]$", text, re.M)
    assert line_of(text, "logical cores").split()[2:] == [
        str(cpu), str(h100), f"({h100 / cpu:.2f}x)", str(a100), f"({a100 / cpu:.2f}x)",
    ]
    assert line_of(text, "compute capability").split()[-3:] == ["-", "9.0", "8.0"]
    assert line_of(text, "SM count").split()[-3:] == ["-", "132", "108"]


def test_ratios_are_to_whichever_profile_comes_first() -> None:
    h100, a100 = raw(H100), raw(A100)
    specs = rows_by_key(compare([H100, A100])["specs"])
    sm = a100["gpus"][0]["sm_count"] / h100["gpus"][0]["sm_count"]
    assert specs["sm_count"]["ratios"] == pytest.approx([1.0, sm])
    text = compare_command([str(H100), str(A100)])
    assert line_of(text, "SM count").split()[2:] == ["132", "108", f"({sm:.2f}x)"]
    copy = [raw(p)["measured"]["cuda_memory_copy_gbps"] for p in (H100, A100)]
    assert line_of(text, "cuda_memory_copy_gbps").split()[1:] == [
        f"{copy[0]:.0f}", "GB/s", f"{copy[1]:.0f}", "GB/s", f"({copy[1] / copy[0]:.2f}x)",
    ]
    seconds = h100["measured"]["bench_seconds"]
    assert line_of(text, "bench_seconds").split()[1:3] == [str(seconds), "s"]


# ----------------------------------------------------------- markdown and JSON


def test_markdown_is_a_table_with_the_same_number_of_cells_per_row(cpu_tuned: Path) -> None:
    out = render_markdown(compare([cpu_tuned, H100, A100]))
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert md_cells(table[0]) == ["", "[1]", "[2]", "[3]"]
    assert md_cells(table[1]) == ["---"] * 4
    assert {len(md_cells(line)) for line in table} == {4}
    # header, separator, 2 section titles, specs, measured keys and 3 device peaks,
    # 2 models of a title, a row per tuned knob and 3 figures each
    measured_rows = len(raw(A100)["measured"]) + 3
    assert len(table) == 2 + 2 + len(SPEC_NAMES) + measured_rows + 2 * (1 + len(TUNED_KNOBS) + 3)
    assert "| **Specs** | | | |" in table
    assert "| **Tuned: digits_cnn (on [1], [2], [3])** | | | |" in table
    assert "| SM count | - | 132 | 108 |" in table
    # A pipe inside a value does not break the table.
    data = compare([CPU, H100])
    data["specs"][1]["values"][0] = "odd | model"
    lines = render_markdown(data).splitlines()
    line = next(x for x in lines if x.startswith("| CPU model"))
    assert md_cells(line) == ["CPU model", "odd \\| model", "Intel(R) Xeon(R) Platinum 8480+"]


def test_json_parses_and_has_the_ratios() -> None:
    cpu, gpu = raw(CPU), raw(H100)
    out = json.loads(compare_command([str(CPU), str(H100)], fmt="json"))
    fingerprints = [p["fingerprint"] for p in out["profiles"]]
    assert fingerprints == [cpu["fingerprint"], gpu["fingerprint"]]
    specs = rows_by_key(out["specs"])
    expected = gpu["host"]["memory_total_bytes"] / cpu["host"]["memory_total_bytes"]
    assert specs["memory_total_bytes"]["values"] == [
        cpu["host"]["memory_total_bytes"], gpu["host"]["memory_total_bytes"],
    ]
    assert specs["memory_total_bytes"]["unit"] == "bytes"
    assert specs["memory_total_bytes"]["ratios"] == pytest.approx([1.0, expected])
    assert specs["sm_count"]["ratios"] == [None, None]
    measured = rows_by_key(out["measured"])
    ratio = gpu["measured"]["cpu_bf16_speedup"] / cpu["measured"]["cpu_bf16_speedup"]
    assert measured["cpu_bf16_speedup"]["ratios"] == pytest.approx([1.0, ratio])
    assert out == json.loads(render_json(compare([CPU, H100])))


# ----------------------------------------------------------------------- tuned


def test_tuned_configs_side_by_side_with_throughput_ratio(cpu_tuned: Path) -> None:
    gpu_best = raw(H100)["tuned"][0]["best"]
    cpu_best = CPU_DIGITS_ENTRY["best"]
    data = compare([cpu_tuned, H100])
    [model] = data["tuned"]
    assert (model["model"], model["tuned_on"], model["only_one"]) == ("digits_cnn", [1, 2], False)
    assert model["same_model_file"] is True
    rows = rows_by_key(model["rows"])
    for knob in KNOBS:
        assert rows[knob]["values"] == [cpu_best["config"][knob], gpu_best["config"][knob]]
    ratio = gpu_best["throughput_samples_per_s"] / cpu_best["throughput_samples_per_s"]
    assert rows["throughput_samples_per_s"]["ratios"] == pytest.approx([1.0, ratio])
    assert rows["speedup_vs_default"]["values"] == [2.02, gpu_best["speedup_vs_default"]]

    text = render_text(data)
    assert "\nTuned: digits_cnn (on [1], [2])\n" in text
    assert line_of(text, "micro_batch_size").split() == ["micro_batch_size", "256", "512"]
    assert line_of(text, "amp").split() == ["amp", "bf16", "bf16"]
    assert line_of(text, "num_workers").split() == ["num_workers", "0", "4"]
    assert line_of(text, "lr").split() == ["lr", "0.005657", "0.008"]
    assert line_of(text, "throughput").split() == [
        "throughput", "11783", "samples/s", "248312", "samples/s", f"({ratio:.2f}x)",
    ]
    assert line_of(text, "peak memory").split() == ["peak", "memory", "0.38", "GiB", "1.2", "GiB"]


def test_compile_reads_as_one_spelling_across_profiles(tmp_path: Path) -> None:
    """A profile written when compile was a yes/no stores ``false``; a later one "off"."""
    paths = []
    for name, value in (("old.yaml", False), ("new.yaml", "off")):
        data = raw(CPU)
        entry = copy.deepcopy(CPU_DIGITS_ENTRY)
        entry["best"]["config"]["compile"] = value
        data["tuned"] = [entry]
        paths.append(tmp_path / name)
        paths[-1].write_text(yaml.safe_dump(data, sort_keys=False))
    [model] = compare(paths)["tuned"]
    assert rows_by_key(model["rows"])["compile"]["values"] == ["off", "off"]


def test_a_model_tuned_on_one_profile_only_is_flagged(cpu_tuned: Path) -> None:
    data = compare([cpu_tuned, H100, A100])
    assert [(m["model"], m["tuned_on"], m["only_one"]) for m in data["tuned"]] == [
        ("digits_cnn", [1, 2, 3], False),
        ("breast_cancer_mlp", [3], True),
    ]
    text = render_text(data)
    assert "\nTuned: breast_cancer_mlp (only on [3]: nothing to compare it with)\n" in text
    # Only the H100 tuned digits_cnn when the CPU copy has no entry.
    [model] = compare([CPU, H100])["tuned"]
    assert (model["tuned_on"], model["only_one"]) == ([2], True)
    assert rows_by_key(model["rows"])["throughput_samples_per_s"]["ratios"] == [None, None]


def test_different_model_files_of_one_name_are_noted(cpu_tuned: Path, tmp_path: Path) -> None:
    data = raw(H100)
    data["tuned"][0]["model_sha256"] = "0" * 64
    other = tmp_path / "h100_other_model.yaml"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    text = compare_command([str(cpu_tuned), str(other)])
    assert "\nTuned: digits_cnn (on [1], [2]; the model files differ (sha256))\n" in text


def test_no_tuned_models_is_said() -> None:
    text = render_text(compare([CPU, CPU]))
    assert text.rstrip().endswith("Tuned: no model was tuned on these machines")


# ----------------------------------------------------------- labels and errors


def test_the_same_file_twice_gets_two_labels() -> None:
    labels = [p["label"] for p in compare([CPU, CPU])["profiles"]]
    base = f"{raw(CPU)['fingerprint']} ({CPU.name})"
    assert labels == [base, f"{base} #2"]
    assert rows_by_key(compare([CPU, CPU])["specs"])["logical_cores"]["ratios"] == [1.0, 1.0]


@pytest.mark.parametrize("paths", [[], [CPU]])
def test_fewer_than_two_profiles_is_an_error(paths: list[Path]) -> None:
    got = str(CPU) if paths else "none"
    message = f"compare needs at least 2 hardware profiles, but got {len(paths)} ({got})."
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as info:
        compare(paths)
    assert "autotune compare profiles/A.yaml profiles/B.yaml" in info.value.hint


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{missing}: no such file.')}$"):
        compare_command([str(CPU), str(missing)])


def test_bad_yaml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: [1\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{bad}: not valid YAML: ')}"):
        compare([CPU, bad])


def test_another_schema_version_names_the_file_and_the_version(tmp_path: Path) -> None:
    data = raw(CPU)
    data["schema_version"] = 0
    old = tmp_path / "old_schema.yaml"
    old.write_text(yaml.safe_dump(data, sort_keys=False))
    message = (
        f"{old}: hardware profile schema_version 0 is not supported; this autotune reads "
        "schema_version 1. Collect the profile again with `autotune profile`."
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        compare_command([str(CPU), str(old)])


def test_a_malformed_tuned_entry_names_the_file(tmp_path: Path) -> None:
    data = raw(CPU)
    data["tuned"] = [{"best": {}}]
    path = tmp_path / "no_model_name.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    message = f"{path}: tuned[0] must be a mapping with a 'model' name, got {{'best': {{}}}}."
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        compare([CPU, path])


def test_an_unknown_format_is_an_error() -> None:
    message = "--format must be one of text, markdown, json, but got 'html'."
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        compare_command([str(CPU), str(H100)], fmt="html")


def test_the_three_formats_show_every_row_with_the_same_cells() -> None:
    paths = [str(CPU), str(H100)]
    data = json.loads(compare_command(paths, "json"))
    text = compare_command(paths).splitlines()
    markdown = compare_command(paths, "markdown").splitlines()
    rows = data["specs"] + data["measured"]
    assert len(rows) > 10
    for row in rows:
        (md,) = [line for line in markdown if line.startswith(f"| {row['name']} |")]
        (tx,) = [line for line in text if line.strip().startswith(row["name"] + "  ")]
        md_cells = [c.strip() for c in md.strip("|").split("|")][1:]
        assert len(md_cells) == len(row["values"]), row["name"]
        for cell, value, ratio in zip(md_cells, row["values"], row["ratios"] or [None] * len(row["values"])):
            # the same cell, word for word, in the text table's line, and its ratio where there is one
            assert cell in tx, (row["name"], cell, tx)
            assert value is not None or cell == "-"
            if ratio is not None and ratio != 1.0:
                assert f"({ratio:.2f}x)" in cell, (row["name"], cell)


# ------------------------------------------------------------- without torch

BLOCKED = """
import sys
sys.modules["torch"] = None  # an import of torch now raises ImportError
sys.modules["optuna"] = None
from autotune.machines.compare import compare_command
print(compare_command(sys.argv[1:]), end="")
"""


def test_compare_runs_without_torch_or_optuna() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(CPU), str(H100)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == compare_command([str(CPU), str(H100)])
