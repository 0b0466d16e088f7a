"""Docstrings and comments under autotune/ say what a thing does and why; the evidence
(when it was measured, at which commit, in which run) lives in benchmarks/ and in commit
messages, where it can be dated without going stale in the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"
HISTORY = {
    "a date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
    "a commit id": re.compile(r"\b(?:at|commit|since)\s+[0-9a-f]{7,40}\b"),
    "a session or run name": re.compile(r"\b(?:in|at|and|of|run)\s+s\d{1,2}\b|\bsession\s+\d+\b"),
    "a benchmark result file": re.compile(r"benchmarks/results/"),
    "the development machine": re.compile(r"\bdevelopment (?:VM|machine|host)\b"),
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("kind", sorted(HISTORY))
def test_no_module_under_autotune_carries_history(kind):
    found = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
             for path in _sources()
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if HISTORY[kind].search(line)]
    assert not found, f"{kind} in the package's code or docs:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    samples = {
        "a date": "measured 2026-12-02 on the VM",
        "a commit id": "as it was at f3e588f",
        "a session or run name": "ranked fifth in s13",
        "a benchmark result file": "see benchmarks/results/race.json",
        "the development machine": "on the development VM",
    }
    for kind, text in samples.items():
        assert HISTORY[kind].search(text), kind
    assert not any(p.search("for (s0, l0), (s1, l1) in zip(curve, curve[1:])") for p in HISTORY.values())
    assert len(_sources()) > 50
