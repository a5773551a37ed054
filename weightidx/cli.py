"""The ``weightidx`` command: parse arguments, call one library function, render.

All error translation happens in ``_user_errors``: library exceptions become one
``Error: ...`` line on stderr and their exit code; set ``WEIGHTIDX_DEBUG=1`` to get
the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import WeightidxError

app = typer.Typer(
    name="weightidx",
    help="Where did these weights come from? Fingerprint checkpoints and trace tensors between models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary line.")]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """The one place where exceptions become messages and exit codes."""
    try:
        yield
    except WeightidxError as exc:
        if os.environ.get("WEIGHTIDX_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if os.environ.get("WEIGHTIDX_DEBUG"):
            raise
        print("Interrupted: nothing was written.", file=sys.stderr)
        raise typer.Exit(130) from None
    except _Terminated:
        print("Terminated: nothing was written.", file=sys.stderr)
        raise typer.Exit(143) from None


class _Terminated(Exception):
    """SIGTERM, raised where the program is so that every temporary file is cleaned up."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def _progress(label: str, enabled: bool, unit: str = "bytes") -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (bytes with throughput, or a count), only when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    # Imported here: rich takes 30 ms to import, which every command would pay before its work.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if unit == "bytes":
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeRemainingColumn(),
        )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


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


@app.command("index")
def index_command(
    path: Annotated[
        Path, typer.Argument(help="A .safetensors file, a folder of shards, or a *.safetensors.index.json.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Parquet file to write (default: NAME.weightidx.parquet in the current folder).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name stored in the index.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: one per core).")
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Read .bin/.pt/.ckpt with torch.load(weights_only=True) (needs the torch extra).",
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Fingerprint every tensor of a checkpoint into one Parquet file (stage 1)."""
    from ._spawn import planned_workers, prestarted

    # The workers start importing now, while this process imports the index stage.
    with _user_errors(), prestarted(planned_workers(path, workers)):
        from .index import index_checkpoint

        with _progress("indexing", not quiet) as update:
            summary = index_checkpoint(
                path,
                out,
                name=name,
                workers=workers,
                progress=(lambda p: update(p.bytes_done, p.bytes_total)) if update else None,
                allow_pickle=allow_pickle,
            )
    if not quiet:
        rate = summary.bytes / summary.seconds if summary.seconds else 0.0
        unsupported = f", {summary.unsupported} unsupported" if summary.unsupported else ""
        print(
            f"{summary.model}: {summary.tensors} tensors{unsupported}, {summary.parameters:,} parameters, "
            f"{_size(summary.bytes)} in {summary.seconds:.2f} s ({_size(rate)}/s) -> {summary.output}"
        )


@app.command("compare")
def compare_command(
    a: Annotated[
        Path, typer.Argument(help="Model A: an index (.parquet) or a checkpoint (indexed and cached).")
    ],
    b: Annotated[Path, typer.Argument(help="Model B: an index (.parquet) or a checkpoint.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON report here.")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")
    ] = None,
    names: Annotated[
        tuple[str, str] | None, typer.Option("--names", help="Display names of A and B.")
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
    from .compare import compare_paths
    from .render import render_report
    from .report import write_report

    with _user_errors(), _progress("verifying", not quiet, unit="pairs") as update:
        report = compare_paths(a, b, names=names, index_only=index_only, reindex=reindex, progress=update)
        if out is not None:
            write_report(report, out)
        if html is not None:
            from .html import write_html

            write_html(report, html)
    if not quiet:
        print(render_report(report))


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
        Path | None, typer.Option("--file", "-f", help="Run the statement in this .sql file.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE for a $NAME parameter (repeatable).")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Run one read-only SQL statement over index files (DuckDB).

    weightidx sql "SELECT key, std FROM t ORDER BY std DESC LIMIT 5" model.parquet
    """
    from .sql import run_sql

    with _user_errors():
        sql, indexes = _statement(arguments, file)
        relation = run_sql(sql, indexes, **_parameters(param or []))
        _emit(relation, format, out)


def _statement(arguments: list[str], file: Path | None) -> tuple[str, list[Path]]:
    """The SQL (the first argument, or the --file) and the index files after it."""
    if file is not None:
        try:
            sql = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise WeightidxError(f"{file}: cannot read ({exc.strerror or exc})") from None
        indexes = arguments
    else:
        sql, indexes = arguments[0], arguments[1:]
    if not indexes:
        raise WeightidxError("name at least one index file after the SQL (or use --file FILE INDEX...)")
    return sql, [Path(p) for p in indexes]


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
    from .sql import export

    text = export(relation, format.value, out)
    if text is not None:
        print(text)


@app.command("search")
def search_command(
    model: Annotated[Path, typer.Argument(help="The model to place: an index or a checkpoint.")],
    catalog: Annotated[Path, typer.Option("--catalog", help="Folder of indexes to search.")],
    top: Annotated[int, typer.Option("--top", min=1, help="Show at most this many relatives.")] = 10,
) -> None:
    """Rank the models of a catalog by how much of MODEL they share (index-only)."""
    from .catalog import search_catalog
    from .indexes import cached_index, is_index_file

    with _user_errors():
        query = model if is_index_file(model) else cached_index(model)
        relatives = search_catalog(query, catalog, top)
    print(f"{'model':<32} {'strong matrices':>16} {'mean estimate':>14} {'identical':>10}  index")
    for r in relatives:
        estimate = "-" if r.mean_estimate is None else f"{r.mean_estimate:.4f}"
        print(f"{r.model:<32} {r.strong_share:>16.1%} {estimate:>14} {r.identical_share:>10.1%}  {r.index}")


@app.command("report")
def report_command(
    report: Annotated[Path, typer.Argument(help="A JSON report written by `weightidx compare -o`.")],
    html: Annotated[Path, typer.Option("--html", help="The HTML file to write.")],
) -> None:
    """Turn a JSON compare report into a self-contained HTML page (heatmap, histogram, tables)."""
    from .html import write_html
    from .report import read_report

    with _user_errors():
        write_html(read_report(report), html)
    print(f"{html}")


@app.command("demo")
def demo_command(
    folder: Annotated[Path, typer.Argument(help="Folder to write the demo pair into.")],
    width: Annotated[int, typer.Option(min=16, help="Hidden width (Wan2.1-14B: 5120).")] = 256,
    blocks: Annotated[int, typer.Option(min=2, help="Transformer blocks (Wan2.1-14B: 40).")] = 4,
    text_dim: Annotated[int, typer.Option(min=16, help="Text-encoder width (umT5: 4096).")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of model A's values.")] = 0,
    quiet: QuietOption = False,
) -> None:
    """Write a generated Wan2.1-style model A, a LongCat-style model B derived from it, and truth.json."""
    from .demo import DemoConfig, write_demo_pair

    with _user_errors():
        if width % 16:
            raise WeightidxError(f"--width {width}: use a multiple of 16, as real models do")
        paths = write_demo_pair(folder, DemoConfig(width=width, blocks=blocks, text_dim=text_dim, seed=seed))
    if not quiet:
        for role, path in paths.items():
            print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


lora_app = typer.Typer(help="Port LoRAs between models using a compare report.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")


@lora_app.command("convert")
def lora_convert_command(
    lora: Annotated[Path, typer.Argument(help="The LoRA for model A (.safetensors).")],
    report: Annotated[Path, typer.Option("--report", help="JSON report of `weightidx compare A B -o`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The converted LoRA to write (.safetensors).")],
    format: Annotated[
        str | None, typer.Option("--format", help="Key style of the output: comfyui, kohya, diffusers, peft.")
    ] = None,
    from_format: Annotated[
        str | None, typer.Option("--from-format", help="Force the input's format instead of detecting it.")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check ΔW_B = T(ΔW_A) for every module.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail if any module cannot be converted.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Convert a LoRA made for A into B's key space: rename, fuse, split, transpose, reshape, scale."""
    from .lora import convert_lora

    with _user_errors():
        conversion = convert_lora(
            lora, report, out, output_format=format, source_format=from_format, verify=verify, strict=strict
        )
    if not quiet:
        print(
            f"{len(conversion.converted)} module(s) converted ({conversion.source_format} -> "
            f"{conversion.output_format}), {len(conversion.refused)} refused -> {out}"
        )
        for refusal in conversion.refused:
            print(f"  refused {refusal['module']}: {refusal['reason']}")
        if conversion.worst_relative_error is not None:
            worst = conversion.worst_relative_error
            print(f"verified: worst relative error of ΔW_B against T(ΔW_A) = {worst:.2e}")


@lora_app.command("mapping")
def lora_mapping_command(
    report: Annotated[Path, typer.Argument(help="JSON report of `weightidx compare A B -o`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the mapping JSON.")],
) -> None:
    """Export A key -> B key (+ slice + transform) from a compare report, for other tools."""
    import json

    from .atomic import atomic_path
    from .lora import export_mapping
    from .report import read_report

    with _user_errors():
        mapping = export_mapping(read_report(report))
        with atomic_path(out) as temporary:
            temporary.write_text(json.dumps(mapping, indent=1) + "\n")
    print(f"{len(mapping)} entries -> {out}")


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()
