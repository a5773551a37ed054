"""SQL over fingerprint tables: named queries from ``queries/`` and read-only ad-hoc SQL.

Indexes are exposed as views: one index is ``t``; two are ``a`` and ``b``; every index,
however many, is also in ``catalog`` with a ``filename`` column. Each
``queries/NAME.sql`` holds one statement with a header comment (what it returns, its
views and ``$named`` parameters, its columns). In a wheel the folder is packaged as
``weightidx.sql.queries``: the repository's top-level ``queries/``.

The connection a statement runs in is a sandbox: it may read the given index files and
nothing else (DuckDB's ``allowed_paths`` with ``enable_external_access`` off, then the
configuration locked), and it never installs or loads an extension. ``read_text``,
``read_blob``, ``read_csv``, ``glob``, URLs and any other path fail with one line that
says so, also inside ``query(...)`` and ``EXPLAIN``. Results are written to files by a
separate connection that runs no user SQL.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import duckdb

from weightidx.errors import IndexFileError, SqlError, WeightidxError
from weightidx.index.reader import is_index_file
from weightidx.io.atomic import atomic_path

_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def queries_folder() -> Path:
    """Where the query files are: ``weightidx/sql/queries`` in a wheel (package data), the
    repository's top-level ``queries/`` in a source checkout (pyproject.toml maps one to the
    other)."""
    installed = Path(__file__).with_name("queries")
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "queries"


@cache
def load_query(name: str) -> str:
    """The text of ``queries/NAME.sql``."""
    path = queries_folder() / f"{name}.sql"
    if not path.is_file():
        raise WeightidxError(f"no query named '{name}' in {queries_folder()}")
    return path.read_text(encoding="utf-8")


def connect(
    indexes: Sequence[Path | str], named: dict[str, Path | str] | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the indexes registered as views (see module doc);
    ``named`` adds one view per extra index under the given name. Sandboxed: it reads these
    files and no others, and its configuration is locked.

    Raises ``IndexFileError`` when an index file does not exist."""
    paths = [Path(p).resolve() for p in indexes]
    extra = {name: Path(p).resolve() for name, p in (named or {}).items()}
    for path in [*paths, *extra.values()]:
        if not path.is_file():
            raise IndexFileError(f"{path}: no such index; run `weightidx index` first")
        if not is_index_file(path):
            raise IndexFileError(f"{path}: not a Parquet index; run `weightidx index` on it first")
    connection = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    connection.execute("SET allowed_paths = ?", [[str(p) for p in {*paths, *extra.values()}]])
    connection.execute("SET enable_external_access = false")
    views = {}
    if paths:
        views["catalog"] = f"read_parquet({_list(paths)}, filename = true)"
    if len(paths) == 1:
        views["t"] = f"read_parquet({_list(paths)})"
    if len(paths) == 2:
        views["a"], views["b"] = f"read_parquet({_list(paths[:1])})", f"read_parquet({_list(paths[1:])})"
    for name, path in extra.items():
        views[name] = f"read_parquet({_list([path])})"
    for name, source in views.items():
        try:
            connection.execute(f"CREATE VIEW {_identifier(name)} AS SELECT * FROM {source}")
        except duckdb.Error as exc:  # a Parquet file DuckDB cannot read (truncated, another schema)
            raise IndexFileError(f"{one_line(exc)}; give index files written by `weightidx index`") from None
    connection.execute("SET lock_configuration = true")
    return connection


def _list(paths: Sequence[Path]) -> str:
    """A SQL list of string literals (quotes doubled): DDL takes no bound parameters."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_query(
    name: str, indexes: Sequence[Path | str], named: dict[str, Path | str] | None = None, **parameters: object
) -> duckdb.DuckDBPyRelation:
    """Run ``queries/NAME.sql`` over the indexes with ``$name`` parameters bound."""
    return run_sql(load_query(name), indexes, named, **parameters)


def run_sql(
    sql: str, indexes: Sequence[Path | str], named: dict[str, Path | str] | None = None, **parameters: object
) -> duckdb.DuckDBPyRelation:
    """Run one read-only statement over the indexes; raises ``SqlError`` with the position on failure."""
    check_read_only(sql)
    connection = connect(indexes, named)
    try:
        # Run it here, so errors point into the statement as written, not into a wrapper
        # DuckDB builds when the result is printed.
        result = connection.sql(sql, params=parameters or None).to_arrow_table()
    except duckdb.PermissionException as exc:
        raise SqlError(f"{_SANDBOX} ({one_line(exc)})") from None
    except duckdb.Error as exc:
        raise SqlError(one_line(exc)) from None
    finally:
        connection.close()
    # A fresh connection holds the result: exporting it writes files, which the sandbox forbids.
    return duckdb.connect().from_arrow(result)


_SANDBOX = (
    "weightidx sql reads only the index files it is given (views t, a and b, catalog): "
    "other files, URLs and extensions are refused"
)


def check_read_only(sql: str) -> None:
    """Refuse anything but SELECT (and EXPLAIN): no writes, attaches, installs or settings."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(one_line(exc)) from None
    if len(statements) != 1:
        raise SqlError(f"give exactly one statement (found {len(statements)})")
    kind = statements[0].type
    if kind not in _READ_ONLY:
        raise SqlError(
            f"only SELECT queries are allowed: this is a {kind.name} statement, which could change files"
        )


def one_line(error: duckdb.Error) -> str:
    """DuckDB's multi-line message as one line, with the line and column of the caret."""
    text = str(error)
    first = text.splitlines()[0] if text else type(error).__name__
    found = re.search(r"^LINE (\d+): (.*)\n( *)\^", text, flags=re.MULTILINE)
    if found:
        column = len(found.group(3)) - len(f"LINE {found.group(1)}: ") + 1
        first += f" (line {found.group(1)}, column {column})"
    return first


def export(relation: duckdb.DuckDBPyRelation, format: str, out: Path | None = None) -> str | None:
    """Run the relation and render it as ``table``, ``csv``, ``json`` or ``parquet``.

    Returns the text, or None when it was written to ``out`` (atomically; required for parquet).
    """
    try:
        if format in ("csv", "parquet"):
            return _export_file(relation, format, out)
        if format == "json":
            names = relation.columns
            text = json.dumps(
                [dict(zip(names, row, strict=True)) for row in relation.fetchall()], default=str
            )
        else:
            text = str(relation)
    except duckdb.Error as exc:
        raise SqlError(one_line(exc)) from None
    if out is None:
        return text
    _atomic(out, lambda path: path.write_text(text + "\n"))
    return None


def _export_file(relation: duckdb.DuckDBPyRelation, format: str, out: Path | None) -> str | None:
    """DuckDB's own writers: they handle list columns (sketches, shapes)."""

    def write(path: Path) -> None:
        try:
            if format == "csv":
                relation.write_csv(str(path))
            else:
                relation.write_parquet(str(path))
        except duckdb.IOException as exc:  # the file system refused: an output error, not the query's
            raise OSError(one_line(exc)) from None

    if out is not None:
        _atomic(out, write)
        return None
    if format == "parquet":
        raise WeightidxError("--format parquet needs --out FILE")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.csv"
        write(path)
        return path.read_text().rstrip("\n")


def _atomic(out: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(out) as temporary:
        write(temporary)
