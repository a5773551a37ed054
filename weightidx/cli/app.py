"""The ``weightidx`` Typer application, its root options and the shared ``--quiet`` option."""

from __future__ import annotations

from typing import Annotated

import typer

from weightidx._version import __version__

app = typer.Typer(
    name="weightidx",
    help="Where did these weights come from? Fingerprint checkpoints and trace tensors between models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
