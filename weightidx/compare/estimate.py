"""Estimates from fingerprints alone: no tensor values are reloaded.

A fingerprint's row sketch has one ``K``-vector per block of ``BLOCK`` rows of the
2-D view, and its column sketch one per block of ``BLOCK`` columns (see
``fingerprint.py``). These functions line those blocks up under a transform and
return the estimated correlation; the samples, lined up likewise, give the other
metrics (``estimated_metrics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightidx.compare.metrics import PairAccumulator, PairMetrics
from weightidx.compare.types import Candidate, Region
from weightidx.dtypes import lower_precision
from weightidx.fingerprint.sketch import BLOCK, K
from weightidx.index.schema import IndexRow


@dataclass(frozen=True)
class Sketches:
    """The sketch columns of one index row, as (blocks, K) arrays."""

    rows: int
    cols: int
    row_sketch: np.ndarray
    col_sketch: np.ndarray

    def block_energy(self, axis: int) -> np.ndarray:
        """Cumulative sums of the squared block sketches along ``axis`` (0: rows), from 0: the
        energy of any run of blocks in two lookups. Computed once per sketch."""
        cached = self.__dict__.get(f"_energy{axis}")
        if cached is None:
            sketch = self.row_sketch if axis == 0 else self.col_sketch
            cached = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", sketch, sketch))])
            object.__setattr__(self, f"_energy{axis}", cached)
        return cached

    @classmethod
    def from_row(cls, row: IndexRow) -> Sketches:
        """From a dict with ``rows``, ``cols``, ``row_sketch`` and ``col_sketch`` (an index row)."""
        return cls(
            rows=int(row["rows"]),
            cols=int(row["cols"]),
            row_sketch=np.asarray(row["row_sketch"], dtype=np.float64).reshape(-1, K),
            col_sketch=np.asarray(row["col_sketch"], dtype=np.float64).reshape(-1, K),
        )


def sketch_correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Cosine of two sketch vectors: the correlation estimate; None when either is all zero."""
    x, y = np.ravel(x), np.ravel(y)
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / norm if norm > 0 else None


def _pooled(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    dot = sum(float(np.ravel(x) @ np.ravel(y)) for x, y in pairs)
    xx = sum(float(np.ravel(x) @ np.ravel(x)) for x, _ in pairs)
    yy = sum(float(np.ravel(y) @ np.ravel(y)) for _, y in pairs)
    norm = math.sqrt(xx * yy)
    return dot / norm if norm > 0 else None


def _full(sketch: np.ndarray, length: int) -> np.ndarray:
    """The blocks of a sketch that cover a whole block of ``BLOCK`` rows (or columns).

    A partial last block is left out: its ``P`` weights do not sum to zero, so it carries the
    mean and two unrelated vectors near 1 (LayerNorm weights) would look alike. A 1-D tensor's
    column sketch is all such a block, so only its row sketch counts.
    """
    return sketch[: length // BLOCK]


def same_layout(a: Sketches, b: Sketches) -> float | None:
    """Correlation of two tensors with the same 2-D view (same shape, or a reshape of it)."""
    if (a.rows, a.cols) != (b.rows, b.cols):
        raise ValueError(f"views differ: {(a.rows, a.cols)} vs {(b.rows, b.cols)}")
    return _pooled(
        [
            (_full(a.row_sketch, a.rows), _full(b.row_sketch, b.rows)),
            (_full(a.col_sketch, a.cols), _full(b.col_sketch, b.cols)),
        ]
    )


def transposed(a: Sketches, b: Sketches) -> float | None:
    """Correlation of ``a`` with ``bᵀ``: a's row blocks are b's column blocks and vice versa."""
    if (a.rows, a.cols) != (b.cols, b.rows):
        raise ValueError(f"{(a.rows, a.cols)} is not the transpose of {(b.rows, b.cols)}")
    return _pooled(
        [
            (_full(a.row_sketch, a.rows), _full(b.col_sketch, b.cols)),
            (_full(a.col_sketch, a.cols), _full(b.row_sketch, b.rows)),
        ]
    )


def layout_parts(a: Sketches, b: Sketches, relation: str) -> list[tuple[float | None, int]]:
    """Per sketch (rows, then columns): the correlation of A with B under ``relation``
    (``"same"`` or ``"transpose"``) and how many sketch values it covers.

    The two are judged separately (``significance.weakest``): a tensor whose rows are an
    interface axis (token rows, positions) gives unrelated models a row-sketch correlation
    spread three times wider than its count says, but not a column-sketch one; requiring both
    keeps such pairs inside the null.
    """
    if relation == "same":
        pairs = [(a.row_sketch, a.rows, b.row_sketch, b.rows), (a.col_sketch, a.cols, b.col_sketch, b.cols)]
    elif relation == "transpose":
        pairs = [(a.row_sketch, a.rows, b.col_sketch, b.cols), (a.col_sketch, a.cols, b.row_sketch, b.rows)]
    else:
        raise ValueError(f"not a whole-tensor relation: {relation}")
    parts = []
    for x, x_len, y, y_len in pairs:
        fx, fy = _full(x, x_len), _full(y, y_len)
        parts.append((sketch_correlation(fx, fy) if fx.size else None, fx.size))
    return parts


def centred_values(s: Sketches) -> int:
    """How many sketch values the estimates use (the null spread is 1/sqrt of this)."""
    return _full(s.row_sketch, s.rows).size + _full(s.col_sketch, s.cols).size


def slice_values(part: Sketches, axis: int) -> int:
    """How many sketch values a slice estimate (``slice_scan``) of ``part`` along ``axis`` uses."""
    sketch, length = (part.row_sketch, part.rows) if axis == 0 else (part.col_sketch, part.cols)
    return _full(sketch, length).size


def aligned(start: int) -> bool:
    """Whether a slice boundary falls on a sketch block boundary."""
    return start % BLOCK == 0


def slice_scan(part: Sketches, whole: Sketches, axis: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of ``part`` with every slice of ``whole`` along ``axis`` starting at a multiple
    of ``step`` (itself a multiple of ``BLOCK``): the starts and their estimates, in one pass.

    Same result as correlating ``part``'s sketch with each slice's sketch blocks in turn, without
    the loop (``tests/helpers/sketch_slices.py`` keeps that loop as the reference).
    """
    if axis == 0:
        small, large, fits = part.row_sketch, whole.row_sketch, part.cols == whole.cols
    else:
        small, large, fits = part.col_sketch, whole.col_sketch, part.rows == whole.rows
    length = part.rows if axis == 0 else part.cols
    total = whole.rows if axis == 0 else whole.cols
    if not fits or step % BLOCK or length > total:
        raise ValueError("slice does not line up with the sketch blocks")
    starts = np.arange(0, total - length + 1, step)
    blocks, stride = len(small), step // BLOCK
    count = min(len(starts), (len(large) - blocks) // stride + 1)  # a partial last block: no window
    starts = starts[:count]
    flat = np.ascontiguousarray(large).ravel()
    windows = np.lib.stride_tricks.as_strided(
        flat, (count, blocks * K), (stride * K * flat.itemsize, flat.itemsize), writeable=False
    )
    dots = windows @ small.ravel()
    energy = whole.block_energy(axis)
    first = starts // BLOCK
    window_energy = energy[first + blocks] - energy[first]
    norm = np.sqrt(np.maximum(window_energy, 0.0) * float(small.ravel() @ small.ravel()))
    with np.errstate(invalid="ignore", divide="ignore"):
        estimates = np.where(norm > 0, dots / np.where(norm > 0, norm, 1.0), np.nan)
    keep = ~np.isnan(estimates)
    return starts[keep], estimates[keep]


def region_shape(row: IndexRow, region: Region) -> tuple[int, int]:
    rows, cols = int(row["rows"]), int(row["cols"])
    if region.axis == 0:
        rows = region.stop - region.start
    elif region.axis == 1:
        cols = region.stop - region.start
    return rows, cols


def region_origin(region: Region) -> tuple[int, int]:
    return (region.start, 0) if region.axis == 0 else (0, region.start) if region.axis == 1 else (0, 0)


def estimated_metrics(row_a: IndexRow, row_b: IndexRow, c: Candidate) -> PairMetrics:
    """Correlation from the sketches; cosine, scale, differences and the share of values equal
    after the cast from the aligned samples (the stored samples hold each dtype's values exactly)."""
    va, vb = aligned_samples(row_a, row_b, c.a, c.b, c.relation)
    sample = sample_metrics(row_a["dtype"], row_b["dtype"], va, vb)
    return PairMetrics(
        n=int(row_a["numel"]) if c.a.axis is None else sample.n,
        cosine=sample.cosine,
        correlation=1.0 if c.identical else c.estimate,
        relative_l2=0.0 if c.identical else sample.relative_l2,
        scale=1.0 if c.identical else sample.scale,
        max_abs_diff=0.0 if c.identical else sample.max_abs_diff,
        equal_after_cast=1.0 if c.identical else sample.equal_after_cast,
    )


def sample_metrics(dtype_a: str, dtype_b: str, va: np.ndarray, vb: np.ndarray) -> PairMetrics:
    """Metrics of aligned sample values of A and B (any shapes of one size; empty: all None)."""
    accumulator = PairAccumulator(lower_precision(dtype_a, dtype_b), dtype_a == dtype_b)
    accumulator.add(np.asarray(va, dtype=np.float32).ravel(), np.asarray(vb, dtype=np.float32).ravel())
    return accumulator.finish()


def aligned_samples(
    row_a: IndexRow, row_b: IndexRow, region_a: Region, region_b: Region, relation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sample values of A and B at the same elements under a mapping, as two grids of one
    shape in A's orientation (empty when the two lattices share no element at that offset)."""
    grid_a = np.asarray(row_a["sample"], dtype=np.float64).reshape(row_a["sample_rows"], row_a["sample_cols"])
    grid_b = np.asarray(row_b["sample"], dtype=np.float64).reshape(row_b["sample_rows"], row_b["sample_cols"])
    sa = (int(row_a["sample_stride_rows"]), int(row_a["sample_stride_cols"]))
    sb = (int(row_b["sample_stride_rows"]), int(row_b["sample_stride_cols"]))
    swap = relation == "transpose"
    stride_b_in_a = (sb[1], sb[0]) if swap else sb
    step = (max(sa[0], stride_b_in_a[0]), max(sa[1], stride_b_in_a[1]))
    rows, cols = region_shape(row_a, region_a)
    a0, b0 = region_origin(region_a), region_origin(region_b)
    ii, jj = np.arange(0, rows, step[0]), np.arange(0, cols, step[1])
    if swap:
        b_rows, b_cols = jj + b0[0], ii + b0[1]
    else:
        b_rows, b_cols = ii + b0[0], jj + b0[1]
    a_rows, a_cols = ii + a0[0], jj + a0[1]
    if any(
        x.size and x[0] % s for x, s in ((a_rows, sa[0]), (a_cols, sa[1]), (b_rows, sb[0]), (b_cols, sb[1]))
    ):
        return np.zeros((0, 0)), np.zeros((0, 0))  # the slice does not start on both lattices
    va = grid_a[np.ix_(a_rows // sa[0], a_cols // sa[1])]
    vb = grid_b[np.ix_(b_rows // sb[0], b_cols // sb[1])]
    return va, (vb.T if swap else vb)


def reordered_samples(
    row_a: IndexRow, row_b: IndexRow, axis: int, local: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample values of A and B at the same elements when B's row ``i`` (column, ``axis`` 1) is
    A's ``local[i]``: the elements both samples hold (empty when they share none)."""
    grid_a = np.asarray(row_a["sample"], dtype=np.float64).reshape(row_a["sample_rows"], row_a["sample_cols"])
    grid_b = np.asarray(row_b["sample"], dtype=np.float64).reshape(row_b["sample_rows"], row_b["sample_cols"])
    sa = [int(row_a["sample_stride_rows"]), int(row_a["sample_stride_cols"])]
    sb = [int(row_b["sample_stride_rows"]), int(row_b["sample_stride_cols"])]
    if axis == 1:
        grid_a, grid_b, sa, sb = grid_a.T, grid_b.T, sa[::-1], sb[::-1]
    b_rows = np.arange(0, len(local), sb[0])
    a_rows = local[b_rows]
    on_both = a_rows % sa[0] == 0
    step = max(sa[1], sb[1])
    cols = np.arange(0, min(grid_a.shape[1] * sa[1], grid_b.shape[1] * sb[1]), step)
    va = grid_a[np.ix_(a_rows[on_both] // sa[0], cols // sa[1])]
    vb = grid_b[np.ix_(b_rows[on_both] // sb[0], cols // sb[1])]
    return va, vb
