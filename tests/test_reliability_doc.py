"""The documents cannot drift from the suite and the code: every test and anchor they name
exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests import markdown

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


def test_every_cited_design_anchor_exists_and_nothing_cites_an_outside_document() -> None:
    """Code, tests and docs cite sections of docs/design.md by anchor, each one a heading;
    and no file cites a contract the repository does not contain."""
    design = (REPO / "docs" / "design.md").read_text()
    anchors = set(markdown.anchors(design))
    files = [
        path
        for pattern in ("src/**/*.py", "tests/*.py", "bench/*.py", "*.md", "docs/*.md", "*.toml")
        for path in REPO.glob(pattern)
    ]
    cited = 0
    for path in files:
        text = path.read_text()
        outside = "SPEC" + " §"  # spelled so that this file does not match itself
        assert outside not in text, f"{path.relative_to(REPO)} cites an outside document"
        for anchor in re.findall(r"design\.md#([a-z0-9-]+)", text):
            cited += 1
            assert anchor in anchors, f"{path.relative_to(REPO)} cites a missing #{anchor}"
    assert cited >= 20
