"""Stage 2: shortlist candidate pairs in DuckDB, score them from sketches, verify exactly.

1. ``queries/compare_candidates.sql`` joins the two indexes on 2-D views that fit a
   transform (same view, transpose, slice along rows or columns either way).
2. Each candidate is scored from the sketches alone (``estimate.py``); for slices every
   block-aligned offset on a ``gcd`` grid is tried.
3. A greedy one-to-one assignment keeps the best-scoring candidates whose score stands
   clear of the null of unrelated tensors.
4. Only the kept pairs are reloaded from the safetensors files, chunk by chunk, for
   exact metrics; without the files (or with ``index_only``) metrics are estimated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import lineage
from .checkpoint import SUPPORTED_DTYPES, ShardReader, decode
from .estimate import Sketches, centred_values, same_layout, slice_scan, transposed
from .fingerprint import BLOCK
from .indexes import IndexedModel, cached_index, is_index_file, load_index
from .metrics import PairAccumulator, PairMetrics, lower_precision, pair_metrics, z_score
from .permutation import MAX_VALUES, Permutation, moments_agree, recover
from .permutation import apply as apply_permutation
from .report import MATCH, PARTIAL, build_report, is_matrix
from .sql import run_query

_NULL_SIGMAS = 6.0  # a kept candidate's estimate must exceed 6x the null spread of its sketch
_MIN_ESTIMATE = 0.2
_CHUNK_ELEMS = 1 << 20  # per side; float32 chunk sums stay accurate to ~1e-6


@dataclass(frozen=True)
class Region:
    """A tensor or a slice of its 2-D view (axis 0 = rows, 1 = columns)."""

    key: str
    axis: int | None = None
    start: int = 0
    stop: int = 0

    def overlaps(self, other: Region) -> bool:
        if self.key != other.key:
            return False
        if self.axis is None or other.axis is None or self.axis != other.axis:
            return True
        return self.start < other.stop and other.start < self.stop

    def as_json(self) -> dict:
        slice_ = None if self.axis is None else {"axis": self.axis, "start": self.start, "stop": self.stop}
        return {"key": self.key, "slice": slice_}


@dataclass(frozen=True)
class Candidate:
    a: Region
    b: Region
    relation: str
    estimate: float
    sketch_values: int
    identical: bool


@dataclass
class Match:
    """One kept pair with its metrics and verdict."""

    candidate: Candidate
    metrics: PairMetrics
    evidence: str
    transform: list[str] = field(default_factory=list)
    permutation: Permutation | None = None

    @property
    def strength(self) -> float:
        if self.metrics.max_abs_diff == 0 and self.metrics.n:
            return 1.0  # equal values: a match even where correlation is undefined (all zeros)
        return abs(self.metrics.correlation) if self.metrics.correlation is not None else 0.0

    @property
    def verdict(self) -> str:
        return "match" if self.strength > MATCH else "partial" if self.strength >= PARTIAL else "different"


def compare_indexes(
    a: IndexedModel,
    b: IndexedModel,
    *,
    index_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Compare two indexed models and return the report (``schema_version`` 1) as a dict.

    Args:
        a, b: the two sides (``load_index``).
        index_only: estimate every metric from the fingerprints, reading no tensor values.
        progress: called with (pairs verified, pairs to verify).
    """
    candidates = list(_score_candidates(a, b))
    kept = _assign(candidates, tie_key=lambda key: _content_key(b.rows[key]))
    exact = not index_only and a.files_present() and b.files_present()
    matches = []
    with ShardReader() as reader:  # one set of open shard files for verification, permutations, lineage
        for done, candidate in enumerate(kept):
            if exact:
                metrics = _exact_metrics(reader, a, b, candidate)
            else:
                metrics = _estimated_metrics(a, b, candidate)
            matches.append(Match(candidate, metrics, "exact" if exact else "estimated"))
            if progress is not None:
                progress(done + 1, len(kept))
        if exact:
            matches += _permuted_matches(reader, a, b, kept)
        for match in matches:
            match.transform = _transforms(a, b, match)
        comparable = any(
            c.relation in ("same", "transpose") and is_matrix(a.rows[c.a.key]) and is_matrix(b.rows[c.b.key])
            for c in candidates
        )
        report = build_report(a, b, matches, comparable)
        if not any(is_matrix(b.rows[m.candidate.b.key]) and m.verdict != "different" for m in matches):
            if exact:
                report["lineage"] = lineage.analyse(a, b, lambda model, key: _whole_view(reader, model, key))
            else:
                report["lineage"] = lineage.analyse_sketches(a, b)
            report["summary"]["verdict"] += " Across the width change: " + report["lineage"]["verdict"]
    return report


def _whole_view(reader: ShardReader, model: IndexedModel, key: str) -> np.ndarray:
    row = model.rows[key]
    return _view_reader(reader, model, key)(0, int(row["rows"]), 0, int(row["cols"]))


_MAX_PERMUTATION_PAIRS = 64


def _permuted_matches(
    reader: ShardReader, a: IndexedModel, b: IndexedModel, kept: list[Candidate]
) -> list[Match]:
    """Left-over matrices of B that are left-over matrices of A with rows or columns reordered."""
    used_a = {c.a.key for c in kept}
    used_b = {c.b.key for c in kept}
    free_a = [k for k, r in a.rows.items() if k not in used_a and is_matrix(r) and r["supported"]]
    matches: list[Match] = []
    tried = 0
    for b_key, row_b in b.rows.items():
        if b_key in used_b or not is_matrix(row_b) or not row_b["supported"]:
            continue
        for a_key in free_a:
            row_a = a.rows[a_key]
            if (row_a["rows"], row_a["cols"]) != (row_b["rows"], row_b["cols"]) or not moments_agree(
                row_a, row_b
            ):
                continue
            if row_a["numel"] > MAX_VALUES or tried >= _MAX_PERMUTATION_PAIRS:
                continue
            tried += 1
            match = _try_permutation(reader, a, b, a_key, b_key)
            if match is not None:
                matches.append(match)
                free_a.remove(a_key)
                break
    return matches


def _try_permutation(
    reader: ShardReader, a: IndexedModel, b: IndexedModel, a_key: str, b_key: str
) -> Match | None:
    values_a, values_b = _whole_view(reader, a, a_key), _whole_view(reader, b, b_key)
    for axis in (0, 1):
        found = recover(values_a, values_b, axis)
        if found is None or found.moved == 0:
            continue
        accumulator = PairAccumulator(
            lower_precision(a.rows[a_key]["dtype"], b.rows[b_key]["dtype"]),
            a.rows[a_key]["dtype"] == b.rows[b_key]["dtype"],
        )
        accumulator.add(apply_permutation(values_a, found), values_b)
        metrics = accumulator.finish()
        if metrics.correlation is not None and abs(metrics.correlation) >= PARTIAL:
            relation = "permute_rows" if axis == 0 else "permute_cols"
            candidate = Candidate(Region(a_key), Region(b_key), relation, metrics.correlation, 0, False)
            return Match(candidate, metrics, "exact", permutation=found)
    return None


def _score_candidates(a: IndexedModel, b: IndexedModel) -> Iterator[Candidate]:
    pairs = run_query("compare_candidates", [a.index, b.index], block=BLOCK).fetchall()
    sketches: dict[tuple[str, str], Sketches] = {}

    def sketch(side: str, key: str) -> Sketches:
        if (side, key) not in sketches:
            sketches[side, key] = Sketches.from_row((a if side == "a" else b).rows[key])
        return sketches[side, key]

    for a_key, b_key, relation, identical in pairs:
        if relation == "same" and int(a.rows[a_key]["cols"]) == 1:
            # A vector's sketch sees only variation inside blocks of 16 values, which misses smooth
            # vectors (position ids); its sample holds up to 1,024 of its values, so use Pearson on that.
            region_a, region_b = Region(a_key), Region(b_key)
            probe = Candidate(region_a, region_b, relation, 0.0, 0, bool(identical))
            va, vb = aligned_samples(a.rows[a_key], b.rows[b_key], probe)
            estimate = _pearson(va, vb)
            if estimate is not None or identical:
                yield Candidate(
                    region_a, region_b, relation, 1.0 if identical else estimate, va.size, bool(identical)
                )
            continue
        sa, sb = sketch("a", a_key), sketch("b", b_key)
        for a_region, b_region, estimate, values in _estimates(a_key, b_key, sa, sb, relation):
            if estimate is None and not identical:
                continue
            yield Candidate(
                a_region, b_region, relation, 1.0 if identical else estimate, values, bool(identical)
            )


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 4:
        return None
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.sqrt((x @ x) * (y @ y)))
    return float(x @ y) / norm if norm > 0 else None


def _estimates(
    a_key: str, b_key: str, sa: Sketches, sb: Sketches, relation: str
) -> Iterator[tuple[Region, Region, float | None, int]]:
    if relation == "same":
        yield Region(a_key), Region(b_key), same_layout(sa, sb), centred_values(sa)
    elif relation == "transpose":
        yield Region(a_key), Region(b_key), transposed(sa, sb), centred_values(sa)
    elif relation in ("a_in_b_rows", "a_in_b_cols", "b_in_a_rows", "b_in_a_cols"):
        axis = 0 if relation.endswith("rows") else 1
        part, whole = (sa, sb) if relation.startswith("a_in_b") else (sb, sa)
        part_len = part.rows if axis == 0 else part.cols
        whole_len = whole.rows if axis == 0 else whole.cols
        step = max(BLOCK, math.gcd(part_len, whole_len) // BLOCK * BLOCK)
        starts, estimates = slice_scan(part, whole, axis, step)
        values = (part.row_sketch if axis == 0 else part.col_sketch).size
        for start, estimate in zip(starts.tolist(), estimates.tolist(), strict=True):
            if not _clear_of_null(estimate, values):
                continue
            region = (start, start + part_len)
            if relation.startswith("a_in_b"):
                yield Region(a_key), Region(b_key, axis, *region), estimate, values
            else:
                yield Region(a_key, axis, *region), Region(b_key), estimate, values


def _clear_of_null(estimate: float, sketch_values: int) -> bool:
    """Whether an estimate stands clear of unrelated tensors (spread 1/sqrt(values))."""
    return abs(estimate) >= _MIN_ESTIMATE and abs(estimate) * math.sqrt(sketch_values) >= _NULL_SIGMAS


def _content_key(row: dict) -> tuple:
    """Tensors with equal keys here hold the same bytes (tied weights)."""
    return (row["dtype"], tuple(row["shape"]), row["crc32"], row["sum_x2"], row["sum_x4"])


def _assign(candidates: list[Candidate], tie_key: Callable[[str], tuple]) -> list[Candidate]:
    """Greedy one-to-one: strongest estimates first; each region of A and of B used once.

    The exception is weights B really ties: a B tensor byte-identical to another B tensor
    may map to the A region that other one took (e.g. an embedding and a tied LM head).
    """

    ranked = sorted(
        (c for c in candidates if c.identical or _clear_of_null(c.estimate, c.sketch_values)),
        key=lambda c: (not c.identical, -abs(c.estimate), c.relation != "same", c.b.key != c.a.key, c.b.key),
    )
    kept: list[Candidate] = []
    used_a: dict[str, list[tuple[Region, tuple]]] = defaultdict(list)
    used_b: dict[str, list[Region]] = defaultdict(list)
    for candidate in ranked:
        if any(candidate.b.overlaps(r) for r in used_b[candidate.b.key]):
            continue
        tie = (*tie_key(candidate.b.key), candidate.b.axis, candidate.b.start, candidate.relation)
        if any(candidate.a.overlaps(r) and t != tie for r, t in used_a[candidate.a.key]):
            continue
        kept.append(candidate)
        used_a[candidate.a.key].append((candidate.a, tie))
        used_b[candidate.b.key].append(candidate.b)
    return sorted(kept, key=lambda c: (c.b.key, c.b.start))


def _view_reader(
    reader: ShardReader, model: IndexedModel, key: str
) -> Callable[[int, int, int, int], np.ndarray]:
    """read(r0, r1, c0, c1) -> float array of that block of the tensor's 2-D view."""
    row = model.rows[key]
    path, dtype, cols = model.root / row["shard"], row["dtype"], int(row["cols"])
    itemsize, begin = SUPPORTED_DTYPES[dtype], int(row["data_begin"])

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if c0 == 0 and c1 == cols:
            raw = reader.read(path, begin + r0 * cols * itemsize, (r1 - r0) * cols * itemsize)
            return decode(raw, dtype).reshape(r1 - r0, cols)
        pieces = [
            decode(reader.read(path, begin + (r * cols + c0) * itemsize, (c1 - c0) * itemsize), dtype)
            for r in range(r0, r1)
        ]
        return np.stack(pieces) if pieces else np.zeros((0, c1 - c0), dtype=np.float32)

    return read


def _exact_metrics(reader: ShardReader, a: IndexedModel, b: IndexedModel, c: Candidate) -> PairMetrics:
    """Stream both sides in row chunks of A's view (or its slice) and accumulate the sums."""
    ra, rb = a.rows[c.a.key], b.rows[c.b.key]
    read_a, read_b = _view_reader(reader, a, c.a.key), _view_reader(reader, b, c.b.key)
    accumulator = PairAccumulator(lower_precision(ra["dtype"], rb["dtype"]), ra["dtype"] == rb["dtype"])
    a_rows, a_cols = _region_shape(ra, c.a)
    a_r0, a_c0 = _region_origin(c.a)
    b_r0, b_c0 = _region_origin(c.b)
    step = max(1, _CHUNK_ELEMS // max(a_cols, 1))
    for r in range(0, a_rows, step):
        r1 = min(r + step, a_rows)
        block_a = read_a(a_r0 + r, a_r0 + r1, a_c0, a_c0 + a_cols)
        if c.relation == "transpose":
            block_b = read_b(0, int(rb["rows"]), r, r1).T
        else:
            block_b = read_b(b_r0 + r, b_r0 + r1, b_c0, b_c0 + a_cols)
        accumulator.add(block_a, block_b)
    return accumulator.finish()


def _region_shape(row: dict, region: Region) -> tuple[int, int]:
    rows, cols = int(row["rows"]), int(row["cols"])
    if region.axis == 0:
        rows = region.stop - region.start
    elif region.axis == 1:
        cols = region.stop - region.start
    return rows, cols


def _region_origin(region: Region) -> tuple[int, int]:
    return (region.start, 0) if region.axis == 0 else (0, region.start) if region.axis == 1 else (0, 0)


def _estimated_metrics(a: IndexedModel, b: IndexedModel, c: Candidate) -> PairMetrics:
    """Correlation from the sketches; cosine, scale and differences from the aligned samples."""
    va, vb = aligned_samples(a.rows[c.a.key], b.rows[c.b.key], c)
    if va.size:
        d = vb - va
        sample = pair_metrics(
            va.size, va.sum(), vb.sum(), va @ va, vb @ vb, va @ vb, d @ d, float(np.abs(d).max()), None
        )
    else:
        sample = pair_metrics(0, 0, 0, 0, 0, 0, 0, None, None)
    return PairMetrics(
        n=int(a.rows[c.a.key]["numel"]) if c.a.axis is None else sample.n,
        cosine=sample.cosine,
        correlation=1.0 if c.identical else c.estimate,
        relative_l2=0.0 if c.identical else sample.relative_l2,
        scale=1.0 if c.identical else sample.scale,
        max_abs_diff=0.0 if c.identical else sample.max_abs_diff,
        equal_after_cast=1.0 if c.identical else None,
        z_score=z_score(c.estimate, c.sketch_values),
    )


def aligned_samples(row_a: dict, row_b: dict, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """Sample values of A and B at the same elements under the candidate's mapping."""
    grid_a = np.asarray(row_a["sample"], dtype=np.float64).reshape(row_a["sample_rows"], row_a["sample_cols"])
    grid_b = np.asarray(row_b["sample"], dtype=np.float64).reshape(row_b["sample_rows"], row_b["sample_cols"])
    sa = (int(row_a["sample_stride_rows"]), int(row_a["sample_stride_cols"]))
    sb = (int(row_b["sample_stride_rows"]), int(row_b["sample_stride_cols"]))
    swap = c.relation == "transpose"
    stride_b_in_a = (sb[1], sb[0]) if swap else sb
    step = (max(sa[0], stride_b_in_a[0]), max(sa[1], stride_b_in_a[1]))
    rows, cols = _region_shape(row_a, c.a)
    a0, b0 = _region_origin(c.a), _region_origin(c.b)
    ii, jj = np.arange(0, rows, step[0]), np.arange(0, cols, step[1])
    if swap:
        b_rows, b_cols = jj + b0[0], ii + b0[1]
    else:
        b_rows, b_cols = ii + b0[0], jj + b0[1]
    a_rows, a_cols = ii + a0[0], jj + a0[1]
    if any(
        x.size and x[0] % s for x, s in ((a_rows, sa[0]), (a_cols, sa[1]), (b_rows, sb[0]), (b_cols, sb[1]))
    ):
        return np.zeros(0), np.zeros(0)  # the slice does not start on both lattices
    va = grid_a[np.ix_(a_rows // sa[0], a_cols // sa[1])]
    vb = grid_b[np.ix_(b_rows // sb[0], b_cols // sb[1])]
    return va.ravel(), (vb.T if swap else vb).ravel()


def _transforms(a: IndexedModel, b: IndexedModel, match: Match) -> list[str]:
    c, ra, rb = match.candidate, a.rows[match.candidate.a.key], b.rows[match.candidate.b.key]
    steps = []
    if c.a.key != c.b.key:
        steps.append("rename")
    if ra["dtype"] != rb["dtype"]:
        steps.append(f"cast:{ra['dtype'].lower()}->{rb['dtype'].lower()}")
    if c.relation.startswith("permute"):
        steps.append("permute:rows" if c.relation == "permute_rows" else "permute:cols")
    elif c.relation == "transpose":
        steps.append("transpose")
    elif c.relation.startswith("a_in_b"):
        steps.append(f"concat:{c.b.axis}")
    elif c.relation.startswith("b_in_a"):
        steps.append(f"split:{c.a.axis}")
    elif list(ra["shape"]) != list(rb["shape"]):
        steps.append("reshape")
    scale = match.metrics.scale
    if scale is not None and match.strength > MATCH and abs(scale - 1) > 0.02:
        steps.append(f"scale:{scale:.4g}")
    return steps


def compare_paths(
    a: Path | str,
    b: Path | str,
    *,
    names: tuple[str, str] | None = None,
    index_only: bool = False,
    cache: Path | None = None,
    reindex: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Compare two models given as index files or checkpoints (indexed on first use, then cached).

    With ``reindex``, an index whose checkpoint changed since it was built is rebuilt in place.
    """
    from .index import index_checkpoint

    sides = []
    for position, path in enumerate((Path(a), Path(b))):
        name = names[position] if names else None
        index = path if is_index_file(path) else cached_index(path, cache)
        model = load_index(index, name)
        if reindex and model.stale_shards():
            index_checkpoint(model.source, index, name=model.name)
            model = load_index(index, name)
        sides.append(model)
    return compare_indexes(sides[0], sides[1], index_only=index_only, progress=progress)
