"""Index the real all-MiniLM-L6-v2 weights and check them against an independent reader."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from weightidx import index_checkpoint

pytestmark = pytest.mark.real_model


def test_minilm_index_matches_safetensors_reader(minilm: Path, tmp_path: Path) -> None:
    out = tmp_path / "minilm.parquet"
    summary = index_checkpoint(minilm, out)
    rows = {row["key"]: row for row in pq.read_table(out).to_pylist()}
    with safe_open(minilm, framework="numpy") as reference:
        keys = list(reference.keys())
        assert summary.tensors == len(rows) == len(keys) == 104
        assert summary.parameters == sum(reference.get_tensor(k).size for k in keys) == 22_713_728
        for key in [
            "embeddings.word_embeddings.weight",
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.5.output.LayerNorm.weight",
            "embeddings.position_ids",  # I64
        ]:
            values = reference.get_tensor(key)
            row = rows[key]
            wide = values.astype(np.float64)
            assert row["crc32"] == f"{zlib.crc32(values.tobytes()):08x}", key
            assert list(row["shape"]) == list(values.shape)
            assert row["mean"] == pytest.approx(wide.mean(), rel=1e-4, abs=1e-7), key
            assert row["std"] == pytest.approx(wide.std(), rel=1e-5), key
            assert (row["min"], row["max"]) == (wide.min(), wide.max()), key
            assert row["sum_x4"] == pytest.approx(float((wide**4).sum()), rel=1e-5), key
            assert row["zeros"] == int((values == 0).sum()), key
