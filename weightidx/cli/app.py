"""The ``weightidx`` Typer application, its root options and the shared ``--quiet`` option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weightidx._version import __version__

#: One grammar for every command: ``-h`` beside ``--help``; plain help, where flags show no
#: value placeholder.
SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

app = typer.Typer(
    name="weightidx",
    help="Where did these weights come from? Fingerprint checkpoints and trace tensors between models.",
    **SETTINGS,
)


def not_a_flag(value: Any) -> Any:
    """Refuse an option value that looks like an option (``--names A -q`` would otherwise name
    model B "-q"); a path that starts with a dash is written ``./-name``."""
    for item in value if isinstance(value, list | tuple) else [value]:
        text = str(item) if isinstance(item, str | Path) else ""
        if text.startswith("-") and text != "-":
            raise typer.BadParameter(
                f"{text!r} looks like an option, not a value (write ./{text} if it is a path)"
            )
    return value


QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary line.")]


def _version(value: bool) -> None:
    if value:
        print(f"weightidx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Where did these weights come from?"""
