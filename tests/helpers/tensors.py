"""Tensors for tests: writing {key: (dtype, values)} as safetensors, and weights that look trained."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from weightidx.io.safetensors import TensorSpec, write_safetensors

Tensors = dict[str, tuple[str, np.ndarray]]


def write_tensors(path: Path, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path:
    """Write {key: (dtype, values)} as a safetensors file."""
    specs = [
        TensorSpec(key, dtype, tuple(values.shape), lambda values=values: values)
        for key, (dtype, values) in tensors.items()
    ]
    write_safetensors(path, specs, metadata)
    return path


def trained_like(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Gaussian bulk plus a low-rank part and uneven row scales, like trained weights."""
    rows, cols = shape[0], math.prod(shape[1:])
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values += (
        0.5
        * rng.standard_normal((rows, 2)).astype(np.float32)
        @ rng.standard_normal((2, cols)).astype(np.float32)
    )
    values *= np.exp(0.3 * rng.standard_normal((rows, 1))).astype(np.float32)
    return (values / math.sqrt(cols)).reshape(shape)


def raw_file(path: Path, header: object, data: bytes = b"", header_bytes: bytes | None = None) -> Path:
    encoded = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


# Each safetensors dtype as a reference implementation decodes it (numpy, ml_dtypes).
REFERENCE = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
