"""Hostile and broken inputs, interruptions and stale indexes: clear errors, nothing half-written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.helpers.tensors import REFERENCE, trained_like, write_tensors
from weightidx import index_checkpoint, open_checkpoint
from weightidx.cli import app
from weightidx.errors import WeightidxError
from weightidx.io.atomic import atomic_path
from weightidx.io.safetensors import SUPPORTED_DTYPES, decode

CORPUS = Path(__file__).parent / "corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
runner = CliRunner()
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_corpus_file_fails_cleanly(name: str, tmp_path: Path) -> None:
    path = CORPUS / name
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["index", str(path), "-o", str(out)])
    assert result.exit_code == EXPECTED[name]["exit_code"], result.output
    assert result.output.startswith(f"Error: {path}: ") and EXPECTED[name]["message"] in result.output
    assert result.output.count("\n") == 1 and not out.exists() and list(tmp_path.iterdir()) == []


def test_corpus_manifest_lists_every_file() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.safetensors")) == sorted(EXPECTED)


def test_symlinks_devices_and_empty_folders(tmp_path: Path) -> None:
    loop_a, loop_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    result = runner.invoke(app, ["index", str(loop_a)])
    assert result.output == (
        f"Error: {loop_a}: is a symbolic link that leads nowhere (dangling, or a loop); check the link\n"
    )
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["index", str(fifo)])
    assert result.output == (
        f"Error: {fifo}: not a regular file (a device, socket or pipe?); pass a .safetensors file\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["index", str(empty)])
    assert result.exit_code == 2 and "no *.safetensors files in this folder" in result.output


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_never_crash_the_header_parser(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    path.write_bytes(data)
    with contextlib.suppress(WeightidxError):
        open_checkpoint(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_entry = (
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from([*SUPPORTED_DTYPES, "F8_E8M0", "C64", 3]),
            "shape": st.lists(st.integers(-2, 9), max_size=3) | _json,
            "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3) | _json,
        }
    )
    | _json
)


@FUZZ
@given(st.dictionaries(st.text(max_size=5), _entry, max_size=4), st.integers(0, 80))
def test_fuzz_structured_headers_either_index_or_fail_cleanly(
    tmp_path_factory, header: dict, size: int
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    raw = json.dumps(header).encode()
    path = folder / "x.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(size))
    try:
        index_checkpoint(path, folder / "x.parquet")
    except WeightidxError:
        assert not (folder / "x.parquet").exists()


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=6),
        st.sampled_from(["s1.safetensors", "gone.safetensors", "../x", "", "s1"]),
        max_size=4,
    )
)
def test_fuzz_shard_index_json(tmp_path_factory, weight_map: dict) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    write_tensors(folder / "s1.safetensors", {"w": ("F32", np.ones(4, np.float32))})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with contextlib.suppress(WeightidxError):
        open_checkpoint(folder)


_REFERENCE = {k: v for k, v in REFERENCE.items() if k != "BOOL"}  # BOOL decodes any non-zero byte to 1


@FUZZ
@given(st.sampled_from(sorted(_REFERENCE)), st.binary(max_size=64))
def test_fuzz_decoders_match_the_reference(dtype: str, data: bytes) -> None:
    data = data[: len(data) - len(data) % SUPPORTED_DTYPES[dtype]]
    with np.errstate(invalid="ignore"):
        expected = np.frombuffer(data, dtype=_REFERENCE[dtype]).astype(np.float64)
        got = decode(data, dtype).astype(np.float64)
    np.testing.assert_array_equal(got, expected)


def test_odd_values_give_defined_statistics_and_strict_json(tmp_path: Path) -> None:
    from weightidx.compare.engine import compare_paths

    nan = np.full((64, 64), np.nan, np.float32)
    tensors = {
        "nan": ("F32", nan),
        "inf": ("F32", np.where(np.eye(64) > 0, np.inf, 1.0).astype(np.float32)),
        "zeros": ("F32", np.zeros((64, 64), np.float32)),
        "constant": ("BF16", np.full((64, 64), 0.5, np.float32)),
        "empty": ("F32", np.zeros((0, 8), np.float32)),
        "scalar": ("F32", np.array(3.0, np.float32)),
        "normal": ("F32", trained_like(np.random.default_rng(0), 64, 64)),
    }
    a = write_tensors(tmp_path / "a.safetensors", tensors)
    index_checkpoint(a, tmp_path / "a.parquet")
    report = compare_paths(a, a, cache=tmp_path / "cache")
    json.dumps(report, allow_nan=False)
    import pyarrow.parquet as pq

    rows = {r["key"]: r for r in pq.read_table(tmp_path / "a.parquet").to_pylist()}
    assert rows["nan"]["nans"] == 4096 and rows["nan"]["std"] is None and rows["nan"]["min"] is None
    assert rows["inf"]["posinf"] == 64 and rows["inf"]["max"] == 1.0
    assert rows["constant"]["std"] == 0.0 and rows["constant"]["kurtosis"] is None
    assert rows["empty"]["finite"] == 0 and rows["scalar"]["sum_x"] == 3.0


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftover = tmp_path / f".x.parquet.{dead.stdout.strip()}.tmp"
    leftover.write_text("half")
    mine = tmp_path / f".x.parquet.{os.getpid()}.tmp"
    with atomic_path(out) as temporary:
        temporary.write_text("whole")
    assert out.read_text() == "whole" and not leftover.exists() and not mine.exists()


def big_checkpoint(folder: Path) -> Path:
    """~190 MB of F32: long enough to interrupt mid-way."""
    rng = np.random.default_rng(0)
    block = rng.standard_normal((2048, 2048)).astype(np.float32)
    return write_tensors(folder / "big.safetensors", {f"w{i}": ("F32", block) for i in range(12)})


def run_and_signal(command: list[str], watch: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the command, wait until it starts writing next to ``watch``, then send ``signum``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(watch.parent.glob(f".{watch.name}.*.tmp")):
        time.sleep(0.005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [
        (signal.SIGINT, 130, "Interrupted: nothing was written.\n"),
        (signal.SIGTERM, 143, "Terminated: nothing was written.\n"),
        (signal.SIGKILL, -9, ""),
    ],
)
def test_interrupted_index_leaves_no_output_and_a_rerun_succeeds(
    tmp_path: Path, signum, code, message
) -> None:
    checkpoint = big_checkpoint(tmp_path)
    out = tmp_path / "big.parquet"
    weightidx = str(Path(sys.executable).with_name("weightidx"))
    result = run_and_signal([weightidx, "index", str(checkpoint), "-o", str(out)], out, signum)
    assert (result.returncode, result.stderr) == (code, message)
    assert not out.exists()
    rerun = subprocess.run([weightidx, "index", str(checkpoint), "-o", str(out), "-q"], capture_output=True)
    assert rerun.returncode == 0 and out.exists()
    assert list(tmp_path.glob(".*.tmp")) == []  # the killed run's temporary was cleaned up by the rerun


def test_pickles_are_refused_by_default_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x80\x04K\x01.")
    result = runner.invoke(app, ["index", str(path)])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {path}: pickle checkpoints are not read (loading them can run code); convert it to "
        ".safetensors first, or pass --allow-pickle to load it with torch's weights_only loader\n"
    )


def test_allow_pickle_without_torch_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04K\x01.")
    result = runner.invoke(app, ["index", str(path), "--allow-pickle"])
    assert result.output == f"Error: {path}: --allow-pickle needs torch; pip install 'weightidx[torch]'\n"


def test_allow_pickle_reads_tensors_and_refuses_code(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip(
        "torch", reason="the torch extra is not installed (pip install 'weightidx[torch]')"
    )
    monkeypatch.setenv("WEIGHTIDX_CACHE", str(tmp_path / "cache"))
    values = torch.randn(64, 32)
    torch.save({"w": values, "b": values[0].to(torch.bfloat16)}, tmp_path / "model.pt")
    summary = index_checkpoint(tmp_path / "model.pt", tmp_path / "model.parquet", allow_pickle=True)
    import pyarrow.parquet as pq

    rows = {r["key"]: r for r in pq.read_table(tmp_path / "model.parquet").to_pylist()}
    assert summary.model == "model" and rows["b"]["dtype"] == "BF16"
    assert rows["w"]["sum_x2"] == pytest.approx(float((values.double() ** 2).sum()), rel=1e-5)

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": Payload()}))
    result = runner.invoke(app, ["index", str(evil), "--allow-pickle", "-o", str(tmp_path / "evil.parquet")])
    assert result.exit_code == 2 and "torch.load(weights_only=True) refused it" in result.output
    assert not marker.exists() and not (tmp_path / "evil.parquet").exists()


def test_interrupted_compare_and_lora_conversion_write_nothing(
    demo_pair, tmp_path: Path, monkeypatch
) -> None:
    from weightidx.compare import reads as compare_module
    from weightidx.compare.engine import compare_paths
    from weightidx.compare.report import write_report
    from weightidx.lora.convert import convert_lora

    report = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path / "cache")
    report_path = write_report(report, tmp_path / "report.json")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(compare_module, "exact_metrics", interrupt)
        result = runner.invoke(
            app,
            ["compare", str(demo_pair["a"]), str(demo_pair["b"]), "-o", str(tmp_path / "r2.json")],
            env={"WEIGHTIDX_CACHE": str(tmp_path / "cache")},
        )
    assert (result.exit_code, result.output) == (130, "Interrupted: nothing was written.\n")
    assert not (tmp_path / "r2.json").exists()

    from weightidx.io import safetensors as checkpoint_module

    real_encode = checkpoint_module.encode
    calls = []

    def encode_then_interrupt(values, dtype):
        calls.append(dtype)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_encode(values, dtype)

    monkeypatch.setattr(checkpoint_module, "encode", encode_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_lora(demo_pair["lora"], report_path, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "report.json"]
