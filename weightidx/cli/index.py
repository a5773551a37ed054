"""``weightidx index``: stage 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import progress, size, user_errors


@app.command("index")
def index_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .safetensors file, a folder of shards, a *.safetensors.index.json, a .gguf file "
            "(gguf extra), or a Hugging Face cache repo: its models--org--name folder, a snapshot, "
            "or org/name (hub extra)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Parquet file to write (default: NAME.weightidx.parquet in the current folder).",
            callback=not_a_flag,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Model name stored in the index.", callback=not_a_flag)
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (default: one per core).")
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Read .bin/.pt/.pth/.ckpt/.pkl with torch.load(weights_only=True) (needs the torch extra).",
        ),
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            help="For a Hugging Face cache repo: the branch, tag or commit (default: main).",
            callback=not_a_flag,
        ),
    ] = None,
    component: Annotated[
        str | None,
        typer.Option(
            "--component",
            help="For a diffusers pipeline (folder, cache repo or repo id): the model folder to index, "
            "e.g. transformer.",
            callback=not_a_flag,
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Fingerprint every tensor of a checkpoint into one Parquet file (stage 1)."""
    from weightidx.index.spawn import planned_workers, prestarted

    # The workers start importing now, while this process imports the index stage.
    with user_errors(), prestarted(planned_workers(path, workers)):
        from weightidx.index.writer import index_checkpoint

        with progress("indexing", not quiet) as update:
            summary = index_checkpoint(
                path,
                out,
                name=name,
                workers=workers,
                progress=(lambda p: update(p.bytes_done, p.bytes_total)) if update else None,
                allow_pickle=allow_pickle,
                revision=revision,
                component=component,
            )
    for line in summary.warnings:
        typer.echo(f"Warning: {line}", err=True)
    if not quiet:
        rate = summary.bytes / summary.seconds if summary.seconds else 0.0
        unsupported = f", {summary.unsupported} unsupported" if summary.unsupported else ""
        print(
            f"{summary.model}: {summary.tensors} tensors{unsupported}, {summary.parameters:,} parameters, "
            f"{size(summary.bytes)} in {summary.seconds:.2f} s ({size(rate)}/s) -> {summary.output}"
        )
