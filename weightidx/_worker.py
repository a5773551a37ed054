"""Worker processes that reduce tiles for the index stage.

Threads do not help here: each tile is a dozen numpy calls of ~20 µs, too short to
overlap under the GIL (two threads measured 0.66 GB/s against 0.53 GB/s for one).
``multiprocessing`` is avoided on purpose: its ``spawn`` start method re-imports the
caller's ``__main__``, which breaks any unguarded user script, and ``fork`` is
unsafe in a process that already runs BLAS or Arrow threads. So each worker is a
plain ``python -m weightidx._worker_main`` child that reads pickled jobs on stdin and
writes pickled results on stdout, one message per job, in order. Jobs are
assigned round-robin and results read back in the same order, so the output does
not depend on the number of workers. Both ends are this package; nothing
untrusted is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .checkpoint import SUPPORTED_DTYPES, ShardReader, decode
from .crc import combine
from .errors import WeightidxError
from .fingerprint import Tile, TileResult, Workspace, merge_results, reduce_tile

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
        for tile in job.tiles:
            raw = self.workspace.array("raw", tile.numel * itemsize, np.uint8)
            self.reader.read_into(job.path, job.begin + tile.first_element * itemsize, memoryview(raw))
            checksum = combine(checksum, zlib.crc32(raw), raw.size)
            length += raw.size
            values = decode(raw, job.dtype, out=self.workspace.array("values", tile.numel, np.float32))
            with np.errstate(all="ignore"):  # NaN and Inf are counted, not warned about
                results.append(reduce_tile(values, tile, job.strides, self.workspace))
        return checksum, length, merge_results(results)

    def close(self) -> None:
        self.reader.close()


class InlineReducer:
    """Runs jobs in this process: for one worker, or work too small to repay starting workers."""

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
    """Worker processes fed round-robin; ``next_result`` returns results in submission order."""

    def __init__(self, workers: int) -> None:
        command = [sys.executable, "-m", "weightidx._worker_main"]
        self._procs = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(workers)
        ]
        self._submitted = 0
        self._received = 0

    def submit(self, job: TileJob) -> None:
        proc = self._procs[self._submitted % len(self._procs)]
        assert proc.stdin is not None
        pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        self._submitted += 1

    def next_result(self) -> TileOutput:
        proc = self._procs[self._received % len(self._procs)]
        assert proc.stdout is not None
        try:
            status, payload = pickle.load(proc.stdout)
        except EOFError:
            raise WeightidxError(
                f"a worker process exited (code {proc.poll()}); rerun, or pass --workers 1"
            ) from None
        self._received += 1
        if status == "error":
            raise payload
        return payload

    def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


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
