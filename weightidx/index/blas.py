"""Keep the BLAS that numpy loaded on one thread while weightidx runs its own workers.

weightidx parallelises over tiles itself; an OpenBLAS that also spawns threads
inside every small matrix product oversubscribes the cores (measured 0.36 vs
0.66 GB/s on 2 cores). Only OpenBLAS builds are adjusted (the ones numpy's
wheels ship); with any other BLAS this does nothing, which costs speed only:
each product is computed by one BLAS call whose result does not depend on how
the calling code is threaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Iterator
from pathlib import Path

_PAIRS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_lock = threading.Lock()
_depth = 0
_saved: list[tuple[object, int]] = []


def _openblas_controls() -> list[tuple[object, object]]:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    libraries = set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read_text()))
    controls = []
    for library in sorted(libraries):
        try:
            handle = ctypes.CDLL(library)
        except OSError:
            continue
        for get_name, set_name in _PAIRS:
            if hasattr(handle, get_name) and hasattr(handle, set_name):
                controls.append((getattr(handle, get_name), getattr(handle, set_name)))
                break
    return controls


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Within the block, OpenBLAS uses one thread; the previous setting comes back after."""
    global _depth
    with _lock:
        if _depth == 0:
            for get_threads, set_threads in _openblas_controls():
                _saved.append((set_threads, int(get_threads())))
                set_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _saved:
                    set_threads, previous = _saved.pop()
                    set_threads(previous)


def set_blas_threads(count: int) -> None:
    """Set OpenBLAS's thread count for the rest of this process (worker processes)."""
    for _, set_threads in _openblas_controls():
        set_threads(count)
