"""Reading tensor values for verification: rectangles of a tensor's 2-D view in few, large,
sequential reads, and the exact metrics of a pair streamed from them.

A row-major tensor stores each row contiguously, so a rectangle of whole rows is one read. A
column slice (q of a fused qkv) or a strip of columns (the part of a transposed tensor that
matches a chunk of rows) is not: read row by row it takes one system call per row (655,958
``preadv`` calls for the 0.8 GB benchmark pair before this module). Here such a rectangle is read
as bands of whole rows, ``BAND_BYTES`` per call, and sliced in memory, unless that would read
more than ``MAX_OVERREAD`` times the bytes needed; then row by row, each piece then being at
least ``1/MAX_OVERREAD`` of a row.

A transposed pair is streamed in strips: ``STRIP_VALUES`` values of A's rows (whole chunks of
``metrics.chunk_rows``, so every sum is the same as chunk by chunk) against the matching columns
of B, read once per strip: a tensor of up to ``STRIP_VALUES`` values is read once, a larger one
``numel / STRIP_VALUES`` times in bands (or row by row, see above). Memory per pair stays below
``STRIP_VALUES`` float32 values a side plus one band.

``verify`` runs the pairs on one thread per core: numpy releases the interpreter lock while it
decodes, reduces and reads, so threads share the work without copying tensors between
processes (``make bench`` reports the speed-up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from weightidx.compare.estimate import region_origin, region_shape
from weightidx.compare.metrics import PairAccumulator, PairMetrics, chunk_rows
from weightidx.compare.types import Candidate
from weightidx.config import available_cores
from weightidx.dtypes import SUPPORTED_DTYPES, lower_precision
from weightidx.index.reader import IndexedModel
from weightidx.io.safetensors import ShardReader, decode

BAND_BYTES = 8 << 20  # one read of whole rows
MAX_OVERREAD = 8  # bytes read per byte needed before column slices are read row by row
STRIP_VALUES = 1 << 24  # values of a transposed pair held at once per side (64 MB as float32)

ViewRead = Callable[[int, int, int, int], np.ndarray]
Count = Callable[[int, int], None]  # progress: (done, total)


def view_reader(reader: ShardReader, model: IndexedModel, key: str) -> ViewRead:
    """``read(r0, r1, c0, c1)``: rows ``r0:r1`` and columns ``c0:c1`` of the tensor's 2-D view,
    decoded (float32 for every dtype up to F32, float64 for F64), shape ``(r1 - r0, c1 - c0)``.

    Raises:
        IndexFileError: the shard is shorter than the index says (``ShardReader.read``).
    """
    row = model.rows[key]
    path, dtype, cols = model.root / row["shard"], row["dtype"], int(row["cols"])
    itemsize, begin = SUPPORTED_DTYPES[dtype], int(row["data_begin"])
    row_bytes = cols * itemsize

    def whole_rows(r0: int, r1: int) -> np.ndarray:
        return decode(reader.read(path, begin + r0 * row_bytes, (r1 - r0) * row_bytes), dtype).reshape(
            r1 - r0, cols
        )

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if r1 <= r0 or c1 <= c0:
            return np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=np.float32)
        if c0 == 0 and c1 == cols:
            return whole_rows(r0, r1)
        if cols <= MAX_OVERREAD * (c1 - c0):
            band = max(1, BAND_BYTES // row_bytes)
            return np.concatenate([whole_rows(r, min(r + band, r1))[:, c0:c1] for r in range(r0, r1, band)])
        pieces = [
            decode(reader.read(path, begin + r * row_bytes + c0 * itemsize, (c1 - c0) * itemsize), dtype)
            for r in range(r0, r1)
        ]
        return np.stack(pieces)

    return read


def whole_view(reader: ShardReader, model: IndexedModel, key: str) -> np.ndarray:
    """The tensor's whole 2-D view, decoded (``view_reader``)."""
    row = model.rows[key]
    return view_reader(reader, model, key)(0, int(row["rows"]), 0, int(row["cols"]))


def exact_metrics(reader: ShardReader, a: IndexedModel, b: IndexedModel, c: Candidate) -> PairMetrics:
    """The exact metrics of a candidate pair, streamed in chunks of whole rows of A's view (or
    of its slice) against the aligned values of B (module doc).

    Raises:
        IndexFileError: a shard is shorter than its index says.
    """
    ra, rb = a.rows[c.a.key], b.rows[c.b.key]
    read_a, read_b = view_reader(reader, a, c.a.key), view_reader(reader, b, c.b.key)
    accumulator = PairAccumulator(lower_precision(ra["dtype"], rb["dtype"]), ra["dtype"] == rb["dtype"])
    a_rows, a_cols = region_shape(ra, c.a)
    a_r0, a_c0 = region_origin(c.a)
    b_r0, b_c0 = region_origin(c.b)
    step = chunk_rows(a_cols)
    if c.relation == "transpose":
        strip = step * max(1, STRIP_VALUES // max(1, step * a_cols))
        for s in range(0, a_rows, strip):
            s1 = min(s + strip, a_rows)
            values_b = read_b(0, int(rb["rows"]), s, s1).T
            for r in range(s, s1, step):
                r1 = min(r + step, s1)
                accumulator.add(read_a(a_r0 + r, a_r0 + r1, a_c0, a_c0 + a_cols), values_b[r - s : r1 - s])
        return accumulator.finish()
    for r in range(0, a_rows, step):
        r1 = min(r + step, a_rows)
        block_a = read_a(a_r0 + r, a_r0 + r1, a_c0, a_c0 + a_cols)
        accumulator.add(block_a, read_b(b_r0 + r, b_r0 + r1, b_c0, b_c0 + a_cols))
    return accumulator.finish()


def verify(
    reader: ShardReader,
    a: IndexedModel,
    b: IndexedModel,
    candidates: Sequence[Candidate],
    progress: Count | None = None,
    threads: int | None = None,
) -> list[PairMetrics]:
    """``exact_metrics`` of each candidate, in order, on ``threads`` threads (default: one per
    core available); ``progress`` is called with (pairs done, pairs) as they finish, in order.

    Raises:
        IndexFileError: a shard is shorter than its index says (the first such pair's).
    """
    workers = min(threads or available_cores(), max(1, len(candidates)))
    if progress is not None:
        progress(0, len(candidates))
    found: list[PairMetrics] = []
    pool = ThreadPoolExecutor(workers)
    try:
        for metrics in pool.map(lambda c: exact_metrics(reader, a, b, c), candidates):
            found.append(metrics)
            if progress is not None:
                progress(len(found), len(candidates))
    finally:  # interrupted (Ctrl-C, SIGTERM, an error): the pairs not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
    return found
