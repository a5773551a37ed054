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
  compressed-tensors and FBGEMM fp8); ``<module>.input_scale`` (an activation scale) is dropped;
- ``<module>.SCB`` beside an int8 ``<module>.weight`` (bitsandbytes 8-bit, ``Int8Params``: the
  row's absolute maximum, ``W = weight · SCB / 127``); the ``weight_format`` marker is dropped;
- ``<module>.qweight``, ``.qzeros``, ``.scales`` and optional ``.g_idx`` (GPTQ 4-bit, AutoGPTQ's
  format: eight 4-bit values per int32, ``qweight`` packed along the input axis and ``qzeros``
  along the output axis, the stored zero one less than the real one; ``W[i, o] = scales[g, o] ·
  (q[i, o] − zeros[g, o] − 1)`` with ``g = g_idx[i]``, default ``i // (in / groups)``), written as
  ``<module>.weight`` of shape (out, in).

The converted file holds every other tensor as it was, each dequantised weight as F32 (its exact
value), and no companion. Its metadata records the source and each weight's scheme
(``weightidx_quantisation``: ``fp8-scaled``, ``fp8-block128``, ``fp8-channel``, ``fp8-tensor``,
``int8-bnb``, ``gptq-int4``)
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
#: Stored dtypes that hold quantised values (a weight of another dtype with a "scale" beside it is
#: left as it is: a float weight is the weight).
_STORAGE = {"F8_E4M3": "fp8", "F8_E5M2": "fp8", "I8": "int8", "U8": "uint8"}
_SMALL_MARKERS = (".weight_format",)  # bitsandbytes' int8 layout marker: one value
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
        if (
            tensor.key.endswith(_DROPPED_SUFFIXES)
            or (tensor.key.rsplit(".", 1)[-1] in _MARKERS and tensor.numel <= 2)
            or (tensor.key.endswith(_SMALL_MARKERS) and tensor.numel <= 1)
        ):
            dropped.append(tensor)
            continue
        for suffix, schemes in (
            (".scale_weight", "fp8-scaled"),
            (".weight_scale_inv", "block"),
            (".weight_scale", "channel"),
            (".SCB", "bnb"),
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
    family = _STORAGE.get(weight.dtype)
    if family is None or not scale.supported or not weight.shape:  # a float weight is no storage
        return None
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    if kind == "bnb":
        return (
            Scaled(weight, scale, "int8-bnb", (1, cols))
            if family == "int8" and scale.shape == (rows,)
            else None
        )
    if scale.numel == 1:
        return Scaled(
            weight, scale, f"{family}-scaled" if kind == "fp8-scaled" else f"{family}-tensor", (rows, cols)
        )
    if kind == "channel" and scale.numel == rows and scale.shape in ((rows,), (rows, 1)):
        return Scaled(weight, scale, f"{family}-channel", (1, cols))
    if kind == "block" and len(scale.shape) == 2:
        block = _block(rows, scale.shape[0]), _block(cols, scale.shape[1])
        if block[0] and block[1]:
            return Scaled(
                weight,
                scale,
                f"{family}-block{block[0]}"
                if block[0] == block[1]
                else f"{family}-block{block[0]}x{block[1]}",
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


@dataclass(frozen=True)
class Packed:
    """A GPTQ 4-bit module: its packed tensors and the weight they stand for (out, in)."""

    module: str
    qweight: TensorInfo
    qzeros: TensorInfo
    scales: TensorInfo
    g_idx: TensorInfo | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[1], self.qweight.shape[0] * 8

    @property
    def parts(self) -> list[TensorInfo]:
        return [t for t in (self.qweight, self.qzeros, self.scales, self.g_idx) if t is not None]


def packed_modules(checkpoint: Checkpoint) -> list[Packed]:
    """The GPTQ 4-bit modules (module doc) whose shapes are consistent."""
    by_key = {t.key: t for t in checkpoint.tensors}
    found = []
    for key, qweight in by_key.items():
        if not key.endswith(".qweight") or qweight.dtype != "I32" or len(qweight.shape) != 2:
            continue
        module = key.removesuffix(".qweight")
        qzeros, scales = by_key.get(f"{module}.qzeros"), by_key.get(f"{module}.scales")
        g_idx = by_key.get(f"{module}.g_idx")
        if qzeros is None or scales is None or qzeros.dtype != "I32" or len(scales.shape) != 2:
            continue
        inputs, outputs = qweight.shape[0] * 8, qweight.shape[1]
        groups = scales.shape[0]
        if scales.shape[1] != outputs or qzeros.shape != (groups, outputs // 8) or inputs % groups:
            continue
        if g_idx is not None and g_idx.shape != (inputs,):
            continue
        found.append(Packed(module, qweight, qzeros, scales, g_idx))
    return found


def _unpacked(words: np.ndarray, axis: int) -> np.ndarray:
    """Eight 4-bit values per int32 word, lowest bits first, laid out along ``axis``."""
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    nibbles = (words.astype(np.uint32)[..., None] >> shifts) & np.uint32(0xF)  # (..., 8)
    if axis == 0:
        return np.moveaxis(nibbles, -1, 1).reshape(words.shape[0] * 8, words.shape[1])
    return nibbles.reshape(words.shape[0], words.shape[1] * 8)


def _gptq_weight(reader: ShardReader, packed: Packed) -> Iterator[np.ndarray]:
    """The module's weight (out, in) as float32, in blocks of output rows."""

    def load(tensor: TensorInfo) -> np.ndarray:
        raw = reader.read(tensor.path, tensor.begin, tensor.nbytes)
        return decode(raw, tensor.dtype).reshape(tensor.shape)

    quantised = _unpacked(load(packed.qweight).astype(np.int64), axis=0).astype(np.float32)  # (in, out)
    zeros = _unpacked(load(packed.qzeros).astype(np.int64), axis=1).astype(np.float32) + 1  # (groups, out)
    scales = load(packed.scales).astype(np.float32)
    inputs = quantised.shape[0]
    if packed.g_idx is not None:
        group = load(packed.g_idx).astype(np.int64)
    else:
        group = np.arange(inputs) // (inputs // scales.shape[0])
    step = max(1, _ROWS_VALUES // max(1, inputs))
    for start in range(0, quantised.shape[1], step):
        stop = min(start + step, quantised.shape[1])
        columns = (quantised[:, start:stop] - zeros[group, start:stop]) * scales[group, start:stop]
        yield np.ascontiguousarray(columns.T)


def convert_scaled(checkpoint: Checkpoint, cache: Path | None = None) -> Path | None:
    """The checkpoint with its scaled weights dequantised, as a safetensors file in the cache
    (converted once per version of the shards), or None when it has none (module doc)."""
    found, dropped = scaled_weights(checkpoint)
    packed = packed_modules(checkpoint)
    dropped += [part for module in packed for part in module.parts]
    if not found and not packed:
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
    for module in packed:
        unpack = lambda m=module: _gptq_weight(reader, m)  # noqa: E731
        specs.append(TensorSpec(f"{module.module}.weight", "F32", module.shape, unpack))
    schemes = {s.weight.key: s.scheme for s in found} | {f"{m.module}.weight": "gptq-int4" for m in packed}
    metadata = {
        CONVERTED_FROM_KEY: str(checkpoint.source.resolve()),
        "weightidx_format": "safetensors with scales",
        QUANTISATION_KEY: json.dumps(schemes, sort_keys=True),
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
    if scaled.scheme == "int8-bnb":  # SCB is the row's absolute maximum, int8 spans ±127
        factors = factors / np.float32(127)
    row_block, col_block = scaled.block
    unit = row_block if "-block" in scaled.scheme else 1
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
