"""The README is a two-minute read that says true things: at most 8 KB, the make targets it
names exist, its links lead to pages that exist, and the queries it names are in queries/.
What it used to hold (index columns, sketch constants, query outputs) is checked where it now
lives, on the docs pages (tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

from weightidx.sql.runner import queries_folder

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_at_most_8_kb() -> None:
    assert len(README.encode("utf-8")) <= 8192


def test_quick_start_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "docs", "bench"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)


def test_readme_shows_index_and_compare() -> None:
    assert re.search(r"^weightidx index ", README, flags=re.MULTILINE)
    assert re.search(r"^weightidx compare ", README, flags=re.MULTILINE)


def test_readme_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", README)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), link


def test_queries_named_in_the_readme_exist() -> None:
    named = set(re.findall(r'run_query\("([a-z_]+)"', README)) | set(
        re.findall(r"queries/([a-z_]+)\.sql", README)
    )
    for name in named:
        assert (queries_folder() / f"{name}.sql").is_file(), name
