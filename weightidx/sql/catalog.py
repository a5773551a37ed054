"""Catalogs: a folder of indexes, searched for the nearest relatives of one model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from weightidx.errors import IndexFileError, InputError
from weightidx.index.schema import METADATA_KEY
from weightidx.sql.runner import run_query

STRONG_MATCH = 0.8


@dataclass(frozen=True)
class Relative:
    """One catalog model and how much of the query model it shares."""

    index: Path
    model: str
    identical_share: float
    strong_share: float
    mean_estimate: float | None


def catalog_indexes(folder: Path | str) -> list[Path]:
    """Every weightidx index (``*.parquet`` with weightidx metadata) in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; pass the folder that holds the catalog's indexes")
    indexes = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (OSError, ValueError):
            continue
        if METADATA_KEY in metadata:
            indexes.append(path)
    if not indexes:
        raise IndexFileError(
            f"{folder}: no weightidx indexes (*.parquet) here; build them with `weightidx index`"
        )
    return indexes


def search_catalog(query: Path | str, folder: Path | str, top: int | None = None) -> list[Relative]:
    """Rank the catalog's models by how much of the query model they share (index-only, no tensor reads).

    Args:
        query: the query model's index (``weightidx index`` output).
        folder: the catalog folder; the query's own file is left out if it is there.
        top: keep at most this many.

    Returns:
        Nearest relatives first: by share of the query's weight matrices with a strong sketch
        match under the same key and view, then mean estimate, then share of identical tensors.
    """
    query = Path(query)
    indexes = [p for p in catalog_indexes(folder) if p.resolve() != query.resolve()]
    rows = run_query("search_relatives", indexes, named={"query": query}, strong=STRONG_MATCH).fetchall()
    relatives = [Relative(Path(f), m, float(i), float(s), e) for f, m, i, s, e in rows]
    return relatives[:top] if top else relatives
