"""The decision rule: evidence against a calibrated null, error control over a comparison,
verdicts generated from facts, tiny models mapped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests import derive
from tests.helpers.mapping import assert_mapping, compare, predicted
from tests.helpers.tensors import trained_like
from weightidx import policy
from weightidx.compare.metrics import array_metrics
from weightidx.compare.significance import (
    Evidence,
    combined,
    correlation_p_value,
    critical_correlation,
    evidence,
    exact_evidence,
    false_discovery_threshold,
    p_from_z,
    rank_correlation,
    sample_evidence,
    scaled,
    strongest,
    z_from_p,
)


@pytest.mark.parametrize(
    ("r", "n", "p"),
    # 2 * scipy.stats.t.sf(r * sqrt((n - 2) / (1 - r²)), n - 2), computed with scipy 1.17.1
    [
        (0.0, 10, 1.0),
        (0.5, 10, 0.14111328125),
        (0.3, 100, 0.002425733462583),
        (0.9, 5, 0.03738607346849862),
        (0.1, 1000, 0.0015441161074011),
        (0.99, 30, 2.304085772340054e-25),
    ],
)
def test_correlation_p_value_is_the_exact_t_null(r: float, n: int, p: float) -> None:
    assert correlation_p_value(r, n) == pytest.approx(p, rel=1e-9)
    assert correlation_p_value(-r, n) == correlation_p_value(r, n)


def test_p_and_z_convert_both_ways_and_saturate() -> None:
    for z in (0.5, 2.0, 5.0, 12.0):
        assert z_from_p(p_from_z(z)) == pytest.approx(z, rel=1e-9)
    assert z_from_p(0.0) == z_from_p(1e-320) and z_from_p(1.0) == 0.0


def test_benjamini_hochberg_boundary() -> None:
    rate = 0.05
    # ranks 1..3 pass (0.001 <= 0.005, 0.008 <= 0.01, 0.012 <= 0.015), rank 4 does not
    p_values = [0.012, 0.001, 0.041, 0.008]
    assert false_discovery_threshold(p_values, 10, rate) == pytest.approx(rate * 3 / 10)
    assert false_discovery_threshold([0.5], 10, rate) == pytest.approx(rate / 10)  # none: the first step
    with pytest.raises(ValueError, match="2 p-values from 1 tests"):
        false_discovery_threshold([0.1, 0.2], 1, rate)


def test_combining_statistics() -> None:
    a = evidence("sketch", 0.3, 192)
    b = evidence("sample", 0.3, 576)
    both = combined(a, b)
    assert both.values == 768 and both.z > max(a.z, b.z)  # Stouffer adds evidence that agrees
    against = combined(a, evidence("sample", -0.3, 576))
    assert against.z < b.z  # and cancels evidence that disagrees
    best = strongest(a, b)
    assert best.statistic == "sample" and best.p_value == pytest.approx(2 * b.p_value)
    assert scaled(b, 7).p_value == pytest.approx(7 * b.p_value)
    assert strongest(None, a) is a and strongest(None) is None


def test_evidence_inflation_widens_the_null() -> None:
    raw = evidence("sketch", 0.25, 400, inflation=1.0)
    wide = evidence("sketch", 0.25, 400)
    assert wide.z == pytest.approx(raw.z / policy.NULL_INFLATION)
    assert wide.null_spread == pytest.approx(policy.NULL_INFLATION / math.sqrt(397))
    assert evidence("sketch", 0.9, policy.MIN_EVIDENCE_VALUES - 1) is None


def test_critical_correlation_is_the_smallest_significant_one() -> None:
    r = critical_correlation(500, 1e-6)
    assert evidence("sketch", r, 500).p_value <= 1e-6 < evidence("sketch", r - 1e-3, 500).p_value


def test_rank_correlation_with_ties_and_outliers() -> None:
    x = np.array([1.0, 2.0, 2.0, 3.0, 100.0])
    assert rank_correlation(x, x) == pytest.approx(1.0)
    assert rank_correlation(x, -x) == pytest.approx(-1.0)
    assert rank_correlation(x, np.ones(5)) is None
    rng = np.random.default_rng(0)
    # one shared outlier channel: Pearson near 1, ranks near 0
    u, v = rng.standard_normal(384), rng.standard_normal(384)
    u[7] = v[7] = 1000.0
    assert np.corrcoef(u, v)[0, 1] > 0.99 and abs(rank_correlation(u, v)) < 0.2


def test_sample_evidence_ignores_shared_row_and_column_means() -> None:
    """Unrelated grids that share only their column means (the same input features)."""
    rng = np.random.default_rng(1)
    means = rng.standard_normal(32) * 5
    a = rng.standard_normal((32, 32)) + means
    b = rng.standard_normal((32, 32)) + means
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert sample_evidence(a, b).p_value > 1e-3


def test_values_evidence_needs_both_axes() -> None:
    rng = np.random.default_rng(2)
    a = trained_like(rng, 256, 256)
    related = array_metrics(a, 0.2 * a + rng.standard_normal(a.shape).astype(np.float32) * a.std())
    found = exact_evidence(related.row_sums, related.col_sums, related.correlation)
    assert found.statistic == "values" and found.p_value < 1e-12
    # the same rows with the columns shuffled: every row still matches its own (a shared
    # token axis), but not the columns
    shuffled = array_metrics(a, np.ascontiguousarray(a[:, rng.permutation(256)]))
    assert exact_evidence(shuffled.row_sums, shuffled.col_sums, shuffled.correlation).p_value > 1e-3
    vector = array_metrics(a[:, :1], a[:, :1])
    assert exact_evidence(vector.row_sums, vector.col_sums, vector.correlation) is None


def test_evidence_json_is_rounded_and_complete() -> None:
    found = Evidence("sketch", 0.123456789, 400, 5.123456, 3.0e-7, 0.06)
    assert found.as_json() == {
        "statistic": "sketch",
        "correlation": 0.123457,
        "values": 400,
        "null_spread": 0.06,
        "z": 5.123,
        "p_value": 3e-07,
    }


def tiny_model(seed: int, width: int) -> derive.Tensors:
    """A Hub-sized tiny transformer: width 32 or 64, shapes such as (15, w), (6, w), (1, 6, w)."""
    tensors = derive.toy_transformer(seed, width=width, layers=4)
    rng = np.random.default_rng([seed, width])
    tensors["pos.weight"] = ("F32", trained_like(rng, 15, width))
    tensors["types.weight"] = ("F32", trained_like(rng, 6, width))
    tensors["prompt.weight"] = ("F32", trained_like(rng, 1, 6, width))
    tensors["small.weight"] = ("F32", trained_like(rng, 16, 32))
    return tensors


def _qkv(tensors: derive.Tensors) -> list[list[str]]:
    layers = sorted({k.split(".")[1] for k in tensors if k.startswith("layer.")})
    return [[f"layer.{i}.attn.{p}.weight" for p in "qkv"] for i in layers]


@pytest.mark.parametrize("width", [32, 64])
def test_tiny_models_are_fully_mapped(tmp_path: Path, width: int) -> None:
    a = tiny_model(3, width)
    cast = derive.cast(a, "BF16")
    report = compare(tmp_path, a, cast.tensors)
    assert_mapping(report, cast.expected())
    assert report["summary"]["scenario"] == "copied"
    assert report["summary"]["matrices"]["related"] == report["summary"]["matrices"]["b"]
    fused = derive.fuse(cast.tensors, _qkv(a))
    (tmp_path / "fused").mkdir()
    report = compare(tmp_path / "fused", a, fused.tensors)
    assert_mapping(report, fused.expected())
    slices = [m for m in report["matches"] if m["b"]["slice"] is not None and m["verdict"] != "different"]
    assert len(slices) == 12  # q, k, v of 4 layers
    (tmp_path / "twin").mkdir()
    twin = compare(tmp_path / "twin", a, tiny_model(4, width))
    assert twin["summary"]["scenario"] == "unrelated" and predicted(twin) == set()


def test_heavily_trained_generated_model_reads_fine_tuned(tmp_path: Path) -> None:
    a = derive.toy_transformer(5)
    moved = derive.drift(a, 0.35, seed=6)
    report = compare(tmp_path, a, moved.tensors)
    matrices = set(derive.matrices(a))
    assert_mapping(report, {t for t in moved.expected(0.0) if t[0] in matrices}, only=matrices)
    summary = report["summary"]
    assert summary["scenario"] == "fine_tuned"
    assert "B was trained further from A" in summary["verdict"]
    low, high = summary["correlation_range"]
    assert 0.25 < low <= high < 0.45


def test_no_renaming_claimed_where_no_key_changed(tmp_path: Path) -> None:
    a = derive.toy_transformer(7)
    report = compare(tmp_path, a, derive.cast(a, "F16").tensors)
    assert "renam" not in report["summary"]["verdict"]
    assert "Keys are unchanged; transforms: cast." in report["summary"]["verdict"]
    assert "applies to B as it is" in report["summary"]["verdict"]


def test_twins_of_one_shape_get_no_width_change_text(tmp_path: Path) -> None:
    """Two independently initialised models of one architecture: the shapes are all shared and
    no width changed, so the text says neither '0 shape-compatible' nor 'across the width change'."""
    report = compare(tmp_path, derive.toy_transformer(8), derive.toy_transformer(9))
    text = report["summary"]["verdict"]
    assert report["summary"]["scenario"] == "unrelated" and "lineage" not in report
    assert "width change" not in text and " 0 " not in text
    assert report["summary"]["significance"]["tests"] > 0
