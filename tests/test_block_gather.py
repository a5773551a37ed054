"""Gathers from the fingerprints alone (``--index-only``): interleaved heads and swapped halves
are traced from the sketch blocks; real models trained independently get nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import derive
from tests.helpers import real_models
from tests.helpers.mapping import assert_mapping, compare, predicted
from tests.helpers.tensors import trained_like
from weightidx.compare import block_gather
from weightidx.compare.significance import fisher_combined


def _qkv(layers: int = 6) -> list[list[str]]:
    return [
        [f"encoder.layer.{i}.attention.self.{p}.weight" for p in ("query", "key", "value")]
        for i in range(layers)
    ]


@pytest.fixture(scope="module")
def minilm_tensors(minilm: Path) -> dict:
    return real_models.load(minilm)


@pytest.mark.slow
@pytest.mark.real_model
def test_neox_layout_is_traced_from_the_index_alone(minilm_tensors: dict, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 in GPT-NeoX's layout (12 heads of 32 interleaved), bf16: every piece of
    every query_key_value weight and bias, the layout named, metrics estimated."""
    converted = derive.interleave_heads(minilm_tensors, _qkv(), head_dim=32, prefix="gpt_neox.layers")
    b = derive.cast(converted.tensors, "BF16").tensors
    report = compare(tmp_path, minilm_tensors, b, index_only=True)
    assert_mapping(report, converted.expected())
    pieces = [m for m in report["matches"] if "gather:0" in m["transform"]]
    assert len(pieces) == 2 * 6 * 36 and {m["evidence"] for m in pieces} == {"estimated"}
    summary = report["summary"]
    assert summary["scenario"] == "transformed"
    assert "query, key, value interleaved head by head: 12 heads of 32 rows each" in summary["verdict"]
    assert summary["changed_values"]["matrices"] == 0  # the samples show a cast, nothing more


@pytest.mark.slow
@pytest.mark.real_model
def test_neox_layout_after_training_names_no_wrong_piece(minilm_tensors: dict, tmp_path: Path) -> None:
    """Trained on to correlation 0.95 before the conversion: the sketch blocks still name most
    heads, and every head they name is the right one."""
    drifted = derive.drift(minilm_tensors, 0.95, seed=1).tensors
    converted = derive.interleave_heads(drifted, _qkv(), head_dim=32, prefix="gpt_neox.layers")
    truth = derive.interleave_heads(minilm_tensors, _qkv(), head_dim=32, prefix="gpt_neox.layers").expected()
    report = compare(tmp_path, minilm_tensors, converted.tensors, index_only=True)
    got = {k for k in predicted(report) if "query_key_value" in k[0]}
    heads = {k for k in truth if "query_key_value" in k[0]}
    assert got <= heads
    assert len(got) >= 0.9 * len(heads)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("head_dim", [16, 32, 64])
def test_real_models_trained_apart_get_no_gather(
    minilm_tensors: dict, dinov2_small: Path, tmp_path: Path, head_dim: int
) -> None:
    """DINOv2-small's layers (trained independently of MiniLM, same shapes) in GPT-NeoX's
    layout, against MiniLM: nothing is claimed, from the fingerprints or from the values."""
    dino = real_models.dinov2_as_bert(real_models.load(dinov2_small))
    b = derive.interleave_heads(dino, _qkv(), head_dim=head_dim, prefix="gpt_neox.layers").tensors
    for index_only in (True, False):
        folder = tmp_path / str(index_only)
        folder.mkdir()
        report = compare(folder, minilm_tensors, b, index_only=index_only)
        assert predicted(report) == set()
        assert report["summary"]["scenario"] == "unrelated"


def _with_norm_out(seed: int) -> derive.Tensors:
    a = derive.toy_transformer(seed, width=128, layers=2)
    rng = np.random.default_rng(seed)
    a["norm_out.linear.weight"] = ("F32", trained_like(rng, 256, 128))
    a["norm_out.linear.bias"] = ("F32", (0.1 * rng.standard_normal(256)).astype(np.float32))
    return a


def test_swapped_halves_are_a_permutation_from_the_index(tmp_path: Path) -> None:
    """FLUX's norm_out.linear in diffusers' layout, bf16: the order and the bias's from the
    sketch blocks alone."""
    a = _with_norm_out(13)
    swap = np.concatenate([np.arange(128, 256), np.arange(128)])
    moved = derive.reorder_rows(a, ["norm_out.linear.weight"], swap)
    report = compare(tmp_path, a, derive.cast(moved.tensors, "BF16").tensors, index_only=True)
    assert_mapping(report, moved.expected())
    for key in ("norm_out.linear.weight", "norm_out.linear.bias"):
        match = next(m for m in report["matches"] if m["b"]["key"] == key)
        assert match["permutation"]["order"] == swap.tolist()
        assert match["verdict"] == "match" and match["evidence"] == "estimated"


@pytest.mark.parametrize("seed", range(4))
def test_an_independent_model_with_swapped_halves_gets_nothing(tmp_path: Path, seed: int) -> None:
    a, other = _with_norm_out(seed), _with_norm_out(seed + 50)
    swap = np.concatenate([np.arange(128, 256), np.arange(128)])
    b = derive.reorder_rows(other, ["norm_out.linear.weight"], swap).tensors
    assert predicted(compare(tmp_path, a, b, index_only=True)) == set()


def test_fisher_combination_is_calibrated_on_uniform_p_values() -> None:
    """Under the null (uniform p-values) the combined p-value is uniform: 5 % fall below 0.05."""
    rng = np.random.default_rng(0)
    combined = [fisher_combined("t", rng.uniform(size=12).tolist(), 0.0, 12).p_value for _ in range(4000)]
    assert abs(np.mean(np.array(combined) < 0.05) - 0.05) < 0.012
    # closed forms: two degrees of freedom e^{-x/2}; four (1 + x/2) e^{-x/2}
    assert fisher_combined("t", [0.3], 0.0, 1).p_value == pytest.approx(0.3)
    x_half = -np.log(0.2 * 0.5)
    assert fisher_combined("t", [0.2, 0.5], 0.0, 2).p_value == pytest.approx((1 + x_half) * np.exp(-x_half))


def test_best_units_in_chunks_equal_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    units, pool = rng.standard_normal((300, 16)), rng.standard_normal((500, 16))
    whole = block_gather._best_units(units, pool)
    monkeypatch.setattr(block_gather, "_CHUNK_CELLS", 1000)
    chunked = block_gather._best_units(units, pool)
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
