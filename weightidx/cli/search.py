"""``weightidx search``: rank a catalog of indexes by what they share with a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import app
from weightidx.cli.common import user_errors


@app.command("search")
def search_command(
    model: Annotated[Path, typer.Argument(help="The model to place: an index or a checkpoint.")],
    catalog: Annotated[Path, typer.Option("--catalog", help="Folder of indexes to search.")],
    top: Annotated[int, typer.Option("--top", min=1, help="Show at most this many relatives.")] = 10,
) -> None:
    """Rank the models of a catalog by how much of MODEL they share (index-only)."""
    from weightidx.index.cache import cached_index
    from weightidx.index.reader import is_index_file
    from weightidx.sql.catalog import search_catalog

    with user_errors():
        query = model if is_index_file(model) else cached_index(model)
        relatives = search_catalog(query, catalog, top)
    print(f"{'model':<32} {'strong matrices':>16} {'mean estimate':>14} {'identical':>10}  index")
    for r in relatives:
        estimate = "-" if r.mean_estimate is None else f"{r.mean_estimate:.4f}"
        print(f"{r.model:<32} {r.strong_share:>16.1%} {estimate:>14} {r.identical_share:>10.1%}  {r.index}")
