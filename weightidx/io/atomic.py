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
    """Yield a temporary path to write; it becomes ``out`` only if the block succeeds. Raises
    ``OutputError`` (naming ``out``) when it cannot be written, or names a folder."""
    out = Path(out)
    if not out.name or out.is_dir():
        raise OutputError(f"{out}: is a folder, not a file; choose an output file path")
    remove_stale_temporaries(out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, out)
    except OSError as exc:
        _discard(temporary)
        raise OutputError(
            f"{out}: cannot write ({exc.strerror or exc}); choose another output path"
        ) from None
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: Path) -> None:
    """Remove a temporary; never raises (a read-only folder refuses even the attempt, and the
    error being reported is the one that matters)."""
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)


def ensure_folder(folder: Path, purpose: str, fix: str) -> Path:
    """Create ``folder`` (and its parents) if missing; raises ``OutputError`` naming it, what
    it is for (``purpose``) and ``fix`` when it cannot be created or is not a folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: is a file, not a folder for {purpose}; {fix}") from None
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot create the folder for {purpose} ({exc.strerror or exc}); {fix}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: the folder for {purpose} is not writable; {fix}")
    return folder


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.<name>.<pid>.tmp`` files beside ``out`` left by processes that no longer run."""
    removed = []
    prefix = f".{out.name}."
    try:
        leftovers = list(out.parent.glob(glob.escape(prefix) + "*.tmp"))
    except OSError:  # an unreadable folder: the write itself will say what is wrong
        return removed
    for leftover in leftovers:
        pid = leftover.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            _discard(leftover)
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
