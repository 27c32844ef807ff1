"""Every table row in the README and docs/ renders as part of a table: a row indented
differently from its table's header (a table inside a list item) falls out of it and shows
as a paragraph of pipes, which happened to docs/benchmarks.md's CI table."""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def stray_rows(text: str) -> list[str]:
    """Lines that start with ``|`` (after indentation) outside any table or code block,
    as GitHub's parser (CommonMark with GFM tables) reads the page."""
    covered: set[int] = set()
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.map and token.type in ("table_open", "fence", "code_block", "html_block"):
            covered.update(range(*token.map))
    return [f"line {n + 1}: {line.strip()[:70]}"
            for n, line in enumerate(text.splitlines())
            if line.lstrip().startswith("|") and n not in covered]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_row_renders_in_its_table(page):
    assert stray_rows(page.read_text()) == []


def test_a_row_indented_unlike_its_table_is_found():
    table = "- a list item:\n\n  | a | b |\n  |---|---|\n  | 1 | 2 |\n| 3 | 4 |\n"
    assert stray_rows(table) == ["line 6: | 3 | 4 |"]
    assert stray_rows(table.replace("\n| 3", "\n  | 3")) == []
