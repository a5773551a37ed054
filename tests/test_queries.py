"""Every file in queries/ runs on real indexes and gives a known answer; ad-hoc SQL is read-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tensors import trained_like, write_tensors
from weightidx import index_checkpoint, open_checkpoint
from weightidx.errors import SqlError, WeightidxError
from weightidx.sql.runner import export, queries_folder, run_query, run_sql


@pytest.fixture(scope="module")
def indexes(demo_pair, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("indexes")
    return {side: index_checkpoint(demo_pair[side], folder / f"{side}.parquet").output for side in "ab"}


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    """An index with a NaN tensor, an all-zero tensor and two blocks of known spread."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    bad = np.ones((4, 4), dtype=np.float32)
    bad[0, 0] = np.nan
    tensors = {
        "layers.0.w": ("F32", trained_like(rng, 64, 64) * 1.0),
        "layers.1.w": ("F32", trained_like(rng, 64, 64) * 3.0),
        "bad": ("F32", bad),
        "empty_bias": ("F32", np.zeros(8, dtype=np.float32)),
    }
    path = write_tensors(folder / "odd.safetensors", tensors)
    return index_checkpoint(path, folder / "odd.parquet").output


def test_every_query_file_is_tested_here() -> None:
    tested = {
        "candidate_groups",
        "shape_table",
        "dtype_summary",
        "shape_histogram",
        "largest_tensors",
        "shared_tensors",
        "block_std_profile",
        "sketch_candidates",
        "nonfinite_or_zero",
        "search_relatives",
    }
    assert {p.stem for p in queries_folder().glob("*.sql")} == tested


def test_shape_table_counts_shapes_on_both_sides(indexes, demo_pair) -> None:
    rows = run_query("shape_table", [indexes["a"], indexes["b"]]).fetchall()
    counts = {tuple(shape): (a, b) for shape, a, b in rows}
    assert sum(a for a, _ in counts.values()) == len(open_checkpoint(demo_pair["a"]).tensors)
    assert counts[(256, 128)] == (0, 4)  # fused cross-attention kv per block + final adaLN, only in B
    assert counts[(128, 128)][0] == 3 * 8 + 2  # q,k,v,o of both attentions per block, + 2 embeddings


def test_dtype_summary_adds_up(indexes, demo_pair) -> None:
    rows = run_query("dtype_summary", [indexes["b"]]).fetchall()
    tensors = open_checkpoint(demo_pair["b"]).tensors
    assert {dtype for dtype, *_ in rows} == {"BF16", "F32", "F16"}
    assert sum(r[1] for r in rows) == len(tensors)
    assert sum(r[3] for r in rows) == sum(t.nbytes for t in tensors)


def test_shape_histogram_and_largest_tensors(indexes) -> None:
    histogram = run_query("shape_histogram", [indexes["a"]]).fetchall()
    assert histogram[0][:2] == ([128, 128], 26)
    largest = run_query("largest_tensors", [indexes["a"]], limit=2).fetchall()
    assert [row[0] for row in largest] == ["time_projection.1.weight", "blocks.0.ffn.0.weight"]


def test_shared_tensors_finds_the_byte_identical_copies(indexes) -> None:
    rows = run_query("shared_tensors", [indexes["a"], indexes["b"]]).fetchall()
    holders = {tuple(row[4]) for row in rows}
    assert ("longcat_b:t_block.1.weight", "wan_a:time_projection.1.weight") in holders
    assert all(row[3] == 2 for row in rows)
    assert not any("qkv" in h for row in holders for h in row)  # fused tensors are not byte copies


def test_block_std_profile_sees_the_scaled_block(odd) -> None:
    rows = run_query("block_std_profile", [odd]).fetchall()
    assert [r[0] for r in rows] == [0, 1]
    assert rows[1][2] == pytest.approx(3 * rows[0][2], rel=0.05)


def test_sketch_candidates_ranks_copies_first(indexes) -> None:
    rows = run_query("sketch_candidates", [indexes["a"], indexes["b"]], limit=10).fetchall()
    assert all(row[3] > 0.99 for row in rows)
    assert ("blocks.0.cross_attn.q.weight", "blocks.0.cross_attn.q_linear.weight") in {r[:2] for r in rows}


def test_nonfinite_or_zero(odd) -> None:
    rows = run_query("nonfinite_or_zero", [odd]).fetchall()
    assert [(r[0], r[-1]) for r in rows] == [("bad", "nan/inf"), ("empty_bias", "all zeros")]


def test_write_statements_are_refused(indexes) -> None:
    for statement, kind in [
        ("COPY (SELECT 1) TO 'x.csv'", "COPY"),
        ("ATTACH 'x.db'", "ATTACH"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("INSTALL httpfs", "LOAD"),
        ("SET threads = 1", "SET"),
    ]:
        with pytest.raises(SqlError) as caught:
            run_sql(statement, [indexes["a"]])
        assert str(caught.value) == (
            f"only SELECT queries are allowed: this is a {kind} statement, which could change files"
        )
    with pytest.raises(SqlError, match=r"give exactly one statement \(found 2\)"):
        run_sql("SELECT 1; SELECT 2", [indexes["a"]])


def test_duckdb_errors_are_one_line_with_the_position(indexes) -> None:
    with pytest.raises(SqlError) as caught:
        run_sql("SELECT *\nFORM t", [indexes["a"]])
    assert str(caught.value) == 'Parser Error: syntax error at or near "t" (line 2, column 6)'


def test_views_for_one_two_and_many_indexes(indexes, demo_pair) -> None:
    n_a, n_b = (len(open_checkpoint(demo_pair[side]).tensors) for side in "ab")
    assert run_sql("SELECT count(*) FROM t", [indexes["a"]]).fetchall() == [(n_a,)]
    two = run_sql("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)", [indexes["a"], indexes["b"]])
    assert two.fetchall() == [(n_a, n_b)]
    many = run_sql("SELECT count(*), count(DISTINCT model) FROM catalog", [indexes["a"], indexes["b"]])
    assert many.fetchall() == [(n_a + n_b, 2)]


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_each_output_format(indexes, tmp_path: Path, fmt: str) -> None:
    relation = run_query("largest_tensors", [indexes["a"]], limit=2)
    if fmt == "parquet":
        with pytest.raises(WeightidxError, match="--format parquet needs --out FILE"):
            export(relation, fmt)
        out = tmp_path / "r.parquet"
        assert export(relation, fmt, out) is None
        import pyarrow.parquet as pq

        assert pq.read_table(out).column("key").to_pylist()[0] == "time_projection.1.weight"
        return
    text = export(relation, fmt)
    assert "time_projection.1.weight" in text
    if fmt == "csv":
        assert text.splitlines()[0] == "key,shape,dtype,numel,mb,std,absmax"
    if fmt == "json":
        assert json.loads(text)[0]["shape"] == [768, 128]


def test_unknown_query_name_is_an_error() -> None:
    with pytest.raises(WeightidxError, match="no query named 'nope'"):
        run_query("nope", [])


SECRET = "weightidx-test-secret"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM read_blob('{secret}')",
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_json('{secret}')",
        "SELECT * FROM sniff_csv('{secret}')",
        "SELECT * FROM glob('{folder}/*')",
        "SELECT * FROM read_parquet('{other}')",
        "SELECT * FROM '{other}'",
        "SELECT * FROM 'https://example.invalid/model.parquet'",
        "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
        "EXPLAIN SELECT * FROM read_text('{secret}')",
    ],
    ids=[
        "read_text",
        "read_blob",
        "read_csv",
        "read_json",
        "sniff_csv",
        "glob",
        "read_parquet",
        "from path",
        "url",
        "query()",
        "explain",
    ],
)
def test_sql_reads_only_the_given_indexes(indexes, tmp_path: Path, sql: str) -> None:
    """File-reading table functions, paths, URLs: refused in one line, nothing read, nothing
    installed (the connection runs with external access off and its configuration locked)."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    statement = sql.format(secret=secret, folder=tmp_path, other=indexes["b"])
    with pytest.raises(SqlError) as caught:
        export(run_sql(statement, [indexes["a"]]), "table")
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    assert "reads only the index files it is given" in message or "does not exist" in message


def test_sql_cannot_unlock_its_sandbox(indexes) -> None:
    for statement in ("SET enable_external_access = true", "INSTALL httpfs", "LOAD httpfs"):
        with pytest.raises(SqlError, match="only SELECT queries are allowed"):
            run_sql(statement, [indexes["a"]])
    setting = run_sql("SELECT current_setting('enable_external_access')", [indexes["a"]]).fetchall()
    assert setting == [(False,)]


def test_sql_reads_the_given_index_by_path_too(indexes) -> None:
    """The given files stay readable under any spelling DuckDB accepts (views, or the path)."""
    by_view = run_sql("SELECT count(*) FROM t", [indexes["a"]]).fetchall()
    by_path = run_sql(f"SELECT count(*) FROM '{indexes['a'].resolve()}'", [indexes["a"]]).fetchall()
    assert by_view == by_path and by_view[0][0] > 0


def test_sql_results_still_export_to_files(indexes, tmp_path: Path) -> None:
    relation = run_sql("SELECT key, shape FROM t ORDER BY key LIMIT 3", [indexes["a"]])
    export(relation, "parquet", tmp_path / "out.parquet")
    export(relation, "csv", tmp_path / "out.csv")
    assert (tmp_path / "out.parquet").stat().st_size > 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 4
