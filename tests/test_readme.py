"""The README documents what the code does: every index column, the commands, the queries."""

from __future__ import annotations

import re
from pathlib import Path

from weightidx.fingerprint.sketch import BLOCK, SAMPLE_CAP, K
from weightidx.index.schema import INDEX_SCHEMA
from weightidx.sql.runner import queries_folder

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_index_column_is_documented_in_order() -> None:
    section = README[README.index("## What the index holds") :]
    section = section[: section.index("\n## ", 5)]
    documented = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \|$", section, flags=re.MULTILINE)
    assert documented == INDEX_SCHEMA.names


def test_sketch_constants_in_the_readme_match_the_code() -> None:
    assert f"With block `B = {BLOCK}` and `K = {K}` projections" in README
    assert f"`ceil(rows/{BLOCK}) × {K}` row-block sketch" in README
    assert f"at most {SAMPLE_CAP:,} values remain" in README


def test_quick_start_commands_are_make_targets() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for target in ("demo", "test", "bench"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)


def test_queries_named_in_the_readme_exist() -> None:
    named = set(re.findall(r'run_query\("([a-z_]+)"', README)) | set(
        re.findall(r"queries/([a-z_]+)\.sql", README)
    )
    assert named
    for name in named:
        assert (queries_folder() / f"{name}.sql").is_file(), name


def test_every_query_file_has_a_header_naming_parameters_and_columns() -> None:
    for path in queries_folder().glob("*.sql"):
        text = path.read_text()
        assert text.startswith(f"-- {path.stem}: "), path
        assert "-- Parameters:" in text and "-- Columns:" in text, path


def test_query_outputs_shown_in_the_readme_are_real(tmp_path: Path) -> None:
    """Rebuild the demo indexes and rerun every `$ weightidx sql -f ...` shown in the README."""
    from weightidx import index_checkpoint
    from weightidx.demo import write_demo_pair
    from weightidx.sql.runner import export, run_sql

    paths = write_demo_pair(tmp_path)
    for side, name in (("a", "wan_a"), ("b", "longcat_b")):
        index_checkpoint(paths[side], tmp_path / f"{name}.parquet")
    shown = re.findall(
        r"^\$ weightidx sql -f (queries/\w+\.sql) ([^|\n]+?)( \| head -(\d+))?\n(.*?)(?=^\$|^```)",
        README,
        flags=re.MULTILINE | re.DOTALL,
    )
    assert len(shown) == 3
    root = Path(__file__).resolve().parents[1]
    for query, indexes, _, head, expected in shown:
        files = [tmp_path / Path(p).name for p in indexes.split()]
        text = export(run_sql((root / query).read_text(), files), "table")
        lines = text.splitlines()[: int(head)] if head else text.splitlines()
        assert lines == expected.rstrip("\n").splitlines(), query
