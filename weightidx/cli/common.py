"""What every command shares: the one place where errors become messages and exit codes,
SIGTERM handling, progress bars on a terminal, human sizes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import typer

from weightidx import config
from weightidx.errors import WeightidxError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The one place where exceptions become messages and exit codes."""
    try:
        yield
    except WeightidxError as exc:
        if config.debug():
            raise
        print(f"Error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if config.debug():
            raise
        print("Interrupted: nothing was written.", file=sys.stderr)
        raise typer.Exit(130) from None
    except Terminated:
        print("Terminated: nothing was written.", file=sys.stderr)
        raise typer.Exit(143) from None


class Terminated(Exception):
    """SIGTERM, raised where the program is so that every temporary file is cleaned up."""


def on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def progress(label: str, enabled: bool, unit: str = "bytes") -> Iterator[Callable[..., None] | None]:
    """A progress bar on stderr (bytes with throughput, or a count), only when stderr is a terminal;
    ``update(done, total)``, or ``update(done, total, phase, unit)`` to relabel it for a new phase."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    # Imported here: rich takes 30 ms to import, which every command would pay before its work.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if unit == "bytes":
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeRemainingColumn(),
        )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None, unit=unit)

        def update(done: int, total: int, phase: str | None = None, phase_unit: str | None = None) -> None:
            if phase is None:
                bar.update(task, completed=done, total=total)
            else:  # a new phase relabels the bar
                bar.update(task, completed=done, total=total, description=phase, unit=phase_unit or unit)

        yield update


def size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
