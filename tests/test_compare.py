"""Stage 2 against generated pairs with a known ground truth: mapping precision and recall >= 0.99."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests import derive
from tests.helpers.mapping import assert_mapping, compare, predicted
from tests.helpers.tensors import trained_like, write_tensors
from tests.helpers.verdicts import check_verdict
from weightidx.compare.engine import compare_paths
from weightidx.render.html import render_html


def with_conv(seed: int, width: int = 128) -> derive.Tensors:
    tensors = derive.toy_transformer(seed, width=width)
    tensors["patch.weight"] = ("F32", trained_like(np.random.default_rng([seed, 7]), width, 16, 1, 2, 2))
    return tensors


SEEDS = [0, 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_rename_only(tmp_path: Path, seed: int) -> None:
    a = derive.toy_transformer(seed)
    b = derive.rename(a, {k: k.replace("layer.", "blocks.").replace("attn.", "self_attn.") for k in a})
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    assert report["summary"]["scenario"] == "copied"
    assert all(m["transform"] in ([], ["rename"]) for m in report["matches"])


@pytest.mark.parametrize("seed", SEEDS)
def test_anonymised_names(tmp_path: Path, seed: int) -> None:
    a = derive.toy_transformer(seed, width=96)
    b = derive.anonymise(a, seed)
    assert_mapping(compare(tmp_path, a, b.tensors), b.expected())


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F8_E4M3", "F64"])
def test_casts(tmp_path: Path, dtype: str) -> None:
    a = derive.toy_transformer(3)
    b = derive.cast(a, dtype)
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    casts = {t for m in report["matches"] for t in m["transform"] if t.startswith("cast:")}
    assert casts == {f"cast:f32->{dtype.lower()}"}


def test_cast_from_bf16_to_f32_is_byte_exact_in_value(tmp_path: Path) -> None:
    a = derive.cast(derive.toy_transformer(4), "BF16").tensors
    b = derive.cast(a, "F32")
    report = compare(tmp_path, a, b.tensors)
    assert all(m["equal_after_cast"] == 1.0 and m["max_abs_diff"] == 0.0 for m in report["matches"])


@pytest.mark.parametrize("seed", SEEDS)
def test_transpose(tmp_path: Path, seed: int) -> None:
    a = derive.toy_transformer(seed)
    b = derive.transpose(a)
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    transposed = [m for m in report["matches"] if "transpose" in m["transform"]]
    assert len(transposed) == len(derive.matrices(a))


@pytest.mark.parametrize("seed", SEEDS)
def test_fused_qkv_rows_and_columns(tmp_path: Path, seed: int) -> None:
    a = derive.toy_transformer(seed)
    layers = sorted({k.split(".")[1] for k in a if k.startswith("layer.")})
    qkv = [[f"layer.{i}.attn.{p}.weight" for p in "qkv"] for i in layers]
    b = derive.fuse(a, qkv, axis=0)
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    assert report["summary"]["scenario"] == "transformed"
    b1 = derive.fuse(a, [[f"layer.{i}.attn.q.weight", f"layer.{i}.attn.o.weight"] for i in layers], axis=1)
    (tmp_path / "cols").mkdir()
    assert_mapping(compare(tmp_path / "cols", a, b1.tensors), b1.expected())


def test_split(tmp_path: Path) -> None:
    a = derive.toy_transformer(5)
    b = derive.split(a, [k for k in a if k.endswith("mlp.up.weight")], parts=4)
    assert_mapping(compare(tmp_path, a, b.tensors), b.expected())


def test_conv_linear_reshape(tmp_path: Path) -> None:
    a = with_conv(6)
    b = dict(a)
    b["patch.weight"] = ("F32", a["patch.weight"][1].reshape(128, 64))
    report = compare(tmp_path, a, b)
    (match,) = [m for m in report["matches"] if m["b"]["key"] == "patch.weight"]
    # the bytes are the same, only the shape differs
    assert match["transform"] == ["reshape"] and match["verdict"] == "match" and match["identical"] is True


@pytest.mark.parametrize("factor", [0.5, -1.0])
def test_constant_scale_and_sign_flip(tmp_path: Path, factor: float) -> None:
    a = derive.toy_transformer(7)
    b = derive.scale(a, factor)
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    for m in report["matches"]:
        assert m["scale"] == pytest.approx(factor, rel=1e-5)
        assert f"scale:{factor:.4g}" in m["transform"]
    check_verdict(report)
    summary = report["summary"]  # a scaled copy holds A's values: not "trained after the copy"
    assert summary["changed_values"]["matrices"] == 0 and "trained" not in summary["verdict"]


def test_permuted_units_are_not_called_identical(tmp_path: Path) -> None:
    """The MLP's hidden units reordered (up's rows and down's columns alike): every value is A's,
    found once the order is undone, but B is not A byte for byte."""
    a = derive.toy_transformer(5)
    order = np.random.default_rng(1).permutation(512)
    b = dict(a)
    for layer in range(3):
        up, down = f"layer.{layer}.mlp.up.weight", f"layer.{layer}.mlp.down.weight"
        b[up] = ("F32", np.ascontiguousarray(a[up][1][order]))
        b[down] = ("F32", np.ascontiguousarray(a[down][1][:, order]))
    report = compare(tmp_path, a, b)
    check_verdict(report)
    assert report["summary"]["scenario"] == "transformed" and report["summary"]["transforms"] == ["permute"]
    kinds = {m["b"]["key"]: m["transform"] for m in report["matches"] if "mlp" in m["b"]["key"]}
    assert set(map(tuple, kinds.values())) == {("permute:rows",), ("permute:cols",)}


@pytest.mark.parametrize(
    ("level", "verdict"),
    [(0.1, "match"), (0.25, "match"), (0.5, "partial"), (1.2, "partial"), (2.5, "partial")],
)
def test_fine_tuning_noise(tmp_path: Path, level: float, verdict: str) -> None:
    """Related whatever the degree while the evidence is significant (level 2.5 leaves a
    correlation of 0.37); the verdict band says how far B moved."""
    a = derive.toy_transformer(8)
    b = derive.finetune(a, level, seed=9)
    report = compare(tmp_path, a, b.tensors)
    matrices = set(derive.matrices(a))
    assert_mapping(report, {t for t in b.expected(0.0) if t[0] in matrices}, only=matrices)
    big = [m for m in report["matches"] if not m["weak_evidence"]]
    assert {m["verdict"] for m in big} <= {verdict}
    if verdict == "partial":
        assert report["summary"]["scenario"] == "fine_tuned"


def test_reinitialised_deleted_and_added(tmp_path: Path) -> None:
    a = derive.toy_transformer(10)
    rng = np.random.default_rng(11)
    b = derive.edit(
        a,
        reinit=["layer.0.attn.q.weight", "head.weight"],
        delete=["layer.2.mlp.up.weight"],
        add={"extra.weight": trained_like(rng, 128, 128)},
        seed=12,
    )
    report = compare(tmp_path, a, b.tensors)
    assert_mapping(report, b.expected())
    assert {"layer.0.attn.q.weight", "head.weight", "extra.weight"} <= set(report["unmatched"]["b"])
    assert "layer.2.mlp.up.weight" in report["unmatched"]["a"]


@pytest.mark.parametrize("seeds", [(20, 21), (22, 23)])
def test_unrelated_twin_has_no_match_on_matrices_or_norm_weights(
    tmp_path: Path, seeds: tuple[int, int]
) -> None:
    a, b = derive.toy_transformer(seeds[0]), derive.toy_transformer(seeds[1])
    report = compare(tmp_path, a, b)
    assert predicted(report) == set()
    assert report["summary"]["scenario"] == "unrelated"
    assert report["summary"]["matched_b_tensors"] == 0
    assert report["summary"]["high_similarity_count"] == 0  # no pair even kept for verification
    # the trap: raw cosine of unrelated LayerNorm weights is > 0.99
    na, nb = a["layer.0.norm1.weight"][1], b["layer.0.norm1.weight"][1]
    assert float(na @ nb / np.linalg.norm(na) / np.linalg.norm(nb)) > 0.99


def test_different_widths_are_incompatible_and_say_which_dims(tmp_path: Path) -> None:
    a = derive.toy_transformer(30, width=128, layers=4, ffn=512)
    b = derive.toy_transformer(31, width=96, layers=3, ffn=384)
    b.pop("head.weight")
    report = compare(tmp_path, a, b)
    assert report["summary"]["scenario"] == "incompatible"
    assert "hidden width 128 vs 96, 4 vs 3 blocks" in report["summary"]["verdict"]


def test_demo_pair_matches_its_truth(demo_pair, tmp_path: Path) -> None:
    report = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path)
    check_verdict(report)
    truth = json.loads(demo_pair["truth"].read_text())
    expected = {
        (
            t["b"],
            None
            if t["b_slice"] is None
            else (t["b_slice"]["axis"], t["b_slice"]["start"], t["b_slice"]["stop"]),
            t["a"],
            None,
        )
        for t in truth["mapping"]
        if t["a"]
    }
    assert_mapping(report, expected)
    assert report["summary"]["scenario"] == "transformed"
    assert [(row["a_block"], row["b_block"]) for row in report["blocks"]] == [(i, i) for i in range(3)]


def test_index_only_estimates_the_same_mapping(demo_pair, tmp_path: Path) -> None:
    exact = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path)
    estimated = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path, index_only=True)
    assert predicted(estimated) == predicted(exact)
    assert {m["evidence"] for m in estimated["matches"]} == {"estimated"}
    by_key = {(m["b"]["key"], str(m["b"]["slice"])): m for m in exact["matches"]}
    for m in estimated["matches"]:
        assert m["correlation"] == pytest.approx(
            by_key[m["b"]["key"], str(m["b"]["slice"])]["correlation"], abs=0.05
        )


def test_checkpoint_inputs_are_indexed_once_and_reused(demo_pair, tmp_path: Path) -> None:
    compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path)
    cached = sorted(tmp_path.glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path)
    assert len(cached) == 2 and [p.stat().st_mtime_ns for p in cached] == stamps


def test_weights_tied_in_b_may_share_their_source(tmp_path: Path) -> None:
    a = derive.toy_transformer(40)
    b = dict(a)
    b["lm_head.weight"] = a["embeddings.word.weight"]  # tied to the input embedding
    report = compare(tmp_path, a, b)
    sources = {m["b"]["key"]: m["a"]["key"] for m in report["matches"] if m["verdict"] == "match"}
    assert sources["lm_head.weight"] == sources["embeddings.word.weight"] == "embeddings.word.weight"
    assert report["summary"]["unmatched_b"] == 0


def test_without_ties_each_a_tensor_is_used_once(tmp_path: Path) -> None:
    a = derive.toy_transformer(41)
    b = dict(a)
    b["copy.weight"] = derive.finetune({"w": a["layer.0.attn.q.weight"]}, 0.05, seed=1).tensors["w"]
    report = compare(tmp_path, a, b)
    used = [m["a"]["key"] for m in report["matches"] if m["a"]["slice"] is None]
    assert len(used) == len(set(used))
    assert "copy.weight" in report["unmatched"]["b"]


def test_block_table_finds_depth_pruning(tmp_path: Path) -> None:
    a = derive.toy_transformer(50, layers=6)
    kept = {1: 0, 3: 1, 5: 2}  # B keeps every second block of A, renumbered
    b = {}
    for key, item in a.items():
        if key.startswith("layer."):
            block = int(key.split(".")[1])
            if block in kept:
                b[key.replace(f"layer.{block}.", f"layers.{kept[block]}.", 1)] = item
        else:
            b[key] = item
    report = compare(tmp_path, a, b)
    assert [(r["a_block"], r["b_block"]) for r in report["blocks"]] == [(1, 0), (3, 1), (5, 2)]
    assert all(r["mean_correlation"] == pytest.approx(1.0) for r in report["blocks"])


def test_missing_checkpoint_files_fall_back_to_estimates(tmp_path: Path) -> None:
    a = derive.toy_transformer(51)
    b = derive.cast(a, "BF16")
    from weightidx import index_checkpoint

    pa = write_tensors(tmp_path / "a.safetensors", a)
    pb = write_tensors(tmp_path / "b.safetensors", b.tensors)
    ia = index_checkpoint(pa, tmp_path / "a.parquet").output
    ib = index_checkpoint(pb, tmp_path / "b.parquet").output
    pb.unlink()  # someone shared only their index
    report = compare_paths(ia, ib)
    assert {m["evidence"] for m in report["matches"]} == {"estimated"}
    assert_mapping(report, b.expected())


def test_a_model_against_itself_is_identical(tmp_path: Path) -> None:
    a = derive.toy_transformer(60)
    report = compare(tmp_path, a, a)
    assert report["summary"]["scenario"] == "identical"
    assert all(m["identical"] and m["transform"] == [] for m in report["matches"])


def test_sharing_only_the_embeddings_is_partially_related(tmp_path: Path) -> None:
    a, b = derive.toy_transformer(61), derive.toy_transformer(62)
    b["embeddings.word.weight"] = a["embeddings.word.weight"]
    report = compare(tmp_path, a, b)
    assert report["summary"]["scenario"] == "partially_related"
    assert predicted(report) == {("embeddings.word.weight", None, "embeddings.word.weight", None)}


def test_a_checkpoint_changed_after_indexing_is_refused(tmp_path: Path) -> None:
    import os

    from weightidx import index_checkpoint
    from weightidx.errors import IndexFileError

    a = derive.toy_transformer(63)
    pa = write_tensors(tmp_path / "a.safetensors", a)
    pb = write_tensors(tmp_path / "b.safetensors", a)
    ia = index_checkpoint(pa, tmp_path / "a.parquet").output
    ib = index_checkpoint(pb, tmp_path / "b.parquet").output
    os.utime(pb, ns=(1, 1))
    with pytest.raises(
        IndexFileError, match=r"b\.safetensors: changed after .*b\.parquet was built; re-index"
    ):
        compare_paths(ia, ib)
    assert compare_paths(ia, ib, index_only=True)["summary"]["scenario"] == "identical"
    assert compare_paths(ia, ib, reindex=True)["summary"]["scenario"] == "identical"
    assert compare_paths(ia, ib)["summary"]["scenario"] == "identical"  # the index was rebuilt in place


def test_a_header_rewritten_with_the_same_size_and_mtime_is_still_stale(tmp_path: Path) -> None:
    import os

    from weightidx import index_checkpoint
    from weightidx.index.reader import load_index

    a = {"w": ("F32", np.ones((4, 4), np.float32)), "v": ("F32", np.zeros((4, 4), np.float32))}
    path = write_tensors(tmp_path / "a.safetensors", a)
    index = index_checkpoint(path, tmp_path / "a.parquet").output
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"w"')
    raw[at : at + 3] = b'"x"'  # a renamed tensor: same size
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_index(index).stale_shards() == [path]


def test_wan_style_twin_of_identical_architecture_is_unrelated(demo_pair, tmp_path: Path) -> None:
    from tests.helpers.seed_pair import write_twin
    from weightidx.demo import DemoConfig

    config = DemoConfig(**json.loads(demo_pair["truth"].read_text())["config"])
    twin = write_twin(tmp_path / "twin.safetensors", config, seed=12345)
    report = compare_paths(demo_pair["a"], twin, cache=tmp_path / "cache")
    check_verdict(report)
    assert report["summary"]["scenario"] == "unrelated"
    assert predicted(report) == set() and report["matches"] == []
    assert len(report["shapes"]) == len({tuple(s["shape"]) for s in report["shapes"]})  # same architecture


@pytest.mark.parametrize("seed", SEEDS)
def test_permuted_neurons_and_heads_are_recovered(tmp_path: Path, seed: int) -> None:
    a = derive.toy_transformer(70 + seed)
    rng = np.random.default_rng(seed)
    b = dict(a)
    rows = rng.permutation(512)
    b["layer.0.mlp.up.weight"] = ("F32", a["layer.0.mlp.up.weight"][1][rows])  # neurons reordered
    b["layer.0.mlp.down.weight"] = ("F32", np.ascontiguousarray(a["layer.0.mlp.down.weight"][1][:, rows]))
    heads = rng.permutation(4)  # 4 heads of 32 rows each
    q = a["layer.1.attn.q.weight"][1].reshape(4, 32, 128)[heads].reshape(128, 128)
    b["layer.1.attn.q.weight"] = ("F32", q)
    report = compare(tmp_path, a, b)
    found = {m["b"]["key"]: m for m in report["matches"] if "permutation" in m}
    assert set(found) == {"layer.0.mlp.up.weight", "layer.0.mlp.down.weight", "layer.1.attn.q.weight"}
    assert found["layer.0.mlp.up.weight"]["transform"] == ["permute:rows"]
    assert found["layer.0.mlp.down.weight"]["transform"] == ["permute:cols"]
    assert found["layer.0.mlp.up.weight"]["permutation"]["order"] == rows.tolist()
    assert all(m["correlation"] == pytest.approx(1.0) and m["verdict"] == "match" for m in found.values())
    assert found["layer.0.mlp.up.weight"]["a"]["key"] == "layer.0.mlp.up.weight"
    page = render_html(report)
    assert page.count("<li>layer.") >= 3 and 'id="permutations"' in page
    assert "layer.0.mlp.up.weight = layer.0.mlp.up.weight with its rows reordered" in page


def test_twins_get_no_permutation_match(tmp_path: Path) -> None:
    a, b = derive.toy_transformer(72), derive.toy_transformer(73)
    report = compare(tmp_path, a, b)
    assert report["matches"] == []


def test_same_values_shuffled_elementwise_are_not_called_a_permutation(tmp_path: Path) -> None:
    """The hard null: identical moments (same multiset of values), no row structure in common."""
    a = derive.toy_transformer(74)
    rng = np.random.default_rng(1)
    b = dict(a)
    for key in ("layer.0.mlp.up.weight", "layer.2.attn.v.weight"):
        values = a[key][1]
        b[key] = ("F32", rng.permutation(values.ravel()).reshape(values.shape))
    report = compare(tmp_path, a, b)
    assert not [m for m in report["matches"] if "permutation" in m]
    assert {"layer.0.mlp.up.weight", "layer.2.attn.v.weight"} <= set(report["unmatched"]["b"])
