"""weightidx search and weightidx sql through the CLI: ranking of generated families, pinned output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import derive
from tests.helpers.tensors import write_tensors
from weightidx import index_checkpoint
from weightidx.cli import app
from weightidx.sql.catalog import search_catalog
from weightidx.sql.runner import queries_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """A base model, two fine-tunes of it, a renamed cast copy and an unrelated model, indexed."""
    folder = tmp_path_factory.mktemp("family")
    catalog = folder / "catalog"
    catalog.mkdir()
    base = derive.toy_transformer(70)
    models = {
        "base": base,
        "tune_light": derive.finetune(base, 0.1, seed=1).tensors,
        "tune_heavy": derive.finetune(base, 0.4, seed=2).tensors,
        "stranger": derive.toy_transformer(71),
    }
    paths = {}
    for name, tensors in models.items():
        checkpoint = write_tensors(folder / f"{name}.safetensors", tensors)
        target = folder / "query.parquet" if name == "base" else catalog / f"{name}.parquet"
        paths[name] = index_checkpoint(checkpoint, target, name=name).output
    (catalog / "notes.parquet").write_bytes(b"not an index")  # skipped: not a weightidx index
    paths["catalog"] = catalog
    return paths


def test_fine_tunes_rank_first_and_the_stranger_last(family) -> None:
    relatives = search_catalog(family["base"], family["catalog"])
    assert [r.model for r in relatives] == ["tune_light", "tune_heavy", "stranger"]
    light, heavy, stranger = relatives
    assert light.strong_share == heavy.strong_share == 1.0
    assert light.mean_estimate > heavy.mean_estimate > 0.9
    assert stranger.strong_share == 0.0 and stranger.mean_estimate < 0.3


def test_search_cli_prints_a_ranked_table(family) -> None:
    result = runner.invoke(
        app, ["search", str(family["base"]), "--catalog", str(family["catalog"]), "--top", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["model", "strong", "matrices", "mean", "estimate", "identical", "index"]
    assert [line.split()[0] for line in lines[1:]] == ["tune_light", "tune_heavy"]


def test_search_of_an_empty_folder_says_what_to_do(tmp_path: Path, family) -> None:
    result = runner.invoke(app, ["search", str(family["base"]), "--catalog", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {tmp_path}: no weightidx indexes (*.parquet) here; build them with `weightidx index`\n"
    )


def test_sql_cli_formats_and_errors(family) -> None:
    index = str(family["base"])
    result = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM t", index, "--format", "json"])
    assert (result.exit_code, json.loads(result.output)) == (
        0,
        [{"n": 38}],
    )  # 1 embedding + 3 layers x 12 + head
    result = runner.invoke(app, ["sql", "SELECT * FORM t", index])
    assert (result.exit_code, result.output) == (
        2,
        'Error: Parser Error: syntax error at or near "t" (line 1, column 15)\n',
    )
    result = runner.invoke(app, ["sql", "DROP TABLE t", index])
    assert result.exit_code == 2
    assert (
        result.output
        == "Error: only SELECT queries are allowed: this is a DROP statement, which could change files\n"
    )
    result = runner.invoke(
        app,
        [
            "sql",
            index,
            "-f",
            str(queries_folder() / "largest_tensors.sql"),
            "-p",
            "limit=1",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0 and len(result.output.splitlines()) == 2
    result = runner.invoke(app, ["sql", "SELECT 1"])
    assert (
        result.output == "Error: name at least one index file after the SQL (or use --file FILE INDEX...)\n"
    )
