"""Checks shared by the resume tests: two run folders hold the same final run."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def assert_same_final_run(a: Path, b: Path) -> None:
    """``a`` and ``b`` (run folders) end with the same weights, bit for bit, and the same
    train and validation losses: on the CPU with one thread, a resumed run is identical."""
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((d / "report.json").read_text())["final"] for d in (a, b))
    assert [r["train_loss"] for r in ra["history"]] == [r["train_loss"] for r in rb["history"]]
    assert ra["val_loss"] == rb["val_loss"]
