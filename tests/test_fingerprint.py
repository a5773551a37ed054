"""The fingerprint maths: statistics, sketch accuracy, and transforms seen through the sketch."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.sketch_slices import col_slice, row_slice
from tests.helpers.tensors import trained_like
from weightidx import index_checkpoint
from weightidx.compare.estimate import Sketches, same_layout, transposed
from weightidx.fingerprint.sketch import (
    BLOCK,
    GRAM_DIM,
    GRAM_PROJECTIONS,
    OUTPUT_BUCKETS,
    OUTPUT_MIN_COLS,
    SAMPLE_CAP,
    K,
    fingerprint_array,
    plan_tiles,
    q_rows,
    sample_strides,
    view_2d,
)
from weightidx.index.writer import moments


def sketches(values: np.ndarray) -> Sketches:
    fp = fingerprint_array(values)
    return Sketches.from_row(
        {"rows": fp.rows, "cols": fp.cols, "row_sketch": fp.row_sketch, "col_sketch": fp.col_sketch}
    )


def correlated_pair(
    rng: np.random.Generator, shape: tuple[int, ...], rho: float
) -> tuple[np.ndarray, np.ndarray]:
    a = trained_like(rng, *shape)
    noise = trained_like(rng, *shape)
    noise *= a.std() / noise.std()
    return a, (rho * a + math.sqrt(1 - rho * rho) * noise).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((), (1, 1)), ((7,), (7, 1)), ((1, 6, 64), (6, 64)), ((64, 16, 1, 2, 2), (64, 64)), ((1, 64), (64, 1))],
)
def test_view_2d_drops_leading_singletons_and_flattens_the_rest(shape: tuple, expected: tuple) -> None:
    assert view_2d(shape) == expected


def test_tiles_cover_the_view_exactly_once_in_storage_order() -> None:
    for rows, cols in [(1, 1), (1000, 3), (4097, 2048), (3, 1 << 20), (50_000, 1)]:
        tiles = plan_tiles(rows, cols)
        position = 0
        for tile in tiles:
            assert tile.first_element == position
            assert tile.row0 % BLOCK == 0 or tile.row1 - tile.row0 == 1
            position += tile.numel
        assert position == rows * cols


def test_statistics_match_float64_reference() -> None:
    values = trained_like(np.random.default_rng(3), 700, 300) + 0.01
    values[0, :7] = 0.0
    fp = fingerprint_array(values)
    x = values.astype(np.float64).ravel()
    for power, total in enumerate([fp.sum_x, fp.sum_x2, fp.sum_x3, fp.sum_x4], start=1):
        reference = float((x**power).sum())
        assert total == pytest.approx(reference, rel=1e-5, abs=1e-6 * float((np.abs(x) ** power).sum()))
    assert (fp.minimum, fp.maximum) == (float(x.min()), float(x.max()))
    assert fp.zeros == 7 and fp.nans == fp.posinf == fp.neginf == 0
    stats = moments(fp.finite, fp.sum_x, fp.sum_x2, fp.sum_x3, fp.sum_x4)
    assert stats["mean"] == pytest.approx(x.mean(), rel=1e-4)
    assert stats["std"] == pytest.approx(x.std(), rel=1e-5)
    excess = ((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3
    assert stats["kurtosis"] == pytest.approx(excess, rel=1e-3)


def test_power_sums_add_up_over_concatenation() -> None:
    rng = np.random.default_rng(4)
    parts = [trained_like(rng, 96, 64) for _ in range(3)]
    whole = fingerprint_array(np.concatenate(parts))
    pieces = [fingerprint_array(p) for p in parts]
    assert whole.sum_x2 == pytest.approx(sum(p.sum_x2 for p in pieces), rel=1e-6)
    assert whole.sum_x4 == pytest.approx(sum(p.sum_x4 for p in pieces), rel=1e-6)


def test_nan_and_inf_are_counted_and_left_out_of_the_sums() -> None:
    values = np.arange(64, dtype=np.float32).reshape(16, 4)
    values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    fp = fingerprint_array(values)
    finite = values[np.isfinite(values)].astype(np.float64)
    assert (fp.nans, fp.posinf, fp.neginf, fp.finite) == (1, 1, 1, 61)
    assert fp.sum_x == finite.sum() and fp.minimum == finite.min() and fp.maximum == finite.max()
    assert np.isfinite(fp.row_sketch).all() and np.isfinite(fp.col_sketch).all()


def test_empty_scalar_and_all_nan_tensors_are_defined() -> None:
    empty = fingerprint_array(np.zeros((0, 5), dtype=np.float32))
    assert (empty.finite, empty.minimum, empty.sample.size) == (0, None, 0)
    scalar = fingerprint_array(np.array(2.5, dtype=np.float32))
    assert (scalar.rows, scalar.cols, scalar.sum_x, scalar.sample.tolist()) == (1, 1, 2.5, [2.5])
    nan = fingerprint_array(np.full((4, 4), np.nan, dtype=np.float32))
    assert (nan.finite, nan.nans, nan.minimum, nan.maximum) == (0, 16, None, None)
    assert moments(0, 0, 0, 0, 0)["std"] is None


def test_huge_values_do_not_overflow_the_power_sums() -> None:
    values = np.full((8, 8), 3e9, dtype=np.float32)
    fp = fingerprint_array(values)
    assert fp.sum_x4 == pytest.approx(64 * (3e9) ** 4, rel=1e-6)


_FINGERPRINT_ARRAYS = ("row_sketch", "col_sketch", "sample", "input_gram", "input_lanes", "output_gram")
_FINGERPRINT_NUMBERS = ("sum_x", "sum_x2", "sum_x3", "sum_x4", "mean", "std", "kurtosis", "l2_norm")


@pytest.mark.parametrize(
    ("dtype", "largest"),
    [
        ("F32", 1e20),
        ("F32", float(np.finfo(np.float32).max)),
        ("BF16", 3.3e38),
        ("F64", 1e300),
        ("F64", float(np.finfo(np.float64).max)),
    ],
)
def test_fingerprints_of_finite_values_are_finite(tmp_path: Path, write, dtype: str, largest: float) -> None:
    """Values up to the largest finite F32 / F64 give finite sketches, Gram sums, samples and
    moments; a power sum float64 cannot hold is null, never Inf or NaN."""
    base = trained_like(np.random.default_rng(0), 256, 320).astype(np.float64)
    values = base / np.abs(base).max() * largest
    stored = values.astype(np.float64 if dtype == "F64" else np.float32)
    path = write("big.safetensors", {"w": (dtype, stored), "b": (dtype, stored[0].copy())})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        index_checkpoint(path, tmp_path / "big.parquet")
    for row in pq.read_table(tmp_path / "big.parquet").to_pylist():
        for column in _FINGERPRINT_ARRAYS:
            assert row[column] is None or np.all(np.isfinite(row[column])), (row["key"], column)
        for column in _FINGERPRINT_NUMBERS:
            assert row[column] is None or math.isfinite(row[column]), (row["key"], column)
        assert row["std"] is not None and row["std"] > 0


def test_huge_values_are_sketched_as_their_scaled_copy(tmp_path: Path, write) -> None:
    """A tensor whose last rows are huge (the first tiles take the compiled path, unscaled) has
    the sketches of the same tensor scaled by a power of two: every tile on one scale."""
    rng = np.random.default_rng(1)
    values = trained_like(rng, 2048, 384).astype(np.float64)
    values[-16:] *= 1e30
    exponent = math.frexp(float(np.abs(values).max()))[1]
    scaled = np.ldexp(values, -exponent).astype(np.float32)
    write("huge.safetensors", {"w": ("F32", values.astype(np.float32))})
    write("scaled.safetensors", {"w": ("F32", scaled)})
    rows = {}
    for name in ("huge", "scaled"):
        index_checkpoint(tmp_path / f"{name}.safetensors", tmp_path / f"{name}.parquet")
        rows[name] = pq.read_table(tmp_path / f"{name}.parquet").to_pylist()[0]
    for column in ("row_sketch", "col_sketch", "input_gram", "output_gram", "sample"):
        got, expected = np.asarray(rows["huge"][column]), np.asarray(rows["scaled"][column])
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max()), column
    assert rows["huge"]["sum_x2"] == pytest.approx(
        math.ldexp(rows["scaled"]["sum_x2"], 2 * exponent), rel=1e-5
    )


@pytest.mark.parametrize("largest", [1e20, 3e38])
def test_huge_values_still_match_their_bf16_cast(tmp_path: Path, largest: float) -> None:
    from tests.helpers.mapping import compare, predicted

    base = trained_like(np.random.default_rng(2), 256, 256)
    a = {"w": ("F32", (base / np.abs(base).max() * largest).astype(np.float32))}
    b = {"w": ("BF16", a["w"][1])}
    report = compare(tmp_path, a, b)
    assert predicted(report) == {("w", None, "w", None)}


@pytest.mark.parametrize("rho", [0.99, 0.95, 0.9])
@pytest.mark.parametrize("shape", [(384, 384), (1536, 384), (512, 1024)])
def test_sketch_estimates_high_correlations_within_0_05(rho: float, shape: tuple[int, int]) -> None:
    for seed in range(5):
        a, b = correlated_pair(np.random.default_rng([seed, *shape]), shape, rho)
        estimate = same_layout(sketches(a), sketches(b))
        assert estimate == pytest.approx(pearson(a, b), abs=0.05), (seed, shape)


@pytest.mark.parametrize("shape", [(384, 384), (1024, 512)])
def test_sketch_of_unrelated_tensors_is_near_zero(shape: tuple[int, int]) -> None:
    estimates = []
    for seed in range(10):
        rng = np.random.default_rng([seed, 99, *shape])
        estimates.append(
            same_layout(sketches(trained_like(rng, *shape)), sketches(trained_like(rng, *shape)))
        )
    assert abs(float(np.mean(estimates))) < 0.05
    assert max(abs(e) for e in estimates) < 0.25


def test_sketch_ignores_a_constant_offset() -> None:
    a = trained_like(np.random.default_rng(5), 256, 128)
    assert same_layout(sketches(a), sketches(a + 1.0)) == pytest.approx(1.0, abs=1e-3)


def test_transpose_is_recognised_from_the_sketch_alone() -> None:
    rng = np.random.default_rng(6)
    a = trained_like(rng, 384, 1536)  # Linear (out, in)
    conv1d = np.ascontiguousarray(a.T)  # GPT-2 style Conv1D (in, out)
    assert transposed(sketches(a), sketches(conv1d)) == pytest.approx(1.0, abs=1e-4)
    assert transposed(sketches(a), sketches(np.ascontiguousarray(trained_like(rng, 384, 1536).T))) < 0.3


def test_fused_qkv_rows_line_up_with_q_k_and_v() -> None:
    rng = np.random.default_rng(7)
    q, k, v = (trained_like(rng, 384, 384) for _ in range(3))
    qkv = sketches(np.concatenate([q, k, v]))
    for index, part in enumerate([q, k, v]):
        assert row_slice(sketches(part), qkv, 384 * index) == pytest.approx(1.0, abs=1e-4)
    assert row_slice(sketches(q), qkv, 384) < 0.3  # q is not where k is


def test_dim1_concatenation_lines_up_column_blocks() -> None:
    rng = np.random.default_rng(8)
    gate, up = trained_like(rng, 256, 192), trained_like(rng, 256, 320)
    fused = sketches(np.concatenate([gate, up], axis=1))
    assert col_slice(sketches(gate), fused, 0) == pytest.approx(1.0, abs=1e-4)
    assert col_slice(sketches(up), fused, 192) == pytest.approx(1.0, abs=1e-4)


def test_conv_and_linear_reshape_share_one_view_and_one_sketch() -> None:
    conv = trained_like(np.random.default_rng(9), 128, 16, 1, 2, 2)
    linear = conv.reshape(128, 64)
    assert np.array_equal(fingerprint_array(conv).row_sketch, fingerprint_array(linear).row_sketch)


def test_sample_positions_survive_transpose_and_slicing() -> None:
    rng = np.random.default_rng(10)
    q, k = trained_like(rng, 512, 256), trained_like(rng, 512, 256)
    fused = fingerprint_array(np.concatenate([q, k]))
    part = fingerprint_array(k)
    (fr, fc), (pr, pc) = fused.sample_strides, part.sample_strides
    stride_r, stride_c = max(fr, pr), max(fc, pc)
    grid_fused = fused.sample.reshape(fused.sample_shape)
    grid_part = part.sample.reshape(part.sample_shape)
    # k's rows start at 512 in the fused tensor: the common lattice finds the same elements
    from_fused = grid_fused[512 // fr :: stride_r // fr, :: stride_c // fc][: 512 // stride_r]
    from_part = grid_part[:: stride_r // pr, :: stride_c // pc]
    np.testing.assert_array_equal(from_fused, from_part)
    np.testing.assert_array_equal(from_part, k[::stride_r, ::stride_c])


def test_sample_is_capped_and_uses_power_of_two_strides() -> None:
    for rows, cols in [(5120, 5120), (250_000, 4096), (13824, 5120), (7, 3), (1, 1 << 20)]:
        stride_r, stride_c = sample_strides(rows, cols)
        assert -(-rows // stride_r) * -(-cols // stride_c) <= SAMPLE_CAP
        assert stride_r & (stride_r - 1) == 0 and stride_c & (stride_c - 1) == 0


def test_slice_scan_equals_one_estimate_per_offset() -> None:
    from weightidx.compare.estimate import slice_scan

    rng = np.random.default_rng(11)
    q, k, v = (trained_like(rng, 96, 64) for _ in range(3))
    part, whole = sketches(k), sketches(np.concatenate([q, k, v]))
    starts, estimates = slice_scan(part, whole, 0, 32)
    assert starts.tolist() == list(range(0, 288 - 96 + 1, 32))
    for start, estimate in zip(starts, estimates, strict=True):
        assert estimate == pytest.approx(row_slice(part, whole, int(start)), abs=1e-9)
    assert starts[np.argmax(estimates)] == 96
    wide = sketches(np.concatenate([q, k], axis=1))
    starts, estimates = slice_scan(sketches(k), wide, 1, 64)
    assert estimates.tolist() == pytest.approx([col_slice(sketches(k), wide, s) for s in starts.tolist()])


def test_unrelated_vectors_near_one_do_not_look_alike() -> None:
    """LayerNorm weights of unrelated models: raw cosine > 0.99, estimate near 0."""
    estimates = []
    for seed in range(10):
        rng = np.random.default_rng([seed, 5])
        a = (1 + 0.05 * rng.standard_normal(384)).astype(np.float32)
        b = (1 + 0.05 * rng.standard_normal(384)).astype(np.float32)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
        estimates.append(same_layout(sketches(a), sketches(b)))
    assert max(abs(e) for e in estimates) < 0.35 and abs(float(np.mean(estimates))) < 0.1
    assert same_layout(sketches(a), sketches(a * 1.5)) == pytest.approx(1.0)


def _gram_by_definition(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ v vᵀ and Σ v with v[m * 16 + u] = Σ_{j ≡ u (mod 16)} Q[j, m] W[i, j], written out."""
    rows, cols = matrix.shape
    q = q_rows(0, cols).astype(np.float64)
    v = np.zeros((rows, GRAM_DIM))
    for m in range(GRAM_PROJECTIONS):
        for u in range(16):
            v[:, m * 16 + u] = matrix[:, u::16].astype(np.float64) @ q[u::16, m]
    return v.T @ v, v.sum(axis=0)


@pytest.mark.parametrize("shape", [(300, 2048), (37, 53), (64, 16), (5, 3), (2000, 96)])
def test_input_gram_sketch_matches_its_definition(tmp_path: Path, write, shape: tuple[int, int]) -> None:
    values = trained_like(np.random.default_rng(sum(shape)), *shape)
    index = tmp_path / "m.parquet"
    index_checkpoint(write("m.safetensors", {"w": ("F32", values)}), index)
    row = pq.read_table(index).to_pylist()[0]
    gram, lanes = _gram_by_definition(values)
    upper = gram[np.triu_indices(GRAM_DIM)]
    np.testing.assert_allclose(row["input_gram"], upper, rtol=1e-4, atol=1e-4 * np.abs(upper).max())
    np.testing.assert_allclose(row["input_lanes"], lanes, rtol=1e-4, atol=1e-4 * np.abs(lanes).max())


def test_input_gram_sketch_ignores_the_order_of_rows(tmp_path: Path, write) -> None:
    rng = np.random.default_rng(4)
    values = trained_like(rng, 512, 384)
    shuffled = values[rng.permutation(512)]
    index = tmp_path / "m.parquet"
    index_checkpoint(write("m.safetensors", {"w": ("BF16", values), "shuffled": ("BF16", shuffled)}), index)
    rows = {r["key"]: r for r in pq.read_table(index).to_pylist()}
    np.testing.assert_allclose(rows["w"]["input_gram"], rows["shuffled"]["input_gram"], rtol=1e-5, atol=1e-3)
    assert rows["w"]["row_sketch"] != rows["shuffled"]["row_sketch"]  # the value sketches do see it


def test_input_gram_sketch_is_null_when_rows_are_cut(tmp_path: Path, write) -> None:
    index = tmp_path / "m.parquet"
    wide = np.ones((2, 20_000), dtype=np.float32)  # rows longer than 16,384 go in column pieces
    index_checkpoint(write("m.safetensors", {"wide": ("F32", wide)}), index)
    row = pq.read_table(index).to_pylist()[0]
    assert row["input_gram"] is None and row["input_lanes"] is None and row["row_sketch"]


def _output_gram_by_definition(matrix: np.ndarray) -> np.ndarray:
    """Zc Zcᵀ written out: each row's 128 lane sums v_i, the mean row's taken out, added into
    bucket i mod 32 with sign Q[i, 0]."""
    rows, cols = matrix.shape
    q = q_rows(0, max(rows, cols)).astype(np.float64)
    v = np.zeros((rows, K * 16))
    for m in range(K):
        for u in range(16):
            v[:, m * 16 + u] = matrix[:, u::16].astype(np.float64) @ q[u:cols:16, m]
    v -= v.mean(axis=0)
    z = np.zeros((OUTPUT_BUCKETS, K * 16))
    for i in range(rows):
        z[i % OUTPUT_BUCKETS] += q[i, 0] * v[i]
    return (z @ z.T)[np.triu_indices(OUTPUT_BUCKETS)]


# bf16 through the kernel and float64 through the numpy path; rows cut into pieces (20,000
# columns) keep the output side, which adds up over pieces.
@pytest.mark.parametrize(
    ("shape", "dtype"), [((300, 2048), "BF16"), ((1000, 64), "F32"), ((40, 200), "F64"), ((3, 20_000), "F32")]
)
def test_output_gram_sketch_matches_its_definition(tmp_path: Path, write, shape: tuple, dtype: str) -> None:
    values = trained_like(np.random.default_rng(sum(shape)), *shape)
    if dtype == "BF16":
        values = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    index = tmp_path / "m.parquet"
    index_checkpoint(write("m.safetensors", {"w": (dtype, values)}), index)
    row = pq.read_table(index).to_pylist()[0]
    expected = _output_gram_by_definition(values)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(row["output_gram"], expected, rtol=1e-4, atol=1e-4 * scale)


def test_output_gram_sketch_is_null_for_narrow_rows(tmp_path: Path, write) -> None:
    index = tmp_path / "m.parquet"
    narrow = np.ones((512, OUTPUT_MIN_COLS - 1), dtype=np.float32)
    index_checkpoint(
        write("m.safetensors", {"narrow": ("F32", narrow), "bias": ("F32", narrow[:, 0])}), index
    )
    assert all(r["output_gram"] is None and r["input_gram"] for r in pq.read_table(index).to_pylist())


def test_output_gram_sketch_ignores_a_shared_row_offset(tmp_path: Path, write) -> None:
    """Every row shifted by one common vector (anisotropic embeddings): the centring takes it out."""
    rng = np.random.default_rng(8)
    values = trained_like(rng, 2000, 256)
    offset = 5 * rng.standard_normal(256).astype(np.float32) * float(values.std())
    index = tmp_path / "m.parquet"
    index_checkpoint(
        write("m.safetensors", {"w": ("F32", values), "shifted": ("F32", values + offset)}), index
    )
    rows = {r["key"]: r for r in pq.read_table(index).to_pylist()}
    w, shifted = np.array(rows["w"]["output_gram"]), np.array(rows["shifted"]["output_gram"])
    np.testing.assert_allclose(shifted, w, rtol=1e-3, atol=1e-3 * np.abs(w).max())
