"""Mixture-of-experts checkpoints for the scale tests and benchmark: thousands of same-shaped
tensors, the case where pairing every tensor with every other grows with the square."""

from __future__ import annotations

import numpy as np

from tests.helpers.tensors import Tensors, trained_like


def moe_model(experts: int, layers: int = 4, width: int = 128, ffn: int = 64, seed: int = 0) -> Tensors:
    """Per layer: q_proj (width, width), a router (experts, width), and ``experts`` experts with
    gate and up (ffn, width) and down (width, ffn), as Mixtral and Qwen-MoE name them."""
    rng = np.random.default_rng(seed)
    tensors: Tensors = {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = ("F32", trained_like(rng, width, width))
        tensors[f"{prefix}.mlp.gate.weight"] = ("F32", trained_like(rng, experts, width))
        for e in range(experts):
            expert = f"{prefix}.mlp.experts.{e}"
            tensors[f"{expert}.gate_proj.weight"] = ("F32", trained_like(rng, ffn, width))
            tensors[f"{expert}.up_proj.weight"] = ("F32", trained_like(rng, ffn, width))
            tensors[f"{expert}.down_proj.weight"] = ("F32", trained_like(rng, width, ffn))
    return tensors


def noisy_copy(source: Tensors, noise: float, seed: int, dtype: str = "F16") -> Tensors:
    """Every tensor plus ``noise`` times its own spread of Gaussian noise, stored as ``dtype``."""
    rng = np.random.default_rng(seed)
    numpy_dtype = {"F16": np.float16, "F32": np.float32}[dtype]
    return {
        key: (dtype, (values + noise * values.std() * rng.standard_normal(values.shape)).astype(numpy_dtype))
        for key, (_, values) in source.items()
    }
