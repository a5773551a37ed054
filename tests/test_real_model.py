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
from tests.helpers import real_models
from tests.helpers.mapping import assert_mapping, compare, predicted
from tests.helpers.verdicts import check_verdict
from weightidx import index_checkpoint, policy
from weightidx.compare.engine import compare_paths
from weightidx.compare.gather import expand

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
    return real_models.load(minilm)


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
@pytest.mark.parametrize("seed", range(20))
def test_minilm_against_independently_initialised_twins_is_unrelated(
    minilm_tensors: dict, tmp_path: Path, seed: int
) -> None:
    """Twins with each tensor's mean and std: no matrix and no norm weight is claimed."""
    rng = np.random.default_rng(seed)
    twin = {
        k: (dtype, (rng.standard_normal(v.shape) * (v.std() or 1) + v.mean()).astype(v.dtype))
        for k, (dtype, v) in minilm_tensors.items()
        if dtype == "F32"
    }
    report = compare(tmp_path, minilm_tensors, twin)
    assert predicted(report) == set()
    assert report["summary"]["scenario"] == "unrelated"


RENAMES = {"encoder.layer.": "blocks.", "attention.self.": "attn.", "intermediate.dense": "mlp.up"}


@pytest.mark.slow
@pytest.mark.parametrize("renamed", [False, True], ids=["names kept", "names changed"])
@pytest.mark.parametrize("level", [0.15, 0.3, 0.5, 0.75, 0.9])
def test_minilm_trained_far_reads_fine_tuned(
    minilm_tensors: dict, tmp_path: Path, level: float, renamed: bool
) -> None:
    """Every tensor moved to a centred correlation of about ``level`` (fp16), as heavy training
    moves it: related at every level, at least 99 % of pairs claimed from 0.3 on; at 0.15, what
    is claimed is right and the text says how far B moved."""
    moved = derive.drift(minilm_tensors, level, seed=1, dtype="F16")
    b, truth = moved.tensors, moved.expected(0.0)
    if renamed:
        names = {}
        for key in b:
            names[key] = key
            for old, new in RENAMES.items():
                names[key] = names[key].replace(old, new)
        b = {names[k]: v for k, v in b.items()}
        truth = {(names[t[0]], t[1], t[2], t[3]) for t in truth}
    report = compare(tmp_path, minilm_tensors, b)
    got = predicted(report)
    assert len(got - truth) <= 0.01 * len(got)  # precision
    assert report["summary"]["scenario"] == "fine_tuned"
    if level >= 0.3:
        assert len(got & truth) >= 0.99 * len(truth)
    else:
        assert report["summary"]["matrices"]["related"] >= 0.9 * report["summary"]["matrices"]["b"]
    low, high = report["summary"]["correlation_range"]
    assert level - 0.1 < low <= high < level + 0.1
    if level < 0.95:
        assert "B was trained further from A" in report["summary"]["verdict"]


@pytest.mark.slow
def test_minilm_against_dinov2_trained_independently_is_unrelated(
    minilm: Path, dinov2_small: Path, tmp_path: Path
) -> None:
    """A real independently trained pair with the same layer shapes (384 and 1536 wide)."""
    report = compare_paths(minilm, dinov2_small, cache=tmp_path)
    check_verdict(report)
    assert report["summary"]["scenario"] == "unrelated" and predicted(report) == set()
    assert report["summary"]["significance"]["tests"] > 10_000
    assert "lineage" not in report  # one width (384): nothing to look across


@pytest.mark.slow
def test_minilm_against_its_real_fine_tune_is_a_light_copy(
    minilm: Path, sre_embedding: Path, tmp_path: Path
) -> None:
    """sre-embedding-model: all-MiniLM-L6-v2 fine-tuned on 636 text pairs."""
    report = compare_paths(minilm, sre_embedding, cache=tmp_path)
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "copied"
    assert summary["matrices"] == {"b": 40, "related": 40, "match": 40, "partial": 0}
    assert (
        summary["changed_values"]["matrices"] > 30 and "lightly trained after the copy" in summary["verdict"]
    )
    assert all(m["a"]["key"] == m["b"]["key"] for m in report["matches"])


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
    summary = report["summary"]
    assert summary["scenario"] == "pruned"
    assert summary["pruned"] == {"hidden": {"kept": 256, "of": 384, "in_order": True}, "per_block": []}
    assert summary["matrices"]["related"] == summary["matrices"]["b"] == 40
    embedding = next(m for m in report["matches"] if m["b"]["key"] == "embeddings.word_embeddings.weight")
    assert np.array_equal(expand(embedding["select"]["cols"]), keep) and embedding["select"]["rows"] is None
    # From the indexes alone, through the sketches: both sides of the 1536-wide MLP, the
    # position (512) and vocabulary rows, the latter two without controls (one tensor each).
    sketched = compare(tmp_path, minilm_tensors, pruned, index_only=True)["lineage"]
    assert sketched["method"] == "index sketches"
    axes = {(x["side"], x["size"]): x for x in sketched["axes"]}
    assert set(axes) == {("input", 1536), ("output", 1536), ("output", 512), ("output", 30522)}
    assert (
        axes["input", 1536]["z_score"] >= policy.LINEAGE_Z
        and axes["output", 1536]["z_score"] >= policy.LINEAGE_Z
    )
    assert (
        all(x["mantel_z"] >= policy.LINEAGE_Z for x in axes.values())
        and "derived from A's" in sketched["verdict"]
    )


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
    assert all(x["z_score"] is None or x["z_score"] < policy.LINEAGE_Z for x in sketched["axes"])
    assert all(x["mantel_z"] < policy.LINEAGE_Z for x in sketched["axes"])
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
    summary = report["summary"]
    assert summary["scenario"] == "pruned" and "4 of 6 heads of 64 in 6 blocks" in summary["verdict"]
    rows = np.concatenate([np.arange(h * 64, (h + 1) * 64) for h in kept])
    for m in report["matches"]:
        if re.search(r"attention\.self\.(query|key|value)\.weight$", m["b"]["key"]):
            assert m["a"]["key"] == m["b"]["key"] and np.array_equal(expand(m["select"]["rows"]), rows)
