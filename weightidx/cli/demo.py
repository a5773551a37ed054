"""``weightidx demo``: write the generated demo pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightidx.cli.app import QuietOption, app, not_a_flag
from weightidx.cli.common import user_errors
from weightidx.errors import WeightidxError


@app.command("demo")
def demo_command(
    folder: Annotated[Path, typer.Argument(help="Folder to write the demo pair into.", callback=not_a_flag)],
    width: Annotated[int, typer.Option(min=16, help="Hidden width (Wan2.1-14B: 5120).")] = 256,
    blocks: Annotated[int, typer.Option(min=2, help="Transformer blocks (Wan2.1-14B: 40).")] = 4,
    text_dim: Annotated[int, typer.Option(min=16, help="Text-encoder width (umT5: 4096).")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of model A's values.")] = 0,
    quiet: QuietOption = False,
) -> None:
    """Write a generated Wan2.1-style model A, a LongCat-style model B derived from it, and truth.json."""
    from weightidx.demo import DemoConfig, write_demo_pair

    with user_errors():
        if width % 16:
            raise WeightidxError(f"--width {width}: use a multiple of 16, as real models do")
        paths = write_demo_pair(folder, DemoConfig(width=width, blocks=blocks, text_dim=text_dim, seed=seed))
    if not quiet:
        for role, path in paths.items():
            print(f"{role}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
