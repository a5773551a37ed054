"""Index the real all-MiniLM-L6-v2 weights and check them against an independent reader."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from tests import derive
from tests.test_compare import assert_mapping, compare, predicted
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


@pytest.fixture(scope="module")
def minilm_tensors(minilm: Path) -> dict:
    from safetensors.numpy import load_file

    return {k: ("F32" if v.dtype == np.float32 else "I64", v) for k, v in load_file(minilm).items()}


def _qkv_groups(tensors: dict) -> list[list[str]]:
    layers = sorted({k.split(".")[2] for k in tensors if k.startswith("encoder.layer.")}, key=int)
    return [
        [f"encoder.layer.{i}.attention.self.{p}.weight" for p in ("query", "key", "value")] for i in layers
    ]


VARIANTS = {
    "anonymised": lambda t: derive.anonymise(t, seed=1),
    "bf16": lambda t: derive.cast(t, "BF16"),
    "fp8": lambda t: derive.cast(t, "F8_E4M3"),
    "conv1d_transposed": derive.transpose,
    "fused_qkv": lambda t: derive.fuse(t, _qkv_groups(t), axis=0),
    "split_mlp": lambda t: derive.split(
        t, [k for k in t if k.endswith("intermediate.dense.weight")], parts=2
    ),
    "scaled": lambda t: derive.scale(t, -0.5),
    "fine_tuned": lambda t: derive.finetune(t, 0.3, seed=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_minilm_variants_map_back_to_the_original(minilm_tensors: dict, tmp_path: Path, variant: str) -> None:
    derived = VARIANTS[variant](minilm_tensors)
    report = compare(tmp_path, minilm_tensors, derived.tensors)
    assert_mapping(report, derived.expected())
    assert report["summary"]["scenario"] != "unrelated"


@pytest.mark.slow
def test_minilm_against_a_same_shape_random_model_is_unrelated(minilm_tensors: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    twin = {
        k: (dtype, (rng.standard_normal(v.shape) * (v.std() or 1) + v.mean()).astype(v.dtype))
        for k, (dtype, v) in minilm_tensors.items()
        if dtype == "F32"
    }
    report = compare(tmp_path, minilm_tensors, twin)
    assert predicted(report) == set()
    assert report["summary"]["scenario"] == "unrelated"


@pytest.mark.slow
def test_minilm_pruned_to_a_smaller_width_is_traced_across_the_width_change(
    minilm_tensors: dict, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    keep = np.sort(rng.choice(384, 256, replace=False))
    pruned = {}
    for key, (dtype, values) in minilm_tensors.items():
        for axis, size in enumerate(values.shape):
            if size == 384:
                values = np.take(values, keep, axis=axis)
        pruned[key] = (dtype, np.ascontiguousarray(values))
    report = compare(tmp_path, minilm_tensors, pruned)
    assert report["summary"]["scenario"] == "incompatible"
    axes = {(x["side"], x["size"]): x for x in report["lineage"]["axes"]}
    assert axes["output", 1536]["z_score"] > 5 and axes["input", 1536]["z_score"] > 5
    # the vocabulary (30,522 rows) is too large to read whole: its axis comes from the sketches
    assert axes["output", 30522]["source"] == "index sketches" and axes["output", 30522]["mantel_p"] <= 0.01
    assert "derived from A's" in report["lineage"]["verdict"]
    # From the indexes alone, through the sketches: both sides of the 1536-wide MLP, the
    # position (512) and vocabulary rows, the latter two without controls (one tensor each).
    sketched = compare(tmp_path, minilm_tensors, pruned, index_only=True)["lineage"]
    assert sketched["method"] == "index sketches"
    axes = {(x["side"], x["size"]): x for x in sketched["axes"]}
    assert set(axes) == {("input", 1536), ("output", 1536), ("output", 512), ("output", 30522)}
    assert axes["input", 1536]["z_score"] > 5 and axes["output", 1536]["z_score"] > 5
    assert all(x["mantel_z"] > 5 for x in axes.values()) and "derived from A's" in sketched["verdict"]


@pytest.mark.slow
def test_minilm_against_a_narrower_random_twin_stays_inside_the_null(
    minilm_tensors: dict, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    twin = {}
    for key, (dtype, values) in minilm_tensors.items():
        if dtype == "F32":
            shape = [256 if n == 384 else n for n in values.shape]
            twin[key] = (dtype, (rng.standard_normal(shape) * (values.std() or 1)).astype(np.float32))
    sketched = compare(tmp_path, minilm_tensors, twin, index_only=True)["lineage"]
    assert len(sketched["axes"]) == 4
    assert all(x["z_score"] is None or x["z_score"] < 5 for x in sketched["axes"])
    assert all(x["mantel_z"] < 5 for x in sketched["axes"])
    assert "derived from A's" not in sketched["verdict"]


def _pruned_by_heads(tensors: dict, kept_heads: list[int], seed: int) -> dict:
    """MiniLM's 6 attention heads of 64 cut to the kept ones (rows of query/key/value, columns
    of the attention output), every other 384-wide axis cut to 256 units at random."""
    keep = np.sort(np.random.default_rng(seed).choice(384, 256, replace=False))
    heads = np.concatenate([np.arange(h * 64, (h + 1) * 64) for h in kept_heads])
    out = {}
    for key, (dtype, values) in tensors.items():
        head_axis = None
        if re.search(r"attention\.self\.(query|key|value)\.(weight|bias)$", key):
            head_axis = 0
        elif key.endswith("attention.output.dense.weight"):
            head_axis = 1
        for axis, size in enumerate(values.shape):
            if size == 384:
                values = np.take(values, heads if axis == head_axis else keep, axis=axis)
        out[key] = (dtype, np.ascontiguousarray(values))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "kept"), [(5, [0, 2, 3, 5]), (6, [1, 2, 4, 5])])
def test_minilm_pruned_by_heads_is_traced_head_to_head(
    minilm_tensors: dict, tmp_path: Path, seed: int, kept: list[int]
) -> None:
    report = compare(tmp_path, minilm_tensors, _pruned_by_heads(minilm_tensors, kept, seed))
    heads = next(x for x in report["lineage"]["axes"] if (x["side"], x["size"]) == ("head", 64))
    assert heads["heads"] == [f"{heads['b']}#{h}" for h in kept]
    assert heads["score"] > 0.8 and heads["z_score"] > 5
