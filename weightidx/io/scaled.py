"""Quantised safetensors whose weights need a companion scale: dequantised once into the cache.

A weight stored as ``q`` with a scale tensor beside it means ``W = q · s``; indexing ``q`` alone
would compare the stored values, not the weights (a ComfyUI fp8-scaled model then looks like
``scale:2054`` of its source, and a LoRA ported through that transform comes out about 2,000
times too strong). Recognised, by their companion tensors:

- ``<module>.scale_weight``, one value (ComfyUI's fp8-scaled checkpoints, ``comfy/ops.py``:
  ``weight.to(dtype) * scale_weight``); the zero-size ``scaled_fp8`` marker is dropped;
- ``<module>.weight_scale_inv`` of shape ``(ceil(rows/b), ceil(cols/b))`` (block fp8: DeepSeek-V3,
  Qwen3-FP8; ``weight_dequant`` in DeepSeek-V3's ``inference/kernel.py``, b = 128): each b × b
  block times its value;
- ``<module>.weight_scale`` of one value, or one per output row (``(rows,)`` or ``(rows, 1)``:
  compressed-tensors and FBGEMM fp8); ``<module>.input_scale`` (an activation scale) is dropped.

The converted file holds every other tensor as it was, each dequantised weight as F32 (its exact
value), and no companion. Its metadata records the source and each weight's scheme
(``weightidx_quantisation``: ``fp8-scaled``, ``fp8-block128``, ``fp8-channel``, ``fp8-tensor``)
and the companions it consumed (``weightidx_consumed``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightidx.config import CACHE_FIX, cache_folder
from weightidx.io.atomic import ensure_folder
from weightidx.io.gguf import CONVERTED_FROM_KEY, QUANTISATION_KEY
from weightidx.io.safetensors import (
    Checkpoint,
    ShardReader,
    TensorInfo,
    TensorSpec,
    decode,
    write_safetensors,
)

CONSUMED_KEY = "weightidx_consumed"
_ROWS_VALUES = 1 << 24  # dequantised values written at a time
_CHUNK_BYTES = 64 << 20  # bytes copied at a time
_DROPPED_SUFFIXES = (".input_scale",)
_MARKERS = ("scaled_fp8",)


@dataclass(frozen=True)
class Scaled:
    """One weight and its scale: the scheme and how the scale spreads over the weight."""

    weight: TensorInfo
    scale: TensorInfo
    scheme: str
    block: tuple[int, int] = (1, 1)  # rows and columns each scale value covers


def scaled_weights(checkpoint: Checkpoint) -> tuple[list[Scaled], list[TensorInfo]]:
    """The weights stored with a companion scale, and the companions and markers to drop."""
    by_key = {t.key: t for t in checkpoint.tensors}
    found: list[Scaled] = []
    dropped: list[TensorInfo] = []
    for tensor in checkpoint.tensors:
        if tensor.key.endswith(_DROPPED_SUFFIXES) or (
            tensor.key.rsplit(".", 1)[-1] in _MARKERS and tensor.numel <= 2
        ):
            dropped.append(tensor)
            continue
        for suffix, schemes in (
            (".scale_weight", "fp8-scaled"),
            (".weight_scale_inv", "block"),
            (".weight_scale", "channel"),
        ):
            if not tensor.key.endswith(suffix):
                continue
            weight = by_key.get(tensor.key[: -len(suffix)] + ".weight")
            scaled = _scaled(weight, tensor, schemes) if weight is not None else None
            if scaled is not None:
                found.append(scaled)
                dropped.append(tensor)
    return found, dropped


def _scaled(weight: TensorInfo, scale: TensorInfo, kind: str) -> Scaled | None:
    """How ``scale`` applies to ``weight``, or None when its shape fits no convention."""
    if not (weight.supported and scale.supported) or not weight.shape:
        return None
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    if scale.numel == 1:
        return Scaled(weight, scale, "fp8-scaled" if kind == "fp8-scaled" else "fp8-tensor", (rows, cols))
    if kind == "channel" and scale.numel == rows and scale.shape in ((rows,), (rows, 1)):
        return Scaled(weight, scale, "fp8-channel", (1, cols))
    if kind == "block" and len(scale.shape) == 2:
        block = _block(rows, scale.shape[0]), _block(cols, scale.shape[1])
        if block[0] and block[1]:
            return Scaled(
                weight,
                scale,
                f"fp8-block{block[0]}" if block[0] == block[1] else f"fp8-block{block[0]}x{block[1]}",
                block,
            )
    return None


def _block(size: int, count: int) -> int | None:
    """The block length b with ceil(size / b) == count: 128 when it fits (the convention), else
    the power of two that does."""
    for b in (128, *(1 << k for k in range(4, 13))):
        if -(-size // b) == count:
            return b
    return None


def convert_scaled(checkpoint: Checkpoint, cache: Path | None = None) -> Path | None:
    """The checkpoint with its scaled weights dequantised, as a safetensors file in the cache
    (converted once per version of the shards), or None when it has none (module doc)."""
    found, dropped = scaled_weights(checkpoint)
    if not found:
        return None
    identity = ":".join(
        f"{s.path.resolve()}:{s.size}:{s.mtime_ns}:{s.header_sha256}" for s in checkpoint.shards
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    folder = cache or cache_folder()
    target = folder / "converted" / f"{checkpoint.default_name()}-{digest}.safetensors"
    if target.exists():
        return target
    scaled = {s.weight.key: s for s in found}
    skip = {t.key for t in dropped}
    reader = ShardReader()
    specs = []
    for tensor in checkpoint.tensors:
        if tensor.key in skip:
            continue
        if tensor.key in scaled:
            dequantise = lambda s=scaled[tensor.key]: _dequantised(reader, s)  # noqa: E731
            specs.append(TensorSpec(tensor.key, "F32", tensor.shape, dequantise))
        else:
            copy = lambda t=tensor: _raw(reader, t)  # noqa: E731
            specs.append(TensorSpec(tensor.key, tensor.dtype, tensor.shape, copy, tensor.nbytes))
    metadata = {
        CONVERTED_FROM_KEY: str(checkpoint.source.resolve()),
        "weightidx_format": "safetensors with scales",
        QUANTISATION_KEY: json.dumps({s.weight.key: s.scheme for s in found}, sort_keys=True),
        CONSUMED_KEY: json.dumps(sorted(skip)),
    }
    ensure_folder(target.parent, "converted checkpoints", CACHE_FIX)
    with reader:
        write_safetensors(target, specs, metadata)
    return target


def _raw(reader: ShardReader, tensor: TensorInfo) -> Iterator[np.ndarray]:
    """A tensor's bytes as they are, ``_CHUNK_BYTES`` at a time."""
    for start in range(tensor.begin, tensor.end, _CHUNK_BYTES):
        length = min(_CHUNK_BYTES, tensor.end - start)
        yield np.frombuffer(reader.read(tensor.path, start, length), dtype=np.uint8)


def _dequantised(reader: ShardReader, scaled: Scaled) -> Iterator[np.ndarray]:
    """``q · s`` as float32, in blocks of whole rows (whole blocks of the scale's grid)."""
    weight, scale = scaled.weight, scaled.scale
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    factors = decode(reader.read(scale.path, scale.begin, scale.nbytes), scale.dtype).astype(np.float32)
    row_block, col_block = scaled.block
    unit = row_block if scaled.scheme.startswith("fp8-block") else 1
    step = max(unit, (max(1, _ROWS_VALUES // max(1, cols)) // unit) * unit)
    row_bytes = weight.nbytes // max(1, rows)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        raw = reader.read(weight.path, weight.begin + start * row_bytes, (stop - start) * row_bytes)
        values = decode(raw, weight.dtype).astype(np.float32).reshape(stop - start, cols)
        if factors.size == 1:
            values *= factors.reshape(())
        elif unit == 1:  # one value per row
            values *= factors.reshape(-1, 1)[start:stop]
        else:
            grid = factors.reshape(-(-rows // row_block), -(-cols // col_block))[start // row_block :]
            per_value = np.repeat(np.repeat(grid, row_block, axis=0)[: stop - start], col_block, axis=1)
            values *= per_value[:, :cols]
        yield values.reshape((stop - start, *weight.shape[1:]))
