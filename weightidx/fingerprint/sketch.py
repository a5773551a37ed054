"""Pure fingerprint maths: decoded values of one tensor -> its fingerprint.

A tensor is viewed as a 2-D matrix ``(rows, cols)``: leading size-1 dims are
dropped, then ``rows = shape[0]`` and ``cols = prod(shape[1:])``; a 1-D tensor is
``(n, 1)`` and a scalar ``(1, 1)``. So a conv weight ``(out, in, 1, 2, 2)`` and a
linear ``(out, 4*in)`` share one view, and ``(1, 6, d)`` and ``(6, d)`` do too.

The view is cut into *tiles* whose geometry depends only on the shape, so every
result is a function of the values and the shape alone (not of thread count or
read order). Each tile is reduced independently and the reductions are added in
tile order, in float64.

Sketch (version 1), with ``B = 16`` (block) and ``K = 8`` (projections per block):

* ``Q[i, m] = ±1`` is a fixed hash of the absolute index ``i`` (splitmix64), so the
  vector for an axis of length ``n`` is a prefix of the one for any longer axis.
* ``P[t, m] = ±1`` for ``t < B`` has exactly ``B/2`` of each sign per column, so it
  sums to zero over a block: adding a constant to a whole block changes nothing.
* Row sketch, one ``K``-vector per block of ``B`` rows ``β``:
  ``RS[β, m] = Σ_{i∈β} Σ_j P[i mod B, m] · W[i, j] · Q[j, m]``.
* Column sketch, one per block of ``B`` columns ``γ``:
  ``CS[γ, m] = Σ_{j∈γ} Σ_i Q[i, m] · W[i, j] · P[j mod B, m]``.

``Σ RS_A·RS_B / (‖RS_A‖‖RS_B‖)`` estimates the correlation of A and B (each
centred within blocks). Because blocks line up with concatenation boundaries
that are multiples of ``B``, the row-sketch blocks of ``concat(q, k, v)`` along
dim 0 are those of ``q``, ``k`` and ``v`` in turn (likewise column sketches for
dim 1), and the row sketch of ``W`` equals the column sketch of ``Wᵀ``.

Gram sketches (version 2, see ``row_lanes``), for lineage across a width change. Input
side: each row's 16 lane sums of its first two projections, ``v_i`` (32 numbers), give
``Σ_i v_i v_iᵀ`` and ``Σ_i v_i``: a sketch of ``WᵀW`` that does not change when rows are
permuted. Output side (``output_gram``): all 128 lane sums of each row, added into 32
bucket sums (row ``i`` into bucket ``i mod 32`` with sign ``Q[i, 0]``), give ``Z``;
``Z Zᵀ`` with the mean row taken out sketches ``WWᵀ`` whatever the columns hold.

Sample: values at positions ``(i, j)`` with ``i % S_r == 0`` and ``j % S_c == 0``
of the 2-D view, where the strides are powers of two grown until at most
``SAMPLE_CAP`` values remain. Two samples always share the coarser lattice, so
the same elements can be found again inside a slice or after a transpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from weightidx.config import numpy_kernel_forced
from weightidx.dtypes import DTYPES

try:  # the optional compiled kernel (weightidx/_fused.c); numpy does the same work without it
    from weightidx.fingerprint import _fused
except ImportError:
    _fused = None
if numpy_kernel_forced():  # WEIGHTIDX_KERNEL=numpy (tests, benchmarks)
    _fused = None

SKETCH_VERSION = 1
BLOCK = 16
K = 8
GRAM_VERSION = 2
GRAM_PROJECTIONS = 2  # of the K projections, the first two feed the input-side Gram sketch
GRAM_DIM = GRAM_PROJECTIONS * 16  # 16 lanes each (the kernel's vector width)
_LANES = 16
ROW_DIM = K * _LANES  # a row's lane sums for all projections: the output side's view of a row
OUTPUT_BUCKETS = 32
# Narrower rows get no output-side sketch: its cost is per row (ROW_DIM additions), which for
# 1-D tensors (one value a row) would exceed the rest of the work, and their rows say little.
OUTPUT_MIN_COLS = 64
TILE_ELEMS = 1 << 18  # 1 MiB of float32 per tile
TILE_MIN_ROWS = 128  # the column sketch writes K x cols per tile: keep that small next to the tile
SAMPLE_CAP = 1024
_SUM_RUN = 2048  # float32 partial sums cover at most this many values before float64 takes over
_SEED_Q = 0x5745_4947_4854_4944  # "WEIGHTID"
_SEED_P = 0x534B_4554_4348_5031  # "SKETCHP1"
_Q_CACHE_ROWS = 1 << 18
_ONES = np.ones(_SUM_RUN, dtype=np.float32)
_FLOAT32_POWER_LIMIT = 1e8  # above this |x|, Σx⁴ over a run could overflow float32
# Above this |x| a tile is reduced as x·2⁻ᵉ (e: the exponent of the largest |x| seen so far in
# the tensor, ``math.frexp``), so float32 sketches, Gram sums and samples stay finite up to the
# largest F64: lane sums of 16 values squared and summed over a tile's rows reach 1e32 at 2^40.
# A power of two scales exactly; no trained weight comes near it, so fingerprints of real
# tensors are unchanged. The stored sketches and sample are then those of x·2⁻ᵉ; e is the
# exponent of the ``absmax`` column. Power sums are scaled back, or None beyond float64.
SCALE_LIMIT = 2.0**40


def view_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``(rows, cols)`` view of a tensor shape (see the module docstring)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    if not dims:
        return 1, 1
    if len(dims) == 1:
        return dims[0], 1
    return dims[0], math.prod(dims[1:])


@dataclass(frozen=True)
class Tile:
    """A contiguous piece of the 2-D view: rows ``[row0, row1)`` x cols ``[col0, col1)``."""

    row0: int
    row1: int
    col0: int
    col1: int
    cols: int  # total columns of the view; byte offset = (row0*cols + col0) * itemsize

    @property
    def first_element(self) -> int:
        return self.row0 * self.cols + self.col0

    @property
    def numel(self) -> int:
        return (self.row1 - self.row0) * (self.col1 - self.col0)


def whole_rows(cols: int) -> bool:
    """Whether ``plan_tiles`` keeps rows of this width whole (else cuts them into pieces)."""
    return cols * TILE_MIN_ROWS <= TILE_ELEMS * 8


def plan_tiles(rows: int, cols: int) -> list[Tile]:
    """Tiles covering the view in storage order, each a contiguous run of elements.

    Groups of whole rows (a multiple of ``B``, at least ``TILE_MIN_ROWS``) while such a group
    stays within 8 x ``TILE_ELEMS``; wider rows go one at a time, in column pieces of
    ``TILE_ELEMS`` (a multiple of ``B``). The geometry depends on the shape only.
    """
    if rows == 0 or cols == 0:
        return []
    if whole_rows(cols):
        step = max(TILE_MIN_ROWS, (TILE_ELEMS // cols) // BLOCK * BLOCK)
        return [Tile(r, min(r + step, rows), 0, cols, cols) for r in range(0, rows, step)]
    return [
        Tile(r, r + 1, c, min(c + TILE_ELEMS, cols), cols)
        for r in range(rows)
        for c in range(0, cols, TILE_ELEMS)
    ]


def sample_strides(rows: int, cols: int) -> tuple[int, int]:
    """Power-of-two strides leaving at most ``SAMPLE_CAP`` sampled values; longer axis grows first."""
    stride_r = stride_c = 1
    while -(-rows // stride_r) * -(-cols // stride_c) > SAMPLE_CAP:
        n_r, n_c = -(-rows // stride_r), -(-cols // stride_c)
        if n_r > n_c or (n_r == n_c and rows >= cols):
            stride_r *= 2
        else:
            stride_c *= 2
    return stride_r, stride_c


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _signs(start: int, stop: int) -> np.ndarray:
    if _fused is not None:
        out = np.empty((stop - start, K), dtype=np.float32)
        _fused.signs(start, stop, _SEED_Q, out)
        return out
    index = np.arange(start * K, stop * K, dtype=np.uint64) + np.uint64(_SEED_Q)
    bits = (_splitmix64(index) >> np.uint64(63)).astype(np.float32)
    return (1.0 - 2.0 * bits).reshape(stop - start, K)


_q_prefix: np.ndarray | None = None  # Q[:_Q_CACHE_ROWS], made on first use
_q_prefix_t: np.ndarray | None = None  # its transpose, contiguous, for the compiled kernel


def q_rows(start: int, stop: int) -> np.ndarray:
    """``Q[start:stop]``: the fixed ±1 vectors of absolute axis positions."""
    global _q_prefix
    if stop > _Q_CACHE_ROWS:
        return _signs(start, stop)
    if _q_prefix is None:
        _q_prefix = _signs(0, _Q_CACHE_ROWS)
        _q_prefix.flags.writeable = False
    return _q_prefix[start:stop]


def q_rows_t(start: int, stop: int) -> np.ndarray:
    """``Q[start:stop].T`` as a (K, n) view with unit column stride."""
    global _q_prefix_t
    if stop > _Q_CACHE_ROWS:
        return np.ascontiguousarray(_signs(start, stop).T)
    if _q_prefix_t is None:
        _q_prefix_t = np.ascontiguousarray(q_rows(0, _Q_CACHE_ROWS).T)
        _q_prefix_t.flags.writeable = False
    return _q_prefix_t[:, start:stop]


def _balanced_p() -> np.ndarray:
    p = -np.ones((BLOCK, K), dtype=np.float32)
    for m in range(K):
        keys = _splitmix64(np.arange(BLOCK, dtype=np.uint64) + np.uint64(_SEED_P + m * BLOCK))
        p[np.argsort(keys, kind="stable")[: BLOCK // 2], m] = 1.0
    p.flags.writeable = False
    return p


P = _balanced_p()


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float64)


@dataclass
class GramSums:
    """Gram sketch sums (see ``row_lanes`` and ``output_terms``): tiles are added into it in order.

    ``output``: rows 0..31 the bucket sums ``Z``, row 32 the plain sum of the rows' lane sums;
    None until a tile at least ``OUTPUT_MIN_COLS`` wide is added (it is sent back from the
    worker processes with every job, so narrow tensors do not ship 33 KB of zeros).
    """

    gram: np.ndarray = field(default_factory=lambda: _zeros(GRAM_DIM, GRAM_DIM))
    lanes: np.ndarray = field(default_factory=lambda: _zeros(GRAM_DIM))
    output: np.ndarray | None = None
    exponent: int = 0  # the sums are of x·2⁻ᵉ (``SCALE_LIMIT``)

    def output_sums(self) -> np.ndarray:
        """``output``, made on first use."""
        if self.output is None:
            self.output = _zeros(OUTPUT_BUCKETS + 1, ROW_DIM)
        return self.output

    def rescale(self, exponent: int) -> None:
        """Bring the sums to values scaled by 2⁻ᵉ for a larger ``exponent`` (in place)."""
        shift = exponent - self.exponent
        if shift <= 0:
            return
        self.gram *= 2.0 ** (-2 * shift)  # quadratic in the values
        self.lanes *= 2.0**-shift
        if self.output is not None:
            self.output *= 2.0**-shift  # linear: the output Gram is formed from it at the end
        self.exponent = exponent

    def add(self, other: GramSums) -> None:
        self.rescale(other.exponent)
        shift = self.exponent - other.exponent
        self.gram += other.gram * 2.0 ** (-2 * shift)
        self.lanes += other.lanes * 2.0**-shift
        if other.output is not None:
            self.output_sums()[:] += other.output * 2.0**-shift


@dataclass
class TileResult:
    """The reduction of one tile; tiles are added in order by ``TensorAccumulator``."""

    power_sums: np.ndarray  # float64[4]: Σx, Σx², Σx³, Σx⁴ over finite values
    minimum: float
    maximum: float
    zeros: int
    nans: int
    posinf: int
    neginf: int
    row_block0: int  # first row block the row sketch covers
    row_sketch: np.ndarray  # (row blocks touched, K) float64
    col_block0: int  # first column block the column sketch covers
    col_sketch: np.ndarray  # (col blocks touched, K) float64
    sample: np.ndarray  # sampled values of this tile in row-major lattice order
    gram: GramSums  # what the tile added to the Gram sketch (shared by the tiles of a job)
    exponent: int = 0  # power sums, sketches and sample are of x·2⁻ᵉ (``SCALE_LIMIT``); not gram's

    def rescaled(self, exponent: int) -> TileResult:
        """The same reduction for values scaled by 2⁻ᵉ with a larger (or equal) ``exponent``."""
        shift = exponent - self.exponent
        if shift <= 0:
            return self
        factor = 2.0**-shift
        return replace(
            self,
            power_sums=self.power_sums * factor ** np.arange(1, 5),
            row_sketch=self.row_sketch * factor,
            col_sketch=self.col_sketch * factor,
            sample=(self.sample * np.float32(factor)).astype(np.float32),
            exponent=exponent,
        )


def merge_results(results: list[TileResult]) -> TileResult:
    """One ``TileResult`` for consecutive tiles, added in the order given."""
    if len(results) == 1:
        return results[0]
    exponent = max(r.exponent for r in results)
    results = [r.rescaled(exponent) for r in results]
    finite = [r for r in results if r.minimum == r.minimum]
    return TileResult(
        power_sums=np.sum([r.power_sums for r in results], axis=0),
        minimum=min((r.minimum for r in finite), default=math.nan),
        maximum=max((r.maximum for r in finite), default=math.nan),
        zeros=sum(r.zeros for r in results),
        nans=sum(r.nans for r in results),
        posinf=sum(r.posinf for r in results),
        neginf=sum(r.neginf for r in results),
        row_block0=min(r.row_block0 for r in results),
        row_sketch=_add_ranges([(r.row_block0, r.row_sketch) for r in results]),
        col_block0=min(r.col_block0 for r in results),
        col_sketch=_add_ranges([(r.col_block0, r.col_sketch) for r in results]),
        sample=np.concatenate([r.sample for r in results]),
        gram=_merge_grams([r.gram for r in results]),
        exponent=exponent,
    )


def _merge_grams(grams: list[GramSums]) -> GramSums:
    if all(g is grams[0] for g in grams):  # tiles added into one GramSums (a worker's job)
        return grams[0]
    total = GramSums()
    for g in grams:
        total.add(g)
    return total


def _add_ranges(parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    first = min(start for start, _ in parts)
    total = np.zeros((max(start + len(part) for start, part in parts) - first, K), dtype=np.float64)
    for start, part in parts:
        total[start - first : start - first + len(part)] += part
    return total


def _fold_blocks(values: np.ndarray, start: int) -> np.ndarray:
    """Weight rows of ``values`` (n, K) by ``P[(start+i) % B]`` and sum them per block of B.

    ``start`` is a multiple of B except for the column pieces of a single very wide row.
    """
    n = values.shape[0]
    lead = (-start) % BLOCK
    parts = []
    if lead:
        lead = min(lead, n)
        head = values[:lead] * P[start % BLOCK : start % BLOCK + lead]
        parts.append(head.sum(axis=0, dtype=np.float64)[None])
    full = (n - lead) // BLOCK * BLOCK
    if full:
        blocks = values[lead : lead + full].reshape(-1, BLOCK, K)
        parts.append(np.einsum("nbk,bk->nk", blocks, P, dtype=np.float64))
    if lead + full < n:
        tail = values[lead + full :] * P[: n - lead - full]
        parts.append(tail.sum(axis=0, dtype=np.float64)[None])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def row_lanes(matrix: np.ndarray, col0: int, projections: int = GRAM_PROJECTIONS) -> np.ndarray:
    """Each row's count sketch for the Gram sketches, (rows, projections * 16) float64:
    ``v[i, m * 16 + u] = Σ_{j ≡ u (mod 16)} Q[j, m] W[i, j]`` for the first ``projections``
    projections, ``j`` the absolute column (``col0`` is a multiple of 16).

    ``Σ_i v_i v_iᵀ`` sketches the input-side Gram matrix ``WᵀW``: it does not change when
    rows are permuted or rotated, and rows pruned or added change it only by their share, so
    it compares models whose other axis differs. Entries of two different lanes combine
    distinct columns only, so they carry ``WᵀW`` off its diagonal, free of the column norms
    that make unrelated weights look alike.
    """
    rows, cols = matrix.shape
    work = matrix if matrix.dtype == np.float32 else matrix.astype(np.float32)
    q = q_rows(col0, col0 + cols)[:, :projections]
    lanes = np.zeros((rows, projections, _LANES), dtype=np.float64)
    full = cols // _LANES * _LANES
    if full:  # per lane u: W[:, u::16] @ Q[u::16, :m], sixteen products in one batched matmul
        by_lane = work[:, :full].reshape(rows, full // _LANES, _LANES).transpose(2, 0, 1)
        q_by_lane = q[:full].reshape(full // _LANES, _LANES, projections).transpose(1, 0, 2)
        lanes[:] = np.matmul(by_lane, q_by_lane).transpose(1, 2, 0)
    if full < cols:  # the last columns, in the first lanes
        lanes[:, :, : cols - full] += work[:, None, full:] * q[full:].T[None, :, :]
    return lanes.reshape(rows, projections * _LANES)


def output_terms(lanes: np.ndarray, row0: int) -> np.ndarray:
    """What rows ``row0, row0 + 1, ...`` with lane sums ``lanes`` (rows, ROW_DIM) add to
    ``GramSums.output``: ``Q[i, 0] v_i`` into bucket ``i mod 32``, and ``v_i`` into the total.

    ``Z Zᵀ`` then sketches ``WWᵀ`` (rows x rows): it does not change when columns are permuted
    or rotated (up to the column sketch's noise), so it compares models whose input widths
    differ but whose rows are the same (vocabulary, patch outputs, a kept FFN width). Entries
    of two different buckets combine distinct rows only, free of the row norms.
    """
    rows = lanes.shape[0]
    signed = lanes * q_rows(row0, row0 + rows)[:, :1]
    terms = _zeros(OUTPUT_BUCKETS + 1, ROW_DIM)
    for offset in range(min(OUTPUT_BUCKETS, rows)):
        terms[(row0 + offset) % OUTPUT_BUCKETS] = signed[offset::OUTPUT_BUCKETS].sum(axis=0)
    terms[OUTPUT_BUCKETS] = lanes.sum(axis=0)
    return terms


def output_gram(output: np.ndarray, rows: int) -> np.ndarray:
    """The upper triangle of ``Zc Zcᵀ`` (OUTPUT_BUCKETS x OUTPUT_BUCKETS), float32, where
    ``Zc`` is the bucket sums of the rows with their mean taken out: a shared offset of all
    rows would otherwise put the same pattern (fixed by the signs) into every model's sketch."""
    signs = _signs(0, rows)[:, 0]  # not q_rows: the parent process need not build its cache
    padded = np.zeros(-(-rows // OUTPUT_BUCKETS) * OUTPUT_BUCKETS)
    padded[:rows] = signs
    bucket_signs = padded.reshape(-1, OUTPUT_BUCKETS).sum(axis=0)
    centred = output[:OUTPUT_BUCKETS] - np.outer(bucket_signs, output[OUTPUT_BUCKETS] / max(rows, 1))
    return (centred @ centred.T)[np.triu_indices(OUTPUT_BUCKETS)].astype(np.float32)


class Workspace:
    """Scratch arrays one worker thread reuses from tile to tile.

    Fresh megabyte-sized arrays cost a page fault per 4 KiB on every tile; reusing
    them keeps the tile and its scratch in cache.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, size: int, dtype: np.dtype | type) -> np.ndarray:
        """A 1-D scratch array of ``size`` elements (contents undefined)."""
        held = self._arrays.get(name)
        if held is None or held.size < size or held.dtype != np.dtype(dtype):
            held = np.empty(max(size, TILE_ELEMS), dtype=dtype)
            self._arrays[name] = held
        return held[:size]


def _power_sums(flat: np.ndarray, workspace: Workspace | None = None) -> np.ndarray:
    """Σx..Σx⁴: float32 dot products over runs of ``_SUM_RUN`` values, added up in float64."""
    n = flat.size
    head = n - n % _SUM_RUN
    sums = np.zeros(4, dtype=np.float64)
    if head:
        runs = flat[:head].reshape(-1, _SUM_RUN)
        scratch = (workspace or Workspace()).array("squares", head, flat.dtype)
        squares = np.square(runs, out=scratch.reshape(runs.shape))
        ones = _ONES[:_SUM_RUN].astype(runs.dtype, copy=False)
        sums[0] = (runs @ ones).sum(dtype=np.float64)
        sums[1] = (squares @ ones).sum(dtype=np.float64)
        sums[2] = np.vecdot(squares, runs).sum(dtype=np.float64)
        sums[3] = np.vecdot(squares, squares).sum(dtype=np.float64)
    if head < n:
        tail = flat[head:].astype(np.float64)
        squares64 = tail * tail
        sums += (tail.sum(), squares64.sum(), (squares64 * tail).sum(), (squares64 * squares64).sum())
    return sums


def reduce_tile(
    values: np.ndarray,
    tile: Tile,
    strides: tuple[int, int],
    workspace: Workspace | None = None,
    gram: GramSums | None = None,
) -> TileResult:
    """Reduce one decoded tile (``values`` in storage order) to its ``TileResult``; its Gram
    sketch terms are added into ``gram`` (a new ``GramSums`` when None)."""
    n_rows, n_cols = tile.row1 - tile.row0, tile.col1 - tile.col0
    matrix = values.reshape(n_rows, n_cols)
    lowest, highest = matrix.min(), matrix.max()
    nans = posinf = neginf = 0
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        matrix, lowest, highest, nans, posinf, neginf = _drop_nonfinite(matrix)
    is_zero = (workspace or Workspace()).array("is_zero", matrix.size, np.bool_).reshape(matrix.shape)
    zeros = int(np.count_nonzero(np.equal(matrix, 0, out=is_zero))) - nans - posinf - neginf
    largest = max(-float(lowest), float(highest)) if lowest == lowest else 0.0
    gram = gram if gram is not None else GramSums()
    exponent = max(gram.exponent, math.frexp(largest)[1] if largest > SCALE_LIMIT else 0)
    gram.rescale(exponent)
    if exponent:
        matrix = np.ldexp(matrix.astype(np.float64), -exponent)  # exact: a power of two
        sums = _power_sums(matrix.reshape(-1))
    elif largest > _FLOAT32_POWER_LIMIT:
        sums = _power_sums(matrix.reshape(-1).astype(np.float64))  # x⁴ would overflow float32
    else:
        sums = _power_sums(matrix.reshape(-1), workspace)
    work = matrix if matrix.dtype == np.float32 else matrix.astype(np.float32)
    row_part = work @ q_rows(tile.col0, tile.col1)
    col_part = q_rows(tile.row0, tile.row1).T @ work
    with_output = tile.cols >= OUTPUT_MIN_COLS
    lanes = row_lanes(work, tile.col0, K if with_output else GRAM_PROJECTIONS)
    gram.gram += lanes[:, :GRAM_DIM].T @ lanes[:, :GRAM_DIM]
    gram.lanes += lanes[:, :GRAM_DIM].sum(axis=0)
    if with_output:
        gram.output_sums()[:] += output_terms(lanes, tile.row0)
    return TileResult(
        power_sums=sums,
        minimum=float(lowest),
        maximum=float(highest),
        zeros=zeros,
        nans=nans,
        posinf=posinf,
        neginf=neginf,
        row_block0=tile.row0 // BLOCK,
        row_sketch=_fold_blocks(row_part, tile.row0),
        col_block0=tile.col0 // BLOCK,
        col_sketch=_fold_blocks(col_part.T, tile.col0),
        sample=_tile_sample(matrix, tile, strides),
        gram=gram,
        exponent=exponent,
    )


def kernel_name() -> str:
    """Which code reduces tiles in this process: ``"fused-c"`` or ``"numpy"``."""
    return "fused-c" if _fused is not None else "numpy"


def reduce_raw_tile(
    raw: np.ndarray,
    dtype: str,
    tile: Tile,
    strides: tuple[int, int],
    workspace: Workspace,
    gram: GramSums | None = None,
) -> tuple[int, TileResult] | None:
    """``(zlib crc32 of raw, reduction)`` of a tile in one compiled pass over its bytes, or
    ``None`` when the numpy path must do it.

    ``None`` when the kernel is not built, the dtype is not F32/BF16/F16, the tile holds
    NaN, Inf or values whose fourth power overflows float32 (the numpy path counts and
    drops those; ``gram`` is then left as it was), or ``gram`` holds scaled sums. The
    reduction matches ``reduce_tile`` to float32 rounding. The Gram sketch terms are added
    into ``gram`` (new when None).
    """
    kind = DTYPES[dtype].kernel if dtype in DTYPES else None
    if _fused is None or kind is None or tile.numel < _fused.MIN_ELEMENTS:
        return None
    if gram is not None and gram.exponent:  # an earlier tile was scaled: this one must be too
        return None
    n_rows, n_cols = tile.row1 - tile.row0, tile.col1 - tile.col0
    row_sketch = np.zeros(((tile.row1 - 1) // BLOCK - tile.row0 // BLOCK + 1, K), dtype=np.float64)
    col_sketch = np.zeros(((tile.col1 - 1) // BLOCK - tile.col0 // BLOCK + 1, K), dtype=np.float64)
    values = workspace.array("values", min(tile.numel, max(_fused.SCRATCH_ELEMENTS, n_cols)), np.float32)
    gram = gram if gram is not None else GramSums()
    checksum, s1, s2, s3, s4, lowest, highest, zeros, nonfinite = _fused.reduce_tile(
        raw, kind, n_rows, n_cols, tile.row0, tile.col0,
        q_rows_t(tile.col0, tile.col1), q_rows(tile.row0, tile.row1), P, values,
        workspace.array("row_part", n_rows * K, np.float32),
        workspace.array("col_part", n_cols * K, np.float32),
        row_sketch, col_sketch, gram.gram, gram.lanes,
        gram.output_sums() if tile.cols >= OUTPUT_MIN_COLS else None,
    )  # fmt: skip
    if nonfinite:
        return None
    return checksum, TileResult(
        power_sums=np.array([s1, s2, s3, s4], dtype=np.float64),
        minimum=lowest,
        maximum=highest,
        zeros=zeros,
        nans=0,
        posinf=0,
        neginf=0,
        row_block0=tile.row0 // BLOCK,
        row_sketch=row_sketch,
        col_block0=tile.col0 // BLOCK,
        col_sketch=col_sketch,
        # Picked from the raw bytes: the kernel keeps only one block of decoded values.
        sample=_tile_sample(raw.view(DTYPES[dtype].numpy).reshape(n_rows, n_cols), tile, strides),
        gram=gram,
    )


def _drop_nonfinite(matrix: np.ndarray) -> tuple[np.ndarray, float, float, int, int, int]:
    finite = np.isfinite(matrix)
    nans = int(np.count_nonzero(np.isnan(matrix)))
    posinf = int(np.count_nonzero(matrix == np.inf))
    neginf = int(np.count_nonzero(matrix == -np.inf))
    cleaned = np.where(finite, matrix, 0).astype(matrix.dtype)
    if finite.any():
        lowest = float(np.min(matrix, where=finite, initial=np.inf))
        highest = float(np.max(matrix, where=finite, initial=-np.inf))
    else:
        lowest = highest = math.nan
    return cleaned, lowest, highest, nans, posinf, neginf


def _tile_sample(matrix: np.ndarray, tile: Tile, strides: tuple[int, int]) -> np.ndarray:
    stride_r, stride_c = strides
    first_row = -(-tile.row0 // stride_r) * stride_r
    first_col = -(-tile.col0 // stride_c) * stride_c
    picked = matrix[first_row - tile.row0 :: stride_r, first_col - tile.col0 :: stride_c]
    return picked.astype(np.float32).reshape(-1)


@dataclass(frozen=True)
class Fingerprint:
    """Everything the index stores about one tensor's values (``None`` where undefined)."""

    rows: int
    cols: int
    finite: int
    sum_x: float | None  # None where the sum is beyond float64 (|x| above 1e77 or so)
    sum_x2: float | None
    sum_x3: float | None
    sum_x4: float | None
    minimum: float | None
    maximum: float | None
    zeros: int
    nans: int
    posinf: int
    neginf: int
    row_sketch: np.ndarray  # float32 (ceil(rows/B) * K,)
    col_sketch: np.ndarray  # float32 (ceil(cols/B) * K,)
    sample: np.ndarray  # float32 (sample_rows * sample_cols,)
    sample_strides: tuple[int, int]
    sample_shape: tuple[int, int]
    input_gram: np.ndarray | None  # float32 (GRAM_DIM * (GRAM_DIM + 1) / 2,): upper triangle of Σ v vᵀ
    input_lanes: np.ndarray | None  # float32 (GRAM_DIM,): Σ v; both None when rows were split
    output_gram: np.ndarray | None  # float32 (528,): see ``output_gram``; None below OUTPUT_MIN_COLS
    exponent: int = 0  # sketches, Gram sums and sample are of x·2⁻ᵉ (``SCALE_LIMIT``)
    scaled_sums: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # Σ(x·2⁻ᵉ)^k, k = 1..4


class TensorAccumulator:
    """Adds tile results in tile order; ``finish`` gives the tensor's ``Fingerprint``."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.strides = sample_strides(rows, cols)
        self._sums = np.zeros(4, dtype=np.float64)
        self._row_sketch = np.zeros((-(-rows // BLOCK), K), dtype=np.float64)
        self._col_sketch = np.zeros((-(-cols // BLOCK), K), dtype=np.float64)
        self._lowest, self._highest = math.inf, -math.inf
        self._counts = np.zeros(4, dtype=np.int64)  # zeros, nans, +inf, -inf
        self._samples: list[np.ndarray] = []  # in storage order, which is lattice order
        self._gram = np.zeros((GRAM_DIM, GRAM_DIM), dtype=np.float64)
        self._lanes = np.zeros(GRAM_DIM, dtype=np.float64)
        self._output = _zeros(OUTPUT_BUCKETS + 1, ROW_DIM)
        self._exponent = 0

    def _rescale(self, exponent: int) -> None:
        shift = exponent - self._exponent
        if shift <= 0:
            return
        factor = 2.0**-shift
        self._sums *= factor ** np.arange(1, 5)
        self._row_sketch *= factor
        self._col_sketch *= factor
        self._samples = [(s * np.float32(factor)).astype(np.float32) for s in self._samples]
        self._gram *= factor * factor
        self._lanes *= factor
        self._output *= factor
        self._exponent = exponent

    def add(self, result: TileResult) -> None:
        self._rescale(max(result.exponent, result.gram.exponent))
        result = result.rescaled(self._exponent)
        gram = result.gram
        if gram.exponent < self._exponent:
            gram = GramSums(exponent=self._exponent)
            gram.add(result.gram)
        self._sums += result.power_sums
        if result.minimum == result.minimum:  # NaN when the tile had no finite value
            self._lowest = min(self._lowest, result.minimum)
            self._highest = max(self._highest, result.maximum)
        self._counts += (result.zeros, result.nans, result.posinf, result.neginf)
        first_r, first_c = result.row_block0, result.col_block0
        self._row_sketch[first_r : first_r + len(result.row_sketch)] += result.row_sketch
        self._col_sketch[first_c : first_c + len(result.col_sketch)] += result.col_sketch
        self._samples.append(result.sample)
        self._gram += gram.gram
        self._lanes += gram.lanes
        if gram.output is not None:
            self._output += gram.output

    def finish(self) -> Fingerprint:
        zeros, nans, posinf, neginf = (int(c) for c in self._counts)
        stride_r, stride_c = self.strides
        sample_shape = (-(-self.rows // stride_r), -(-self.cols // stride_c))
        sample = self._assemble_sample(sample_shape)
        finite = self.rows * self.cols - nans - posinf - neginf
        gram = lanes = None
        if whole_rows(self.cols):  # a row cut into column pieces has its lanes in several tiles
            gram = self._gram[np.triu_indices(GRAM_DIM)].astype(np.float32)
            lanes = self._lanes.astype(np.float32)
        output = output_gram(self._output, self.rows) if self.cols >= OUTPUT_MIN_COLS else None
        return Fingerprint(
            rows=self.rows,
            cols=self.cols,
            finite=finite,
            sum_x=_unscaled(self._sums[0], self._exponent),
            sum_x2=_unscaled(self._sums[1], 2 * self._exponent),
            sum_x3=_unscaled(self._sums[2], 3 * self._exponent),
            sum_x4=_unscaled(self._sums[3], 4 * self._exponent),
            minimum=self._lowest if finite else None,
            maximum=self._highest if finite else None,
            zeros=zeros,
            nans=nans,
            posinf=posinf,
            neginf=neginf,
            row_sketch=self._row_sketch.astype(np.float32).reshape(-1),
            col_sketch=self._col_sketch.astype(np.float32).reshape(-1),
            sample=sample,
            sample_strides=self.strides,
            sample_shape=sample_shape,
            input_gram=gram,
            input_lanes=lanes,
            output_gram=output,
            exponent=self._exponent,
            scaled_sums=tuple(float(v) for v in self._sums),
        )

    def _assemble_sample(self, sample_shape: tuple[int, int]) -> np.ndarray:
        pieces = self._samples
        sample = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        if self.rows and self.cols:
            assert sample.size == sample_shape[0] * sample_shape[1]
        return sample


def _unscaled(value: float, exponent: int) -> float | None:
    """``value · 2^exponent``, or None where float64 cannot hold it."""
    try:
        return math.ldexp(float(value), exponent)
    except OverflowError:
        return None


def fingerprint_array(values: np.ndarray) -> Fingerprint:
    """Fingerprint an in-memory array (tests and small tools; the index streams instead).

    Example:
        >>> fp = fingerprint_array(np.ones((64, 4), dtype=np.float32))
        >>> fp.rows, fp.cols, fp.sum_x
        (64, 4, 256.0)
    """
    rows, cols = view_2d(values.shape)
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    accumulator = TensorAccumulator(rows, cols)
    for tile in plan_tiles(rows, cols):
        piece = flat[tile.first_element : tile.first_element + tile.numel]
        with np.errstate(all="ignore"):
            accumulator.add(reduce_tile(piece, tile, accumulator.strides))
    return accumulator.finish()
