"""The README and docs/ as GitHub reads them (CommonMark with GFM tables): every table row
renders in its table (a row indented unlike its table's header, in a list item, fell out of
docs/benchmarks.md's CI table and showed as a paragraph of pipes), and every relative link
names a file that exists and, with ``#``, a heading or ``<a id>`` of that page."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSER = MarkdownIt("commonmark").enable("table")


def stray_rows(text: str) -> list[str]:
    """Lines that start with ``|`` (after indentation) outside any table or code block,
    as GitHub's parser (CommonMark with GFM tables) reads the page."""
    covered: set[int] = set()
    for token in PARSER.parse(text):
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


def anchors(text: str) -> set[str]:
    """The fragments a page answers: GitHub's heading slugs (lower case, punctuation but
    ``-`` and ``_`` dropped, spaces to ``-``, ``-1``, ``-2`` on repeats) and ``<a id>``s."""
    found, seen = set(re.findall(r'<a (?:id|name)="([^"]+)"', text)), {}
    tokens = PARSER.parse(text)
    for heading, inline in zip(tokens, tokens[1:]):
        if heading.type == "heading_open":
            words = "".join(c.content for c in inline.children or ()
                            if c.type in ("text", "code_inline"))
            slug = re.sub(r"[^\w\- ]", "", words.strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


@functools.lru_cache(maxsize=None)
def page_anchors(page: Path) -> set[str]:
    return anchors(page.read_text())


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or fragment is missing."""
    broken = []
    for token in PARSER.parse(page.read_text()):
        for child in token.children or ():
            href = str(child.attrs.get("href", "")) if child.type == "link_open" else ""
            if not href or re.match(r"^[a-z][a-z0-9+.-]*:", href):    # none, or a URL
                continue
            name, _, fragment = href.partition("#")
            target = (page.parent / name) if name else page
            if not target.exists():
                broken.append(f"{href}: no such file")
            elif fragment and target.suffix == ".md" and fragment not in page_anchors(target):
                broken.append(f"{href}: no heading or <a id> {fragment!r} there")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_finds_its_file_and_anchor(page):
    assert broken_links(page) == []


def test_a_link_to_a_missing_anchor_or_file_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `code` title\n\n## Twice\n\n## Twice\n\n<a id=\"here\"></a>x\n\n"
                    "[a](#a-code-title) [b](#twice-1) [c](#here) [d](#twice-2) "
                    "[e](gone.md) [f](https://example.invalid/x#y)\n")
    assert broken_links(page) == [
        "#twice-2: no heading or <a id> 'twice-2' there",
        "gone.md: no such file"]
