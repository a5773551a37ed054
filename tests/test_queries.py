"""Every file in queries/ runs on real indexes and gives a known answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightidx import index_checkpoint, open_checkpoint
from weightidx.errors import WeightidxError
from weightidx.sql import run_query


@pytest.fixture(scope="module")
def indexes(demo_pair, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("indexes")
    return {side: index_checkpoint(demo_pair[side], folder / f"{side}.parquet").output for side in "ab"}


def test_shape_table_counts_shapes_on_both_sides(indexes, demo_pair) -> None:
    rows = run_query("shape_table", a=str(indexes["a"]), b=str(indexes["b"])).fetchall()
    counts = {tuple(shape): (a, b) for shape, a, b in rows}
    a_tensors = open_checkpoint(demo_pair["a"]).tensors
    assert sum(a for a, _ in counts.values()) == len(a_tensors)
    assert counts[(256, 128)] == (0, 4)  # fused cross-attention kv per block + final adaLN, only in B
    assert counts[(128, 128)][0] == 3 * 8 + 2  # q,k,v,o of both attentions per block, + 2 embeddings


def test_dtype_summary_adds_up(indexes, demo_pair) -> None:
    rows = run_query("dtype_summary", index=str(indexes["b"])).fetchall()
    tensors = open_checkpoint(demo_pair["b"]).tensors
    assert {dtype for dtype, *_ in rows} == {"BF16", "F32", "F16"}
    assert sum(r[1] for r in rows) == len(tensors)
    assert sum(r[3] for r in rows) == sum(t.nbytes for t in tensors)


def test_unknown_query_name_is_an_error() -> None:
    with pytest.raises(WeightidxError, match="no query named 'nope'"):
        run_query("nope")


def test_run_query_returns_a_relation_that_prints(indexes) -> None:
    relation = run_query("dtype_summary", index=str(indexes["a"]))
    assert relation.columns == ["dtype", "tensors", "parameters", "bytes"]
    assert "BF16" in str(relation)
