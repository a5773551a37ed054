"""Quantisers written from each convention's published layout, to make quantised copies of real
weights for tests and measurements: ComfyUI's fp8-scaled (``scale_weight``), block fp8
(``weight_scale_inv``, DeepSeek-V3), per-channel fp8 (``weight_scale``, compressed-tensors),
bitsandbytes int8 (``SCB``) and 4-bit (NF4/FP4, ``Linear4bit``), AutoGPTQ and AutoAWQ int4.

Each takes a weight (out, in) float32 and returns its stored tensors by suffix (``weight``,
``scale_weight``, ``qweight``, ...), row-major.
"""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np

E4M3_MAX = 448.0


def _e4m3(values: np.ndarray) -> np.ndarray:
    return values.astype(ml_dtypes.float8_e4m3fn)


def fp8_scaled(values: np.ndarray) -> dict[str, np.ndarray]:
    scale = np.float32(np.abs(values).max() / E4M3_MAX)
    return {"weight": _e4m3(values / scale), "scale_weight": np.array(scale, dtype=np.float32)}


def fp8_block(values: np.ndarray, block: int = 128) -> dict[str, np.ndarray]:
    rows, cols = values.shape
    grid = np.zeros((math.ceil(rows / block), math.ceil(cols / block)), dtype=np.float32)
    stored = np.zeros_like(values)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            piece = values[i * block : (i + 1) * block, j * block : (j + 1) * block]
            grid[i, j] = max(np.abs(piece).max() / E4M3_MAX, 1e-12)
            stored[i * block : (i + 1) * block, j * block : (j + 1) * block] = piece / grid[i, j]
    return {"weight": _e4m3(stored), "weight_scale_inv": grid}


def fp8_channel(values: np.ndarray) -> dict[str, np.ndarray]:
    scale = (np.abs(values).max(axis=1, keepdims=True) / E4M3_MAX).astype(np.float32)
    return {"weight": _e4m3(values / scale), "weight_scale": scale}


def int8_bnb(values: np.ndarray) -> dict[str, np.ndarray]:
    """bitsandbytes 8-bit (``Int8Params``): int8 rows and their absolute maxima (SCB)."""
    scb = np.abs(values).max(axis=1).astype(np.float32)
    stored = np.clip(np.round(values / scb[:, None] * 127), -127, 127).astype(np.int8)
    return {"weight": stored, "SCB": scb, "weight_format": np.zeros(1, dtype=np.uint8)}


def _pack(nibbles: np.ndarray, axis: int) -> np.ndarray:
    """Eight 4-bit values per int32 word, lowest bits first, along ``axis``."""
    moved = np.moveaxis(nibbles.astype(np.uint32), axis, -1)
    words = moved.reshape(*moved.shape[:-1], -1, 8) << (4 * np.arange(8, dtype=np.uint32))
    return np.moveaxis(np.bitwise_or.reduce(words, axis=-1), -1, axis).view(np.int32)


def gptq_int4(values: np.ndarray, group: int = 128, act_order: bool = False) -> dict[str, np.ndarray]:
    """AutoGPTQ's 4-bit layout (asymmetric, per group of input rows; the stored zero one less
    than the real one). ``act_order``: input rows assigned to groups in a shuffled order."""
    weight = values.T.astype(np.float64)  # (in, out)
    inputs = weight.shape[0]
    order = np.random.default_rng(inputs).permutation(inputs) if act_order else np.arange(inputs)
    g_idx = np.empty(inputs, dtype=np.int32)
    g_idx[order] = np.arange(inputs) // group
    groups = inputs // group
    low = np.stack([weight[g_idx == g].min(axis=0) for g in range(groups)])
    high = np.stack([weight[g_idx == g].max(axis=0) for g in range(groups)])
    scales = np.maximum((high - low) / 15, 1e-8).astype(np.float16)
    zeros = np.clip(np.round(-low / scales.astype(np.float64)), 1, 15)  # 0 would overflow the stored zero - 1
    q = np.clip(np.round(weight / scales.astype(np.float64)[g_idx] + zeros[g_idx]), 0, 15)
    return {
        "qweight": _pack(q, axis=0),
        "qzeros": _pack(zeros - 1, axis=1),
        "scales": scales,
        "g_idx": g_idx,
    }


#: AutoAWQ's packing order (``awq/utils/packing_utils.py``): nibble k holds output 8·word + order[k].
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_int4(values: np.ndarray, group: int = 128) -> dict[str, np.ndarray]:
    """AutoAWQ's GEMM layout: qweight (in, out/8) and qzeros packed along the outputs in AWQ's
    order, the zero stored as it is, scales per group of input rows."""
    weight = values.T.astype(np.float64)  # (in, out)
    groups = weight.reshape(-1, group, weight.shape[1])
    low, high = groups.min(axis=1), groups.max(axis=1)
    scales = np.maximum((high - low) / 15, 1e-8).astype(np.float16)
    zeros = np.clip(np.round(-low / scales.astype(np.float64)), 0, 15)
    per_row = np.arange(weight.shape[0]) // group
    q = np.clip(np.round(weight / scales.astype(np.float64)[per_row] + zeros[per_row]), 0, 15)

    def packed(nibbles: np.ndarray) -> np.ndarray:
        order = (np.arange(nibbles.shape[1]) // 8) * 8 + np.tile(AWQ_ORDER, nibbles.shape[1] // 8)
        return _pack(nibbles[:, order], axis=1)

    return {"qweight": packed(q), "qzeros": packed(zeros), "scales": scales}


NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip
FP4 = [
    0,
    0.0052,
    0.6667,
    1,
    0.3333,
    0.5,
    0.1667,
    0.25,
    0,
    -0.0052,
    -0.6667,
    -1,
    -0.3333,
    -0.5,
    -0.1667,
    -0.25,
]


def bnb_4bit(values: np.ndarray, quant_type: str = "nf4", nested: bool = False) -> dict[str, np.ndarray]:
    """bitsandbytes ``Linear4bit`` as transformers saves it: two codes per byte (the even element
    high), absmax per 64 values, the 16-value map and the JSON state as bytes; ``nested``: the
    absmax itself 8-bit codes per 256 with their own absmax and the mean as offset."""
    table = np.array(NF4 if quant_type == "nf4" else FP4, dtype=np.float32)
    flat = values.astype(np.float64).reshape(-1, 64)
    absmax = np.abs(flat).max(axis=1)
    codes = np.abs(flat[..., None] / absmax[:, None, None] - table).argmin(axis=-1).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    state = {"quant_type": quant_type, "blocksize": 64, "dtype": "float32", "shape": list(values.shape)}
    out = {"weight": packed, "weight.quant_map": table}
    if nested:
        offset = absmax.mean()
        centred = (absmax - offset).reshape(-1, 256) if absmax.size % 256 == 0 else None
        assert centred is not None
        nested_table = np.linspace(-1, 1, 256).astype(np.float32)
        nested_absmax = np.abs(centred).max(axis=1)
        nested_codes = np.abs(centred[..., None] / nested_absmax[:, None, None] - nested_table).argmin(
            axis=-1
        )
        out |= {
            "weight.absmax": nested_codes.reshape(-1).astype(np.uint8),
            "weight.nested_absmax": nested_absmax.astype(np.float32),
            "weight.nested_quant_map": nested_table,
        }
        state |= {"nested_blocksize": 256, "nested_offset": float(offset), "nested_dtype": "float32"}
    else:
        out["weight.absmax"] = absmax.astype(np.float32)
    out[f"weight.quant_state.bitsandbytes__{quant_type}"] = np.frombuffer(
        json.dumps(state).encode(), np.uint8
    )
    return out


CONVENTIONS = {
    "fp8-scaled": fp8_scaled,
    "fp8-block128": fp8_block,
    "fp8-channel": fp8_channel,
    "int8-bnb": int8_bnb,
    "gptq-int4": gptq_int4,
    "gptq-int4 act-order": lambda v: gptq_int4(v, act_order=True),
    "awq-int4": awq_int4,
    "nf4-bnb": bnb_4bit,
    "nf4-bnb nested": lambda v: bnb_4bit(v, nested=True),
    "fp4-bnb": lambda v: bnb_4bit(v, "fp4"),
}
