"""``weightidx sql``: read-only SQL over index files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import user_errors
from weightidx.errors import InputError, WeightidxError


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command("sql")
def sql_command(
    arguments: Annotated[
        list[str],
        typer.Argument(
            metavar="[SQL] INDEX...",
            help="The SELECT statement (unless --file is given), then index files: one is view t, "
            "two are a and b, all of them are catalog.",
        ),
    ],
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Run the statement in this .sql file.", callback=not_a_flag),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="NAME=VALUE for a $NAME parameter (repeatable).", callback=not_a_flag
        ),
    ] = None,
    format: Annotated[
        OutputFormat | None,
        typer.Option("--format", help="Output format (default: from the -o file's extension, else table)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.", callback=not_a_flag)
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Run one read-only SQL statement over index files (DuckDB).

    weightidx sql "SELECT key, std FROM t ORDER BY std DESC LIMIT 5" model.parquet
    """
    from weightidx.sql.runner import run_sql

    with user_errors():
        sql, indexes = _statement(arguments, file)
        relation = run_sql(sql, indexes, **_parameters(param or []))
        chosen = format or _format_of(out)
        _emit(relation, chosen, out)
    if out is not None and not quiet:
        print(f"{chosen.value} -> {out}")


def _statement(arguments: list[str], file: Path | None) -> tuple[str, list[Path]]:
    """The SQL (the first argument, or the --file) and the index files after it."""
    if file is not None:
        try:
            sql = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{file}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise InputError(f"{file}: not a text file of SQL (not UTF-8)") from None
        indexes = arguments
    else:
        sql, indexes = arguments[0], arguments[1:]
    if not indexes:
        raise WeightidxError("name at least one index file after the SQL (or use --file FILE INDEX...)")
    return sql, [Path(p) for p in indexes]


def _format_of(out: Path | None) -> OutputFormat:
    """The format an output file's extension names (.csv, .json, .parquet); table otherwise."""
    suffix = out.suffix.lower().lstrip(".") if out is not None else ""
    return OutputFormat(suffix) if suffix in ("csv", "json", "parquet") else OutputFormat.table


def _parameters(pairs: list[str]) -> dict[str, object]:
    parameters: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise WeightidxError(f"--param {pair!r}: write NAME=VALUE")
        parameters[name] = _literal(value)
    return parameters


def _literal(value: str) -> object:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _emit(relation, format: OutputFormat, out: Path | None) -> None:
    from weightidx.sql.runner import export

    text = export(relation, format.value, out)
    if text is not None:
        print(text)
