"""``weightidx lora``: port LoRAs between models through a compare report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import SETTINGS, QuietOption, app, not_a_flag
from weightidx.cli.common import user_errors

lora_app = typer.Typer(help="Port LoRAs between models using a compare report.", **SETTINGS)
app.add_typer(lora_app, name="lora")


@lora_app.command("convert")
def lora_convert_command(
    lora: Annotated[Path, typer.Argument(help="The LoRA for model A (.safetensors).")],
    report: Annotated[
        Path, typer.Option("--report", help="JSON report of `weightidx compare A B -o`.", callback=not_a_flag)
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="The converted LoRA to write (.safetensors).", callback=not_a_flag),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="Key style of the output: comfyui, kohya, diffusers, peft.", callback=not_a_flag
        ),
    ] = None,
    from_format: Annotated[
        str | None,
        typer.Option(
            "--from-format", help="Force the input's format instead of detecting it.", callback=not_a_flag
        ),
    ] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check ΔW_B = T(ΔW_A) for every module.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail if any module cannot be converted.")] = False,
    allow_full_delta: Annotated[
        bool,
        typer.Option(
            "--allow-full-delta",
            help="Write a LoKr/LoHa module whose target its factors cannot follow as its exact full delta.",
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Convert a LoRA made for A into B's key space: rename, fuse, split, transpose, reshape, scale."""
    from weightidx.lora.convert import convert_lora

    with user_errors():
        conversion = convert_lora(
            lora,
            report,
            out,
            output_format=format,
            source_format=from_format,
            verify=verify,
            strict=strict,
            allow_full_delta=allow_full_delta,
        )
    if not quiet:
        partly = f", {len(conversion.partial)} only in part" if conversion.partial else ""
        print(
            f"{len(conversion.converted)} module(s) converted from {conversion.input_modules} "
            f"({conversion.source_format} -> "
            f"{conversion.output_format}){partly}, {len(conversion.refused)} refused -> {out}"
        )
        for part in conversion.partial:
            print(f"  in part {part['module']}: {part['reason']}")
        for refusal in conversion.refused:
            print(f"  refused {refusal['module']}: {refusal['reason']}")
        if conversion.worst_relative_error is not None:
            worst = conversion.worst_relative_error
            print(f"verified: worst relative error of ΔW_B against T(ΔW_A) = {worst:.2e}")


@lora_app.command("check")
def lora_check_command(
    lora: Annotated[Path, typer.Argument(help="The LoRA (.safetensors).")],
    model: Annotated[Path, typer.Argument(help="The model it is for: a checkpoint or its index.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Which modules of a LoRA would load on a model, and what would be ignored and why
    (exit 1 if anything would be ignored)."""
    import json

    from weightidx.lora.check import check_lora

    with user_errors():
        result = check_lora(lora, model)
    if as_json:
        print(json.dumps(result.as_json(), indent=1))
    elif not quiet:
        print(
            f"{len(result.loads)} module(s) of {result.lora} load on {result.model}; "
            f"{len(result.ignored)} item(s) would be ignored"
        )
        for item in result.ignored:
            print(f"  ignored {item['item']}: {item['reason']}")
    if result.ignored:
        raise typer.Exit(1)


@lora_app.command("mapping")
def lora_mapping_command(
    report: Annotated[Path, typer.Argument(help="JSON report of `weightidx compare A B -o`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the mapping JSON.", callback=not_a_flag)
    ],
    quiet: QuietOption = False,
) -> None:
    """Export A key -> B key (+ slice + transform) from a compare report, for other tools."""
    import json

    from weightidx.compare.report import read_report
    from weightidx.io.atomic import atomic_path
    from weightidx.lora.convert import export_mapping

    with user_errors():
        mapping = export_mapping(read_report(report))
        with atomic_path(out) as temporary:
            temporary.write_text(json.dumps(mapping, indent=1) + "\n")
    if not quiet:
        print(f"{len(mapping)} entries -> {out}")
