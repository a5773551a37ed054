"""Worker processes that reduce tiles for the index stage.

Threads do not help here: each tile is a dozen numpy calls of ~20 µs, too short to
overlap under the GIL (two threads measured 0.66 GB/s against 0.53 GB/s for one).
``multiprocessing`` is avoided on purpose: its ``spawn`` start method re-imports the
caller's ``__main__``, which breaks any unguarded user script, and ``fork`` is
unsafe in a process that already runs BLAS or Arrow threads. So each worker is a
plain ``python -m weightidx.index._worker_main`` child that reads pickled jobs on stdin and
writes pickled results on stdout, one message per job, in order. Jobs go to
the least-loaded worker and results are read back in submission order, so the output
does not depend on the number of workers. Both ends are this package; nothing
untrusted is ever unpickled.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from weightidx.dtypes import SUPPORTED_DTYPES
from weightidx.errors import WeightidxError
from weightidx.fingerprint.crc import combine, crc32
from weightidx.fingerprint.sketch import (
    GramSums,
    Tile,
    TileResult,
    Workspace,
    merge_results,
    reduce_raw_tile,
    reduce_tile,
)
from weightidx.index.spawn import stop, take
from weightidx.io.safetensors import ShardReader, decode

TileOutput = tuple[int, int, TileResult]  # crc32 of the job's bytes, their length, their reduction


@dataclass(frozen=True)
class TileJob:
    """Consecutive tiles of one tensor, reduced by one worker in one round trip."""

    path: Path
    dtype: str
    begin: int
    strides: tuple[int, int]
    tiles: tuple[Tile, ...]


class TileReducer:
    """Reads, hashes, decodes and reduces tiles with scratch buffers reused across jobs."""

    def __init__(self) -> None:
        self.reader = ShardReader()
        self.workspace = Workspace()

    def __call__(self, job: TileJob) -> TileOutput:
        itemsize = SUPPORTED_DTYPES[job.dtype]
        results = []
        checksum = length = 0
        gram = GramSums()  # every tile of the job adds into it, in order
        for tile in job.tiles:
            raw = self.workspace.array("raw", tile.numel * itemsize, np.uint8)
            self.reader.read_into(job.path, job.begin + tile.first_element * itemsize, memoryview(raw))
            fused = reduce_raw_tile(raw, job.dtype, tile, job.strides, self.workspace, gram)
            if fused is not None:
                tile_crc, result = fused
            else:
                tile_crc = crc32(raw)
                values = decode(raw, job.dtype, out=self.workspace.array("values", tile.numel, np.float32))
                with np.errstate(all="ignore"):  # NaN and Inf are counted, not warned about
                    result = reduce_tile(values, tile, job.strides, self.workspace, gram)
            checksum = combine(checksum, tile_crc, raw.size)
            length += raw.size
            results.append(result)
        return checksum, length, merge_results(results)

    def close(self) -> None:
        self.reader.close()


class InlineReducer:
    """Runs jobs in this process: for one worker, or work too small to repay starting workers."""

    workers = 1

    def __init__(self) -> None:
        self._reduce = TileReducer()
        self._results: deque[TileOutput] = deque()

    def submit(self, job: TileJob) -> None:
        self._results.append(self._reduce(job))

    def next_result(self) -> TileOutput:
        return self._results.popleft()

    def close(self) -> None:
        self._reduce.close()


class ProcessReducer:
    """Worker processes; ``next_result`` returns results in submission order.

    Each job goes to the worker with the fewest elements outstanding, so a few large
    jobs do not leave one worker idle; the worker of every job is remembered so results
    are read back from the right pipe, in order.
    """

    def __init__(self, workers: int) -> None:
        self._procs = take(workers)
        self.workers = workers
        self._pending = [0] * workers  # elements submitted to each worker and not yet read back
        self._order: deque[tuple[int, int]] = deque()  # (worker, elements) per job, in submission order

    def submit(self, job: TileJob) -> None:
        worker = min(range(len(self._procs)), key=self._pending.__getitem__)
        elements = sum(tile.numel for tile in job.tiles)
        proc = self._procs[worker]
        assert proc.stdin is not None
        pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        self._pending[worker] += elements
        self._order.append((worker, elements))

    def next_result(self) -> TileOutput:
        worker, elements = self._order.popleft()
        proc = self._procs[worker]
        assert proc.stdout is not None
        try:
            status, payload = pickle.load(proc.stdout)
        except EOFError:
            raise WeightidxError(
                f"a worker process exited (code {proc.poll()}); rerun, or pass --workers 1"
            ) from None
        self._pending[worker] -= elements
        if status == "error":
            raise payload
        return payload

    def close(self) -> None:
        for proc in self._procs:  # all first, so that they leave together
            if proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        for proc in self._procs:
            stop(proc)


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The worker loop: pickled ``TileJob`` in, pickled ``(status, payload)`` out, until EOF."""
    reduce = TileReducer()
    while True:
        try:
            job = pickle.load(source)
        except (EOFError, pickle.UnpicklingError):  # closed, or cut off by a parent that died mid-job
            break
        try:
            message: tuple[str, object] = ("ok", reduce(job))
        except WeightidxError as exc:
            message = ("error", exc)
        try:
            pickle.dump(message, sink, protocol=pickle.HIGHEST_PROTOCOL)
            sink.flush()
        except BrokenPipeError:  # the parent is gone (killed): leave without a traceback
            os._exit(0)
    reduce.close()
