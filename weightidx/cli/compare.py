"""``weightidx compare``: stage 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import progress, user_errors


@app.command("compare")
def compare_command(
    a: Annotated[
        Path, typer.Argument(help="Model A: an index (.parquet) or a checkpoint (indexed and cached).")
    ],
    b: Annotated[Path, typer.Argument(help="Model B: an index (.parquet) or a checkpoint.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write the report here: JSON, or HTML for a .html file.", callback=not_a_flag
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML report here.", callback=not_a_flag),
    ] = None,
    names: Annotated[
        tuple[str, str] | None, typer.Option("--names", help="Display names of A and B.", callback=not_a_flag)
    ] = None,
    index_only: Annotated[
        bool, typer.Option("--index-only", help="Estimate metrics from the indexes; read no tensor values.")
    ] = False,
    reindex: Annotated[
        bool, typer.Option("--reindex", help="Rebuild an index whose checkpoint changed since it was built.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Which tensors of B come from which tensors of A, under what transform (stage 2)."""
    from weightidx.compare.engine import compare_paths
    from weightidx.compare.report import write_report
    from weightidx.render.text import render_report

    with user_errors(), progress("comparing", not quiet, unit="pairs") as update:
        phases = (lambda phase, done, total: update(done, total, phase, _unit(phase))) if update else None
        report = compare_paths(a, b, names=names, index_only=index_only, reindex=reindex, progress=phases)
        html_out = [path for path in (out, html) if path is not None and (path is html or _is_html(path))]
        if out is not None and out not in html_out:
            write_report(report, out)
        if html_out:
            from weightidx.render.html import write_html

            for path in html_out:
                write_html(report, path)
    for line in report["warnings"]:
        typer.echo(f"Warning: {line}", err=True)
    if not quiet:
        print(render_report(report))


def _is_html(path: Path) -> bool:
    return path.suffix.lower() in (".html", ".htm")


def _unit(phase: str) -> str:
    """What a phase of ``compare_paths`` counts (its docstring)."""
    return {"scoring": "pairs", "verifying": "pairs", "lineage": "axes"}.get(phase, "tensors")
