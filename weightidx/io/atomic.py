"""Write files whole or not at all: a temporary beside the target, renamed into place.

An error, Ctrl-C or SIGTERM removes the temporary. A run killed outright (kill -9)
cannot, so each write first removes temporaries for the same target whose process is
gone; the target itself is never half-written either way.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from pathlib import Path

from weightidx.errors import OutputError


@contextlib.contextmanager
def atomic_path(out: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``out`` only if the block succeeds."""
    out = Path(out)
    remove_stale_temporaries(out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"{out}: cannot write ({exc.strerror or exc}); choose another -o") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.<name>.<pid>.tmp`` files beside ``out`` left by processes that no longer run."""
    removed = []
    prefix = f".{out.name}."
    for leftover in out.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
