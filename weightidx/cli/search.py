"""``weightidx search``: rank a catalog of indexes by what they share with a model."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import user_errors


class SearchFormat(StrEnum):
    table = "table"
    json = "json"


@app.command("search")
def search_command(
    model: Annotated[Path, typer.Argument(help="The model to place: an index or a checkpoint.")],
    catalog: Annotated[
        Path, typer.Option("--catalog", help="Folder of indexes to search.", callback=not_a_flag)
    ],
    top: Annotated[int, typer.Option("--top", min=1, help="Show at most this many relatives.")] = 10,
    format: Annotated[SearchFormat, typer.Option("--format", help="Output format.")] = SearchFormat.table,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.", callback=not_a_flag)
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Rank the models of a catalog by how much of MODEL they share (index-only)."""
    from weightidx.index.cache import cached_index
    from weightidx.index.reader import is_index_file
    from weightidx.io.atomic import atomic_path
    from weightidx.sql.catalog import search_catalog

    with user_errors():
        query = model if is_index_file(model) else cached_index(model)
        relatives = search_catalog(query, catalog, top)
        text = _json(relatives) if format is SearchFormat.json else _table(relatives)
        if out is not None:
            with atomic_path(out) as temporary:
                temporary.write_text(text + "\n", encoding="utf-8")
    if out is None:
        print(text)
    elif not quiet:
        print(f"{len(relatives)} relatives -> {out}")


def _table(relatives: list) -> str:
    lines = [f"{'model':<32} {'strong matrices':>16} {'mean estimate':>14} {'identical':>10}  index"]
    for r in relatives:
        estimate = "-" if r.mean_estimate is None else f"{r.mean_estimate:.4f}"
        lines.append(
            f"{r.model:<32} {r.strong_share:>16.1%} {estimate:>14} {r.identical_share:>10.1%}  {r.index}"
        )
    return "\n".join(lines)


def _json(relatives: list) -> str:
    import json

    return json.dumps(
        [
            {
                "model": r.model,
                "index": str(r.index),
                "strong_share": r.strong_share,
                "mean_estimate": r.mean_estimate,
                "identical_share": r.identical_share,
            }
            for r in relatives
        ],
        indent=1,
    )
