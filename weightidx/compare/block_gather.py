"""Gathers found from the fingerprints alone (``--index-only``, or a checkpoint absent): B's
rows (or columns) as whole sketch blocks of rows of one or several A tensors.

A row sketch holds one ``K``-vector per block of ``BLOCK`` rows, and that vector depends only on
the block's rows (their values, and their positions modulo ``BLOCK``). So when B's tensor is
made of runs of A's rows that start and end on block boundaries (heads of 32, 64 or 128 rows
interleaved head by head as GPT-NeoX, BLOOM and Falcon store attention; the two halves of
``norm_out.linear`` swapped as diffusers stores FLUX), each of B's block vectors is one of A's,
and the gather is read off the sketches. Orders inside a block (llama.cpp's rotary order of q
and k rows) and subsets of single channels (width pruning) do not line up with the blocks;
those need the values (``structure.py``).

B's blocks are matched in units of 1, 2, 4 or 8 blocks (runs of 16 to 128 rows: a head of 32
rows is matched on its 16 sketch values, not 8 twice), each unit to the pool unit of highest
cosine. A unit's evidence is that cosine's p-value over its values (the t null, widened by
``policy.NULL_INFLATION``) times the pool's size (Bonferroni: it was the best of that many); the
units' p-values are combined with Fisher's method (``significance.fisher_combined``), which
holds for any p-values that are uniform or larger under the null, as these are; the unit sizes
tried count in the Bonferroni factor too. A bias follows its weight's order and is judged with
that order fixed. Measured: MiniLM and DINOv2 (trained independently) in GPT-NeoX's layout
either way round, and toy models with swapped halves: 1,602 fits, none above z = 2.9, 0.12 %
above z = 2 (``tests/test_block_gather.py`` keeps the real pair as a test).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from weightidx import policy
from weightidx.compare.estimate import (
    Sketches,
    estimated_metrics,
    reordered_samples,
    sample_metrics,
    sketch_correlation,
)
from weightidx.compare.gather import Run
from weightidx.compare.permutation import Permutation
from weightidx.compare.report import is_weight_matrix
from weightidx.compare.significance import Evidence, evidence, fisher_combined, scaled
from weightidx.compare.structure import Layout, Structures, describe_interleave, rotary_pattern
from weightidx.compare.types import Candidate, Match, Region, strength_of
from weightidx.fingerprint.sketch import BLOCK, K
from weightidx.index.reader import IndexedModel
from weightidx.index.schema import IndexRow
from weightidx.naming import block_of


@dataclass(frozen=True)
class BlockGather:
    """B's tensor (``b_key``) along ``axis`` as rows (columns) of A's ``members`` stacked in that
    order: B's row ``i`` is the stack's row ``order[i]``; ``pieces`` the contiguous runs.

    ``correlation``: the mapped sketches' cosine, the degree's estimate; ``evidence``: what the
    claim rests on (after the Bonferroni factor of the pools tried)."""

    b_key: str
    axis: int
    members: list[str]
    lengths: list[int]  # each member's length along ``axis``
    order: np.ndarray
    pieces: list[Run]
    correlation: float
    evidence: Evidence

    def one_source(self) -> tuple[str, np.ndarray] | None:
        """When the pieces cover B's tensor from one member: that A tensor and, for each of B's
        rows, the row of it B's row holds (a reordering, or a subset); else None."""
        parts = {piece.part for piece in self.pieces}
        if len(parts) != 1 or sum(piece.length for piece in self.pieces) != len(self.order):
            return None
        part = parts.pop()
        return self.members[part], self.order - sum(self.lengths[:part])


def find_block_gathers(
    a: IndexedModel,
    b: IndexedModel,
    taken_a: set[str],
    taken_b: set[str],
    blocks: dict[int, int],
    p_threshold: float,
) -> list[BlockGather]:
    """Gathers of B's weight matrices not yet explained (``taken_b``) from A's matrices not yet
    used (``taken_a``) in the block B's block maps to (``blocks``, else the same index), then
    of the biases that follow them. Each gather clears ``p_threshold`` after the Bonferroni
    factor of the pools tried for its tensor."""
    taken_a = set(taken_a)
    by_block: dict[int | None, list[str]] = {}
    for a_key, row in a.rows.items():
        if is_weight_matrix(row):
            by_block.setdefault(block_of(a_key), []).append(a_key)
    found: list[BlockGather] = []
    for key in sorted(k for k, row in b.rows.items() if k not in taken_b and is_weight_matrix(row)):
        target = block_of(key)
        target = blocks.get(target, target) if target is not None else None
        candidates = [k for k in by_block.get(target, []) if k not in taken_a]
        tries = [(axis, pool) for axis in (0, 1) if (pool := _pool(a, b.rows[key], axis, candidates))]
        for axis, members in tries:
            gather = _gather(a, b, key, axis, members, len(tries), p_threshold)
            if gather is not None:
                found.append(gather)
                taken_a.update(members[p.part] for p in gather.pieces)
                break
    biases = [bias for gather in found if (bias := _bias(a, b, gather, taken_b, p_threshold)) is not None]
    return found + biases


def _pool(a: IndexedModel, row_b: IndexRow, axis: int, candidates: list[str]) -> list[str]:
    """Of A's ``candidates``, those whose other axis equals B's and whose gathered axis is whole
    blocks; empty when B's axis is not whole blocks, or less than two, or longer than theirs."""
    length_b, other_b = _axes(row_b, axis)
    if length_b % BLOCK or length_b < 2 * BLOCK:
        return []
    pool = []
    for a_key in candidates:
        length_a, other_a = _axes(a.rows[a_key], axis)
        if other_a == other_b and length_a % BLOCK == 0:
            pool.append(a_key)
    lengths = sum(_axes(a.rows[k], axis)[0] for k in pool)
    return pool if lengths >= length_b else []


def _axes(row: IndexRow, axis: int) -> tuple[int, int]:
    """(the gathered axis, the other axis) of a tensor's 2-D view."""
    rows, cols = int(row["rows"]), int(row["cols"])
    return (rows, cols) if axis == 0 else (cols, rows)


def _blocks(row: IndexRow, axis: int) -> np.ndarray:
    sketches = Sketches.from_row(row)
    return sketches.row_sketch if axis == 0 else sketches.col_sketch


UNIT_BLOCKS = (1, 2, 4, 8)  # blocks a unit: runs of 16, 32, 64 or 128 rows (head sizes)


def _gather(
    a: IndexedModel,
    b: IndexedModel,
    key: str,
    axis: int,
    members: list[str],
    tries: int,
    p_threshold: float,
) -> BlockGather | None:
    """B's blocks matched to the pool's in units of ``u`` blocks (a head of 32 rows is two
    blocks: matching both at once compares 16 sketch values, not 8), each unit size tried and
    counted in the Bonferroni factor; the clearest kept. Units whose own match is unclear, or
    whose A unit another took, are left out of the pieces (but counted in the evidence)."""
    target = _blocks(b.rows[key], axis)
    parts = [_blocks(a.rows[m], axis) for m in members]
    sizes = [u for u in UNIT_BLOCKS if len(target) % u == 0 and all(len(p) % u == 0 for p in parts)]
    best = None
    for u in sizes:
        fit = _unit_fit(target, parts, u)
        if fit is not None and (best is None or fit[2].p_value < best[2].p_value):
            best = fit
    if best is None:
        return None
    units, unit_p, proof = best
    proof = scaled(proof, tries * len(sizes))
    if proof.p_value > p_threshold:
        return None
    u = len(target) // len(units)
    lengths = [len(p) * BLOCK for p in parts]
    pieces = _kept_pieces(units, unit_p, u * BLOCK, lengths)
    if not pieces:
        return None
    order = (units[:, None] * u * BLOCK + np.arange(u * BLOCK)).ravel()
    if (
        len(pieces) == 1
        and pieces[0].a_start == 0
        and pieces[0].length == len(order) == lengths[pieces[0].part]
    ):
        return None  # B's tensor is one A tensor as it is: the main stage's to judge
    mapped = np.concatenate(parts)[order[::BLOCK] // BLOCK]
    correlation = sketch_correlation(mapped, target)
    if correlation is None:
        return None
    return BlockGather(key, axis, members, lengths, order, pieces, correlation, proof)


def _unit_fit(
    target: np.ndarray, parts: list[np.ndarray], u: int
) -> tuple[np.ndarray, np.ndarray, Evidence] | None:
    """Each of B's units (``u`` blocks, its ``u·K`` sketch values) matched to the pool unit of
    highest cosine (pool units start on multiples of ``u`` blocks within each member): the pool
    unit per B unit, each unit's p-value (times the pool's size) and their Fisher combination."""
    width = u * K
    pool = np.concatenate([p.reshape(-1, width) for p in parts])
    units = target.reshape(-1, width)
    norms_b, norms_p = np.linalg.norm(units, axis=1), np.linalg.norm(pool, axis=1)
    if not np.all(norms_b > 0) or not np.any(norms_p > 0):
        return None
    best, chosen = _best_units(units / norms_b[:, None], pool / np.where(norms_p > 0, norms_p, 1.0)[:, None])
    unit_p = np.array(
        [
            min(1.0, e.p_value * len(pool)) if (e := evidence("sketch", float(c), width)) else 1.0
            for c in chosen
        ]
    )
    correlation = sketch_correlation(pool[best], units)
    proof = fisher_combined("sketch blocks", unit_p.tolist(), correlation or 0.0, units.size)
    return best, unit_p, proof


_CHUNK_CELLS = 1 << 22  # cosines held at once (32 MB): a vocabulary's blocks against two of them


def _best_units(units: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit-norm row of ``units`` the row of ``pool`` of highest cosine, and that
    cosine; in chunks of B's units, so memory stays bounded for any pool."""
    step = max(1, _CHUNK_CELLS // max(1, len(pool)))
    best = np.empty(len(units), dtype=np.int64)
    chosen = np.empty(len(units))
    for start in range(0, len(units), step):
        cosines = units[start : start + step] @ pool.T
        best[start : start + step] = np.argmax(cosines, axis=1)
        chosen[start : start + step] = cosines[np.arange(len(cosines)), best[start : start + step]]
    return best, chosen


def _kept_pieces(units: np.ndarray, unit_p: np.ndarray, rows: int, lengths: list[int]) -> list[Run]:
    """Runs of consecutive B units that continue one member's rows, from the units clear on
    their own (``policy.GATHER_UNIT_P``) whose pool unit no other B unit took."""
    taken, counts = np.unique(units, return_counts=True)
    shared = set(taken[counts > 1].tolist())
    offsets = np.cumsum([0, *lengths[:-1]])
    pieces: list[Run] = []
    for i, unit in enumerate(units.tolist()):
        if unit_p[i] > policy.GATHER_UNIT_P or unit in shared:
            continue
        start = unit * rows
        part = int(np.searchsorted(offsets, start, side="right") - 1)
        a_start = int(start - offsets[part])
        last = pieces[-1] if pieces else None
        if (
            last is not None
            and last.b_stop == i * rows
            and last.part == part
            and last.a_start + last.length == a_start
        ):
            pieces[-1] = Run(last.b_start, last.b_stop + rows, part, last.a_start)
        else:
            pieces.append(Run(i * rows, (i + 1) * rows, part, a_start))
    return pieces


def _bias(
    a: IndexedModel, b: IndexedModel, weight: BlockGather, taken_b: set[str], p_threshold: float
) -> BlockGather | None:
    """The bias of a gathered weight's rows, laid out in the same order from A's biases of the
    same members; judged on all its sketch values with that order fixed (nothing fitted)."""
    if weight.axis != 0 or not weight.b_key.endswith(".weight"):
        return None
    b_key = weight.b_key[: -len("weight")] + "bias"
    members = [m[: -len("weight")] + "bias" if m.endswith(".weight") else "" for m in weight.members]
    row_b = b.rows.get(b_key)
    if row_b is None or b_key in taken_b or not row_b["supported"] or row_b["rows"] is None:
        return None
    rows_a = [a.rows.get(m) for m in members]
    if any(r is None or not r["supported"] or r["rows"] is None for r in rows_a):
        return None
    lengths_a = [int(r["rows"]) for r in rows_a]
    lengths_w = [int(a.rows[m]["rows"]) for m in weight.members]
    if lengths_a != lengths_w or int(row_b["rows"]) != len(weight.order) or int(row_b["cols"]) != 1:
        return None
    pool = np.concatenate([_blocks(r, 0) for r in rows_a])
    mapped = pool[weight.order[::BLOCK] // BLOCK]
    correlation = sketch_correlation(mapped, _blocks(row_b, 0))
    proof = evidence("sketch", correlation, mapped.size)
    if correlation is None or proof is None or proof.p_value > p_threshold:
        return None
    return BlockGather(b_key, 0, members, lengths_a, weight.order, weight.pieces, correlation, proof)


def gathered_matches(
    a: IndexedModel,
    b: IndexedModel,
    taken_a: set[str],
    taken_b: set[str],
    blocks: dict[int, int],
    p_threshold: float,
) -> tuple[list[Match], Structures]:
    """The matches of ``find_block_gathers``: a match per piece of a tensor from several A
    tensors (with its layout), or one match of a reordered (or subset) A tensor; each one's
    metrics estimated from the sketches and samples."""
    found = find_block_gathers(a, b, taken_a, taken_b, blocks, p_threshold)
    out, layouts = [], []
    for gather in found:
        source = gather.one_source()
        if source is not None:
            out.append(_reordered_match(a, b, gather, *source))
            continue
        out += _piece_matches(a, b, gather)
        if is_weight_matrix(b.rows[gather.b_key]):
            layouts.append(
                Layout(gather.b_key, describe_interleave(gather.pieces, gather.members, gather.axis))
            )
    return out, Structures([], layouts, [])


def _reordered_match(
    a: IndexedModel, b: IndexedModel, gather: BlockGather, a_key: str, local: np.ndarray
) -> Match:
    """B's tensor as one A tensor with its rows (columns) reordered, or a subset of them."""
    row_a, row_b = a.rows[a_key], b.rows[gather.b_key]
    length_a = int(row_a["rows" if gather.axis == 0 else "cols"])
    one_to_one = len(local) == length_a and len(np.unique(local)) == length_a
    relation = ("permute_rows" if gather.axis == 0 else "permute_cols") if one_to_one else "select"
    candidate = Candidate(
        Region(a_key), Region(gather.b_key), relation, gather.correlation, gather.evidence, False
    )
    va, vb = reordered_samples(row_a, row_b, gather.axis, local)
    sample = sample_metrics(row_a["dtype"], row_b["dtype"], va, vb)
    metrics = replace(sample, n=int(row_b["numel"]), correlation=gather.correlation)
    verdict = "match" if strength_of(metrics) >= policy.MATCH else "partial"
    permutation = selection = None
    if one_to_one:
        moved = float(np.mean(local != np.arange(len(local))))
        permutation = Permutation(gather.axis, local, 1.0, moved, rotary_pattern(local))
    else:
        selection = (local, None) if gather.axis == 0 else (None, local)
    return Match(
        candidate,
        metrics,
        "estimated",
        verdict,
        gather.evidence,
        permutation=permutation,
        selection=selection,
    )


def _piece_matches(a: IndexedModel, b: IndexedModel, gather: BlockGather) -> list[Match]:
    """One match a run of rows (columns) from one of several A tensors, its degree from its own
    sketch blocks."""
    relation = "gather_rows" if gather.axis == 0 else "gather_cols"
    target = _blocks(b.rows[gather.b_key], gather.axis)
    out = []
    for piece in gather.pieces:
        a_key = gather.members[piece.part]
        source = _blocks(a.rows[a_key], gather.axis)
        a_blocks = slice(piece.a_start // BLOCK, (piece.a_start + piece.length) // BLOCK)
        b_blocks = slice(piece.b_start // BLOCK, piece.b_stop // BLOCK)
        degree = sketch_correlation(source[a_blocks], target[b_blocks])
        candidate = Candidate(
            Region(a_key, gather.axis, piece.a_start, piece.a_start + piece.length),
            Region(gather.b_key, gather.axis, piece.b_start, piece.b_stop),
            relation,
            gather.correlation if degree is None else degree,
            gather.evidence,
            False,
        )
        metrics = estimated_metrics(a.rows[a_key], b.rows[gather.b_key], candidate)
        verdict = "match" if strength_of(metrics) >= policy.MATCH else "partial"
        out.append(Match(candidate, metrics, "estimated", verdict, gather.evidence))
    return out
