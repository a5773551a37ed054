"""Candidate search at mixture-of-experts scale: groups of thousands of same-shaped tensors are
narrowed to likely partners, and the mapping is the one testing every pair gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import derive
from tests.helpers.mapping import predicted
from tests.helpers.moe import moe_model
from tests.helpers.tensors import write_tensors
from tests.helpers.verdicts import check_verdict
from weightidx.compare import candidates
from weightidx.compare.engine import compare_indexes
from weightidx.index.reader import load_index
from weightidx.index.writer import index_checkpoint


def _indexes(tmp_path: Path, a: derive.Tensors, b: derive.Tensors):
    out = []
    for side, tensors in (("a", a), ("b", b)):
        path = write_tensors(tmp_path / f"{side}.safetensors", tensors)
        out.append(load_index(index_checkpoint(path, tmp_path / f"{side}.parquet").output))
    return out


def _both(tmp_path: Path, a: derive.Tensors, b: derive.Tensors, **options) -> tuple[dict, dict]:
    """The report with large groups narrowed, and with every pair tested."""
    model_a, model_b = _indexes(tmp_path, a, b)
    narrowed = compare_indexes(model_a, model_b, **options)
    reference = compare_indexes(model_a, model_b, exhaustive=True, **options)
    check_verdict(narrowed)
    return narrowed, reference


def _shuffled_experts(
    source: derive.Tensors, experts: int, seed: int
) -> tuple[derive.Tensors, dict[str, str]]:
    """Experts renumbered within each layer and renamed to Mixtral's w1/w3/w2: B key -> A key."""
    rng = np.random.default_rng(seed)
    out, truth = {}, {}
    names = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    orders: dict[str, np.ndarray] = {}
    for key, item in source.items():
        if ".experts." not in key:
            new = key.replace("mlp.gate.", "block_sparse_moe.gate.")
        else:
            layer, rest = key.split(".mlp.experts.")
            expert, projection = rest.split(".", 1)
            order = orders.setdefault(layer, rng.permutation(experts))
            projection = names[projection.split(".")[0]] + ".weight"
            new = f"{layer}.block_sparse_moe.experts.{order[int(expert)]}.{projection}"
        out[new] = item
        truth[new] = key
    return out, truth


@pytest.mark.slow
def test_renamed_shuffled_and_trained_experts_map_as_with_every_pair(tmp_path: Path) -> None:
    """32 experts a layer (256 of each expert shape a side: 65,536 pairs a group, narrowed),
    renumbered, renamed and trained on to correlation 0.9, fp16: the narrowed search gives the
    mapping testing every pair gives, and it is the truth."""
    a = moe_model(32, seed=3)
    moved, truth = _shuffled_experts(derive.drift(a, 0.9, seed=4, dtype="F16").tensors, 32, seed=5)
    narrowed, reference = _both(tmp_path, a, moved)
    assert predicted(narrowed) == predicted(reference)
    found = {(m["b"]["key"], m["a"]["key"]) for m in narrowed["matches"] if m["verdict"] != "different"}
    assert found == set(truth.items())


@pytest.mark.slow
def test_independent_moe_models_stay_unrelated_when_narrowed(tmp_path: Path) -> None:
    narrowed, reference = _both(tmp_path, moe_model(32, seed=6), moe_model(32, seed=7))
    assert predicted(narrowed) == predicted(reference) == set()
    assert narrowed["summary"]["scenario"] == "unrelated"


def test_large_groups_are_narrowed_and_the_rest_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group over ``MAX_GROUP_PAIRS`` keeps each B tensor's same key, role and nearest
    sketches; the pairs left out are counted for the correction."""
    model_a, model_b = _indexes(tmp_path, moe_model(8, layers=2, seed=8), moe_model(8, layers=2, seed=8))
    everything = candidates.candidate_pairs(model_a, model_b, exhaustive=True)
    monkeypatch.setattr(candidates, "MAX_GROUP_PAIRS", 16)
    narrowed = candidates.candidate_pairs(model_a, model_b)
    assert narrowed.skipped > 0
    assert len(narrowed.pairs) + narrowed.skipped == len(everything.pairs)
    assert set(narrowed.pairs) <= set(everything.pairs)
    same_key = {y for x, y, relation, _ in narrowed.pairs if relation == "same" and x == y}
    assert same_key == set(model_b.rows)  # every tensor keeps its own name's partner
    assert all(identical for x, y, relation, identical in narrowed.pairs if relation == "same" and x == y)


def _dense(seed: int, layers: int = 2, width: int = 128, ffn: int = 64) -> derive.Tensors:
    from tests.helpers.tensors import trained_like

    rng = np.random.default_rng(seed)
    tensors: derive.Tensors = {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = ("F32", trained_like(rng, width, width))
        for name, shape in (
            ("gate_proj", (ffn, width)),
            ("up_proj", (ffn, width)),
            ("down_proj", (width, ffn)),
        ):
            tensors[f"{prefix}.mlp.{name}.weight"] = ("F32", trained_like(rng, *shape))
    return tensors


def _upcycle(dense: derive.Tensors, experts: int, noise: float, seed: int) -> derive.Tensors:
    """Each layer's dense FFN copied into ``experts`` experts, each trained on apart (its own
    noise), and a new router (Komatsuzaki et al. 2023)."""
    rng = np.random.default_rng(seed)
    out: derive.Tensors = {}
    for key, (dtype, values) in dense.items():
        if ".mlp." not in key:
            out[key] = (dtype, values)
            continue
        layer, name = key.split(".mlp.")
        for e in range(experts):
            moved = values + noise * values.std() * rng.standard_normal(values.shape).astype(np.float32)
            out[f"{layer}.mlp.experts.{e}.{name}"] = ("F16", moved.astype(np.float16))
        out[f"{layer}.mlp.gate.weight"] = (
            "F32",
            rng.standard_normal((experts, values.shape[-1])).astype(np.float32),
        )
    return out


@pytest.mark.parametrize("experts", [8, 64])
def test_upcycled_experts_map_to_their_dense_source(tmp_path: Path, experts: int) -> None:
    """Every expert of layer l derives from A's dense FFN of layer l; the verdict says so (64
    experts: 128 of each expert shape, a group that is narrowed)."""
    dense = _dense(9)
    report, _ = _both(tmp_path, dense, _upcycle(dense, experts, noise=0.2, seed=10))
    found = {(m["b"]["key"], m["a"]["key"]) for m in report["matches"] if m["verdict"] != "different"}
    for layer in range(2):
        for name in ("gate_proj", "up_proj", "down_proj"):
            source = f"model.layers.{layer}.mlp.{name}.weight"
            assert all(
                (f"model.layers.{layer}.mlp.experts.{e}.{name}.weight", source) in found
                for e in range(experts)
            )
    upcycled = report["summary"]["upcycled"]
    assert upcycled["sources"] == 6 and upcycled["experts"] == 6 * experts
    assert (
        f"Up-cycled: {6 * experts} expert tensors of B derive from 6 dense tensors of A"
        in report["summary"]["verdict"]
    )
