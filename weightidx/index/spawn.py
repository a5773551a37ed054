"""Starting index worker processes, kept free of numpy so that it can happen first.

A worker needs about 0.1 s of CPU to import numpy and weightidx before its first job.
The CLI starts them (``prestarted``) before it imports anything heavy itself, so that
both sides import at once; ``ProcessReducer`` then takes them instead of starting new
ones. Library callers need none of this: without prestarted workers, ``take`` starts them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from weightidx.config import available_cores

PROCESS_POOL_MIN_BYTES = 64 << 20  # below this, starting workers (0.2 s) costs more than they save
_PIPE_BYTES = 1 << 20
# Workers parallelise by being several processes: an OpenBLAS that starts a thread per core
# at import costs each of them 0.1 s of CPU for nothing.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
_prestarted: list[subprocess.Popen] = []


def planned_workers(path: Path | str, workers: int | None) -> int:
    """The worker processes indexing ``path`` will start, judged from file sizes alone
    (0 when it will run in this process); the index stage decides on the tensor bytes."""
    count = workers or available_cores()
    if count <= 1 or _size_on_disk(Path(path)) < PROCESS_POOL_MIN_BYTES:
        return 0
    return count


def _size_on_disk(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(shard.stat().st_size for shard in path.glob("*.safetensors"))
        if path.name.endswith(".json"):
            return sum(shard.stat().st_size for shard in path.parent.glob("*.safetensors"))
        return path.stat().st_size
    except OSError:  # the index stage reports it
        return 0


def start_worker() -> subprocess.Popen:
    """One ``python -m weightidx.index._worker_main`` child, pickled jobs on stdin, results on stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightidx.index._worker_main"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **_WORKER_ENV},
    )
    _widen_pipe(proc.stdout)
    return proc


def take(count: int) -> list[subprocess.Popen]:
    """``count`` workers: prestarted ones first, then new ones."""
    taken = [_prestarted.pop() for _ in range(min(count, len(_prestarted)))]
    return taken + [start_worker() for _ in range(count - len(taken))]


@contextlib.contextmanager
def prestarted(count: int) -> Iterator[None]:
    """Starts ``count`` workers now for a ``take`` inside the block; those not taken (a small
    checkpoint indexed in-process, or an error first) are stopped on exit."""
    _prestarted.extend(start_worker() for _ in range(count))
    try:
        yield
    finally:
        while _prestarted:
            stop(_prestarted.pop())


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Closes a worker's stdin (it leaves at the end of it) and reaps it; kills it if it hangs."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    if proc.stdout is not None:  # end-of-file once it has exited: spares Popen.wait's polling sleeps
        select.select([proc.stdout], [], [], timeout)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _widen_pipe(stream: BinaryIO | None) -> None:
    """Let a worker queue up to 1 MiB of results (Linux's default pipe holds 64 KiB, about
    three results) so it keeps working while this process is busy writing Parquet."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if stream is None or set_size is None:
        return
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size; the default works too
        fcntl.fcntl(stream.fileno(), set_size, _PIPE_BYTES)
