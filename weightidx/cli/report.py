"""``weightidx report``: the HTML page of an existing JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import user_errors


@app.command("report")
def report_command(
    report: Annotated[Path, typer.Argument(help="A JSON report written by `weightidx compare -o`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", "--html", help="The HTML file to write.", callback=not_a_flag)
    ],
    quiet: QuietOption = False,
) -> None:
    """Turn a JSON compare report into a self-contained HTML page (heatmap, histogram, tables)."""
    from weightidx.compare.report import read_report
    from weightidx.render.html import write_html

    with user_errors():
        write_html(read_report(report), out)
    if not quiet:
        print(f"{out}")
