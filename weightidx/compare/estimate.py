"""Estimates from fingerprints alone: no tensor values are reloaded.

A fingerprint's row sketch has one ``K``-vector per block of ``BLOCK`` rows of the
2-D view, and its column sketch one per block of ``BLOCK`` columns (see
``fingerprint.py``). These functions line those blocks up under a transform and
return the estimated correlation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightidx.fingerprint.sketch import BLOCK, K


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
    def from_row(cls, row: dict) -> Sketches:
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


def row_slice(part: Sketches, whole: Sketches, start: int) -> float | None:
    """Correlation of ``part`` with rows ``[start, start + part.rows)`` of ``whole`` (dim-0 concat).

    Needs ``start`` on a block boundary and the same number of columns.
    """
    if part.cols != whole.cols or not aligned(start) or start + part.rows > whole.rows:
        raise ValueError("row slice does not line up with the sketch blocks")
    first = start // BLOCK
    return sketch_correlation(part.row_sketch, whole.row_sketch[first : first + len(part.row_sketch)])


def col_slice(part: Sketches, whole: Sketches, start: int) -> float | None:
    """Correlation of ``part`` with columns ``[start, start + part.cols)`` of ``whole`` (dim-1 concat)."""
    if part.rows != whole.rows or not aligned(start) or start + part.cols > whole.cols:
        raise ValueError("column slice does not line up with the sketch blocks")
    first = start // BLOCK
    return sketch_correlation(part.col_sketch, whole.col_sketch[first : first + len(part.col_sketch)])


def slice_scan(part: Sketches, whole: Sketches, axis: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of ``part`` with every slice of ``whole`` along ``axis`` starting at a multiple
    of ``step`` (itself a multiple of ``BLOCK``): the starts and their estimates, in one pass.

    Same result as calling ``row_slice`` / ``col_slice`` at each start, without the loop.
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
