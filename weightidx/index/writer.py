"""Stage 1: stream a checkpoint once and write its per-tensor fingerprints to Parquet.

Work is split into tiles (see ``fingerprint.plan_tiles``) that worker processes read
with ``pread``, hash, decode and reduce (``_worker.py``); this process adds the results
up in tile order, so the output does not depend on the number of workers. Rows are
streamed to a temporary Parquet file in small row groups and the file is renamed
into place only when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weightidx._version import __version__
from weightidx.config import available_cores
from weightidx.dtypes import SAFETENSORS_DTYPES, SUPPORTED_DTYPES
from weightidx.errors import CheckpointError, OutputError
from weightidx.fingerprint import crc
from weightidx.fingerprint.sketch import (
    BLOCK,
    GRAM_DIM,
    GRAM_PROJECTIONS,
    GRAM_VERSION,
    OUTPUT_BUCKETS,
    OUTPUT_MIN_COLS,
    SAMPLE_CAP,
    SKETCH_VERSION,
    TILE_ELEMS,
    Fingerprint,
    K,
    TensorAccumulator,
    Tile,
    fingerprint_array,
    kernel_name,
    plan_tiles,
    view_2d,
)
from weightidx.index.arrow import record_batch
from weightidx.index.blas import single_threaded_blas
from weightidx.index.schema import METADATA_KEY, SCHEMA_VERSION, index_schema
from weightidx.index.spawn import PROCESS_POOL_MIN_BYTES
from weightidx.index.workers import InlineReducer, ProcessReducer, TileJob
from weightidx.io.atomic import atomic_path
from weightidx.io.locate import prepare
from weightidx.io.safetensors import Checkpoint, TensorInfo, open_checkpoint

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

_ROWS_PER_GROUP = 128


@dataclass(frozen=True)
class IndexProgress:
    """Passed to the progress callback after each tile and each finished tensor."""

    bytes_done: int
    bytes_total: int
    tensors_done: int
    tensors_total: int


@dataclass(frozen=True)
class IndexSummary:
    """What ``index_checkpoint`` wrote."""

    output: Path
    model: str
    tensors: int
    unsupported: int
    parameters: int
    bytes: int
    seconds: float
    warnings: tuple[str, ...] = ()  # one line each, for the user (tensors of unknown dtypes)


def default_output(checkpoint: Checkpoint, name: str | None = None) -> Path:
    """``<name>.weightidx.parquet`` in the current directory (a repo id's ``/`` written ``--``,
    as the Hugging Face cache does: ``org--name.weightidx.parquet``)."""
    return Path(f"{(name or checkpoint.default_name()).replace('/', '--')}.weightidx.parquet")


def index_checkpoint(
    path: Path | str,
    out: Path | str | None = None,
    *,
    name: str | None = None,
    workers: int | None = None,
    progress: Callable[[IndexProgress], None] | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    component: str | None = None,
) -> IndexSummary:
    """Fingerprint every tensor of a checkpoint into one Parquet file.

    Args:
        path: a ``.safetensors`` file, a folder of shards, or a ``*.safetensors.index.json``.
        out: the Parquet file to write; default ``<name>.weightidx.parquet`` in the cwd.
        name: the model name stored in the index; default from the file or folder name.
        workers: worker processes for reading and reducing tiles; default one per available
            core (checkpoints under 64 MB, or ``workers=1``, are done in this process).
        progress: called with an ``IndexProgress`` as work completes.
        allow_pickle: read a pickle checkpoint (.bin, .pt, .pth, .ckpt, .pkl) through
            ``torch.load(weights_only=True)`` (needs the torch extra); refused otherwise.
        revision: for a Hugging Face cache repo (``models--org--name`` or ``org/name``), the
            branch, tag or commit to read (default ``main``).
        component: for a diffusers pipeline (a folder, cache repo or repo id holding a
            ``model_index.json``), the model folder to index (``transformer``, ``vae``, ...).

    ``path`` may also be a GGUF file (converted once into the cache: ``io/gguf.py``), a
    Hugging Face cache repo, snapshot or repo id (``io/locate.py``).

    Returns:
        An ``IndexSummary``. The file appears only when complete (temp file + rename).

    Example:
        >>> summary = index_checkpoint("model.safetensors", "model.parquet")  # doctest: +SKIP
        >>> summary.tensors  # doctest: +SKIP
        101
    """
    started = time.perf_counter()
    located = prepare(path, allow_pickle=allow_pickle, revision=revision, component=component)
    checkpoint = open_checkpoint(located.path)
    model = name or located.name or checkpoint.default_name()
    output = Path(out) if out is not None else default_output(checkpoint, model)
    _check_output(output, checkpoint)
    warnings = located.notes + _dtype_warnings(checkpoint)
    workers = workers or available_cores()
    metadata = json.dumps(_file_metadata(checkpoint, model))
    with single_threaded_blas(), _reducer(workers, checkpoint.total_bytes) as reducer:
        pipeline = _Pipeline(checkpoint, model, reducer, progress)
        pipeline.fill()
        # Imported only now, while the workers start on their first jobs: pyarrow takes 0.1 s
        # to import. Rows are converted by _arrow.record_batch, which keeps pyarrow from
        # importing pandas (0.2 s more).
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = index_schema().with_metadata({METADATA_KEY: metadata})
        # Dictionary encoding only for the strings: on the float sketches (Parquet's default
        # for every column) it finds no repeats, and cost a third of the writing time and a
        # quarter more bytes (measured on the benchmark checkpoint's index).
        strings = [f.name for f in schema if f.type == pa.string()]
        with (
            atomic_path(output) as temporary,
            pq.ParquetWriter(temporary, schema, compression="zstd", use_dictionary=strings) as out,
        ):
            _write_rows(out, schema, pipeline.rows())
    return IndexSummary(
        output=output,
        model=model,
        tensors=len(checkpoint.tensors),
        unsupported=sum(not t.supported for t in checkpoint.tensors),
        parameters=sum(t.numel for t in checkpoint.tensors),
        bytes=checkpoint.total_bytes,
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )


def _dtype_warnings(checkpoint: Checkpoint) -> tuple[str, ...]:
    """A line for each tensor whose dtype safetensors does not define (indexed without a
    fingerprint); raises ``CheckpointError`` when no tensor at all can be decoded."""
    tensors = checkpoint.tensors
    if tensors and not any(t.supported for t in tensors):
        found, decoded = ", ".join(sorted({t.dtype for t in tensors})), ", ".join(SUPPORTED_DTYPES)
        raise CheckpointError(
            tensors[0].path, f"no tensor has a dtype weightidx decodes (found {found}; decoded: {decoded})"
        )
    return tuple(
        f"{t.path}: tensor '{t.key}' has dtype {t.dtype}, which safetensors does not define; "
        "indexed without a fingerprint"
        for t in tensors
        if t.dtype not in SAFETENSORS_DTYPES
    )


def _write_rows(writer: pq.ParquetWriter, schema: pa.Schema, rows: Iterator[dict]) -> None:
    """Stream rows into the writer in row groups of ``_ROWS_PER_GROUP``."""
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _ROWS_PER_GROUP:
            writer.write_batch(record_batch(batch, schema))
            batch.clear()
    if batch:
        writer.write_batch(record_batch(batch, schema))


def _check_output(output: Path, checkpoint: Checkpoint) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"{output}: folder {parent} does not exist; create it or choose another output path"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{output}: folder {parent} is not writable; choose another output path")
    if output.exists() and any(output.resolve() == shard.path for shard in checkpoint.shards):
        raise OutputError(f"{output}: is one of the checkpoint's shards; choose another output path")


def _file_metadata(checkpoint: Checkpoint, model: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "sketch_version": SKETCH_VERSION,
        "sketch": {
            "block": BLOCK,
            "projections": K,
            "tile_elements": TILE_ELEMS,
            "sample_cap": SAMPLE_CAP,
            "view": "leading size-1 dims dropped; rows = dim 0, cols = product of the rest",
        },
        "gram": {
            "version": GRAM_VERSION,
            "dim": GRAM_DIM,
            "projections": GRAM_PROJECTIONS,
            "construction": "v_i[m*16+u] = sum over columns j = u (mod 16) of Q[j,m] W[i,j], "
            "m < projections; input_gram = upper triangle (row-major) of sum_i v_i v_i^T, "
            "input_lanes = sum_i v_i; null when rows are cut into column pieces (cols > 16384)",
            "output_buckets": OUTPUT_BUCKETS,
            "output_construction": "z_b = sum over rows i = b (mod buckets) of Q[i,0] v_i with v_i over all "
            "projections; output_gram = upper triangle (row-major) of Zc Zc^T, Zc = Z with the mean "
            f"row taken out; null when cols < {OUTPUT_MIN_COLS}",
        },
        "hash": "crc32 (zlib) of the raw tensor bytes",
        "kernel": kernel_name(),
        "tool": {"name": "weightidx", "version": __version__},
        "model": model,
        "checkpoint": str(checkpoint.source.resolve()),
        "root": str(checkpoint.root.resolve()),
        "shards": [
            {
                "name": shard.name,
                "size": shard.size,
                "mtime_ns": shard.mtime_ns,
                "header_sha256": shard.header_sha256,
                "metadata": shard.metadata,
            }
            for shard in checkpoint.shards
        ],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass
class _TensorState:
    tensor: TensorInfo
    accumulator: TensorAccumulator | None
    crc: int = 0


_JOB_ELEMS = 1 << 21
_WINDOW_PER_WORKER = 16  # jobs in flight per worker: keeps workers busy while this process writes Parquet


class _Pipeline:
    """Jobs out to the reducer, rows back in file order: workers reduce tiles, this process
    adds them up in tile order. ``fill`` can send the first jobs before anything else is
    ready (the workers start on them while this process imports pyarrow)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        model: str,
        reducer: InlineReducer | ProcessReducer,
        progress: Callable[[IndexProgress], None] | None,
    ) -> None:
        self._checkpoint = checkpoint
        self._model = model
        self._reducer = reducer
        self._progress = progress
        self._jobs = _jobs(checkpoint)
        self._window: deque[tuple[_TensorState, TileJob | None]] = deque()
        self._done_bytes = self._done_tensors = 0

    def fill(self) -> None:
        """Sends jobs until ``_WINDOW_PER_WORKER`` per worker are in flight or none are left."""
        while len(self._window) < _WINDOW_PER_WORKER * self._reducer.workers:
            item = next(self._jobs, None)
            if item is None:
                return
            state, job = item
            if job is not None:
                self._reducer.submit(job)
            self._window.append((state, job))

    def rows(self) -> Iterator[dict]:
        """Every tensor's row, in file order."""
        self.fill()
        while self._window:
            yield from self._settle()
            self.fill()

    def _settle(self) -> Iterator[dict]:
        state, job = self._window.popleft()
        if job is not None and state.accumulator is not None:
            job_crc, length, result = self._reducer.next_result()
            state.crc = crc.combine(state.crc, job_crc, length)
            state.accumulator.add(result)
            self._done_bytes += length
        else:
            self._done_tensors += 1
            yield _row(self._model, state)
        if self._progress is not None:
            total_bytes, total_tensors = self._checkpoint.total_bytes, len(self._checkpoint.tensors)
            self._progress(IndexProgress(self._done_bytes, total_bytes, self._done_tensors, total_tensors))


@contextlib.contextmanager
def _reducer(workers: int, total_bytes: int) -> Iterator[InlineReducer | ProcessReducer]:
    """Worker processes, or this process when one worker or a small checkpoint would not
    repay their start-up (about 0.2 s)."""
    if workers <= 1 or total_bytes < PROCESS_POOL_MIN_BYTES:
        reducer: InlineReducer | ProcessReducer = InlineReducer()
    else:
        reducer = ProcessReducer(workers)
    try:
        yield reducer
    finally:
        reducer.close()


def _jobs(checkpoint: Checkpoint) -> Iterator[tuple[_TensorState, TileJob | None]]:
    """Every tensor's tiles in file order, grouped into jobs, then ``None`` to close the tensor."""
    for tensor in checkpoint.tensors:
        if not tensor.supported:
            yield _TensorState(tensor, None), None
            continue
        rows, cols = view_2d(tensor.shape)
        accumulator = TensorAccumulator(rows, cols)
        state = _TensorState(tensor, accumulator)
        group: list[Tile] = []
        for tile in plan_tiles(rows, cols):
            if group and sum(t.numel for t in group) + tile.numel > _JOB_ELEMS:
                yield (
                    state,
                    TileJob(tensor.path, tensor.dtype, tensor.begin, accumulator.strides, tuple(group)),
                )
                group = []
            group.append(tile)
        if group:
            yield state, TileJob(tensor.path, tensor.dtype, tensor.begin, accumulator.strides, tuple(group))
        yield state, None


def _row(model: str, state: _TensorState) -> dict:
    tensor = state.tensor
    row = {
        "model": model,
        "key": tensor.key,
        "shard": tensor.shard,
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "ndim": len(tensor.shape),
        "numel": tensor.numel,
        "nbytes": tensor.nbytes,
        "data_begin": tensor.begin,
        "data_end": tensor.end,
        "supported": tensor.supported,
        "unsupported_reason": None,
    }
    if state.accumulator is None:
        row["unsupported_reason"] = (
            f"dtype {tensor.dtype} is not decoded by weightidx {__version__} "
            f"(supported: {', '.join(SUPPORTED_DTYPES)})"
        )
        return row
    row["crc32"] = f"{state.crc:08x}"
    row.update(_fingerprint_columns(state.accumulator.finish()))
    return row


def index_row(key: str, values: np.ndarray, dtype: str = "F32") -> dict:
    """The index row of an in-memory tensor, as ``load_index`` gives it (no file: its location
    columns are absent). For tests and calibration tools."""
    fp = fingerprint_array(values)
    return {
        "key": key,
        "dtype": dtype,
        "shape": list(values.shape),
        "numel": int(values.size),
        "supported": True,
        "crc32": None,
        **_fingerprint_columns(fp),
    }


def _fingerprint_columns(fp: Fingerprint) -> dict:
    columns = {
        "rows": fp.rows,
        "cols": fp.cols,
        "finite": fp.finite,
        "sum_x": fp.sum_x,
        "sum_x2": fp.sum_x2,
        "sum_x3": fp.sum_x3,
        "sum_x4": fp.sum_x4,
        "min": fp.minimum,
        "max": fp.maximum,
        "absmax": None if fp.minimum is None else max(abs(fp.minimum), abs(fp.maximum)),
        "zeros": fp.zeros,
        "nans": fp.nans,
        "posinf": fp.posinf,
        "neginf": fp.neginf,
        "row_sketch": fp.row_sketch,
        "col_sketch": fp.col_sketch,
        "sample": fp.sample,
        "sample_stride_rows": fp.sample_strides[0],
        "sample_stride_cols": fp.sample_strides[1],
        "sample_rows": fp.sample_shape[0],
        "sample_cols": fp.sample_shape[1],
        "input_gram": fp.input_gram,
        "input_lanes": fp.input_lanes,
        "output_gram": fp.output_gram,
    }
    columns.update(moments(fp.finite, *fp.scaled_sums, exponent=fp.exponent))
    return columns


def moments(n: int, s1: float, s2: float, s3: float, s4: float, exponent: int = 0) -> dict[str, float | None]:
    """Mean, population std, excess kurtosis and L2 norm from the power sums of x·2⁻ᵉ
    (``exponent`` e; 0 for all but huge values); None when undefined, or for an L2 norm beyond
    float64."""
    if n == 0:
        return {"mean": None, "std": None, "kurtosis": None, "l2_norm": 0.0}
    mean = s1 / n
    variance = max(s2 / n - mean * mean, 0.0)
    kurtosis = None
    if variance > 0:
        m4 = s4 / n - 4 * mean * s3 / n + 6 * mean * mean * s2 / n - 3 * mean**4
        kurtosis = m4 / (variance * variance) - 3.0
    try:
        l2_norm: float | None = math.ldexp(math.sqrt(s2), exponent)
    except OverflowError:
        l2_norm = None
    return {
        "mean": math.ldexp(mean, exponent),
        "std": math.ldexp(math.sqrt(variance), exponent),
        "kurtosis": kurtosis,
        "l2_norm": l2_norm,
    }
