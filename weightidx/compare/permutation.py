"""A reordering of one axis: B's matrix is A's with its rows (neurons, heads) or columns
reordered. Found from the values by ``structure.py`` (``gather.match_rows``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Permutation:
    """B's rows (axis 0) or columns (axis 1) are A's in ``order``: ``B[i] = A[order[i]]``."""

    axis: int
    order: np.ndarray
    one_to_one: float  # share of A's rows used exactly once
    moved: float  # share of positions that changed
    pattern: str | None = None  # a named order ("rotary (llama.cpp, heads of 64)")


def apply(a: np.ndarray, permutation: Permutation) -> np.ndarray:
    """A reordered as the permutation says (so it lines up with B)."""
    return a[permutation.order] if permutation.axis == 0 else a[:, permutation.order]
