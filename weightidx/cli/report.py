"""``weightidx report``: the HTML page of an existing JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import app
from weightidx.cli.common import user_errors


@app.command("report")
def report_command(
    report: Annotated[Path, typer.Argument(help="A JSON report written by `weightidx compare -o`.")],
    html: Annotated[Path, typer.Option("--html", help="The HTML file to write.")],
) -> None:
    """Turn a JSON compare report into a self-contained HTML page (heatmap, histogram, tables)."""
    from weightidx.compare.report import read_report
    from weightidx.render.html import write_html

    with user_errors():
        write_html(read_report(report), html)
    print(f"{html}")
