"""Small models with interface axes (text, time, patch) for the lineage tests and sweep: a
source, its width-pruned and width-projected derivations."""

from __future__ import annotations

import numpy as np

from tests.helpers.tensors import trained_like

FFN = 160  # the kept FFN width of the three up-projections


def model(rng: np.random.Generator, width: int, inputs: dict[str, int]) -> dict:
    """Projections from interface axes (text 256, time 192, patch 64) into the hidden width, a
    64-output head, and three FFN up-projections from the hidden width to a kept FFN width of
    160 (an output axis with within-model controls)."""
    tensors = {}
    for name, size in inputs.items():
        tensors[f"{name}.weight"] = ("F32", trained_like(rng, width, size))
    tensors["head.weight"] = ("F32", trained_like(rng, 64, width))
    for i in range(3):
        tensors[f"ffn_{i}.up.weight"] = ("F32", trained_like(rng, FFN, width))
    for i in range(3):
        tensors[f"blocks.{i}.attn.weight"] = ("F32", trained_like(rng, width, width))
    return tensors


INPUTS = {  # three tensors read each interface axis, so each model has controls on it
    f"{axis}_{part}": size
    for axis, size in (("text", 256), ("time", 192), ("patch", 64))
    for part in ("in", "gate", "mod")
}


def pruned(source: dict, width: int, rng: np.random.Generator, noise: float) -> dict:
    """Width-pruned derivation: keep `width` hidden units (rows in, columns out), add noise."""
    keep = np.sort(rng.choice(source["blocks.0.attn.weight"][1].shape[0], width, replace=False))
    out = {}
    for key, (dtype, values) in source.items():
        if key.startswith(("head", "ffn")):
            part = values[:, keep]
        elif key.startswith("blocks"):
            part = values[keep][:, keep]
        else:
            part = values[keep]
        part = part + noise * float(part.std()) * rng.standard_normal(part.shape).astype(np.float32)
        out[key.replace("blocks.", "layers.")] = (dtype, np.ascontiguousarray(part, dtype=np.float32))
    return out


def projected(source: dict, rng: np.random.Generator) -> dict:
    """B's hidden space is a random 96-dim projection of A's 128 (not a subset of units)."""
    basis, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    project = basis[:96].astype(np.float32)
    out = {}
    for key, (dtype, values) in source.items():
        if key.startswith(("head", "ffn")):
            values = values @ project.T
        elif key.startswith("blocks"):
            key, values = key.replace("blocks.", "layers."), project @ values @ project.T
        else:
            values = project @ values
        out[key] = (dtype, np.ascontiguousarray(values, dtype=np.float32))
    return out
