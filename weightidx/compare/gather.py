"""Structured derivations from the values: which rows of which A tensors each row of B holds.

Converters lay fused attention out head by head (GPT-NeoX, BLOOM, Falcon), llama.cpp reorders
q and k rows within each head, and pruning keeps subsets of channels, heads and FFN units.
All are a *gather*: row ``i`` of B is row ``order[i]`` of a pool of A rows (one tensor or
several stacked), with the columns already lined up (the same columns, or a known selection of
them).

``match_rows`` finds the gather and judges it without bias from the fit: the rows are matched
on the even columns and the match is judged on the odd ones, which played no part in choosing
it (a split sample). Matching compares each B row with every pool row through random
projections of the centred rows, then exactly with the four best.

``runs`` and ``compact`` turn an order into what the report says: pieces (contiguous runs of
rows) and index lists written as ``[start, stop, step]`` ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightidx.compare.metrics import array_metrics
from weightidx.compare.significance import Evidence, exact_evidence

_PROJECTIONS = 128  # random directions for the first pass (exact correlations for the best few)
_CANDIDATES = 4
_CHUNK_ROWS = 512  # B rows per block of similarities: 512 x pool rows floats at a time
_SEED = 0x47415448  # "GATH"
MIN_COLUMNS = 16  # fewer columns cannot tell one row from another


@dataclass(frozen=True)
class RowMatch:
    """B's rows as rows of the pool: ``order[i]`` is the pool row B's row ``i`` holds.

    ``held_out``: each row's correlation with its pool row on the columns not used to choose
    it; ``evidence``: the held-out rows and columns judged together (``significance.exact_evidence``).
    """

    order: np.ndarray
    held_out: np.ndarray
    evidence: Evidence | None


def match_rows(b: np.ndarray, pool: np.ndarray) -> RowMatch | None:
    """Match every row of ``b`` (n_b x m) to a row of ``pool`` (n_p x m); None when there are
    fewer than ``2 * MIN_COLUMNS`` columns to fit on and to judge on.

    Deterministic: the projections are seeded.
    """
    if b.shape[1] != pool.shape[1]:
        raise ValueError(f"columns differ: {b.shape[1]} vs {pool.shape[1]}")
    if b.shape[1] < 2 * MIN_COLUMNS or not len(pool) or not len(b):
        return None
    fit_b, fit_pool = _unit_rows(b[:, 0::2]), _unit_rows(pool[:, 0::2])
    order = _best_rows(fit_b, fit_pool)
    test_b, test_pool = b[:, 1::2], pool[order][:, 1::2]
    held_out = np.einsum("ij,ij->i", _unit_rows(test_b), _unit_rows(test_pool))
    return RowMatch(order, held_out, judge_rows(test_b, test_pool))


def judge_rows(b: np.ndarray, a: np.ndarray) -> Evidence | None:
    """The evidence that two aligned arrays (rows x columns) hold related values."""
    metrics = array_metrics(
        np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
    )
    return exact_evidence(metrics.row_sums, metrics.col_sums, metrics.correlation)


def _unit_rows(values: np.ndarray) -> np.ndarray:
    rows = values.astype(np.float32) - values.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _best_rows(b: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each unit row of ``b``, the pool row of highest correlation (exact among the
    ``_CANDIDATES`` best by random projections when rows are long)."""
    width = b.shape[1]
    if width > _PROJECTIONS:
        rng = np.random.default_rng(_SEED)
        directions = (rng.standard_normal((width, _PROJECTIONS)) / math.sqrt(_PROJECTIONS)).astype(np.float32)
        coarse_b, coarse_pool = b @ directions, pool @ directions
    else:
        coarse_b, coarse_pool = b, pool
    order = np.empty(len(b), dtype=np.int64)
    take = min(_CANDIDATES, len(pool))
    for start in range(0, len(b), _CHUNK_ROWS):
        block = coarse_b[start : start + _CHUNK_ROWS] @ coarse_pool.T
        if width <= _PROJECTIONS or take == len(pool):
            exact = b[start : start + _CHUNK_ROWS] @ pool.T if width > _PROJECTIONS else block
            order[start : start + _CHUNK_ROWS] = exact.argmax(axis=1)
            continue
        best = np.argpartition(-block, take - 1, axis=1)[:, :take]
        exact = np.einsum("ij,ikj->ik", b[start : start + _CHUNK_ROWS], pool[best])
        order[start : start + _CHUNK_ROWS] = best[np.arange(len(best)), exact.argmax(axis=1)]
    return order


@dataclass(frozen=True)
class Run:
    """Rows ``[b_start, b_stop)`` of B are rows ``[a_start, a_start + length)`` of pool tensor ``part``."""

    b_start: int
    b_stop: int
    part: int
    a_start: int

    @property
    def length(self) -> int:
        return self.b_stop - self.b_start


def runs(order: np.ndarray, offsets: list[int]) -> list[Run]:
    """Contiguous runs of ``order`` within one pool tensor (``offsets``: where each tensor's
    rows start in the pool, ascending)."""
    bounds = np.asarray(offsets)
    parts = np.searchsorted(bounds, order, side="right") - 1
    local = order - bounds[parts]
    found = []
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or parts[i] != parts[i - 1] or local[i] != local[i - 1] + 1:
            found.append(Run(start, i, int(parts[start]), int(local[start])))
            start = i
    return found


def compact(indices: np.ndarray | list[int]) -> list[list[int]]:
    """An index list as ``[start, stop, step]`` ranges (Python's ``range``), longest runs of a
    constant step first: ``[0, 1, 2, 3, 8, 10, 12]`` -> ``[[0, 4, 1], [8, 13, 2]]``."""
    values = [int(v) for v in indices]
    out: list[list[int]] = []
    i = 0
    while i < len(values):
        if i + 1 == len(values):
            out.append([values[i], values[i] + 1, 1])
            break
        step = values[i + 1] - values[i]
        j = i + 1
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        if step == 0:
            out.append([values[i], values[i] + 1, 1])
            i += 1
            continue
        out.append([values[i], values[j] + (1 if step > 0 else -1), step])
        i = j + 1
    return out


def expand(ranges: list[list[int]]) -> np.ndarray:
    """The index list ``compact`` wrote."""
    return np.concatenate([np.arange(*r) for r in ranges]) if ranges else np.zeros(0, dtype=np.int64)
