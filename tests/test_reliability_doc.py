"""RELIABILITY.md cannot drift from the suite: every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_test_named_in_reliability_md_exists() -> None:
    text = (REPO / "RELIABILITY.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 20
    for path, name in named:
        tree = ast.parse((REPO / path).read_text())
        functions = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in functions, f"RELIABILITY.md names {path}::{name}, which does not exist"
