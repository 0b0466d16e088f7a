"""The command line's wiring: each subcommand reaches its module and reports errors once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.cli import main
from autotune.hardware import load_profile

ROOT = Path(__file__).resolve().parents[1]
CPU_PROFILE = ROOT / "profiles" / "cpu-amd-epyc-2c-24gib-a972690e.yaml"
H100_FIXTURE = ROOT / "tests" / "fixtures" / "fixture_gpu_h100_profile.yaml"


@pytest.mark.parametrize("command", ["run", "train", "profile", "compare"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: autotune {command}" in capsys.readouterr().out


def test_compare_prints_json_with_ratios(capsys):
    assert main(["compare", str(CPU_PROFILE), str(H100_FIXTURE), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["fingerprint"] for p in data["profiles"]] == [
        load_profile(CPU_PROFILE).fingerprint,
        load_profile(H100_FIXTURE).fingerprint,
    ]
    cores = next(r for r in data["specs"] if r["name"] == "logical cores")
    expected = load_profile(H100_FIXTURE).host["logical_cores"] / load_profile(CPU_PROFILE).host["logical_cores"]
    assert cores["ratios"][1] == pytest.approx(expected)


def test_compare_error_is_one_line(capsys, tmp_path):
    assert main(["compare", str(CPU_PROFILE), str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"autotune: error: {tmp_path / 'missing.yaml'}: no such file." in err
    assert "Traceback" not in err


def test_profile_writes_the_yaml_and_prints_the_summary(capsys, tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["profile", "--no-bench", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    profile = load_profile(out)
    assert f"Hardware profile {profile.fingerprint}" in printed
    assert f"wrote {out}" in printed
