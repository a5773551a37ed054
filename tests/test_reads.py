"""Verification reads (``weightidx/compare/reads.py``): rectangles of a tensor's view in few large
reads, transposed pairs in strips, pairs on threads; the numbers are those of the arrays in
memory whichever way the bytes were read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.mapping import checked_phases
from tests.helpers.tensors import trained_like, write_tensors
from weightidx.compare import metrics, reads
from weightidx.compare.engine import compare_paths
from weightidx.compare.metrics import array_metrics
from weightidx.compare.significance import EQUAL_BYTES
from weightidx.compare.types import Candidate, Region
from weightidx.index.reader import load_index
from weightidx.index.writer import index_checkpoint
from weightidx.io.safetensors import ShardReader, decode


class CountingReader(ShardReader):
    """A ShardReader that counts its reads and the bytes they cover."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.bytes = 0

    def read(self, path: Path, offset: int, length: int) -> bytearray:
        self.calls += 1
        self.bytes += length
        return super().read(path, offset, length)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    """A: w (300, 256) bf16, u (64, 2048) f32. B: w transposed (f32, noisy), u beside new
    columns, u as a narrow column slice of a wide tensor."""
    folder = tmp_path_factory.mktemp("reads")
    rng = np.random.default_rng(5)
    w = trained_like(rng, 300, 256)
    u = trained_like(rng, 64, 2048)
    a_file = write_tensors(folder / "a.safetensors", {"w": ("BF16", w), "u": ("F32", u)})
    wide = np.concatenate([rng.standard_normal((64, 2048 * 9)).astype(np.float32), u], axis=1)
    noise = 0.01 * rng.standard_normal((256, 300)).astype(np.float32)
    b_file = write_tensors(
        folder / "b.safetensors",
        {
            "wt": ("F32", np.ascontiguousarray(w.T) + noise),
            "fused": ("F32", np.concatenate([u, trained_like(rng, 64, 2048)], axis=1)),
            "wide": ("F32", wide),
        },
    )
    for file in (a_file, b_file):
        index_checkpoint(file, file.with_suffix(".parquet"))
    return load_index(a_file.with_suffix(".parquet")), load_index(b_file.with_suffix(".parquet"))


def _in_memory(model, key: str) -> np.ndarray:
    row = model.rows[key]
    with ShardReader() as reader:
        raw = reader.read(model.root / row["shard"], int(row["data_begin"]), int(row["nbytes"]))
    return decode(raw, row["dtype"]).reshape(int(row["rows"]), int(row["cols"]))


@pytest.mark.parametrize(
    ("key", "rows", "cols"),
    [
        ("fused", (0, 64), (0, 4096)),  # whole rows: one read
        ("fused", (3, 61), (2048, 4096)),  # half the columns: bands of whole rows
        ("wide", (0, 64), (18432, 20480)),  # a tenth of the columns: row by row
        ("wide", (5, 5), (0, 10)),  # empty
    ],
)
def test_view_reader_returns_the_rectangle(pair, key: str, rows: tuple, cols: tuple) -> None:
    _, b = pair
    with CountingReader() as reader:
        got = reads.view_reader(reader, b, key)(*rows, *cols)
        calls = reader.calls
    expected = _in_memory(b, key)[rows[0] : rows[1], cols[0] : cols[1]]
    np.testing.assert_array_equal(got, expected)
    height = rows[1] - rows[0]
    if cols == (0, int(b.rows[key]["cols"])):
        assert calls == 1
    elif int(b.rows[key]["cols"]) <= reads.MAX_OVERREAD * (cols[1] - cols[0]):
        assert calls <= 2  # 64 rows of 16 kB: one band
    else:
        assert calls == height


def test_transposed_pair_is_read_once_and_matches_the_arrays(pair) -> None:
    a, b = pair
    candidate = Candidate(Region("w"), Region("wt"), "transpose", 1.0, EQUAL_BYTES, False)
    with CountingReader() as reader:
        streamed = reads.exact_metrics(reader, a, b, candidate)
    assert reader.bytes == a.rows["w"]["nbytes"] + b.rows["wt"]["nbytes"]
    assert reader.calls <= 4
    expected = array_metrics(_in_memory(a, "w"), _in_memory(b, "wt").T, cast_to="BF16")
    _assert_same(streamed, expected)


def test_transposed_pair_in_strips_gives_the_same_sums(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    candidate = Candidate(Region("w"), Region("wt"), "transpose", 1.0, EQUAL_BYTES, False)
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 16 * 256)  # chunks of 16 rows of A
    with CountingReader() as reader:
        whole = reads.exact_metrics(reader, a, b, candidate)
        assert reader.calls == 1 + 19  # B at once, A's 300 rows in 19 chunks
        monkeypatch.setattr(reads, "STRIP_VALUES", 1)  # one chunk of rows per strip
        stripped = reads.exact_metrics(reader, a, b, candidate)
    _assert_same(stripped, whole)
    expected = array_metrics(_in_memory(a, "w"), _in_memory(b, "wt").T, cast_to="BF16")
    _assert_same(stripped, expected)


def test_column_slice_pair_matches_the_arrays(pair) -> None:
    a, b = pair
    candidate = Candidate(Region("u"), Region("fused", 1, 0, 2048), "a_in_b_cols", 1.0, EQUAL_BYTES, False)
    with CountingReader() as reader:
        streamed = reads.exact_metrics(reader, a, b, candidate)
    assert reader.calls <= 4
    expected = array_metrics(_in_memory(a, "u"), _in_memory(b, "fused")[:, :2048], same_dtype=True)
    _assert_same(streamed, expected)
    assert streamed.equal_after_cast == 1.0


def test_threads_give_the_results_of_one_thread_in_order(pair) -> None:
    a, b = pair
    candidates = [
        Candidate(Region("w"), Region("wt"), "transpose", 1.0, EQUAL_BYTES, False),
        Candidate(Region("u"), Region("fused", 1, 0, 2048), "a_in_b_cols", 1.0, EQUAL_BYTES, False),
        Candidate(Region("u"), Region("wide", 1, 18432, 20480), "a_in_b_cols", 1.0, EQUAL_BYTES, False),
    ] * 3
    seen: list[tuple[int, int]] = []
    with ShardReader() as reader:
        serial = [reads.exact_metrics(reader, a, b, c) for c in candidates]
        threaded = reads.verify(reader, a, b, candidates, progress=lambda *p: seen.append(p), threads=3)
    for one, other in zip(serial, threaded, strict=True):
        _assert_same(one, other)
    assert seen == [(done, len(candidates)) for done in range(len(candidates) + 1)]


def _assert_same(one, other) -> None:
    for field in dataclasses.fields(one):
        x, y = getattr(one, field.name), getattr(other, field.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), field.name
        else:
            assert x == y, field.name


def test_compare_reports_every_phase_with_its_total_up_front(pair, tmp_path: Path) -> None:
    a, b = pair
    calls: list[tuple[str, int, int]] = []
    compare_paths(a.source, b.source, cache=tmp_path, progress=lambda *call: calls.append(call))
    phases = checked_phases(calls)
    assert phases[:4] == ["indexing A", "indexing B", "scoring", "verifying"]
    assert all(phase.startswith("tracing structures, round ") for phase in phases[4:])


def test_an_interrupted_verification_stops_without_the_pairs_left(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    started = []

    def interrupt_first(reader, a, b, candidate):
        started.append(candidate)
        raise KeyboardInterrupt

    monkeypatch.setattr(reads, "exact_metrics", interrupt_first)
    candidates = [
        Candidate(Region("u"), Region("fused", 1, 0, 2048), "a_in_b_cols", 1.0, EQUAL_BYTES, False)
    ] * 50
    with ShardReader() as reader, pytest.raises(KeyboardInterrupt):
        reads.verify(reader, a, b, candidates, threads=2)
    assert len(started) <= 4  # the first pair of each thread, and perhaps one more each
