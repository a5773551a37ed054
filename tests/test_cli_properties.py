"""A property of the whole command line: whatever arguments and files it is given, it exits
with a documented code, never with a traceback, and leaves no output behind when it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report
from weightidx.index.writer import index_checkpoint

#: The exit codes the README documents: success, failure, bad input, unwritable output,
#: interrupted, terminated.
DOCUMENTED = {0, 1, 2, 3, 130, 143}

COMMANDS = {
    "index": ["-o", "--name", "--workers", "--allow-pickle", "-q"],
    "compare": ["-o", "--html", "--names", "--index-only", "--reindex", "-q"],
    "sql": ["-f", "-p", "--format", "-o", "-q"],
    "search": ["--catalog", "--top", "--format", "-o", "-q"],
    "report": ["-o", "--html", "-q"],
    "lora convert": ["--report", "-o", "--format", "--from-format", "--verify", "--strict", "-q"],
    "lora mapping": ["-o", "-q"],
}


@pytest.fixture(scope="module")
def inputs(demo_pair, tmp_path_factory) -> dict[str, Path]:
    # Copies: generated arguments may name any input as an output, and the demo pair is shared.
    folder = tmp_path_factory.mktemp("inputs")
    checkpoint = Path(shutil.copy(demo_pair["a"], folder / "a.safetensors"))
    lora = Path(shutil.copy(demo_pair["a"].with_name("wan_a_lora.safetensors"), folder / "lora.safetensors"))
    a = index_checkpoint(checkpoint, folder / "a.parquet").output
    b = index_checkpoint(demo_pair["b"], folder / "b.parquet").output
    report = write_report(compare_paths(a, b), folder / "report.json")
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}')
    text = folder / "notes.txt"
    text.write_text("SELECT 1")
    return {
        "index a": a,
        "index b": b,
        "checkpoint": checkpoint,
        "lora": lora,
        "report": report,
        "garbage": garbage,
        "text": text,
        "folder": folder,
        "missing": folder / "missing.safetensors",
    }


def _working(command: str, inputs: dict[str, Path], out: Path) -> list[str]:
    """Arguments that make ``command`` succeed."""
    index, report = str(inputs["index a"]), str(inputs["report"])
    return {
        "index": [str(inputs["checkpoint"]), "-o", str(out / "a.parquet")],
        "compare": [index, str(inputs["index b"]), "-o", str(out / "r.json")],
        "sql": ["SELECT key FROM t LIMIT 2", index, "-o", str(out / "o.csv")],
        "search": [index, "--catalog", str(inputs["folder"]), "-o", str(out / "s.txt")],
        "report": [report, "-o", str(out / "r.html")],
        "lora convert": [str(inputs["lora"]), "--report", report, "-o", str(out / "l.safetensors")],
        "lora mapping": [report, "-o", str(out / "m.json")],
    }[command]


def _argument(inputs: dict[str, Path], out: Path) -> st.SearchStrategy[str]:
    words = st.sampled_from(
        ["SELECT key FROM t", "json", "csv", "table", "peft", "x=1", "0", "-1", "", "A", "--"]
    )
    files = st.sampled_from([str(p) for p in inputs.values()])
    outputs = st.sampled_from([str(out / name) for name in ("o.json", "o.html", "o.parquet", "o.csv", "o")])
    text = st.text(st.characters(exclude_characters="\x00"), max_size=8)  # argv cannot hold NUL
    return st.one_of(words, files, outputs, text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_arguments_exit_with_a_documented_code_and_leave_nothing_on_failure(
    inputs: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    command = data.draw(st.sampled_from(sorted(COMMANDS)))
    pieces = st.one_of(st.sampled_from(COMMANDS[command]), _argument(inputs, out))
    # Three times in four a working invocation with some of its arguments replaced or added to, so
    # runs get past argument parsing into the library.
    base = _working(command, inputs, out) if data.draw(st.integers(0, 3)) else []
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        position = data.draw(st.integers(0, len(base)))
        base[position : position + data.draw(st.integers(0, 1))] = [data.draw(pieces)]
    arguments = base or data.draw(st.lists(pieces, max_size=7))
    here = os.getcwd()
    os.chdir(out)  # outputs named by relative paths (or by default) land in ``out`` too
    try:
        result = CliRunner().invoke(
            app, [*command.split(), *arguments, "-q"], env={"WEIGHTIDX_CACHE": str(tmp_path / "c")}
        )
    finally:
        os.chdir(here)
    assert result.exit_code in DOCUMENTED, (command, arguments, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        command,
        arguments,
        repr(result.exception),
    )
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert list(out.iterdir()) == [], (command, arguments, result.output)
