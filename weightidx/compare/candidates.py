"""Which pairs of tensors the comparison tests: every pair whose 2-D views fit a transform, except
where that would be a cross product of thousands (the experts of a mixture-of-experts model).

``queries/candidate_groups.sql`` joins the two indexes on views that fit a transform (the same
view, its transpose, a slice along rows or columns either way) and returns each fitting pair of
*groups* of same-view tensors. A group pair of at most ``MAX_GROUP_PAIRS`` pairs is tested
whole. A larger one (Qwen3-30B-A3B: 6,144 expert matrices of one shape a side, 38 million
pairs) is narrowed, for each B tensor, to

- the A tensors with the same bytes (dtype, shape, CRC-32 and power sums), at most
  ``NEIGHBOURS`` of them, the same key first;
- structural priors: the A tensor of the same key, and those of the same role in the same block
  (``naming.role_of``: expert 7 of layer 3 is ``model.layers.#.mlp.experts.7...`` in block 3);
- for the same view or its transpose, the ``NEIGHBOURS`` A tensors whose sketch vectors (row and
  column block sketches, unit length) are nearest by cosine, found by blocked matrix products
  over the group (exact, not approximate: the products cost ``rows x cols x dimension`` flops in
  BLAS, seconds for 6,144 x 6,144, and need no index structure or extra dependency);
- for slices (fused into, or split from, a larger tensor), the A tensors of the same block.

The pairs left out count in the number of tests that the false-discovery correction divides by,
as if each had been tested and found null: the correction stays what it would be for the whole
cross product. ``exhaustive=True`` tests every pair (the reference the tests compare with).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from weightidx.fingerprint.sketch import BLOCK, K
from weightidx.index.reader import IndexedModel
from weightidx.index.schema import IndexRow
from weightidx.naming import block_of, role_of
from weightidx.sql.runner import run_query

MAX_GROUP_PAIRS = 4096  # 64 x 64 tensors of one view: every pair tested
NEIGHBOURS = 8  # nearest A tensors by sketch cosine kept for each B tensor of a larger group
_CHUNK_CELLS = 1 << 22  # cosines held at once (32 MB)

Pair = tuple[str, str, str, bool]  # a_key, b_key, relation, identical


@dataclass
class CandidatePairs:
    """The pairs to test, in (b_key, a_key, relation) order, and how many pairs of fitting views
    were left out (each a test the correction counts)."""

    pairs: list[Pair]
    skipped: int


def candidate_pairs(a: IndexedModel, b: IndexedModel, exhaustive: bool = False) -> CandidatePairs:
    """The pairs of tensors to test between A and B (module doc)."""
    groups = run_query("candidate_groups", [a.index, b.index], block=BLOCK).fetchall()
    pairs: list[Pair] = []
    skipped = 0
    for relation, a_keys, b_keys in groups:
        whole = len(a_keys) * len(b_keys)
        if exhaustive or whole <= MAX_GROUP_PAIRS:
            found = [(x, y) for x in a_keys for y in b_keys]
        else:
            found = sorted(_narrowed(a, b, relation, a_keys, b_keys))
            skipped += whole - len(found)
        pairs += [
            (x, y, relation, relation == "same" and _same_bytes(a.rows[x], b.rows[y])) for x, y in found
        ]
    pairs.sort(key=lambda pair: (pair[1], pair[0], pair[2]))
    return CandidatePairs(pairs, skipped)


def _same_bytes(row_a: IndexRow, row_b: IndexRow) -> bool:
    return content_key(row_a) == content_key(row_b)


def content_key(row: IndexRow) -> tuple:
    """Tensors with equal keys here hold the same bytes in all likelihood (tied weights, copies)."""
    return (row["dtype"], tuple(row["shape"]), row["crc32"], row["sum_x2"], row["sum_x4"])


def _narrowed(
    a: IndexedModel, b: IndexedModel, relation: str, a_keys: list[str], b_keys: list[str]
) -> set[tuple[str, str]]:
    """The pairs of one large group worth testing (module doc): same bytes, same key, same role
    in the same block, nearest sketches (whole views) or the same block (slices)."""
    found: set[tuple[str, str]] = set()
    whole_view = relation in ("same", "transpose")
    by_content: dict[tuple, list[str]] = defaultdict(list)
    by_role: dict[tuple[int | None, str], list[str]] = defaultdict(list)
    by_block: dict[int | None, list[str]] = defaultdict(list)
    for key in a_keys:
        if relation == "same":
            by_content[content_key(a.rows[key])].append(key)
        by_role[block_of(key), role_of(key)].append(key)
        by_block[block_of(key)].append(key)
    present = set(a_keys)
    for key in b_keys:
        if relation == "same":
            twins = sorted(by_content.get(content_key(b.rows[key]), []), key=lambda k: k != key)
            found.update((twin, key) for twin in twins[:NEIGHBOURS])
        if key in present:
            found.add((key, key))
        found.update((x, key) for x in by_role.get((block_of(key), role_of(key)), [])[:NEIGHBOURS])
        if not whole_view and block_of(key) is not None:
            found.update((x, key) for x in by_block.get(block_of(key), []))
    if whole_view:
        found |= _nearest(a, b, relation, a_keys, b_keys)
    return found


def _nearest(
    a: IndexedModel, b: IndexedModel, relation: str, a_keys: list[str], b_keys: list[str]
) -> set[tuple[str, str]]:
    """For each B tensor the ``NEIGHBOURS`` A tensors of highest |cosine| between their sketch
    vectors (B's row and column sketches swapped for ``transpose``), by blocked products."""
    vectors_a = _vectors(a, a_keys, transposed=False)
    vectors_b = _vectors(b, b_keys, transposed=relation == "transpose")
    if vectors_a.shape[1] != vectors_b.shape[1] or not vectors_a.shape[1]:
        return set()
    keep = min(NEIGHBOURS, len(a_keys))
    step = max(1, _CHUNK_CELLS // max(1, len(a_keys)))
    found = set()
    for start in range(0, len(b_keys), step):
        scores = np.abs(vectors_b[start : start + step] @ vectors_a.T)
        best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        for row, columns in enumerate(best):
            found.update((a_keys[c], b_keys[start + row]) for c in columns)
    return found


def _vectors(model: IndexedModel, keys: list[str], transposed: bool) -> np.ndarray:
    """Unit-length sketch vectors of tensors of one view: the full row blocks then the full
    column blocks (a partial last block carries the mean: left out, as in ``estimate``)."""
    rows = []
    for key in keys:
        row = model.rows[key]
        n_rows, n_cols = int(row["rows"]), int(row["cols"])
        row_part = np.asarray(row["row_sketch"], dtype=np.float32)[: (n_rows // BLOCK) * K]
        col_part = np.asarray(row["col_sketch"], dtype=np.float32)[: (n_cols // BLOCK) * K]
        rows.append(np.concatenate([col_part, row_part] if transposed else [row_part, col_part]))
    matrix = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
