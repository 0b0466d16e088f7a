"""Helpers shared by the search-space tests."""

from __future__ import annotations

import re

from autotune.search.space import SearchSpace, parse_space

SRC = "space.yaml"
_OK_PARAMS = {"micro_batch_size": {"choices": [16, 32]}}


def _whole(message: str) -> str:
    """A pattern that matches exactly ``message``."""
    return f"^{re.escape(message)}$"


def _space(params: dict, **top) -> SearchSpace:
    return parse_space({"name": "t", "params": params, **top}, source=SRC)
