"""The command line: output and pinned error messages."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers.verdicts import check_schema
from weightidx import __version__
from weightidx.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_version() -> None:
    result = run("--version")
    assert (result.exit_code, result.output) == (0, f"weightidx {__version__}\n")


def test_index_prints_one_summary_line_and_writes_the_file(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    result = run("index", str(demo_pair["a"]), "-o", str(out), "--name", "wan")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1
    from weightidx.cli.common import size
    from weightidx.io.safetensors import open_checkpoint

    tensors = open_checkpoint(demo_pair["a"]).tensors  # the counts follow from the generator
    parameters, stored = sum(t.numel for t in tensors), sum(t.nbytes for t in tensors)
    assert re.fullmatch(
        rf"wan: {len(tensors)} tensors, {parameters:,} parameters, {re.escape(size(stored))} in \d+\.\d\d s "
        rf"\(\d+(\.\d)? [kMG]?B/s\) -> {re.escape(str(out))}",
        lines[0],
    ), lines[0]
    assert out.exists()


def test_index_quiet_prints_nothing(demo_pair, tmp_path: Path) -> None:
    result = run("index", str(demo_pair["a"]), "-o", str(tmp_path / "a.parquet"), "--quiet")
    assert (result.exit_code, result.output) == (0, "")


def test_default_output_is_named_after_the_model(demo_pair, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("index", str(demo_pair["b"]), "-q").exit_code == 0
    assert (tmp_path / "longcat_b.weightidx.parquet").exists()


def bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(struct.pack("<Q", 500) + b'{"a": ')
    not_st = tmp_path / "notes.safetensors"
    not_st.write_text("hello, this is not a checkpoint at all")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(struct.pack("<Q", 8) + b"{oops!!}")
    offsets = tmp_path / "offsets.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    offsets.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return [
        (tmp_path / "missing.safetensors", "no such file or directory; check the path"),
        (
            truncated,
            "header length 500 does not fit a 14-byte file; the file is truncated or not safetensors",
        ),
        (not_st, "does not fit a 38-byte file; the file is truncated or not safetensors"),
        (
            corrupt,
            "header is not valid JSON (Expecting property name enclosed in double quotes); "
            "the file is corrupt or not safetensors",
        ),
        (
            offsets,
            "tensor 'w' has data_offsets [0, 16] outside the 8-byte data section; "
            "the file is truncated or corrupt",
        ),
    ]


def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for path, message in bad_files(tmp_path):
        out = tmp_path / "out.parquet"
        result = run("index", str(path), "-o", str(out))
        assert result.exit_code == 2, (path, result.output)
        assert result.output.startswith(f"Error: {path}: ") and message in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        assert not out.exists()


def test_missing_output_folder_exits_3(demo_pair, tmp_path: Path) -> None:
    result = run("index", str(demo_pair["a"]), "-o", str(tmp_path / "no" / "a.parquet"))
    assert result.exit_code == 3
    assert result.output == (
        f"Error: {tmp_path / 'no' / 'a.parquet'}: folder {tmp_path / 'no'} does not exist; "
        "create it or choose another output path\n"
    )


def test_demo_writes_the_pair_and_its_truth(tmp_path: Path) -> None:
    result = run("demo", str(tmp_path / "d"), "--width", "64", "--blocks", "2", "--text-dim", "64")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "longcat_b.safetensors",
        "truth.json",
        "wan_a.safetensors",
        "wan_a_lora.safetensors",
    ]


def test_demo_refuses_odd_widths(tmp_path: Path) -> None:
    result = run("demo", str(tmp_path / "d"), "--width", "100")
    assert (result.exit_code, result.output) == (
        1,
        "Error: --width 100: use a multiple of 16, as real models do\n",
    )


COMMANDS = [
    [],
    ["index"],
    ["compare"],
    ["sql"],
    ["search"],
    ["report"],
    ["demo"],
    ["lora"],
    ["lora", "convert"],
    ["lora", "mapping"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "weightidx")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_of_every_command(command: list[str], flag: str) -> None:
    result = run(*command, flag)
    assert result.exit_code == 0 and result.output.startswith("Usage: ")
    assert "<bool>" not in result.output  # flags take no value


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ([], ["lora"])], ids=" ".join)
def test_every_command_takes_quiet_and_out(command: list[str]) -> None:
    text = run(*command, "-h").output
    assert "-q, --quiet" in text
    assert "-o, --out" in text or command == ["demo"]  # demo writes a folder it is given


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "a.parquet", "b.parquet", "--names", "A", "-q"],
        ["index", "m.safetensors", "-o", "--quiet"],
        ["lora", "mapping", "r.json", "-o", "-q"],
    ],
)
def test_an_option_value_that_looks_like_an_option_is_refused(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "looks like an option, not a value" in result.output


def test_sql_takes_the_format_from_the_output_extension(demo_pair, tmp_path: Path) -> None:
    from weightidx import index_checkpoint

    index = index_checkpoint(demo_pair["a"], tmp_path / "a.parquet").output
    for suffix, starts in ((".parquet", b"PAR1"), (".csv", b"key"), (".json", b"[")):
        out = tmp_path / f"out{suffix}"
        result = run("sql", "SELECT key FROM t ORDER BY key LIMIT 3", str(index), "-o", str(out))
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(starts), suffix
    quiet = run("sql", "SELECT 1", str(index), "-q", "-o", str(tmp_path / "q.csv"))
    assert (quiet.exit_code, quiet.output) == (0, "")


def test_report_writes_with_out_and_keeps_html_as_an_alias(demo_pair, tmp_path: Path) -> None:
    from weightidx.compare.engine import compare_paths
    from weightidx.compare.report import write_report

    report = write_report(
        compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path / "c"), tmp_path / "r.json"
    )
    for flag in ("-o", "--out", "--html"):
        out = tmp_path / f"r{flag.strip('-')}.html"
        result = run("report", str(report), flag, str(out), "-q")
        assert (result.exit_code, result.output) == (0, "")
        assert out.read_text().startswith("<!DOCTYPE html>")


def test_compare_listing_is_natural_and_names_each_unmatched_tensor(demo_pair, tmp_path: Path) -> None:
    from weightidx.compare.report import UNMATCHED_REASONS

    out = tmp_path / "r.json"
    env = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(
        app, ["compare", str(demo_pair["a"]), str(demo_pair["b"]), "-o", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(out.read_text())
    reasons = report["unmatched_reasons"]
    for side in "ab":
        assert set(reasons[side]) == set(report["unmatched"][side])
        assert set(reasons[side].values()) <= set(UNMATCHED_REASONS)
    lines = result.output.splitlines()
    for side in "ab":
        name = report["models"][side]["name"]
        if reasons[side]:
            assert f"unmatched in {name} ({len(reasons[side])}):" in lines
        for key, reason in list(reasons[side].items())[:5]:
            assert f"    {key}: {UNMATCHED_REASONS[reason]}" in lines
    listed = [line.split(" -> ")[1].split("[")[0] for line in lines if line.startswith(("✓", "~", "✗"))]
    blocks = [int(key.split(".")[1]) for key in listed if key.startswith("blocks.")]
    assert blocks == sorted(blocks)


def test_a_model_compared_with_itself_is_one_summary(demo_pair, tmp_path: Path) -> None:
    env = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(
        app, ["compare", str(demo_pair["a"]), str(demo_pair["a"]), "--names", "A", "B"], env=env
    )
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "A → B: identical" and len(lines) == 3
    assert lines[2].endswith("tensors, the same names and the same bytes: nothing more to list.")


def test_search_writes_json(demo_pair, tmp_path: Path) -> None:
    import json

    from weightidx import index_checkpoint

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    index_checkpoint(demo_pair["b"], catalog / "b.parquet")
    query = index_checkpoint(demo_pair["a"], tmp_path / "a.parquet").output
    result = run("search", str(query), "--catalog", str(catalog), "--format", "json")
    assert result.exit_code == 0, result.output
    (relative,) = json.loads(result.output)
    assert set(relative) == {"model", "index", "strong_share", "mean_estimate", "identical_share"}


def test_compare_prints_the_verdict_and_writes_strict_json(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    cache = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(
        app,
        ["compare", str(demo_pair["a"]), str(demo_pair["b"]), "-o", str(out), "--names", "Wan", "LongCat"],
        env=cache,
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Wan → LongCat: transformed"
    assert lines[1].startswith("LongCat derives from Wan (transformed): ")
    assert "✓ MATCH: blocks.0.self_attn.q.weight -> blocks.0.attn.qkv.weight[0:128]" in lines
    import json

    report = json.loads(out.read_text())
    check_schema(report)
    assert report["schema_version"] == 1 and report["models"]["a"]["name"] == "Wan"
    assert set(report["summary"]) >= {
        "mean_cosine_similarity",
        "high_similarity_count",
        "medium_similarity_count",
        "low_similarity_count",
        "matched_b_tensors",
        "unmatched_a",
        "unmatched_b",
        "scenario",
        "verdict",
    }


def test_compare_rejects_a_parquet_file_that_is_not_an_index(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    result = run("compare", str(other), str(other))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {other}: not a weightidx index (no 'weightidx' metadata); run `weightidx index`\n"
    )


def test_demo_into_an_impossible_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("demo", str(blocker / "demo"))
    assert (result.exit_code, result.output) == (
        3,
        f"Error: {blocker / 'demo'}: cannot create the folder (Not a directory); choose another\n",
    )
