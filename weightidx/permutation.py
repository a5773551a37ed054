"""Permutation recovery: B's matrix is A's with its rows (neurons, heads) or columns reordered.

Such a copy has a raw correlation near 0 with the original, yet the same multiset of rows.
Each row is summarised by its projections onto fixed random vectors over the other axis
(which the permutation leaves alone); every row of B is matched to the A row with the most
similar summary, and the permutation is accepted only if it is one-to-one and the exact
correlation of B with A so reordered is high. Power sums do not change under a
permutation, so only pairs whose Σx² and Σx⁴ agree are tried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_PROBES = 16
_SEED = 0x5045524D  # "PERM"
_CHUNK_ROWS = 1024
MAX_VALUES = 1 << 25  # per side: larger matrices are not tried (memory stays bounded)


@dataclass(frozen=True)
class Permutation:
    """B's rows (axis 0) or columns (axis 1) are A's in ``order``: ``B[i] = A[order[i]]``."""

    axis: int
    order: np.ndarray
    one_to_one: float  # share of A's rows used exactly once
    moved: float  # share of positions that changed
    pattern: str | None = None  # a named order ("rotary (llama.cpp, heads of 64)")


def moments_agree(row_a: dict, row_b: dict, tolerance: float = 1e-3) -> bool:
    """Whether two index rows could hold the same values in another order."""
    for key in ("sum_x2", "sum_x4"):
        x, y = row_a[key], row_b[key]
        if x is None or y is None or abs(x - y) > tolerance * max(abs(x), abs(y), 1e-30):
            return False
    return row_a["numel"] == row_b["numel"]


def recover(a: np.ndarray, b: np.ndarray, axis: int) -> Permutation | None:
    """The reordering of ``a`` along ``axis`` that best explains ``b`` (2-D, same shape), if one-to-one."""
    if axis == 1:
        a, b = a.T, b.T
    rng = np.random.default_rng(_SEED)
    probes = rng.standard_normal((a.shape[1], _PROBES)).astype(np.float32)
    summary_a = _normalised(_finite(a) @ probes)
    summary_b = _normalised(_finite(b) @ probes)
    order = np.empty(b.shape[0], dtype=np.int64)
    for start in range(0, b.shape[0], _CHUNK_ROWS):
        similarity = summary_b[start : start + _CHUNK_ROWS] @ summary_a.T
        order[start : start + _CHUNK_ROWS] = similarity.argmax(axis=1)
    one_to_one = len(np.unique(order)) / len(order)
    if one_to_one < 0.99:
        return None
    moved = float(np.mean(order != np.arange(len(order))))
    return Permutation(axis, order, one_to_one, moved)


def apply(a: np.ndarray, permutation: Permutation) -> np.ndarray:
    """A reordered as the permutation says (so it lines up with B)."""
    return a[permutation.order] if permutation.axis == 0 else a[:, permutation.order]


def _finite(values: np.ndarray) -> np.ndarray:
    """Float32 with NaN and ±Inf as 0 (left out, as everywhere else), and the rest scaled into
    a range whose projections cannot overflow."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    return (finite / peak if peak > 0 else finite).astype(np.float32)


def _normalised(summary: np.ndarray) -> np.ndarray:
    summary = summary - summary.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(summary, axis=1, keepdims=True)
    return summary / np.where(norms > 0, norms, 1.0)
