"""Structured derivations, found from the values: tensors of B whose rows (or columns) are rows
of one or several A tensors, reordered, interleaved or a subset.

- *Interleaved*: GPT-NeoX, BLOOM and Falcon store attention as one ``query_key_value`` whose
  rows go head by head; each head is a contiguous run of rows of A's q, k or v. Every run is
  reported as a match of a B slice to an A slice.
- *Permuted*: llama.cpp's converter reorders q and k rows within each head (rows of a head
  seen as (2, head_dim/2) and transposed; ``convert_hf_to_gguf.py``, ``LlamaModel.permute``);
  pruning and converters reorder units. A permutation of one A tensor is reported with its
  order, and named when it is the rotary one.
- *Selected*: width pruning (Minitron, Sreenivas et al. 2024) keeps a subset of hidden
  channels (the same on every residual-stream axis), of heads and of FFN units. The hidden axis
  is aligned first, through a pair of tensors that share their other axis (token or position
  rows); then every tensor with a hidden axis is matched along its other axis. A subset of one
  A tensor is reported with ``select`` index lists.

Each B tensor is matched row by row (``gather.match_rows``: fitted on half of the columns,
judged on the other half). A 1-D tensor follows the matrix it belongs to (``X.bias`` follows
``X.weight``) or the hidden axis, and is judged with that mapping fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightidx import policy
from weightidx.compare.gather import MIN_COLUMNS, RowMatch, judge_rows, match_rows, runs
from weightidx.compare.metrics import PairMetrics, array_metrics
from weightidx.compare.report import is_weight_matrix, model_width
from weightidx.compare.significance import Evidence, evidence, rank_correlation, scaled
from weightidx.compare.types import Region
from weightidx.dtypes import lower_precision
from weightidx.index.reader import IndexedModel
from weightidx.naming import block_of

Reader = Callable[[IndexedModel, str], np.ndarray]

MAX_POOL_VALUES = 1 << 26  # the A rows one B tensor is matched against, held in float32 (256 MB)
_MAX_ROUNDS = 3
_BLOCK_TRIES = 8  # A blocks tried for a B block whose source block is not known yet


@dataclass(frozen=True)
class Found:
    """A region of B as a region of A, its rows and columns mapped.

    ``rows`` / ``cols``: for each row (column) of B's region, the row (column) of A's region it
    holds; None where they correspond one to one in order.
    """

    a: Region
    b: Region
    relation: str  # "gather" (a run of rows of one of several tensors), "permute", "select"
    rows: np.ndarray | None
    cols: np.ndarray | None
    evidence: Evidence
    metrics: PairMetrics
    pattern: str | None = None  # a named order: "rotary"


@dataclass(frozen=True)
class Layout:
    """How one tensor of B is laid out from A's (for the report's ``layouts``)."""

    b_key: str
    text: str


@dataclass(frozen=True)
class AxisSelection:
    """An axis of B that keeps a subset of A's (pruning): model-wide (``block`` None: the hidden
    width) or within one block of B (heads, FFN units). ``order[i]`` is the A position of B's
    position ``i``."""

    block: int | None
    order: np.ndarray
    of: int

    @property
    def kept(self) -> int:
        return len(self.order)

    @property
    def in_order(self) -> bool:
        return bool(np.all(np.diff(self.order) > 0))

    def whole_runs(self, head: int) -> bool:
        """Whether the kept positions are whole aligned runs of ``head`` (whole heads)."""
        if self.of % head or self.kept % head or self.kept == self.of:
            return False
        kept = np.sort(self.order)
        starts = kept[::head]
        runs_of_head = (starts[:, None] + np.arange(head)).ravel()
        return bool(np.all(starts % head == 0) and np.array_equal(kept, runs_of_head))


HEAD_SIZES = (256, 128, 64, 32, 16)


def head_size(axes: list[AxisSelection]) -> int | None:
    """The largest head size every one of these selections keeps whole heads of (one block's
    8 heads of 32 can happen to pair into 4 heads of 64; the other blocks then say 32)."""
    return next((h for h in HEAD_SIZES if all(axis.whole_runs(h) for axis in axes)), None)


@dataclass(frozen=True)
class Structures:
    """What ``find_structures`` found: matches, per-tensor layouts, and the pruned axes."""

    found: list[Found]
    layouts: list[Layout]
    axes: list[AxisSelection]

    def pruned(self) -> dict | None:
        """The report's ``summary.pruned``: the hidden width kept (model-wide) and, per kind,
        the heads or units kept in the blocks; None when no axis was pruned."""
        if not self.axes:
            return None
        hidden = next((x for x in self.axes if x.block is None), None)
        kinds: dict[tuple[int, int], list[AxisSelection]] = {}
        for axis in self.axes:
            same_as_hidden = hidden is not None and np.array_equal(axis.order, hidden.order)
            if axis.block is not None and not same_as_hidden:
                kinds.setdefault((axis.kept, axis.of), []).append(axis)
        per_block = [
            {
                "kept": kept,
                "of": of,
                "head_size": head_size(found),
                "blocks": len(found),
                "in_order": all(x.in_order for x in found),
            }
            for (kept, of), found in kinds.items()
        ]
        per_block.sort(key=lambda axis: (axis["head_size"] is None, -axis["of"]))
        kept = None if hidden is None else {"kept": hidden.kept, "of": hidden.of, "in_order": hidden.in_order}
        return {"hidden": kept, "per_block": per_block}


@dataclass
class _AxisMaps:
    """Known correspondences of axes: (block or None, B size, A size) -> A index per B index."""

    maps: dict[tuple[int | None, int, int], np.ndarray]

    def candidates(self, block: int | None, size_b: int, size_a: int) -> list[np.ndarray | None]:
        """The maps an axis of these sizes may follow: in order (equal sizes), or the subsets
        found so far in this block and model-wide. Two axes of one size (hidden width 256 and
        8 heads of 32) are told apart by trying each."""
        if size_b == size_a:
            return [None]  # one to one, in order
        return [
            m
            for m in (self.maps.get((block, size_b, size_a)), self.maps.get((None, size_b, size_a)))
            if m is not None
        ]

    def known(self, block: int | None, size_b: int, size_a: int) -> bool:
        return bool(self.candidates(block, size_b, size_a))


def find_structures(
    a: IndexedModel,
    b: IndexedModel,
    taken_a: set[str],
    taken_b: set[str],
    blocks: dict[int, int],
    read: Reader,
    p_threshold: float,
    progress: Callable[[int, int, int], None] | None = None,
    pairs: list[tuple[str, str]] | None = None,
) -> Structures:
    """Structured matches of B's weight matrices not yet taken (``taken_b``), and of the 1-D
    tensors that follow them. ``blocks``: B's block -> A's block, from the related tensors;
    ``pairs`` (B key, A key) of the related tensors number B's blocks the naming rules do not
    (``sibling_blocks``). ``progress``: called with (round, tensors tried, tensors to try in
    that round).

    Runs only where something can be found: the models are related (``blocks``) or their hidden
    widths differ (a pruned model has no tensor of its source's shapes).
    """
    inferred = sibling_blocks(pairs or [])
    if not blocks and not inferred and model_width(a) == model_width(b):
        return Structures([], [], [])
    search = _Search(a, b, taken_a, set(taken_b), blocks, read, p_threshold, inferred)
    for number in range(1, _MAX_ROUNDS + 1):
        tried = None if progress is None else lambda done, total, n=number: progress(n, done, total)
        if not search.round(tried):
            break
    search.follow_vectors()
    axes = [
        AxisSelection(block, order, size_a)
        for (block, _, size_a), order in sorted(
            search.axes.maps.items(), key=lambda item: (item[0][0] is not None, item[0][0] or 0, item[0][1])
        )
    ]
    return Structures(search.found, search.layouts, axes)


def numbered_prefix(key: str) -> str | None:
    """``key`` up to its last numeric component (``net.3`` of ``net.3.wk.weight``), or None."""
    parts = key.split(".")
    last = max((i for i, part in enumerate(parts[:-1]) if part.isdigit()), default=None)
    return None if last is None else ".".join(parts[: last + 1])


def sibling_blocks(pairs: list[tuple[str, str]]) -> dict[str, int]:
    """For B's keys the naming rules number no block of (``net.3.wk.weight`` in a layout of its
    own), the A block each numbered prefix stands for: the one most of its matched tensors come
    from. Then B's open tensors under ``net.3`` are searched in that A block, as B's numbered
    blocks are (``_Search._targets``)."""
    votes: dict[str, dict[int, int]] = {}
    for b_key, a_key in pairs:
        a_block, prefix = block_of(a_key), numbered_prefix(b_key)
        if block_of(b_key) is None and a_block is not None and prefix is not None:
            counts = votes.setdefault(prefix, {})
            counts[a_block] = counts.get(a_block, 0) + 1
    return {prefix: max(sorted(counts), key=counts.__getitem__) for prefix, counts in votes.items()}


class _Search:
    def __init__(
        self,
        a: IndexedModel,
        b: IndexedModel,
        taken_a: set[str],
        taken_b: set[str],
        blocks: dict[int, int],
        read: Reader,
        p_threshold: float,
        inferred: dict[str, int] | None = None,
    ) -> None:
        self.a, self.b, self.read, self.p_threshold = a, b, read, p_threshold
        self.taken_a, self.taken_b, self.blocks = set(taken_a), taken_b, dict(blocks)
        # B prefixes numbered by no naming rule, each as a block of its own (negative ids, apart
        # from B's numbered blocks) mapped to the A block its matched tensors come from
        self.inferred = {prefix: -1 - i for i, prefix in enumerate(sorted(inferred or {}))}
        for prefix, a_block in (inferred or {}).items():
            self.blocks[self.inferred[prefix]] = a_block
        self.axes = _AxisMaps({})
        self.found: list[Found] = []
        self.layouts: list[Layout] = []
        self.row_maps: dict[str, tuple[str, np.ndarray | None, list]] = {}  # B key -> its rows' source
        self.piece_members: dict[str, list[str]] = {}  # B key -> the A tensors its runs come from
        self._cache: dict[tuple[int, str], np.ndarray] = {}

    def _block_b(self, key: str) -> int | None:
        """B's block of ``key``: its number by the naming rules, else the block its numbered
        prefix stands for (``sibling_blocks``)."""
        block = block_of(key)
        if block is not None:
            return block
        prefix = numbered_prefix(key)
        return None if prefix is None else self.inferred.get(prefix)

    # --- one pass over B's untaken matrices
    def round(self, tried: Callable[[int, int], None] | None = None) -> bool:
        """One pass over B's open weight matrices; whether it traced any (``tried``: called with
        (tensors tried, tensors to try))."""
        found = False
        keys = [
            k
            for k, r in self.b.rows.items()
            if k not in self.taken_b and is_weight_matrix(r) and int(r["numel"]) <= MAX_POOL_VALUES
        ]
        for done, key in enumerate(
            sorted(keys, key=lambda k: (self._block_b(k) is not None, self._block_b(k) or 0, k))
        ):
            if tried is not None:
                tried(done, len(keys))
            if any(self._try(key, axis) for axis in (0, 1)) or self._direct(key):
                self.taken_b.add(key)
                found = True
        if tried is not None:
            tried(len(keys), len(keys))
        return found

    def _direct(self, key: str) -> bool:
        """A tensor too small to match row by row (two token-type rows), whose both axes follow
        maps found on other tensors: compared with A's tensor of the same name, or with A's
        tensors of its block, through those maps (nothing is fitted; the p-value is multiplied
        by the number of pairs and maps tried)."""
        row_b = self.b.rows[key]
        rows_b, cols_b = int(row_b["rows"]), int(row_b["cols"])
        block = self._block_b(key)
        tries = []
        for a_key in dict.fromkeys([key, *self._pool(key, 0, self._target_block(key))]):
            row_a = self.a.rows.get(a_key)
            if row_a is None or a_key in self.taken_a or not is_weight_matrix(row_a):
                continue
            rows_a, cols_a = int(row_a["rows"]), int(row_a["cols"])
            for rows in self.axes.candidates(block, rows_b, rows_a):
                for cols in self.axes.candidates(block, cols_b, cols_a):
                    if rows is not None or cols is not None:  # the same shape: the main stage judged it
                        tries.append((a_key, rows, cols))
        if not tries:
            return False
        values_b = self._values(self.b, key)
        for a_key, rows, cols in tries:
            mapped = self._values(self.a, a_key)
            mapped = mapped if rows is None else mapped[rows]
            mapped = mapped if cols is None else mapped[:, cols]
            found = evidence("values", rank_correlation(mapped.ravel(), values_b.ravel()), mapped.size)
            if found is None or (proof := scaled(found, len(tries))).p_value > self.p_threshold:
                continue
            metrics = self._metrics(a_key, key, mapped, values_b)
            self.found.append(Found(Region(a_key), Region(key), "select", rows, cols, proof, metrics))
            self.taken_a.add(a_key)
            return True
        return False

    def _target_block(self, key: str) -> int | None:
        block = self._block_b(key)
        if block is None:
            return None
        return self.blocks.get(block, block)

    def _targets(self, key: str) -> list[int | None]:
        """A's blocks where B's tensor may come from: the block its block maps to, or, while
        that is unknown (depth pruning renumbers blocks), A's blocks nearest to where it would
        be if the order was kept, at most ``_BLOCK_TRIES`` of them."""
        block = self._block_b(key)
        if block is None:
            return [None]
        if block in self.blocks:
            return [self.blocks[block]]
        below = [a for b, a in self.blocks.items() if b < block]
        start = max(below) + 1 if below else 0
        a_blocks = sorted({x for k in self.a.rows if (x := block_of(k)) is not None})
        ahead = [x for x in a_blocks if x >= start] or a_blocks
        return sorted(ahead, key=lambda x: (abs(x - max(block, start)), x))[:_BLOCK_TRIES]

    def _pool(self, key: str, axis: int, target: int | None) -> list[str]:
        """A's matrices that could hold B's rows (axis 0) or columns (axis 1): in A's block
        ``target``, their other axis known to correspond to B's."""
        row_b = self.b.rows[key]
        other_b = int(row_b["cols" if axis == 0 else "rows"])
        pool = []
        for a_key, row_a in self.a.rows.items():
            if a_key in self.taken_a or not is_weight_matrix(row_a) or block_of(a_key) != target:
                continue
            other_a = int(row_a["cols" if axis == 0 else "rows"])
            if self.axes.known(self._block_b(key), other_b, other_a):
                pool.append(a_key)
        return pool

    def _try(self, key: str, axis: int) -> bool:
        """Match B's tensor along ``axis`` against pools of A's rows, block by candidate block,
        each other-axis map in turn; every try counts in the Bonferroni factor."""
        row_b = self.b.rows[key]
        length_b = int(row_b["rows" if axis == 0 else "cols"])
        other_b = int(row_b["cols" if axis == 0 else "rows"])
        if other_b < 2 * MIN_COLUMNS:
            return False
        tries = []
        for target in self._targets(key):
            groups: dict[int, list[str]] = {}
            for a_key in self._pool(key, axis, target):
                other_a = int(self.a.rows[a_key]["cols" if axis == 0 else "rows"])
                groups.setdefault(other_a, []).append(a_key)
            tries += [
                (target, members, other_map)
                for other_a, members in sorted(groups.items())
                for other_map in self.axes.candidates(self._block_b(key), other_b, other_a)
            ]
        for target, members, other_map in tries:
            lengths = [int(self.a.rows[k]["rows" if axis == 0 else "cols"]) for k in members]
            if sum(lengths) < length_b or sum(lengths) * other_b > MAX_POOL_VALUES:
                continue
            if self._match(key, axis, members, lengths, other_map, len(tries)):
                if self._block_b(key) is not None:
                    self.blocks.setdefault(self._block_b(key), target)
                return True
        return False

    def _oriented(self, model: IndexedModel, key: str, axis: int) -> np.ndarray:
        values = self._values(model, key)
        return values if axis == 0 else values.T

    def _values(self, model: IndexedModel, key: str) -> np.ndarray:
        """A tensor's 2-D view as float32, through a cache of at most ``MAX_POOL_VALUES`` values
        (the tensors of one block are read once for all of B's tensors there)."""
        slot = (id(model), key)
        if slot in self._cache:
            self._cache[slot] = self._cache.pop(slot)  # most recently used last
            return self._cache[slot]
        values = self.read(model, key).astype(np.float32, copy=False)
        while self._cache and sum(v.size for v in self._cache.values()) + values.size > MAX_POOL_VALUES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[slot] = values
        return values

    def _match(
        self,
        key: str,
        axis: int,
        members: list[str],
        lengths: list[int],
        other_map: np.ndarray | None,
        attempts: int,
    ) -> bool:
        values_b = self._oriented(self.b, key, axis)
        parts = []
        for member in members:
            part = self._oriented(self.a, member, axis)
            parts.append(part if other_map is None else part[:, other_map])
        pool = np.concatenate(parts)
        found = match_rows(values_b, pool)
        if found is None or found.evidence is None or not _one_row_each(found):
            return False
        proof = scaled(found.evidence, attempts)
        if proof.p_value > self.p_threshold:
            return False
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        pieces = runs(found.order, offsets)
        if len({p.part for p in pieces}) == 1:
            part = pieces[0].part
            local = found.order - offsets[part]
            self._whole(
                key, axis, members[part], lengths[part], local, other_map, pool[found.order], values_b, proof
            )
        else:
            self._pieces(key, axis, members, pieces, found.order, other_map, pool, values_b, proof)
        return True

    def _whole(
        self,
        key: str,
        axis: int,
        a_key: str,
        a_length: int,
        local: np.ndarray,
        other_map: np.ndarray | None,
        mapped: np.ndarray,
        values_b: np.ndarray,
        proof: Evidence,
    ) -> bool:
        """B's tensor as one A tensor, its ``axis`` mapped by ``local`` and its other axis by
        ``other_map``: a permutation, a subset (pruned), or both."""
        in_order = len(local) == a_length and np.array_equal(local, np.arange(a_length))
        if in_order and other_map is None:
            return False  # the tensor as it is: no structure to add
        along = None if in_order else local
        rows, cols = (along, other_map) if axis == 0 else (other_map, along)
        permuted = along is not None and len(local) == a_length and len(np.unique(local)) == a_length
        relation = "permute" if permuted and other_map is None else "select"
        pattern = rotary_pattern(local) if permuted else None
        metrics = self._metrics(a_key, key, mapped, values_b)
        self.found.append(Found(Region(a_key), Region(key), relation, rows, cols, proof, metrics, pattern))
        self.taken_a.add(a_key)
        self.row_maps[key] = (a_key, rows, [])
        if along is not None and len(local) < a_length:
            self._register(key, a_key, len(local), a_length, local)
        return True

    def _pieces(
        self,
        key: str,
        axis: int,
        members: list[str],
        pieces: list,
        order: np.ndarray,
        other_map: np.ndarray | None,
        pool: np.ndarray,
        values_b: np.ndarray,
        proof: Evidence,
    ) -> None:
        """B's tensor as runs of rows of several A tensors (interleaved heads): one match a run."""
        for piece in pieces:
            span = slice(piece.b_start, piece.b_stop)
            mapped = pool[order[span]]
            held_out = judge_rows(values_b[span, 1::2], mapped[:, 1::2]) if piece.length >= 8 else None
            rows, cols = (None, other_map) if axis == 0 else (other_map, None)
            self.found.append(
                Found(
                    Region(members[piece.part], axis, piece.a_start, piece.a_start + piece.length),
                    Region(key, axis, piece.b_start, piece.b_stop),
                    "gather",
                    rows,
                    cols,
                    held_out if held_out is not None and held_out.p_value < proof.p_value else proof,
                    self._metrics(members[piece.part], key, mapped, values_b[span]),
                )
            )
            self.taken_a.add(members[piece.part])
        self.row_maps[key] = ("", None, pieces)
        self.piece_members[key] = members
        self.layouts.append(Layout(key, describe_interleave(pieces, members, axis)))

    def _register(self, b_key: str, a_key: str, size_b: int, size_a: int, local: np.ndarray) -> None:
        """A subset of an axis found on one tensor, for the others that share it: model-wide when
        the tensor belongs to no block (embeddings: the hidden axis), else within its block."""
        scope = None if block_of(a_key) is None else self._block_b(b_key)
        self.axes.maps.setdefault((scope, size_b, size_a), local)

    def _metrics(self, a_key: str, b_key: str, mapped: np.ndarray, values_b: np.ndarray) -> PairMetrics:
        """Exact metrics of B's values against A's mapped ones, with the two tensors' dtypes."""
        dtype_a, dtype_b = self.a.rows[a_key]["dtype"], self.b.rows[b_key]["dtype"]
        return array_metrics(
            np.ascontiguousarray(mapped, dtype=np.float32),
            np.ascontiguousarray(values_b, dtype=np.float32),
            lower_precision(dtype_a, dtype_b),
            dtype_a == dtype_b,
        )

    # --- 1-D tensors
    def follow_vectors(self) -> None:
        """Biases follow their weight's rows, even where a match of their own was found (a few
        hundred values can look like a slice of the wrong rows; the weight's structure is far
        stronger evidence); other vectors of a pruned width follow its axis."""
        for key, row in self.b.rows.items():
            if not row["supported"] or row["rows"] is None or int(row["cols"]) != 1:
                continue
            found = self._bias_of(key)
            if not found and key not in self.taken_b:
                on_axis = self._on_axis(key)
                found = [] if on_axis is None else [on_axis]
            if found:
                self.found += found
                self.taken_b.add(key)

    def _bias_of(self, key: str) -> list[Found]:
        """A bias laid out as its weight's rows: the whole weight's order, or run by run."""
        owner = _weight_of(key)
        if owner not in self.row_maps:
            return []
        a_weight, local, pieces = self.row_maps[owner]
        if not pieces:
            a_key = _bias_key(a_weight)
            if a_key not in self.a.rows:
                return []
            found = self._vector(key, a_key, local)
            return [] if found is None else [found]
        members = self.piece_members[owner]
        biases = [_bias_key(m) for m in members]
        if not all(k in self.a.rows for k in biases):
            return []
        values = {k: self.read(self.a, k).ravel() for k in set(biases)}
        mapped = np.concatenate([values[biases[p.part]][p.a_start : p.a_start + p.length] for p in pieces])
        values_b = self.read(self.b, key).ravel()
        if mapped.size != values_b.size:
            return []
        proof = evidence(
            "values", rank_correlation(mapped.astype(np.float64), values_b.astype(np.float64)), mapped.size
        )
        if proof is None or proof.p_value > self.p_threshold:
            return []
        found = []
        for p in pieces:
            span = slice(p.b_start, p.b_stop)
            a_key = biases[p.part]
            metrics = self._metrics(a_key, key, mapped[span].reshape(-1, 1), values_b[span].reshape(-1, 1))
            a_region = Region(a_key, 0, p.a_start, p.a_start + p.length)
            found.append(
                Found(a_region, Region(key, 0, p.b_start, p.b_stop), "gather", None, None, proof, metrics)
            )
        self.taken_a.update(biases)
        return found

    def _on_axis(self, key: str) -> Found | None:
        """A vector of B on an axis found pruned (the hidden width, a block's FFN units): A's
        vector of the same kind (weight with weight, bias with bias) in the block, through that
        axis's map (the p-value multiplied by the pairs and maps tried)."""
        size_b = int(self.b.rows[key]["rows"])
        kind = key.rsplit(".", 1)[-1]
        tries = []
        for a_key in dict.fromkeys([key, *self.a.rows]):
            row_a = self.a.rows.get(a_key)
            if row_a is None or a_key in self.taken_a or int(row_a["cols"] or 0) != 1:
                continue
            if block_of(a_key) != self._target_block(key) or a_key.rsplit(".", 1)[-1] != kind:
                continue
            size_a = int(row_a["rows"])
            if size_a != size_b:
                tries += [
                    (a_key, local) for local in self.axes.candidates(self._block_b(key), size_b, size_a)
                ]
        for a_key, local in tries:
            found = self._vector(key, a_key, local, looks=len(tries))
            if found is not None:
                return found
        return None

    def _vector(self, b_key: str, a_key: str, local: np.ndarray | None, looks: int = 1) -> Found | None:
        """A 1-D tensor of B as A's ``a_key`` mapped by ``local`` (None: in order), judged by the
        rank correlation of all its values (the mapping was fixed beforehand; ``looks``: how many
        such pairs were tried for this tensor)."""
        values_b = self.read(self.b, b_key).ravel().astype(np.float64)
        values_a = self.read(self.a, a_key).ravel().astype(np.float64)
        mapped = values_a if local is None else values_a[local]
        if mapped.size != values_b.size:
            return None
        proof = evidence("values", rank_correlation(mapped, values_b), mapped.size)
        if proof is None or (proof := scaled(proof, looks)).p_value > self.p_threshold:
            return None
        self.taken_a.add(a_key)
        metrics = self._metrics(a_key, b_key, mapped.reshape(-1, 1), values_b.reshape(-1, 1))
        permuted = local is not None and len(local) == values_a.size
        return Found(
            Region(a_key), Region(b_key), "permute" if permuted else "select", local, None, proof, metrics
        )


def _one_row_each(found: RowMatch) -> bool:
    """Whether B's rows are A's rows (each its own, most of its values kept), not mixtures of
    them: a row projected from many (a random rotation of the hidden space) correlates with its
    best A row at about 1/sqrt(rows mixed), and several B rows pick the same one."""
    distinct = len(np.unique(found.order)) / len(found.order)
    kept = float(np.median(found.held_out))
    return distinct >= policy.GATHER_DISTINCT and kept >= policy.GATHER_CORRELATION


def _weight_of(key: str) -> str:
    return key[: -len(".bias")] + ".weight" if key.endswith(".bias") else ""


def _bias_key(weight_key: str) -> str:
    return weight_key[: -len(".weight")] + ".bias" if weight_key.endswith(".weight") else ""


def rotary_pattern(order: np.ndarray) -> str | None:
    """``"rotary"`` when ``order`` is llama.cpp's reordering of q/k rows for some head size (or
    its inverse): within each head of ``d`` rows seen as (2, d/2), the two axes swapped."""
    n = len(order)
    for head in (32, 64, 80, 96, 112, 128, 160, 192, 256):
        if n % head or head % 2:
            continue
        forward = _rotary_order(n, head)
        if np.array_equal(order, forward) or np.array_equal(order, np.argsort(forward)):
            return f"rotary (llama.cpp, heads of {head})"
    return None


def _rotary_order(rows: int, head: int) -> np.ndarray:
    """Row r of the permuted tensor is row ``order[r]`` of the original:
    ``reshape(n_head, 2, head/2).swapaxes(1, 2)`` applied to the row indices."""
    return np.arange(rows).reshape(rows // head, 2, head // 2).swapaxes(1, 2).reshape(rows)


def _short(key: str) -> str:
    """``blocks.0.attn.q.weight`` -> ``q``: the module's last name."""
    parts = key.split(".")
    return parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[-1]


def describe_interleave(pieces: list, members: list[str], axis: int) -> str:
    """One phrase for a tensor laid out in runs from several A tensors: head by head (every run
    of one size, the tensors in turn: GPT-NeoX, BLOOM), group by group (a repeating pattern of
    runs: Falcon's ``[q x n, k, v]`` per key-value group), or the runs as they come."""
    unit = "rows" if axis == 0 else "columns"
    named = [(_short(members[p.part]), p.length) for p in pieces]
    names = list(dict.fromkeys(name for name, _ in named))
    period = len(names)
    cycle = named[:period]
    repeating = len(named) % period == 0 and all(
        [n for n, _ in named[i : i + period]] == names
        and [ln for _, ln in named[i : i + period]] == [ln for _, ln in cycle]
        for i in range(0, len(named), period)
    )
    lengths = {length for _, length in named}
    together, cycles = ", ".join(names), len(named) // period
    if repeating and len(lengths) == 1:
        return f"{together} interleaved head by head: {cycles} heads of {named[0][1]} {unit} each"
    if repeating:
        parts = ", ".join(f"{length} {unit} of {name}" for name, length in cycle)
        return f"{together} interleaved group by group: {cycles} groups of {parts}"
    return f"{together} interleaved in {len(named)} runs of {min(lengths)}–{max(lengths)} {unit}"
