"""GGUF files (llama.cpp), read through the ``gguf`` package (the ``gguf`` extra), imported only here.

A GGUF file is converted once into a safetensors file in the cache, which is what gets indexed
and compared (as pickles are, ``pickle.py``):

- each tensor keeps its GGUF name; its shape is GGUF's dimensions reversed (GGUF lists the
  fastest-varying dimension first: ``ne[0]`` is the row length), the usual row-major shape;
- F32, F16, BF16, F64 and the integer types are copied; every quantised type ``gguf`` can
  dequantise (Q4_0 … Q8_0, the K-quants, IQ types, MXFP4; ``gguf.quants.dequantize``) is written
  as F32, the dequantised values exactly, a block of rows at a time;
- a type ``gguf`` cannot dequantise is kept as its raw bytes under the dtype ``GGUF_<TYPE>``,
  which the index records as an unsupported tensor;
- the safetensors metadata records the source file, each quantised tensor's type
  (``weightidx_quantisation``: ``{"blk.0.attn_q.weight": "Q4_K"}``) and the GGUF header's
  ``general.*`` strings.

Format reference: ggml's ``docs/gguf.md`` and gguf-py's ``gguf_reader.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from weightidx.config import CACHE_FIX
from weightidx.errors import CheckpointError, InputError
from weightidx.io.atomic import ensure_folder
from weightidx.io.converted import converted_path
from weightidx.io.safetensors import TensorSpec, write_safetensors

MAGIC = b"GGUF"
QUANTISATION_KEY = "weightidx_quantisation"
CONVERTED_FROM_KEY = "weightidx_converted_from"
_ROWS_BYTES = 64 << 20  # dequantised rows written at a time
# GGML type names that are also safetensors dtypes, with the same bytes: copied as they are
_COPIED = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with GGUF's magic bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == MAGIC


def convert_gguf(path: Path | str, cache: Path | None = None) -> Path:
    """The tensors of a GGUF file as a safetensors file in the cache (converted once per file
    version; module doc).

    Raises:
        InputError: the ``gguf`` package is not installed.
        CheckpointError: ``gguf`` cannot parse the file.
    """
    path = Path(path)
    try:
        import gguf
    except ImportError:
        raise InputError(
            f"{path}: reading GGUF needs the gguf package; pip install 'weightidx[gguf]'"
        ) from None
    target = converted_path(path, cache)
    if target.exists():
        return target
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, KeyError, OSError, IndexError) as exc:
        raise CheckpointError(
            path, f"not a GGUF file gguf can read ({exc})", "the file is truncated or corrupt"
        ) from None
    specs, quantised = [], {}
    for tensor in reader.tensors:
        spec, scheme = _spec(gguf, tensor)
        specs.append(spec)
        if scheme is not None:
            quantised[tensor.name] = scheme
    metadata = {
        CONVERTED_FROM_KEY: str(path.resolve()),
        "weightidx_format": "gguf",
        QUANTISATION_KEY: json.dumps(quantised, sort_keys=True),
        **_general(gguf, reader),
    }
    ensure_folder(target.parent, "converted checkpoints", CACHE_FIX)
    write_safetensors(target, specs, metadata)
    return target


def _spec(gguf, tensor) -> tuple[TensorSpec, str | None]:
    """How one GGUF tensor is written, and its quantisation type (None when stored plainly)."""
    kind = tensor.tensor_type.name
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if kind in _COPIED:
        return TensorSpec(tensor.name, kind, shape, lambda t=tensor: _plain(gguf, t, shape)), None
    if not _dequantisable(gguf, tensor):
        raw = TensorSpec(
            tensor.name, f"GGUF_{kind}", shape, lambda t=tensor: [np.asarray(t.data)], int(tensor.n_bytes)
        )
        return raw, kind
    return TensorSpec(tensor.name, "F32", shape, lambda t=tensor: _dequantised(gguf, t)), kind


def _plain(gguf, tensor, shape: tuple[int, ...]) -> np.ndarray:
    if tensor.tensor_type.name == "BF16":  # stored as bytes by gguf's reader
        return gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
    return np.asarray(tensor.data).reshape(shape)


def _dequantisable(gguf, tensor) -> bool:
    """Whether ``gguf`` dequantises this type (tried on the first block of the tensor)."""
    size = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
    first = np.asarray(tensor.data).reshape(-1)[:size].reshape(1, size)
    try:
        gguf.quants.dequantize(first, tensor.tensor_type)
    except (NotImplementedError, ValueError, KeyError):
        return False
    return True


def _dequantised(gguf, tensor) -> Iterator[np.ndarray]:
    """The tensor as float32, ``_ROWS_BYTES`` of stored rows at a time (its data is shaped
    (..., bytes per row) by gguf's reader)."""
    data = np.asarray(tensor.data)
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    step = max(1, _ROWS_BYTES // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        values = gguf.quants.dequantize(rows[start : start + step], tensor.tensor_type)
        yield values.astype(np.float32, copy=False)


def _general(gguf, reader) -> dict[str, str]:
    """The header's ``general.*`` strings (architecture, name, ...) as ``gguf.general.*``."""
    found = {}
    for name, field in reader.fields.items():
        if not name.startswith("general.") or not field.types or field.types[0] != gguf.GGUFValueType.STRING:
            continue
        found[f"gguf.{name}"] = str(bytes(field.parts[field.data[0]]), encoding="utf-8", errors="replace")
    return found
