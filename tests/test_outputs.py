"""Outputs and caches that cannot be written, and inputs that are not what they claim: one line,
the documented exit code, nothing half-written, never a traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report
from weightidx.index.writer import index_checkpoint

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.fixture(scope="module")
def indexes(demo_pair, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("indexes")
    out = {side: index_checkpoint(demo_pair[side], folder / f"{side}.parquet").output for side in "ab"}
    out["report"] = write_report(compare_paths(out["a"], out["b"]), folder / "report.json")
    return out


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs mounted ro): even root cannot write there."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _one_line(result, code: int, *parts: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "{a}", "{b}", "-q", "-o", "{ro}/report.json"],
        ["compare", "{a}", "{b}", "-q", "--html", "{ro}/report.html"],
        ["sql", "SELECT key FROM t", "{a}", "-o", "{ro}/out.csv", "--format", "csv"],
        ["sql", "SELECT key FROM t", "{a}", "-o", "{ro}/out.txt"],
        ["report", "{report}", "--html", "{ro}/report.html"],
        ["lora", "mapping", "{report}", "-o", "{ro}/map.json"],
        ["index", "{checkpoint}", "-q", "-o", "{ro}/a.parquet"],
    ],
    ids=["compare -o", "compare --html", "sql csv", "sql table", "report", "lora mapping", "index"],
)
def test_an_output_on_a_read_only_file_system_is_exit_3(
    indexes, demo_pair, read_only: Path, args: list[str]
) -> None:
    values = {"a": indexes["a"], "b": indexes["b"], "report": indexes["report"], "ro": read_only}
    values["checkpoint"] = demo_pair["a"]
    result = run(*[arg.format(**values) for arg in args])
    _one_line(result, 3, str(read_only))
    assert list(read_only.iterdir()) == []


def test_an_unwritable_cache_is_exit_3(demo_pair, read_only: Path) -> None:
    cache = read_only / "cache"
    result = run(
        "compare", str(demo_pair["a"]), str(demo_pair["b"]), "-q", env={"WEIGHTIDX_CACHE": str(cache)}
    )
    _one_line(result, 3, str(cache), "WEIGHTIDX_CACHE")


def test_a_cache_that_is_a_file_is_exit_3(demo_pair, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    result = run(
        "compare", str(demo_pair["a"]), str(demo_pair["b"]), "-q", env={"WEIGHTIDX_CACHE": str(cache)}
    )
    _one_line(result, 3, f"{cache}: is a file, not a folder", "WEIGHTIDX_CACHE")


@pytest.mark.parametrize("kind", ["parquet", "binary", "json list", "empty"])
def test_report_refuses_what_is_not_a_report(indexes, tmp_path: Path, kind: str) -> None:
    given = {
        "parquet": indexes["a"],
        "binary": tmp_path / "x.json",
        "json list": tmp_path / "list.json",
        "empty": tmp_path / "empty.json",
    }[kind]
    if kind == "binary":
        given.write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "json list":
        given.write_text("[1, 2]")
    elif kind == "empty":
        given.write_text("")
    out = tmp_path / "r.html"
    result = run("report", str(given), "--html", str(out))
    _one_line(result, 2, str(given), "not a weightidx compare report")
    assert not out.exists()


def test_an_unreadable_sql_file_is_exit_2(indexes, tmp_path: Path) -> None:
    binary = tmp_path / "q.sql"
    binary.write_bytes(b"\xff\xfe\x00")
    _one_line(run("sql", "-f", str(binary), str(indexes["a"])), 2, str(binary))
    missing = tmp_path / "missing.sql"
    _one_line(run("sql", "-f", str(missing), str(indexes["a"])), 2, str(missing), "cannot read")


def test_an_unknown_dtype_is_a_warning_naming_file_and_tensor(tmp_path: Path) -> None:
    from tests.helpers.tensors import raw_file

    path = raw_file(
        tmp_path / "m.safetensors",
        {
            "w": {"dtype": "F12", "shape": [2, 2], "data_offsets": [0, 8]},
            "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        },
        b"\0" * 16,
    )
    result = runner.invoke(app, ["index", str(path), "-q", "-o", str(tmp_path / "m.parquet")])
    assert result.exit_code == 0
    assert result.output == (
        f"Warning: {path}: tensor 'w' has dtype F12, which safetensors does not define; "
        "indexed without a fingerprint\n"
    )


def test_a_file_with_nothing_decodable_is_exit_2(tmp_path: Path) -> None:
    from tests.helpers.tensors import raw_file

    path = raw_file(
        tmp_path / "m.safetensors", {"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    out = tmp_path / "m.parquet"
    _one_line(
        run("index", str(path), "-o", str(out)), 2, str(path), "no tensor has a dtype weightidx decodes"
    )
    assert not out.exists()


def test_estimated_metrics_because_a_checkpoint_is_missing_say_so(demo_pair, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "b.safetensors"
    shutil.copy(demo_pair["b"], moved)
    index_b = index_checkpoint(moved, tmp_path / "b.parquet").output
    index_a = index_checkpoint(demo_pair["a"], tmp_path / "a.parquet").output
    moved.unlink()
    result = run("compare", str(index_a), str(index_b), "-q", "-o", str(tmp_path / "r.json"))
    assert result.exit_code == 0
    line = f"Warning: {index_b.resolve()}: the checkpoint it was built from is missing ({moved.resolve()})"
    assert result.output.startswith(line)
    assert len(result.output.splitlines()) == 1


def test_a_report_moved_with_its_indexes_still_ports_a_lora(demo_pair, tmp_path: Path) -> None:
    """Reports record absolute index paths; a report moved together with its indexes finds them
    beside it."""
    import json
    import os

    made = tmp_path / "made"
    made.mkdir()
    for side in "ab":
        index_checkpoint(demo_pair[side], made / f"{side}.parquet")
    report = write_report(compare_paths(made / "a.parquet", made / "b.parquet"), made / "report.json")
    recorded = json.loads(report.read_text())["models"]["a"]["index"]
    assert os.path.isabs(recorded)
    moved = tmp_path / "moved"
    made.rename(moved)
    out = tmp_path / "lora_b.safetensors"
    lora = demo_pair["a"].with_name("wan_a_lora.safetensors")
    result = run(
        "lora", "convert", str(lora), "--report", str(moved / "report.json"), "-o", str(out), "--verify"
    )
    assert result.exit_code == 0, result.output
    assert out.exists()


@pytest.mark.parametrize("target", ["", "folder"])
def test_an_output_that_is_a_folder_is_exit_3(indexes, tmp_path: Path, target: str) -> None:
    """Found by the CLI property test: ``-o ""`` is the current folder."""
    out = str(tmp_path) if target == "folder" else ""
    _one_line(run("sql", "SELECT 1", str(indexes["a"]), "-o", out), 3, "is a folder, not a file")


def test_sql_over_a_file_that_is_not_an_index_is_exit_2(demo_pair) -> None:
    """Found by the CLI property test: a checkpoint given where an index belongs."""
    _one_line(
        run("sql", "SELECT 1", str(demo_pair["a"])), 2, str(demo_pair["a"].resolve()), "not a Parquet index"
    )
