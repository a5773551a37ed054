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
  ``<module>.weight`` of shape (out, in);
- the same three without ``g_idx`` in AutoAWQ's GEMM layout (``qweight`` of shape (in, out / 8)
  and ``qzeros`` packed along the output axis, eight values per word in the order
  ``0 2 4 6 1 3 5 7``, the zero stored as it is: ``W[i, o] = scales[g, o] · (q[i, o] −
  zeros[g, o])``, ``g = i // group size``; AutoAWQ ``awq/utils/packing_utils.py``), told apart
  from GPTQ by the packed axis (``scales`` has ``qweight``'s columns times 8);
- bitsandbytes 4-bit (``Linear4bit`` as transformers saves it): ``<module>.weight`` holds two
  4-bit codes per byte (the even element in the high nibble), with ``.weight.absmax`` (one
  value per ``blocksize`` elements), ``.weight.quant_map`` (the 16 values of NF4 or FP4) and
  ``.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``: JSON as bytes, with the shape,
  ``blocksize`` and, for double quantisation, ``nested_blocksize`` and ``nested_offset``); when
  nested, ``absmax`` is itself 8-bit codes into ``.weight.nested_quant_map`` scaled by
  ``.weight.nested_absmax`` per ``nested_blocksize``, plus the offset. ``W = quant_map[code] ·
  absmax[i // blocksize]`` (bitsandbytes ``functional.dequantize_4bit``).

The converted file holds every other tensor as it was, each dequantised weight as F32 (its exact
value), and no companion. Its metadata records the source and each weight's scheme
(``weightidx_quantisation``: ``fp8-scaled``, ``fp8-block128``, ``fp8-channel``, ``fp8-tensor``,
``int8-bnb``, ``gptq-int4``, ``awq-int4``, ``nf4-bnb``, ``fp4-bnb``)
and the companions it consumed (``weightidx_consumed``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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
    """A GPTQ or AWQ 4-bit module: its packed tensors and the weight they stand for (out, in)."""

    module: str
    qweight: TensorInfo
    qzeros: TensorInfo
    scales: TensorInfo
    g_idx: TensorInfo | None
    scheme: str = "gptq-int4"  # or "awq-int4"

    @property
    def shape(self) -> tuple[int, int]:
        if self.scheme == "awq-int4":
            return self.qweight.shape[1] * 8, self.qweight.shape[0]
        return self.qweight.shape[1], self.qweight.shape[0] * 8

    @property
    def parts(self) -> list[TensorInfo]:
        return [t for t in (self.qweight, self.qzeros, self.scales, self.g_idx) if t is not None]


def packed_modules(checkpoint: Checkpoint) -> list[Packed]:
    """The GPTQ and AWQ 4-bit modules (module doc) whose shapes are consistent."""
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
        groups = scales.shape[0]
        if g_idx is None and scales.shape[1] == qweight.shape[1] * 8:  # AWQ: packed along outputs
            inputs, outputs, scheme = qweight.shape[0], scales.shape[1], "awq-int4"
        else:
            inputs, outputs, scheme = qweight.shape[0] * 8, qweight.shape[1], "gptq-int4"
        if scales.shape[1] != outputs or qzeros.shape != (groups, outputs // 8) or inputs % groups:
            continue
        if g_idx is not None and g_idx.shape != (inputs,):
            continue
        found.append(Packed(module, qweight, qzeros, scales, g_idx, scheme))
    return found


#: AutoAWQ's packing order: nibble ``k`` of a word holds output ``8 · word + AWQ_ORDER[k]``.
AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def _unpacked(words: np.ndarray, axis: int) -> np.ndarray:
    """Eight 4-bit values per int32 word, lowest bits first, laid out along ``axis``."""
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    nibbles = (words.astype(np.uint32)[..., None] >> shifts) & np.uint32(0xF)  # (..., 8)
    if axis == 0:
        return np.moveaxis(nibbles, -1, 1).reshape(words.shape[0] * 8, words.shape[1])
    return nibbles.reshape(words.shape[0], words.shape[1] * 8)


def _load(reader: ShardReader, tensor: TensorInfo) -> np.ndarray:
    return decode(reader.read(tensor.path, tensor.begin, tensor.nbytes), tensor.dtype).reshape(tensor.shape)


def _awq_unpacked(words: np.ndarray) -> np.ndarray:
    """AWQ words (rows, out / 8) to their values (rows, out), undoing ``AWQ_ORDER``."""
    nibbles = _unpacked(words, axis=1).reshape(words.shape[0], -1, 8)
    values = np.empty_like(nibbles)
    values[:, :, AWQ_ORDER] = nibbles
    return values.reshape(words.shape[0], -1)


def _gptq_weight(reader: ShardReader, packed: Packed) -> Iterator[np.ndarray]:
    """The module's weight (out, in) as float32, in blocks of output rows (GPTQ or AWQ)."""
    words, zero_words = (
        _load(reader, packed.qweight).astype(np.int64),
        _load(reader, packed.qzeros).astype(np.int64),
    )
    if packed.scheme == "awq-int4":
        quantised = _awq_unpacked(words).astype(np.float32)  # (in, out)
        zeros = _awq_unpacked(zero_words).astype(np.float32)  # (groups, out)
    else:
        quantised = _unpacked(words, axis=0).astype(np.float32)  # (in, out)
        zeros = _unpacked(zero_words, axis=1).astype(np.float32) + 1  # (groups, out)
    scales = _load(reader, packed.scales).astype(np.float32)
    inputs = quantised.shape[0]
    if packed.g_idx is not None:
        group = _load(reader, packed.g_idx).astype(np.int64)
    else:
        group = np.arange(inputs) // (inputs // scales.shape[0])
    step = max(1, _ROWS_VALUES // max(1, inputs))
    for start in range(0, quantised.shape[1], step):
        stop = min(start + step, quantised.shape[1])
        columns = (quantised[:, start:stop] - zeros[group, start:stop]) * scales[group, start:stop]
        yield np.ascontiguousarray(columns.T)


_BNB4_STATE = re.compile(r"^(?P<weight>.+)\.quant_state\.bitsandbytes__(?P<type>nf4|fp4)$")


@dataclass(frozen=True)
class Bnb4:
    """A bitsandbytes 4-bit weight (module doc): its tensors and its quantisation state."""

    weight: TensorInfo
    absmax: TensorInfo
    quant_map: TensorInfo
    state: TensorInfo
    quant_type: str  # "nf4" or "fp4"
    shape: tuple[int, ...]
    blocksize: int
    nested: tuple[TensorInfo, TensorInfo, int, float] | None  # absmax, quant_map, blocksize, offset

    @property
    def parts(self) -> list[TensorInfo]:
        nested = [] if self.nested is None else [self.nested[0], self.nested[1]]
        return [self.absmax, self.quant_map, self.state, *nested]


def bnb4_weights(checkpoint: Checkpoint, reader: ShardReader) -> list[Bnb4]:
    """The bitsandbytes 4-bit weights whose state and companions are consistent (module doc)."""
    by_key = {t.key: t for t in checkpoint.tensors}
    found = []
    for key, state in by_key.items():
        match = _BNB4_STATE.match(key)
        if match is None or state.numel > 1 << 16:
            continue
        name = match["weight"]
        weight, absmax, quant_map = (by_key.get(name + suffix) for suffix in ("", ".absmax", ".quant_map"))
        if weight is None or absmax is None or quant_map is None or quant_map.numel != 16:
            continue
        try:
            document = json.loads(reader.read(state.path, state.begin, state.nbytes).decode("utf-8"))
            shape, blocksize = tuple(int(n) for n in document["shape"]), int(document["blocksize"])
            nested_blocksize = int(document.get("nested_blocksize", 0))
            offset = float(document.get("nested_offset", 0.0))
        except (ValueError, KeyError, TypeError):
            continue  # not a state this reader understands: the tensors stay as they are
        numel = math.prod(shape)
        if blocksize <= 0 or weight.nbytes != -(-numel // 2) or absmax.numel != -(-numel // blocksize):
            continue
        nested = None
        nested_absmax, nested_map = (
            by_key.get(name + ".nested_absmax"),
            by_key.get(name + ".nested_quant_map"),
        )
        if nested_blocksize and nested_absmax is not None and nested_map is not None:
            nested = (nested_absmax, nested_map, nested_blocksize, offset)
        elif absmax.dtype == "U8":  # codes without the table to read them
            continue
        found.append(Bnb4(weight, absmax, quant_map, state, match["type"], shape, blocksize, nested))
    return found


def _bnb4_weight(reader: ShardReader, quantised: Bnb4) -> Iterator[np.ndarray]:
    """The weight as float32, ``_ROWS_VALUES`` values (whole blocks) at a time, flat."""
    code = _load(reader, quantised.quant_map).astype(np.float32).reshape(-1)
    absmax = _load(reader, quantised.absmax).reshape(-1)
    if quantised.nested is not None:
        nested_absmax, nested_map, nested_blocksize, offset = quantised.nested
        table = _load(reader, nested_map).astype(np.float32).reshape(-1)
        scales = _load(reader, nested_absmax).astype(np.float32).reshape(-1)
        per_code = scales[np.arange(absmax.size) // nested_blocksize]
        absmax = table[absmax.astype(np.int64)] * per_code + np.float32(offset)
    absmax = absmax.astype(np.float32)
    numel, blocksize = math.prod(quantised.shape), quantised.blocksize
    step = max(2, (_ROWS_VALUES // blocksize) * blocksize)
    step += step % 2
    weight = quantised.weight
    for start in range(0, numel, step):
        stop = min(start + step, numel)
        packed = np.frombuffer(
            reader.read(weight.path, weight.begin + start // 2, -(-(stop - start) // 2)), np.uint8
        )
        codes = np.empty(packed.size * 2, dtype=np.uint8)
        codes[0::2], codes[1::2] = packed >> 4, packed & 0xF
        scale = absmax[np.arange(start, stop) // blocksize]
        yield code[codes[: stop - start]] * scale


def convert_scaled(checkpoint: Checkpoint, cache: Path | None = None) -> Path | None:
    """The checkpoint with its scaled weights dequantised, as a safetensors file in the cache
    (converted once per version of the shards), or None when it has none (module doc)."""
    found, dropped = scaled_weights(checkpoint)
    packed = packed_modules(checkpoint)
    with ShardReader() as states:
        four_bit = {q.weight.key: q for q in bnb4_weights(checkpoint, states)}
    dropped += [part for module in packed for part in module.parts]
    dropped += [part for q in four_bit.values() for part in q.parts]
    if not found and not packed and not four_bit:
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
        elif tensor.key in four_bit:
            unpack4 = lambda q=four_bit[tensor.key]: _bnb4_weight(reader, q)  # noqa: E731
            specs.append(TensorSpec(tensor.key, "F32", four_bit[tensor.key].shape, unpack4))
        else:
            copy = lambda t=tensor: _raw(reader, t)  # noqa: E731
            specs.append(TensorSpec(tensor.key, tensor.dtype, tensor.shape, copy, tensor.nbytes))
    for module in packed:
        unpack = lambda m=module: _gptq_weight(reader, m)  # noqa: E731
        specs.append(TensorSpec(f"{module.module}.weight", "F32", module.shape, unpack))
    schemes = (
        {s.weight.key: s.scheme for s in found}
        | {f"{m.module}.weight": m.scheme for m in packed}
        | {key: f"{q.quant_type}-bnb" for key, q in four_bit.items()}
    )
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
