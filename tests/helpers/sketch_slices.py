"""One slice at a time: the reference ``estimate.slice_scan`` is checked against (it does every
start in one pass). The correlation of a tensor's sketch with the sketch blocks of a slice of a
larger tensor: rows ``[start, start + part.rows)`` (a dim-0 concat) or columns (dim 1).
"""

from __future__ import annotations

from weightidx.compare.estimate import Sketches, aligned, sketch_correlation
from weightidx.fingerprint.sketch import BLOCK


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
