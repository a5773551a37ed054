"""Structured derivations traced from the values: interleaved heads (GPT-NeoX, BLOOM, Falcon),
rows reordered within a tensor (llama.cpp's rotary order, swapped halves) with their biases,
and width pruning (Minitron) mapped tensor by tensor with its index lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import derive
from tests.helpers import real_models
from tests.helpers.mapping import assert_mapping, checked_phases, compare, predicted
from tests.helpers.seed_pair import write_seed_pair
from tests.helpers.tensors import trained_like
from tests.helpers.verdicts import check_verdict
from weightidx.compare.engine import compare_paths
from weightidx.compare.gather import compact, expand


def test_compact_ranges_round_trip() -> None:
    for order in ([0, 1, 2, 3, 8, 10, 12], [5], [], [3, 2, 1, 0], derive.rotary_order(64, 16).tolist()):
        assert expand(compact(order)).tolist() == list(order)
    assert compact([0, 1, 2, 3, 8, 10, 12]) == [[0, 4, 1], [8, 13, 2]]


@pytest.fixture(scope="module")
def minilm_tensors(minilm: Path) -> dict:
    return real_models.load(minilm)


def _qkv(prefix: str = "encoder.layer", layers: int = 6) -> list[list[str]]:
    return [
        [f"{prefix}.{i}.attention.self.{p}.weight" for p in ("query", "key", "value")] for i in range(layers)
    ]


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("prefix", ["gpt_neox.layers", "h"], ids=["GPT-NeoX", "BLOOM"])
def test_per_head_interleaved_qkv_is_traced_head_by_head(
    minilm_tensors: dict, tmp_path: Path, prefix: str
) -> None:
    """all-MiniLM-L6-v2 converted to GPT-NeoX's (or BLOOM's) layout, bf16: one query_key_value a
    layer, rows [q_h0, k_h0, v_h0, q_h1, ...] for 12 heads of 32, biases alike."""
    converted = derive.interleave_heads(minilm_tensors, _qkv(), head_dim=32, prefix=prefix)
    b = derive.cast(converted.tensors, "BF16").tensors
    report = compare(tmp_path, minilm_tensors, b)
    assert_mapping(report, converted.expected())
    pieces = [m for m in report["matches"] if "gather:0" in m["transform"]]
    assert len(pieces) == 2 * 6 * 36  # weight and bias, 6 layers, 12 heads x q, k, v
    summary = report["summary"]
    assert summary["scenario"] == "transformed"
    assert "query, key, value interleaved head by head: 12 heads of 32 rows each" in summary["verdict"]


def test_falcon_grouped_query_key_value_is_traced(tmp_path: Path) -> None:
    """Falcon's multi-query layout: per key-value group the group's q heads, then k and v."""
    a = derive.toy_transformer(12, width=128, layers=2)
    rng = np.random.default_rng(5)
    for i in range(2):
        for p in "kv":
            a[f"layer.{i}.attn.{p}.weight"] = ("F32", trained_like(rng, 64, 128))
    grouped = derive.grouped_qkv(a, [0, 1], heads=4, kv_heads=2, head_dim=32)
    report = compare(tmp_path, a, derive.cast(grouped.tensors, "BF16").tensors)
    assert_mapping(report, grouped.expected())
    assert (
        "q, k, v interleaved group by group: 2 groups of 64 rows of q, 32 rows of k, 32 rows of v"
        in (report["summary"]["verdict"])
    )


def test_rotary_order_with_cast_and_noise_is_recovered_and_named(tmp_path: Path) -> None:
    """llama.cpp's q/k row order (heads of 32), stored in fp16 after light training; the q
    biases follow."""
    a = derive.toy_transformer(11, width=128, layers=3)
    keys = [f"layer.{i}.attn.{p}.weight" for i in range(3) for p in "qk"]
    order = derive.rotary_order(128, 32)
    moved = derive.reorder_rows(a, keys, order)
    b = derive.cast(derive.finetune(moved.tensors, 0.05, seed=3).tensors, "F16").tensors
    report = compare(tmp_path, a, b)
    assert_mapping(report, moved.expected())
    permuted = {m["b"]["key"]: m for m in report["matches"] if "permutation" in m}
    assert set(permuted) == set(keys) | {k.replace("weight", "bias") for k in keys}
    for key in keys:
        assert permuted[key]["permutation"]["order"] == order.tolist()
        assert permuted[key]["permutation"]["pattern"] == "rotary (llama.cpp, heads of 32)"
        assert permuted[key]["transform"] == ["cast:f32->f16", "permute:rows"]


def test_swapped_halves_take_their_bias_along(tmp_path: Path) -> None:
    """FLUX's norm_out.linear in diffusers' layout: shift and scale halves swapped, bias too."""
    a = derive.toy_transformer(13, width=128, layers=2)
    rng = np.random.default_rng(4)
    a["norm_out.linear.weight"] = ("F32", trained_like(rng, 256, 128))
    a["norm_out.linear.bias"] = ("F32", (0.1 * rng.standard_normal(256)).astype(np.float32))
    swap = np.concatenate([np.arange(128, 256), np.arange(128)])
    moved = derive.reorder_rows(a, ["norm_out.linear.weight"], swap)
    calls: list[tuple[str, int, int]] = []
    b = derive.cast(moved.tensors, "BF16").tensors
    report = compare(tmp_path, a, b, progress=lambda *call: calls.append(call))
    assert_mapping(report, moved.expected())
    assert "tracing structures, round 1" in checked_phases(calls)
    for key in ("norm_out.linear.weight", "norm_out.linear.bias"):
        match = next(m for m in report["matches"] if m["b"]["key"] == key)
        assert match["permutation"]["order"] == swap.tolist() and match["verdict"] == "match"


def _assert_pruning_truth(report: dict, truth: dict) -> None:
    """Every B tensor of the truth is mapped to its A tensor with the right index lists."""
    found = {m["b"]["key"]: m for m in report["matches"] if m["verdict"] != "different"}
    mapped = [key for key in truth if key in found]
    assert len(mapped) >= 0.99 * len(truth), sorted(set(truth) - set(found))[:5]
    for key in mapped:
        a_key, rows, cols = truth[key]
        match = found[key]
        assert match["a"]["key"] == a_key, key
        select = match.get("select") or {"rows": None, "cols": None}
        if "permutation" in match:  # a vector whose every position moved: an order, not a subset
            select = {"rows": compact(match["permutation"]["order"]), "cols": None}
        piece = match["a"]["slice"]
        if piece is not None:  # kept heads that happen to be contiguous: an ordinary slice of A
            select = dict(
                select, **{"rows" if piece["axis"] == 0 else "cols": [[piece["start"], piece["stop"], 1]]}
            )
        for axis, expected in (("rows", rows), ("cols", cols)):
            got = None if select[axis] is None else expand(select[axis])
            assert (got is None and expected is None) or np.array_equal(got, expected), (key, axis)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("permuted", [False, True], ids=["in order", "permuted"])
@pytest.mark.parametrize("noise", [0.0, 0.02, 0.1])
def test_minitron_width_pruning_is_mapped_with_its_index_lists(
    minilm_tensors: dict, tmp_path: Path, noise: float, permuted: bool
) -> None:
    """all-MiniLM-L6-v2 pruned 384 -> 256 (8 of 12 heads, 1,024 of 1,536 FFN units a layer)."""
    b, truth = derive.minitron_bert(minilm_tensors, seed=3, noise=noise, permuted=permuted)
    truth.pop("pooler.dense.bias")  # all zeros: nothing to trace a subset by
    report = compare(tmp_path, minilm_tensors, b)
    _assert_pruning_truth(report, truth)
    summary = report["summary"]
    assert summary["scenario"] == "pruned"
    assert summary["pruned"]["hidden"] == {"kept": 256, "of": 384, "in_order": not permuted}
    order = "reordered" if permuted else "in order"
    assert summary["verdict"].startswith(
        f"b is a pruned: hidden width 384 → 256 (256 of 384 channels kept, {order}); "
        "8 of 12 heads of 32 in 6 blocks; 1,024 of 1,536 units in 6 blocks"
    )


@pytest.mark.slow
@pytest.mark.real_model
def test_depth_and_width_pruning_is_mapped(minilm_tensors: dict, tmp_path: Path) -> None:
    b, truth = derive.minitron_bert(minilm_tensors, seed=4, noise=0.02, layers=[0, 2, 3, 5])
    truth.pop("pooler.dense.bias")
    report = compare(tmp_path, minilm_tensors, b)
    _assert_pruning_truth(report, truth)
    assert report["summary"]["scenario"] == "pruned"


@pytest.mark.slow
@pytest.mark.real_model
def test_an_independent_model_of_the_pruned_shapes_gets_nothing(minilm_tensors: dict, tmp_path: Path) -> None:
    b, _ = derive.minitron_bert(minilm_tensors, seed=3, noise=0.02)
    rng = np.random.default_rng(9)
    twin = {
        k: ("F32", (rng.standard_normal(v.shape) * (v.std() or 1) + v.mean()).astype(np.float32))
        for k, (_, v) in b.items()
    }
    report = compare(tmp_path, minilm_tensors, twin)
    assert predicted(report) == set() and "select" not in report["summary"]["transforms"]
    assert report["summary"]["scenario"] == "incompatible"
    assert "derived from A's" not in report["lineage"]["verdict"]


def test_projection_is_not_called_pruning(tmp_path: Path) -> None:
    """A random rotation of the hidden space mixes every row: no row of B is a row of A."""
    rng = np.random.default_rng(7)
    a = {f"blocks.{i}.w.weight": ("F32", trained_like(rng, 128, 128)) for i in range(2)}
    a["embed.weight"] = ("F32", trained_like(rng, 500, 128))
    basis, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    project = basis[:96].astype(np.float32)
    b = {
        k: ("F32", np.ascontiguousarray(v @ project.T if k == "embed.weight" else project @ v @ project.T))
        for k, (_, v) in a.items()
    }
    report = compare(tmp_path, a, b)
    assert "select" not in report["summary"]["transforms"] and report["summary"]["scenario"] != "pruned"


def test_seed_pair_pruned_by_heads_maps_attention_head_by_head(tmp_path: Path) -> None:
    """The Wan-style A against the LongCat-style B that keeps whole heads (reduced width: 6
    heads of 64 to 5): B's fused qkv is A's q, k and v heads, each of B's projections A's
    rows head by head."""
    paths = write_seed_pair(tmp_path, blocks=2, wide=384, narrow=320, text_dim=320, head_dim=64)
    report = compare_paths(paths["a"], paths["heads"], cache=tmp_path / "cache")
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "pruned" and "5 of 6 heads of 64 in 2 blocks" in summary["verdict"]
    q = next(m for m in report["matches"] if m["b"]["key"] == "blocks.0.cross_attn.q_linear.weight")
    rows = expand(q["select"]["rows"])
    assert len(rows) == 320 and all(rows[h * 64] % 64 == 0 for h in range(5))
    assert q["a"]["key"] == "blocks.0.cross_attn.q.weight"
    independent = compare_paths(paths["a"], paths["independent"], cache=tmp_path / "cache")
    assert independent["summary"]["scenario"] == "incompatible" and predicted(independent) == set()


def test_blocks_named_by_no_rule_are_found_through_their_matched_siblings(tmp_path: Path) -> None:
    """B's keys in a layout the naming rules do not number (``trunk.N.<name>``): the blocks are
    inferred from the tensors already matched (``structure.sibling_blocks``), so a tensor with
    its columns reordered and a pruned FFN (rows of up and columns of down kept alike) are traced
    in the block they belong to."""
    a = derive.toy_transformer(41)
    rng = np.random.default_rng(42)
    columns, kept = rng.permutation(128), np.sort(rng.choice(512, 384, replace=False))
    short = {
        "attn.q": "wq",
        "attn.k": "wk",
        "attn.v": "wv",
        "attn.o": "wo",
        "mlp.up": "up",
        "mlp.down": "down",
    }
    b, truth = {}, {}
    for key, (dtype, values) in a.items():
        if not key.startswith("layer."):
            b[key], truth[key] = (dtype, values), key
            continue
        layer, rest = key.split(".", 2)[1:]
        module, kind = rest.rsplit(".", 1)
        name = f"trunk.{layer}.{short.get(module, module.replace('.', '_'))}.{kind}"
        if module == "attn.k" and kind == "weight":
            values = values[:, columns]
        elif module == "mlp.up":
            values = values[kept]
        elif module == "mlp.down" and kind == "weight":
            values = values[:, kept]
        b[name] = (dtype, np.ascontiguousarray(values))
        truth[name] = key
    report = compare(tmp_path, a, b)
    check_verdict(report)
    traced = {
        m["b"]["key"]: (m["a"]["key"], m["transform"])
        for m in report["matches"]
        if m["verdict"] != "different"
    }
    assert not report["unmatched"]["b"], report["unmatched"]["b"]
    assert {k: source for k, (source, _) in traced.items()} == truth
    assert traced["trunk.0.wk.weight"][1] == ["rename", "permute:cols"]
    assert traced["trunk.1.up.weight"][1] == ["rename", "select:rows"]
    assert traced["trunk.2.down.weight"][1] == ["rename", "select:cols"]
