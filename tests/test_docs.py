"""The documentation site (docs/, mkdocs.yml) says what the code does: every index column, the
sketch constants, the commands, the queries and their output, every page of the nav, every
public name, and a CLI reference that is the current --help of every command.

The strict mkdocs build itself runs in `make docs` (a prerequisite of `make test`), not here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import weightidx
from weightidx.fingerprint.sketch import BLOCK, SAMPLE_CAP, K
from weightidx.index.schema import INDEX_SCHEMA
from weightidx.sql.runner import queries_folder

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
INDEX_PAGE = (DOCS / "concepts" / "index.md").read_text(encoding="utf-8")
SQL_PAGE = (DOCS / "sql.md").read_text(encoding="utf-8")


def _pages() -> dict[str, str]:
    """Every Markdown page under docs/, by its path relative to docs/."""
    return {p.relative_to(DOCS).as_posix(): p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")}


def _nav() -> list[str]:
    """The pages named in mkdocs.yml's nav, in order (read as text: no YAML parser needed)."""
    lines = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines()
    block = []
    for line in lines[lines.index("nav:") + 1 :]:
        if line and not line[0].isspace():
            break
        block.append(line)
    return re.findall(r":\s*(\S+\.md)\s*$", "\n".join(block), flags=re.MULTILINE)


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_index_column_is_documented_in_order() -> None:
    section = INDEX_PAGE[INDEX_PAGE.index("## What the index holds") :]
    section = section[: section.index("\n## ", 5)]
    documented = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \|$", section, flags=re.MULTILINE)
    assert documented == INDEX_SCHEMA.names


def test_sketch_constants_in_the_docs_match_the_code() -> None:
    assert f"With block `B = {BLOCK}` and `K = {K}` projections" in INDEX_PAGE
    assert f"`ceil(rows/{BLOCK}) × {K}` row-block sketch" in INDEX_PAGE
    assert f"at most {SAMPLE_CAP:,} values remain" in INDEX_PAGE


def test_getting_started_commands_are_make_targets() -> None:
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "docs", "bench"):
        assert f"make {target}" in page
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)


def test_queries_named_in_the_docs_exist() -> None:
    text = "\n".join(_pages().values())
    named = set(re.findall(r'run_query\("([a-z_]+)"', text)) | set(
        re.findall(r"queries/([a-z_]+)\.sql", text)
    )
    assert named
    for name in named:
        assert (queries_folder() / f"{name}.sql").is_file(), name


def test_every_query_file_has_a_header_naming_parameters_and_columns() -> None:
    for path in queries_folder().glob("*.sql"):
        text = path.read_text()
        assert text.startswith(f"-- {path.stem}: "), path
        assert "-- Parameters:" in text and "-- Columns:" in text, path


def test_every_query_file_is_in_the_queries_table() -> None:
    table = re.findall(r"^\| `(\w+)` \|", SQL_PAGE[SQL_PAGE.index("## The queries library") :], re.MULTILINE)
    assert sorted(table) == sorted(p.stem for p in queries_folder().glob("*.sql"))


def test_query_outputs_shown_in_the_docs_are_real(tmp_path: Path) -> None:
    """Rebuild the demo indexes and rerun every `$ weightidx sql -f ...` shown on the SQL page."""
    from weightidx import index_checkpoint
    from weightidx.demo import write_demo_pair
    from weightidx.sql.runner import export, run_sql

    paths = write_demo_pair(tmp_path)
    for side, name in (("a", "wan_a"), ("b", "longcat_b")):
        index_checkpoint(paths[side], tmp_path / f"{name}.parquet")
    shown = re.findall(
        r"^\$ weightidx sql -f (queries/\w+\.sql) ([^|\n]+?)( \| head -(\d+))?\n(.*?)(?=^\$|^```)",
        SQL_PAGE,
        flags=re.MULTILINE | re.DOTALL,
    )
    assert len(shown) == 3
    for query, indexes, _, head, expected in shown:
        files = [tmp_path / Path(p).name for p in indexes.split()]
        text = export(run_sql((ROOT / query).read_text(), files), "table")
        lines = text.splitlines()[: int(head)] if head else text.splitlines()
        assert lines == expected.rstrip("\n").splitlines(), query


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    nav = _nav()
    assert "index.md" in nav and "cli.md" in nav and "api.md" in nav and "changelog.md" in nav
    for page in nav:
        assert (DOCS / page).is_file(), page
    assert sorted(nav) == sorted(_pages()), "a page under docs/ is missing from the nav, or listed twice"


#: Files the site serves from outside docs/ (docs/hooks.py adds them), by their place in the site.
OUTSIDE = {"img/demo_report.png": ROOT / "tests" / "data" / "demo_report.png"}


def test_relative_links_between_pages_resolve() -> None:
    for name, text in _pages().items():
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
            resolved = ((DOCS / name).parent / target).resolve()
            site_path = resolved.relative_to(DOCS.resolve()).as_posix()
            assert resolved.is_file() or OUTSIDE.get(site_path, DOCS / "missing").is_file(), (name, target)


def test_changelog_is_included_in_the_site() -> None:
    assert (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").startswith("# Changelog\n")
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text(encoding="utf-8")


def test_no_development_history_outside_the_changelog() -> None:
    for name, text in {"README.md": (ROOT / "README.md").read_text(encoding="utf-8"), **_pages()}.items():
        assert not re.search(r"\bsessions?\b", text, flags=re.IGNORECASE), name


def test_api_page_documents_every_public_name() -> None:
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    assert re.search(r"^::: weightidx$", page, flags=re.MULTILINE)
    for name in weightidx.__all__:
        if name != "__version__":
            assert f"::: {weightidx._EXPORTS[name]}.{name}\n" in page, name


def test_cli_page_is_the_current_help_of_every_command() -> None:
    """docs/cli.md is what docs/gen_cli.py renders now: regenerate it with `make docs`."""
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == _gen_cli().render(), "docs/cli.md is stale: run `make docs` and commit it"


def test_cli_page_names_every_command_and_option() -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = list(_gen_cli().commands())
    paths = [path for path, _, _ in commands]
    assert {
        "weightidx index",
        "weightidx compare",
        "weightidx lora convert",
        "weightidx lora mapping",
    } <= set(paths)
    for path, command, context in commands:
        heading = f"\n## `{path}`\n"
        assert heading in page, path
        section = page[page.index(heading) + len(heading) :]
        section = section[: section.index("\n## ")] if "\n## " in section else section
        for param in command.get_params(context):  # the help option included
            for option in [*param.opts, *param.secondary_opts]:
                if option.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), (path, option)


@pytest.mark.parametrize("command", ["index", "compare", "sql", "search", "report", "demo", "lora"])
def test_every_top_level_command_has_a_section(command: str) -> None:
    assert f"\n## `weightidx {command}`\n" in (DOCS / "cli.md").read_text(encoding="utf-8")
