"""A LoRA file applied to a model's weights the way ComfyUI's loader does it, written from its
definitions (``comfy/weight_adapter/lora.py``, ``lokr.py`` and ``base.py``'s
``weight_decompose``) independently of ``weightidx.lora``: tests check a converted LoRA by what
it does to B, not by weightidx's own arithmetic.

Keys are ``diffusion_model.<module>.<part>``; modules target ``<module>.weight`` (or the key
``<module>`` when the model has no such weight: the test models' derived names).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

Tensors = dict[str, tuple[str, np.ndarray]]

_PARTS = (
    "lora_A.weight",
    "lora_B.weight",
    "lora_down.weight",
    "lora_up.weight",
    "lora_mid.weight",
    "alpha",
    "dora_scale",
    "diff",
    "lokr_w1",
    "lokr_w2",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_t2",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "hada_t2",
)


def apply_lora(model: Tensors, lora: dict[str, np.ndarray], prefix: str = "diffusion_model.") -> Tensors:
    """The model's tensors after the LoRA (float64 values, the model's dtypes)."""
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, values in lora.items():
        part = next(p for p in _PARTS if key.endswith("." + p))
        modules[key[len(prefix) : -len(part) - 1]][part] = np.asarray(values, dtype=np.float64)
    out = {key: (dtype, values.astype(np.float64)) for key, (dtype, values) in model.items()}
    for module, parts in modules.items():
        key = module + ".weight" if module + ".weight" in out else module  # keys without ".weight"
        dtype, weight = out[key]
        matrix = weight.reshape(weight.shape[0], -1)
        delta = _delta(parts, weight.shape).reshape(matrix.shape)
        if "dora_scale" in parts:
            merged = _weight_decompose(parts["dora_scale"], matrix, delta)
        else:
            merged = matrix + delta
        out[key] = (dtype, merged.reshape(weight.shape))
    return out


def _tucker(core: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.einsum("ijkl,jr,ip->prkl", core, b, a)


def _delta(parts: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """ΔW in the weight's shape, as ComfyUI's adapters compute it."""
    if "diff" in parts:
        return parts["diff"].reshape(shape)
    if "lokr_w1" in parts or "lokr_w1_a" in parts:
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        elif "lokr_t2" in parts:
            w2 = _tucker(parts["lokr_t2"], parts["lokr_w2_b"], parts["lokr_w2_a"])
        else:
            w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        inner = parts["lokr_w2_b"].shape[0] if "lokr_w2_b" in parts else None
        scale = 1.0 if inner is None or "alpha" not in parts else float(parts["alpha"]) / inner
        return scale * np.kron(w1, w2).reshape(shape)
    if "hada_w1_a" in parts:
        if "hada_t1" in parts:
            m1 = _tucker(parts["hada_t1"], parts["hada_w1_b"], parts["hada_w1_a"])
            m2 = _tucker(parts["hada_t2"], parts["hada_w2_b"], parts["hada_w2_a"])
        else:
            m1, m2 = parts["hada_w1_a"] @ parts["hada_w1_b"], parts["hada_w2_a"] @ parts["hada_w2_b"]
        scale = float(parts["alpha"]) / parts["hada_w1_b"].shape[0] if "alpha" in parts else 1.0
        return scale * (m1 * m2).reshape(shape)
    up = parts.get("lora_B.weight", parts.get("lora_up.weight"))
    down = parts.get("lora_A.weight", parts.get("lora_down.weight"))
    assert up is not None and down is not None
    rank = down.shape[0]
    alpha = float(parts["alpha"]) if "alpha" in parts else rank
    up2, down2 = up.reshape(up.shape[0], rank), down.reshape(rank, -1)
    if "lora_mid.weight" in parts:  # ComfyUI lora.py: down through the middle factor
        mid = parts["lora_mid.weight"]
        final = [down2.shape[1], rank, mid.shape[2], mid.shape[3]]
        down2 = (down2.T @ mid.transpose(1, 0, 2, 3).reshape(rank, -1)).reshape(final).transpose(1, 0, 2, 3)
        down2 = down2.reshape(rank, -1)
    return (alpha / rank * (up2 @ down2)).reshape(shape)


def _weight_decompose(dora_scale: np.ndarray, weight: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """ComfyUI's weight_decompose for a 2-D weight: norms per output row when dora_scale's first
    dimension is the weight's, else per input column."""
    calc = weight + delta
    if dora_scale.shape[0] == calc.shape[0]:
        norm = np.linalg.norm(calc, axis=1, keepdims=True)
    else:
        norm = np.linalg.norm(calc, axis=0, keepdims=True)
    return calc * (dora_scale.reshape(norm.shape) / norm)
