"""Load the SQL in ``queries/`` by name and run it with bound parameters.

Each ``queries/NAME.sql`` holds one statement, with a header comment saying what
it returns, its ``$named`` parameters and its columns. In a wheel the folder is
packaged as ``weightidx/queries``; in a source checkout it is the top-level
``queries/`` beside the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import duckdb

from .errors import WeightidxError


def queries_folder() -> Path:
    """Where the query files are, for a wheel or a source checkout."""
    packaged = Path(__file__).with_name("queries")
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "queries"


@cache
def load_query(name: str) -> str:
    """The text of ``queries/NAME.sql``."""
    path = queries_folder() / f"{name}.sql"
    if not path.is_file():
        raise WeightidxError(f"no query named '{name}' in {queries_folder()}")
    return path.read_text(encoding="utf-8")


def run_query(name: str, **parameters: object) -> duckdb.DuckDBPyRelation:
    """Run a named query on a fresh in-memory DuckDB connection with ``$name`` parameters bound."""
    connection = duckdb.connect()
    return connection.sql(load_query(name), params=parameters)
