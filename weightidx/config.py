"""The only module that reads the environment: its variables and the cores this process may use.

- ``WEIGHTIDX_CACHE``: where indexes (and converted pickles) built on demand are kept
  (default ``~/.cache/weightidx``);
- ``WEIGHTIDX_KERNEL``: ``numpy`` forces the index stage's numpy path instead of the compiled
  kernel (tests, benchmarks);
- ``WEIGHTIDX_DEBUG``: any value makes the CLI re-raise errors with their traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_FIX = "set WEIGHTIDX_CACHE to a writable folder"


def cache_folder() -> Path:
    """Where weightidx keeps indexes (and converted pickles) it builds on demand."""
    return Path(os.environ.get("WEIGHTIDX_CACHE", Path.home() / ".cache" / "weightidx"))


def numpy_kernel_forced() -> bool:
    """Whether ``WEIGHTIDX_KERNEL=numpy`` asks for the numpy path over the compiled kernel."""
    return os.environ.get("WEIGHTIDX_KERNEL") == "numpy"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def debug() -> bool:
    """Whether ``WEIGHTIDX_DEBUG`` asks for tracebacks instead of one-line errors."""
    return bool(os.environ.get("WEIGHTIDX_DEBUG"))
