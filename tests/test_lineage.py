"""Lineage across a width change: shared-axis Gram comparisons against within-model controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.lineage_models import FFN, INPUTS, model, projected, pruned
from tests.helpers.mapping import checked_phases
from tests.helpers.seed_pair import write_seed_pair
from tests.helpers.tensors import trained_like, write_tensors
from tests.helpers.verdicts import check_verdict
from weightidx import index_checkpoint, policy
from weightidx.compare.engine import compare_paths


def lineage_of(tmp_path: Path, a: dict, b: dict) -> dict:
    pa = write_tensors(tmp_path / "a.safetensors", a)
    pb = write_tensors(tmp_path / "b.safetensors", b)
    calls: list[tuple[str, int, int]] = []
    report = compare_paths(pa, pb, cache=tmp_path / "cache", progress=lambda *call: calls.append(call))
    check_verdict(report)
    assert report["summary"]["scenario"] in ("incompatible", "unrelated")
    lineage_read_values = report.get("lineage", {}).get("method") == "checkpoint values"
    assert ("lineage" in checked_phases(calls)) == lineage_read_values
    return report


def values_lineage(a: Path, b: Path) -> dict:
    """The lineage section from the checkpoint values, whatever else the comparison found (a
    pruned model is mapped tensor by tensor, which leaves no lineage section in its report)."""
    from safetensors.numpy import load_file

    from weightidx.compare.lineage import analyse
    from weightidx.index.cache import cached_index
    from weightidx.index.reader import load_index

    values = {path: load_file(path) for path in (a, b)}
    models = {path: load_index(cached_index(path, a.parent / "cache")) for path in (a, b)}
    by_index = {model.index: values[path] for path, model in models.items()}

    def read(model, key: str) -> np.ndarray:
        array = by_index[model.index][key]
        return array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)

    return analyse(models[a], models[b], read)


@pytest.mark.parametrize("noise", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_width_pruned_derivation_is_mapped_and_stands_far_above_the_controls(
    tmp_path: Path, seed: int, noise: float
) -> None:
    rng = np.random.default_rng(seed)
    a = model(rng, 128, INPUTS)
    b = pruned(a, 96, rng, noise)
    pa, pb = write_tensors(tmp_path / "a.safetensors", a), write_tensors(tmp_path / "b.safetensors", b)
    report = compare_paths(pa, pb, cache=tmp_path / "cache")
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "pruned" and "lineage" not in report
    assert summary["pruned"]["hidden"] == {"kept": 96, "of": 128, "in_order": True}
    assert summary["matrices"]["related"] == summary["matrices"]["b"] == len(b)
    assert summary["verdict"].startswith(
        "b is a pruned: hidden width 128 → 96 (96 of 128 channels kept, in order)"
    )
    report = {"lineage": values_lineage(pa, pb), "summary": {"verdict": ""}}
    axes = report["lineage"]["axes"]
    assert {(x["side"], x["size"]) for x in axes} == {
        ("input", 256),
        ("input", 192),
        ("input", 64),
        ("output", 64),
        ("output", FFN),
    }
    assert all(x["source"] == "checkpoint values" for x in axes)
    assert all(x["z_score"] >= policy.LINEAGE_Z for x in axes if x["size"] != 64 or x["side"] == "input")
    assert next(x for x in axes if x["side"] == "output" and x["size"] == 64)["z_score"] is None  # one head
    assert "derived from A's" in report["lineage"]["verdict"]


@pytest.mark.parametrize("seed", [2, 3])
def test_independent_twins_stay_inside_the_null(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, twin = model(rng, 128, INPUTS), model(rng, 96, INPUTS)
    report = lineage_of(tmp_path, a, twin)
    assert all(x["z_score"] is None or x["z_score"] < policy.LINEAGE_Z for x in report["lineage"]["axes"])
    assert "no sign that B was initialised from A" in report["lineage"]["verdict"]


@pytest.mark.parametrize("seed", [0, 1])
def test_width_projected_derivation_is_traced(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = model(rng, 128, INPUTS)
    report = lineage_of(tmp_path, a, projected(a, rng))
    assert all(
        x["z_score"] >= policy.LINEAGE_Z for x in report["lineage"]["axes"] if x["z_score"] is not None
    )
    assert "derived from A's" in report["lineage"]["verdict"]


SEED_PAIR = {"blocks": 2, "wide": 384, "narrow": 320, "text_dim": 320, "head_dim": 64}  # 6 heads to 5


def test_seed_pair_shapes_verdicts_name_the_axes(tmp_path: Path) -> None:
    """The Wan-vs-LongCat case at reduced width: no weight shape shared, the text axis (= B's width)
    and the timestep, patch-in and patch-out axes compared, and the heads; derived is called
    derived, the independent model is not; whole kept heads are found head to head."""
    paths = write_seed_pair(tmp_path, **SEED_PAIR)
    reports = {role: {"lineage": values_lineage(paths["a"], paths[role])} for role in paths if role != "a"}
    for report in reports.values():
        sizes = {(x["side"], x["size"]) for x in report["lineage"]["axes"]}
        assert {("input", 320), ("input", 256), ("input", 64), ("output", 64), ("head", 64)} <= sizes
        assert "input axis of size 320 (text_embedding.0.weight vs " in report["lineage"]["verdict"]
    derived, independent = reports["derived"]["lineage"], reports["independent"]["lineage"]
    text = next(x for x in derived["axes"] if x["size"] == 320)
    assert (
        text["b"] == "y_embedder.y_proj.0.weight"
        and text["z_score"] >= policy.LINEAGE_Z
        and text["mantel_p"] <= 0.01
    )
    assert "derived from A's" in derived["verdict"]
    assert all(x["mantel_z"] < policy.LINEAGE_Z for x in independent["axes"] if x["mantel_z"] is not None)
    assert all(x["z_score"] < policy.LINEAGE_Z for x in independent["axes"] if x["z_score"] is not None)
    assert "derived from A's" not in independent["verdict"]
    # units pruned one by one leave no head whole; heads kept whole are found (a fused qkv among them)
    by_units = next(x for x in derived["axes"] if x["side"] == "head")
    by_heads = next(x for x in reports["heads"]["lineage"]["axes"] if x["side"] == "head")
    assert (
        by_units["z_score"] < policy.LINEAGE_Z
        and by_heads["z_score"] >= policy.LINEAGE_Z
        and by_heads["score"] > policy.LINEAGE_SCORE
    )
    assert by_heads["b"] == "blocks.0.attn.qkv.weight"  # LongCat's fused self-attention
    assert "heads of 64 rows (" in reports["heads"]["lineage"]["verdict"]


def sketched_lineage_of(tmp_path: Path, a: dict, b: dict) -> dict:
    """The lineage section from the indexes alone (``--index-only``)."""
    pa = write_tensors(tmp_path / "a.safetensors", a)
    pb = write_tensors(tmp_path / "b.safetensors", b)
    lineage = compare_paths(pa, pb, cache=tmp_path / "cache", index_only=True)["lineage"]
    assert lineage["method"] == "index sketches"
    assert all(x["source"] == "index sketches" and x["mantel_z"] is not None for x in lineage["axes"])
    return lineage


@pytest.mark.parametrize("noise", [0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_index_sketches_trace_a_width_pruned_derivation(tmp_path: Path, seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    a = model(rng, 128, INPUTS)
    lineage = sketched_lineage_of(tmp_path, a, pruned(a, 96, rng, noise))
    axes = {(x["side"], x["size"]): x for x in lineage["axes"]}
    assert set(axes) == {("input", 256), ("input", 192), ("input", 64), ("output", 64), ("output", FFN)}
    head = axes.pop(("output", 64))  # one head a side: no controls, only the lane-shuffle test
    assert head["z_score"] is None and head["mantel_z"] >= policy.LINEAGE_Z and head["mantel_p"] <= 0.01
    assert all(
        x["z_score"] >= policy.LINEAGE_Z
        and x["score"] > policy.LINEAGE_SCORE
        and x["mantel_z"] >= policy.LINEAGE_Z
        for x in axes.values()
    )
    assert lineage["verdict"].startswith("From the index sketches alone")
    assert "derived from A's" in lineage["verdict"]


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_index_sketches_keep_independent_twins_inside_the_null(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lineage = sketched_lineage_of(tmp_path, model(rng, 128, INPUTS), model(rng, 96, INPUTS))
    assert len(lineage["axes"]) == 5
    assert all(x["z_score"] is None or x["z_score"] < policy.LINEAGE_Z for x in lineage["axes"])
    assert all(abs(x["score"]) < 0.5 and x["mantel_z"] < policy.LINEAGE_Z for x in lineage["axes"])
    assert "no sign that B was initialised from A" in lineage["verdict"]


def test_index_sketches_trace_a_width_projected_derivation(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a = model(rng, 128, INPUTS)  # B's rows are mixtures of A's: WᵀW is kept, rows are not
    lineage = sketched_lineage_of(tmp_path, a, projected(a, rng))
    assert all(x["z_score"] >= policy.LINEAGE_Z for x in lineage["axes"] if x["z_score"] is not None)
    assert "derived from A's" in lineage["verdict"]


def test_seed_pair_from_the_indexes_alone(tmp_path: Path) -> None:
    paths = write_seed_pair(tmp_path, **SEED_PAIR)
    reports = {
        role: compare_paths(paths["a"], paths[role], cache=tmp_path / "cache", index_only=True)
        for role in ("derived", "independent")
    }
    for report in reports.values():
        assert report["summary"]["scenario"] == "incompatible"
        sizes = {(x["side"], x["size"]) for x in report["lineage"]["axes"]}
        assert {("input", 320), ("input", 256), ("input", 64), ("output", 64)} <= sizes
        assert "output axis of size 64 (" in report["lineage"]["verdict"]
    text = next(x for x in reports["derived"]["lineage"]["axes"] if x["size"] == 320)
    assert (
        text["z_score"] >= policy.LINEAGE_Z and "derived from A's" in reports["derived"]["lineage"]["verdict"]
    )
    assert "derived from A's" not in reports["independent"]["lineage"]["verdict"]


def test_indexes_without_gram_sketches_say_to_reindex(tmp_path: Path) -> None:
    from weightidx.compare.lineage import analyse_sketches
    from weightidx.index.reader import load_index

    rng = np.random.default_rng(0)
    a = model(rng, 128, INPUTS)
    sides = []
    for name, tensors in (("a", a), ("b", pruned(a, 96, rng, 0.3))):
        index = tmp_path / f"{name}.parquet"
        index_checkpoint(write_tensors(tmp_path / f"{name}.safetensors", tensors), index)
        # as written before the sketches
        old = pq.read_table(index).drop(["input_gram", "input_lanes", "output_gram"])
        pq.write_table(old, index)
        sides.append(load_index(index))
    lineage = analyse_sketches(*sides)
    assert lineage["axes"] == [] and lineage["verdict"].startswith(f"{tmp_path / 'a.parquet'} and ")
    assert "predate the Gram sketches" in lineage["verdict"] and "re-index" in lineage["verdict"]
    fresh = tmp_path / "fresh.parquet"
    index_checkpoint(tmp_path / "b.safetensors", fresh)
    one_old = analyse_sketches(sides[0], load_index(fresh))  # only A's index is old: it is named
    assert one_old["verdict"].startswith(f"{tmp_path / 'a.parquet'} predates the Gram sketches")


def attention_model(rng: np.random.Generator, heads: int, head_dim: int = 64, layers: int = 2) -> dict:
    """Self-attention q, k, v projections of width heads × head_dim."""
    width = heads * head_dim
    return {
        f"blocks.{i}.attn.{p}.weight": ("F32", trained_like(rng, width, width))
        for i in range(layers)
        for p in ("q", "k", "v")
    }


def head_pruned(source: dict, kept_heads: np.ndarray, rng: np.random.Generator, head_dim: int = 64) -> dict:
    """Whole heads kept (rows in head blocks), the residual width cut to match (columns), noise."""
    rows = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in kept_heads])
    width = source["blocks.0.attn.q.weight"][1].shape[1]
    columns = np.sort(rng.choice(width, len(rows), replace=False))
    out = {}
    for key, (dtype, values) in source.items():
        part = values[rows][:, columns]
        part = part + 0.3 * float(part.std()) * rng.standard_normal(part.shape).astype(np.float32)
        out[key.replace("attn.", "attention.")] = (dtype, np.ascontiguousarray(part))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_heads_are_matched_head_to_head(tmp_path: Path, seed: int) -> None:
    """8 heads of 64 pruned to 6 (as Wan's 40 heads of 128 to LongCat's 32): every kept head
    is found, and an independently initialised 6-head twin stays inside the controls."""
    rng = np.random.default_rng(seed)
    a = attention_model(rng, heads=8)
    kept = np.sort(rng.choice(8, 6, replace=False))
    (tmp_path / "derived").mkdir()
    (tmp_path / "twin").mkdir()
    derived = lineage_of(tmp_path / "derived", a, head_pruned(a, kept, rng))["lineage"]
    heads = next(x for x in derived["axes"] if (x["side"], x["size"]) == ("head", 64))
    assert heads["heads"] == [f"{heads['b'].replace('attention.', 'attn.')}#{h}" for h in kept]
    assert heads["a"] == heads["b"].replace("attention.", "attn.")
    assert heads["score"] > policy.LINEAGE_SCORE and heads["z_score"] >= policy.LINEAGE_Z
    assert "heads of 64 rows (" in derived["verdict"] and "derived from A's" in derived["verdict"]
    twin = lineage_of(tmp_path / "twin", a, attention_model(rng, heads=6))["lineage"]
    assert all(
        x["score"] < 0.2 and x["z_score"] < policy.LINEAGE_Z for x in twin["axes"] if x["side"] == "head"
    )
    assert "derived from A's" not in twin["verdict"]


def test_heads_of_a_fused_qkv_are_found_among_q_k_and_v(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a = attention_model(rng, heads=8, layers=1)
    kept = np.array([0, 1, 2, 4, 5, 7])
    parts = head_pruned(a, kept, rng)
    qkv = np.concatenate([parts[f"blocks.0.attention.{p}.weight"][1] for p in ("q", "k", "v")])
    fused = {"blocks.0.attention.qkv.weight": ("F32", qkv)}
    heads = next(x for x in lineage_of(tmp_path, a, fused)["lineage"]["axes"] if x["size"] == 64)
    assert heads["heads"] == [f"blocks.0.attn.{p}.weight#{h}" for p in ("q", "k", "v") for h in kept]
    assert heads["score"] > 0.9 and heads["z_score"] >= policy.LINEAGE_Z
