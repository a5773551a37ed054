"""A Q6_K quantiser written from ggml's published block layout (``block_q6_K`` in ggml's
``ggml-common.h``; the inverse of ``dequantize_row_q6_K``), because the ``gguf`` package
dequantises K-quants but does not quantise them.

A block holds 256 values: ``ql`` (128 bytes: the low 4 bits of each 6-bit value), ``qh`` (64
bytes: the high 2 bits), ``scales`` (16 int8, one per 16 values) and ``d`` (float16); value
``p`` is ``d * scales[p // 16] * (q[p] - 32)``. Within each half of 128 values (``h``), value
``r`` keeps its low nibble in ``ql[64h + r % 64]`` (bits ``4 * (r // 64)``) and its high bits in
``qh[32h + r % 32]`` (bits ``2 * (r // 32)``).
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = 210


def quantize_q6_k(values: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 with cols a multiple of 256 -> (rows, cols / 256 * 210) uint8."""
    rows, cols = values.shape
    blocks = values.reshape(-1, QK_K).astype(np.float32)
    sub = blocks.reshape(-1, 16, 16)
    amax_index = np.abs(sub).argmax(axis=2)
    peak = np.take_along_axis(sub, amax_index[..., None], axis=2)[..., 0]
    sub_scale = -peak / 32  # the largest value maps to -32, as ggml's make_qx_quants does
    d = np.abs(sub_scale).max(axis=1) / 127
    d = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.clip(np.round(np.where(d[:, None] > 0, sub_scale / d[:, None], 0)), -128, 127).astype(
            np.int8
        )
        step = d[:, None] * scales.astype(np.float32)
        q = np.where(step[..., None] != 0, np.round(sub / step[..., None]), 0)
    q = (np.clip(q, -32, 31).astype(np.int16) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(-1, 128)
    qh = (
        high[:, :, 0:32] | (high[:, :, 32:64] << 2) | (high[:, :, 64:96] << 4) | (high[:, :, 96:] << 6)
    ).reshape(-1, 64)
    packed = np.concatenate(
        [ql, qh, scales.view(np.uint8), d.astype(np.float16).view(np.uint8).reshape(-1, 2)], axis=1
    )
    return packed.reshape(rows, cols // QK_K * BLOCK_BYTES)
