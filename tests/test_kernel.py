"""The compiled index kernel (weightidx/_fused.c) against the numpy path and zlib.

The kernel is optional, so the numpy path is the reference: every field a tile reduces
to must agree (exactly for counts, extremes, samples and the CRC; to float32 rounding for
sums and sketches). The kernel's own claim, the same bits on every x86-64 CPU, is tested
by compiling a plain variant (no AVX clones) and comparing bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.tensors import trained_like
from weightidx.fingerprint import sketch as fingerprint
from weightidx.fingerprint.sketch import (
    BLOCK,
    GramSums,
    K,
    Tile,
    TileResult,
    Workspace,
    reduce_raw_tile,
    reduce_tile,
    sample_strides,
)
from weightidx.index.writer import METADATA_KEY, index_checkpoint
from weightidx.io.safetensors import decode, encode

fused = fingerprint._fused
needs_kernel = pytest.mark.skipif(fused is None, reason="the compiled kernel is not built (no C compiler)")
SOURCE = Path(fingerprint.__file__).with_name("_fused.c")

SHAPES = [
    (128, 2048), (64, 4096), (37, 53), (5120, 1), (1, 300_000), (3, 7), (16, 16), (200, 130),
    (41, 1000),  # several column chunks, a remainder of rows and of columns
    (9, 70_000),  # rows wider than a block
]  # fmt: skip


def tile_of(rows: int, cols: int, row0: int = 0, col0: int = 0) -> Tile:
    return Tile(row0, row0 + rows, col0, col0 + cols, col0 + cols)


def numpy_reduction(raw: np.ndarray, dtype: str, tile: Tile, strides: tuple[int, int]) -> TileResult:
    with np.errstate(all="ignore"):
        return reduce_tile(decode(raw, dtype), tile, strides, Workspace())


def assert_close(fused_result: TileResult, reference: TileResult) -> None:
    assert fused_result.minimum == reference.minimum
    assert fused_result.maximum == reference.maximum
    assert fused_result.zeros == reference.zeros
    np.testing.assert_array_equal(fused_result.sample, reference.sample)
    scale = np.sqrt(reference.power_sums[1]) + 1e-30
    np.testing.assert_allclose(fused_result.power_sums[[1, 3]], reference.power_sums[[1, 3]], rtol=2e-6)
    assert abs(fused_result.power_sums[0] - reference.power_sums[0]) <= 1e-5 * scale * 100
    assert fused_result.row_block0 == reference.row_block0
    assert fused_result.col_block0 == reference.col_block0
    pairs = [
        (fused_result.row_sketch, reference.row_sketch),
        (fused_result.col_sketch, reference.col_sketch),
        (fused_result.gram.gram, reference.gram.gram),
        (fused_result.gram.lanes, reference.gram.lanes),
        (fused_result.gram.output, reference.gram.output),
    ]
    assert (fused_result.gram.output is None) == (reference.gram.output is None)
    for ours, theirs in pairs:
        if theirs is None:
            continue
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * float(np.abs(theirs).max() + 1e-30))


@needs_kernel
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_the_numpy_path(dtype: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    values = trained_like(rng, *shape)
    values[rng.random(shape) < 0.01] = 0.0
    raw = np.frombuffer(encode(values, dtype), dtype=np.uint8)
    tile = tile_of(*shape)
    strides = sample_strides(*shape)
    got = reduce_raw_tile(raw, dtype, tile, strides, Workspace())
    if tile.numel < fused.MIN_ELEMENTS:
        assert got is None
        return
    assert got is not None
    checksum, result = got
    assert checksum == zlib.crc32(raw)
    assert_close(result, numpy_reduction(raw, dtype, tile, strides))


@needs_kernel
def test_kernel_folds_blocks_at_offsets_that_are_not_block_aligned() -> None:
    # the column pieces of a very wide row start anywhere; rows start at multiples of BLOCK
    rng = np.random.default_rng(5)
    values = trained_like(rng, 1, 1000)
    raw = np.frombuffer(encode(values, "F32"), dtype=np.uint8)
    tile = Tile(3 * BLOCK, 3 * BLOCK + 1, 21, 1021, 5000)
    got = reduce_raw_tile(raw, "F32", tile, (1, 1), Workspace())
    assert got is not None
    assert_close(got[1], numpy_reduction(raw, "F32", tile, (1, 1)))


@needs_kernel
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e10])
def test_tiles_with_nonfinite_or_huge_values_go_to_the_numpy_path(bad: float) -> None:
    values = np.ones((64, 64), dtype=np.float32)
    values[10, 10] = bad
    raw = np.frombuffer(values.tobytes(), dtype=np.uint8)
    gram = GramSums()
    assert reduce_raw_tile(raw, "F32", tile_of(64, 64), (1, 1), Workspace(), gram) is None
    assert not gram.gram.any() and not gram.lanes.any()  # the numpy path adds the tile, not both
    assert gram.output is None or not gram.output.any()


@needs_kernel
def test_other_dtypes_go_to_the_numpy_path() -> None:
    raw = np.zeros(64 * 64, dtype=np.uint8)
    assert reduce_raw_tile(raw, "F8_E4M3", tile_of(64, 64), (1, 1), Workspace()) is None


@needs_kernel
@pytest.mark.parametrize("seed", [0, 12345, 0xFFFFFFFF])
def test_crc32_is_zlibs_for_every_length(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for length in [*range(0, 300), 4096, 65_536 + 17, 1 << 20]:
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert fused.crc32(data, seed) == zlib.crc32(data, seed), length


@needs_kernel
def test_kernel_signs_are_the_numpy_signs() -> None:
    out = np.empty((997, K), dtype=np.float32)
    fused.signs(3, 1000, fingerprint._SEED_Q, out)
    saved, fingerprint._fused = fingerprint._fused, None
    try:
        np.testing.assert_array_equal(out, fingerprint._signs(3, 1000))
    finally:
        fingerprint._fused = saved


def build_plain_variant(folder: Path) -> object:
    """The kernel compiled without target clones for the baseline x86-64 (SSE2 only)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = folder / f"_fused{suffix}"
    subprocess.run(
        [
            shutil.which("cc") or "cc", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wno-psabi",
            "-march=x86-64", "-DCLONES=", f"-I{sysconfig.get_paths()['include']}",
            str(SOURCE), "-o", str(target),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    loader = importlib.machinery.ExtensionFileLoader("_fused", str(target))
    spec = importlib.util.spec_from_loader("_fused", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@needs_kernel
@pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64" or shutil.which("cc") is None,
    reason="needs a C compiler on x86-64 Linux",
)
def test_vectorised_and_plain_builds_give_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = build_plain_variant(tmp_path)
    rng = np.random.default_rng(7)
    for shape in SHAPES:
        values = trained_like(rng, *shape)
        raw = np.frombuffer(encode(values, "BF16"), dtype=np.uint8)
        tile = tile_of(*shape)
        if tile.numel < fused.MIN_ELEMENTS:
            continue
        strides = sample_strides(*shape)
        vectorised = reduce_raw_tile(raw, "BF16", tile, strides, Workspace())
        monkeypatch.setattr(fingerprint, "_fused", plain)
        baseline = reduce_raw_tile(raw, "BF16", tile, strides, Workspace())
        monkeypatch.setattr(fingerprint, "_fused", fused)
        assert vectorised is not None and baseline is not None
        assert vectorised[0] == baseline[0]
        ours, theirs = vectorised[1], baseline[1]
        assert ours.power_sums.tobytes() == theirs.power_sums.tobytes(), shape
        assert ours.row_sketch.tobytes() == theirs.row_sketch.tobytes(), shape
        assert ours.col_sketch.tobytes() == theirs.col_sketch.tobytes(), shape
        assert ours.gram.gram.tobytes() == theirs.gram.gram.tobytes(), shape
        assert ours.gram.lanes.tobytes() == theirs.gram.lanes.tobytes(), shape
        assert (ours.gram.output is None) == (theirs.gram.output is None), shape
        if ours.gram.output is not None:
            assert ours.gram.output.tobytes() == theirs.gram.output.tobytes(), shape
        assert (ours.minimum, ours.maximum, ours.zeros) == (theirs.minimum, theirs.maximum, theirs.zeros)


@needs_kernel
def test_index_with_and_without_the_kernel_agree(demo_pair: dict[str, Path], tmp_path: Path) -> None:
    source = demo_pair["a"]
    with_kernel = tmp_path / "fused.parquet"
    index_checkpoint(source, with_kernel, workers=1)
    without = tmp_path / "numpy.parquet"
    plain = subprocess.run(
        [sys.executable, "-m", "weightidx", "index", str(source), "-o", str(without), "-q"],
        env={**os.environ, "WEIGHTIDX_KERNEL": "numpy"},
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stderr
    ours = pq.read_table(with_kernel).to_pandas()
    theirs = pq.read_table(without).to_pandas()
    assert list(ours.key) == list(theirs.key)
    assert list(ours.crc32) == list(theirs.crc32)
    for column in ["min", "max", "zeros", "nans", "finite"]:
        assert list(ours[column].fillna(0)) == list(theirs[column].fillna(0)), column
    np.testing.assert_allclose(ours.sum_x2, theirs.sum_x2, rtol=1e-5)
    np.testing.assert_allclose(ours["std"], theirs["std"], rtol=1e-5)
    for a, b in zip(ours.row_sketch, theirs.row_sketch, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * (np.abs(b).max() + 1e-30))
    kernels = [
        json.loads(pq.read_schema(path).metadata[METADATA_KEY])["kernel"] for path in (with_kernel, without)
    ]
    assert kernels == ["fused-c", "numpy"]


# sha256 (first 16 hex digits) of every kernel output for a fixed input, per dtype. Computed with
# the first kernel of sketch version 1 and unchanged since: a faster kernel must keep the bits
# (the sums' order is part of the fingerprint), or the sketch version must change.
KERNEL_DIGESTS = {"F32": "415bc07dba93c4d5", "BF16": "34ea87f90e78ec21", "F16": "0e52d7c6cd11fa8d"}
# The same for the Gram sketches' sums (input and output side), computed with gram version 2.
GRAM_DIGESTS = {"F32": "49d43dde74f54ef6", "BF16": "4e3b58c7261469e9", "F16": "89af4b22e1194610"}
DIGEST_SHAPES = [*SHAPES, (1024, 256), (300, 5120)]


def pinned_reductions(dtype: str):
    for shape in DIGEST_SHAPES:
        index = np.arange(shape[0] * shape[1], dtype=np.int64)  # integer arithmetic: no libm, no RNG
        values = ((index * 2654435761 % 65521) / 65521.0 - 0.5).astype(np.float32).reshape(shape)
        raw = np.frombuffer(encode(values, dtype), dtype=np.uint8)
        tile = tile_of(*shape)
        if tile.numel < fused.MIN_ELEMENTS:
            continue
        reduced = reduce_raw_tile(raw, dtype, tile, sample_strides(*shape), Workspace())
        assert reduced is not None
        yield reduced


@needs_kernel
@pytest.mark.parametrize("dtype", sorted(KERNEL_DIGESTS))
def test_kernel_output_bits_are_pinned(dtype: str) -> None:
    digest = hashlib.sha256()
    for crc, result in pinned_reductions(dtype):
        for part in (
            np.array([crc]),
            result.power_sums,
            result.row_sketch,
            result.col_sketch,
            result.sample,
            np.array([result.minimum, result.maximum, result.zeros]),
        ):
            digest.update(np.ascontiguousarray(part).tobytes())
    assert digest.hexdigest()[:16] == KERNEL_DIGESTS[dtype]


@needs_kernel
@pytest.mark.parametrize("dtype", sorted(GRAM_DIGESTS))
def test_kernel_gram_sketch_bits_are_pinned(dtype: str) -> None:
    digest = hashlib.sha256()
    for _, result in pinned_reductions(dtype):
        for part in (result.gram.gram, result.gram.lanes, result.gram.output):
            if part is not None:
                digest.update(np.ascontiguousarray(part).tobytes())
    assert digest.hexdigest()[:16] == GRAM_DIGESTS[dtype]
