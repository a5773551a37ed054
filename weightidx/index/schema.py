"""The index file's layout: its Arrow schema (one row a tensor), the metadata key and the
schema version every reader checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"weightidx"


def index_schema() -> pa.Schema:
    """One row a tensor (the columns docs/concepts/index.md describes)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("model", pa.string()),
            ("key", pa.string()),
            ("shard", pa.string()),
            ("dtype", pa.string()),
            ("shape", pa.list_(pa.int64())),
            ("ndim", pa.int32()),
            ("numel", pa.int64()),
            ("nbytes", pa.int64()),
            ("data_begin", pa.int64()),
            ("data_end", pa.int64()),
            ("supported", pa.bool_()),
            ("unsupported_reason", pa.string()),
            ("rows", pa.int64()),
            ("cols", pa.int64()),
            ("finite", pa.int64()),
            ("sum_x", pa.float64()),
            ("sum_x2", pa.float64()),
            ("sum_x3", pa.float64()),
            ("sum_x4", pa.float64()),
            ("mean", pa.float64()),
            ("std", pa.float64()),
            ("kurtosis", pa.float64()),
            ("l2_norm", pa.float64()),
            ("min", pa.float64()),
            ("max", pa.float64()),
            ("absmax", pa.float64()),
            ("zeros", pa.int64()),
            ("nans", pa.int64()),
            ("posinf", pa.int64()),
            ("neginf", pa.int64()),
            ("crc32", pa.string()),
            ("row_sketch", pa.list_(pa.float32())),
            ("col_sketch", pa.list_(pa.float32())),
            ("sample", pa.list_(pa.float32())),
            ("sample_stride_rows", pa.int32()),
            ("sample_stride_cols", pa.int32()),
            ("sample_rows", pa.int32()),
            ("sample_cols", pa.int32()),
            ("input_gram", pa.list_(pa.float32())),
            ("input_lanes", pa.list_(pa.float32())),
            ("output_gram", pa.list_(pa.float32())),
        ]
    )


class IndexRow(TypedDict):
    """One row of an index as ``index.reader`` gives it: a tensor's place, shape and moments, its
    sketches and sample as numpy views (None where a tensor has none). The keys are the columns of
    ``index_schema`` (``tests/test_types.py`` checks it); the Gram columns are present only once
    ``reader.load_grams`` has read them."""

    model: str
    key: str
    shard: str
    dtype: str  # a safetensors dtype name (``dtypes.py``), or GGUF_<TYPE> when undecoded
    shape: list[int]
    ndim: int
    numel: int
    nbytes: int
    data_begin: int  # byte offsets in the shard
    data_end: int
    supported: bool
    unsupported_reason: str | None
    rows: int | None  # the 2-D view (rows, cols); None for a tensor without one
    cols: int | None
    finite: int
    sum_x: float
    sum_x2: float
    sum_x3: float
    sum_x4: float
    mean: float | None
    std: float | None
    kurtosis: float | None
    l2_norm: float
    min: float | None
    max: float | None
    absmax: float | None
    zeros: int
    nans: int
    posinf: int
    neginf: int
    crc32: str
    row_sketch: np.ndarray | None
    col_sketch: np.ndarray | None
    sample: np.ndarray | None
    sample_stride_rows: int | None
    sample_stride_cols: int | None
    sample_rows: int | None
    sample_cols: int | None
    input_gram: np.ndarray | None
    input_lanes: np.ndarray | None
    output_gram: np.ndarray | None


def __getattr__(name: str) -> object:
    # INDEX_SCHEMA is built on first use: importing pyarrow costs 0.1 s, which the index
    # stage spends only after its worker processes have started.
    if name == "INDEX_SCHEMA":
        return index_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
