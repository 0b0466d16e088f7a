"""The README is a manual of at most 250 lines whose depth is in docs/: every page there is
linked from it, every relative link in either resolves, and the docs' prose names no
commit ids or benchmark run names (figures name their command, machine and date)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
COMMIT = re.compile(r"(?<![-\w/.])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![-\w])")
RUN_NAME = re.compile(r"\bs\d{1,2}[a-c]?\b")


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target).resolve() for target in LINK.findall(README.read_text())}
    assert DOCS and [p for p in DOCS if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = [t for t in LINK.findall(page.read_text())
               if not t.startswith(("http://", "https://")) and not (page.parent / t).exists()]
    assert missing == []


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_no_commit_ids_or_run_names_in_prose(page):
    text = page.read_text()
    found = COMMIT.findall(text) + RUN_NAME.findall(text)
    assert found == [], f"{page.name}: {found}"


def test_the_patterns_catch_what_they_are_for():
    assert COMMIT.findall("at 17ed654 it took") == ["17ed654"]
    assert COMMIT.findall("profile cpu-amd-epyc-2c-24gib-a972690e and decade 1234567") == []
    assert RUN_NAME.findall("search_vs_grid s16 and s7b") == ["s16", "s7b"]
