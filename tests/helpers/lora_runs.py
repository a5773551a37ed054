"""The steps of a LoRA port as a user runs them, for tests: A and B written and compared into a
report, a LoRA file written and converted with ``weightidx lora convert``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import Result
from safetensors.numpy import save_file
from typer.testing import CliRunner

from tests.helpers.tensors import write_tensors
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report

Tensors = dict[str, tuple[str, np.ndarray]]
runner = CliRunner()


def compare_report(folder: Path, a: Tensors, b: Tensors, name: str = "report.json") -> Path:
    """``folder/a.safetensors`` and ``folder/b.safetensors`` written and compared into ``name``."""
    pa = write_tensors(folder / "a.safetensors", a)
    pb = write_tensors(folder / "b.safetensors", b)
    return write_report(compare_paths(pa, pb, cache=folder / "cache"), folder / name)


def convert(
    folder: Path,
    lora: dict[str, np.ndarray],
    report: Path,
    *options: str,
    out: Path | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[Result, Path]:
    """``lora`` saved as ``folder/lora.safetensors`` and converted through ``report`` into ``out``
    (default ``folder/out.safetensors``) with ``options``; the CLI's result and ``out``."""
    save_file(lora, str(folder / "lora.safetensors"), metadata=metadata)
    out = out or folder / "out.safetensors"
    arguments = ["lora", "convert", str(folder / "lora.safetensors"), "--report", str(report), "-o", str(out)]
    return runner.invoke(app, [*arguments, *options]), out
