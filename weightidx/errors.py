"""Every error weightidx raises on purpose.

The library raises these and never prints or exits; the CLI turns each into one line on
stderr (``Error: ...``) and the exit code each class names (see ``weightidx/cli``).
"""

from __future__ import annotations

from pathlib import Path


class WeightidxError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    exit_code = 1


class InputError(WeightidxError):
    """A path the user gave cannot be used (missing, wrong kind of file)."""

    exit_code = 2


class CheckpointError(InputError):
    """A safetensors file or shard set is malformed; names the file (and tensor)."""

    def __init__(self, path: Path | str, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        text = f"{self.path}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class IndexFileError(InputError):
    """A fingerprint index (Parquet) is missing, unreadable or of another schema."""


class OutputError(WeightidxError):
    """The output cannot be written where asked."""

    exit_code = 3


class SqlError(WeightidxError):
    """A query that DuckDB rejects, or one that would write; the message has the position."""

    exit_code = 2


class LoraError(WeightidxError):
    """A LoRA that cannot be read or converted as asked."""

    exit_code = 2
