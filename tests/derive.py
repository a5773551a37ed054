"""Derive model B from model A by known transforms, with the ground truth, for compare tests.

``derive(source, steps)`` takes A's tensors ({key: (dtype, values)}) and returns B's tensors
and the truth: which (B key, B slice) came from which (A key, A slice), and the correlation
the transform leaves. Everything is generated in memory: these are small test models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from weightidx.io.safetensors import decode, encode

Tensors = dict[str, tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Truth:
    b: str
    b_slice: tuple[int, int, int] | None  # (axis, start, stop) of B's 2-D view
    a: str
    a_slice: tuple[int, int, int] | None
    correlation: float  # |correlation| the transform leaves (1 for exact copies)


@dataclass
class Derived:
    tensors: Tensors = field(default_factory=dict)
    truth: list[Truth] = field(default_factory=list)

    def expected(self, threshold: float = 0.5) -> set[tuple]:
        """Pairs a compare should report as match or partial: related, and left with a correlation
        that tensors of test size show far beyond chance (``threshold``)."""
        return {(t.b, t.b_slice, t.a, t.a_slice) for t in self.truth if t.correlation >= threshold}


def stored(dtype: str, values: np.ndarray) -> np.ndarray:
    """Values as a file of that dtype holds them."""
    return decode(encode(values, dtype), dtype).reshape(values.shape)


def matrices(tensors: Tensors) -> list[str]:
    return [k for k, (_, v) in tensors.items() if v.ndim == 2 and min(v.shape) > 1]


def rename(source: Tensors, names: dict[str, str]) -> Derived:
    out = Derived()
    for key, (dtype, values) in source.items():
        out.tensors[names.get(key, key)] = (dtype, values)
        out.truth.append(Truth(names.get(key, key), None, key, None, 1.0))
    return out


def anonymise(source: Tensors, seed: int) -> Derived:
    keys = list(source)
    order = np.random.default_rng(seed).permutation(len(keys))
    return rename(source, {keys[i]: f"onnx::MatMul_{100 + n}" for n, i in enumerate(order)})


def cast(source: Tensors, dtype: str) -> Derived:
    out = Derived()
    for key, (old, values) in source.items():
        new = dtype if old in ("F32", "F16", "BF16", "F64") else old
        casted = stored(new, values)
        out.tensors[key] = (new, casted)
        out.truth.append(Truth(key, None, key, None, _corr(values, casted)))
    return out


def transpose(source: Tensors) -> Derived:
    out = Derived()
    for key, (dtype, values) in source.items():
        flipped = np.ascontiguousarray(values.T) if key in matrices(source) else values
        out.tensors[key + ".t"] = (dtype, flipped)
        out.truth.append(Truth(key + ".t", None, key, None, 1.0))
    return out


def fuse(source: Tensors, groups: list[list[str]], axis: int = 0) -> Derived:
    out = Derived()
    fused = {k for group in groups for k in group}
    for key, item in source.items():
        if key not in fused:
            out.tensors[key] = item
            out.truth.append(Truth(key, None, key, None, 1.0))
    for n, group in enumerate(groups):
        parts = [source[k][1] for k in group]
        name = f"fused.{n}.weight"
        out.tensors[name] = (source[group[0]][0], np.concatenate(parts, axis=axis))
        start = 0
        for key, part in zip(group, parts, strict=True):
            size = part.shape[axis]
            out.truth.append(Truth(name, (axis, start, start + size), key, None, 1.0))
            start += size
    return out


def split(source: Tensors, keys: list[str], parts: int) -> Derived:
    out = Derived()
    for key, (dtype, values) in source.items():
        if key not in keys:
            out.tensors[key] = (dtype, values)
            out.truth.append(Truth(key, None, key, None, 1.0))
            continue
        size = values.shape[0] // parts
        for p in range(parts):
            out.tensors[f"{key}.part{p}"] = (dtype, np.ascontiguousarray(values[p * size : (p + 1) * size]))
            out.truth.append(Truth(f"{key}.part{p}", None, key, (0, p * size, (p + 1) * size), 1.0))
    return out


def scale(source: Tensors, factor: float) -> Derived:
    out = Derived()
    for key, (dtype, values) in source.items():
        out.tensors[key] = (dtype, (values * np.float32(factor)).astype(np.float32))
        out.truth.append(Truth(key, None, key, None, 1.0))
    return out


def finetune(source: Tensors, level: float, seed: int) -> Derived:
    """Add noise of ``level`` times each tensor's std: correlation 1/sqrt(1+level²)."""
    rng = np.random.default_rng(seed)
    out = Derived()
    for key, (dtype, values) in source.items():
        noise = rng.standard_normal(values.shape).astype(np.float32)
        tuned = stored(dtype, values + np.float32(level * float(values.std())) * noise)
        out.tensors[key] = (dtype, tuned)
        out.truth.append(Truth(key, None, key, None, _corr(values, tuned)))
    return out


def edit(
    source: Tensors, reinit: list[str], delete: list[str], add: dict[str, np.ndarray], seed: int
) -> Derived:
    """Re-initialise some tensors (new values, same key), delete some, add new ones."""
    rng = np.random.default_rng(seed)
    out = Derived()
    for key, (dtype, values) in source.items():
        if key in delete:
            continue
        if key in reinit:
            fresh = rng.standard_normal(values.shape).astype(np.float32) * np.float32(values.std() or 1.0)
            out.tensors[key] = (dtype, stored(dtype, fresh))
            continue
        out.tensors[key] = (dtype, values)
        out.truth.append(Truth(key, None, key, None, 1.0))
    for key, values in add.items():
        out.tensors[key] = ("F32", values)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a64.size < 2 or a64.std() == 0 or b64.std() == 0:
        return 1.0 if np.array_equal(a64, b64) else 0.0
    return abs(float(np.corrcoef(a64, b64)[0, 1]))


def toy_transformer(seed: int, width: int = 128, layers: int = 3, ffn: int | None = None) -> Tensors:
    """A small BERT-like model: embeddings, per-layer q/k/v/o, MLP, LayerNorms and biases."""
    from tests.helpers.tensors import trained_like

    rng = np.random.default_rng(seed)
    ffn = ffn or 4 * width
    tensors: Tensors = {"embeddings.word.weight": ("F32", trained_like(rng, 1000, width))}
    for i in range(layers):
        p = f"layer.{i}."
        for name in ("q", "k", "v", "o"):
            tensors[p + f"attn.{name}.weight"] = ("F32", trained_like(rng, width, width))
            tensors[p + f"attn.{name}.bias"] = ("F32", 0.02 * rng.standard_normal(width).astype(np.float32))
        tensors[p + "norm1.weight"] = ("F32", (1 + 0.05 * rng.standard_normal(width)).astype(np.float32))
        tensors[p + "mlp.up.weight"] = ("F32", trained_like(rng, ffn, width))
        tensors[p + "mlp.down.weight"] = ("F32", trained_like(rng, width, ffn))
        tensors[p + "norm2.weight"] = ("F32", (1 + 0.05 * rng.standard_normal(width)).astype(np.float32))
    tensors["head.weight"] = ("F32", trained_like(rng, 64, width))
    return tensors


def as_tensors(values: dict[str, np.ndarray], dtype: str = "F32") -> Tensors:
    return {k: (dtype, v) for k, v in values.items()}


__all__ = ["Derived", "Truth", "math"]


def drift(source: Tensors, correlation: float, seed: int, dtype: str | None = None) -> Derived:
    """Every tensor moved to about ``correlation`` with its source, as heavy training moves it:
    ``mean + c·(A - mean) + sqrt(1 - c²)·N``, where N is the same tensor with its rows and
    columns shuffled (trained-weight structure, no correspondence), scaled to A's spread.
    Stored as ``dtype`` (default: unchanged)."""
    rng = np.random.default_rng(seed)
    out = Derived()
    for key, (old, values) in source.items():
        new = dtype if dtype and old in ("F32", "F16", "BF16", "F64") else old
        if old not in ("F32", "F16", "BF16", "F64"):
            out.tensors[key] = (new, values)
            out.truth.append(Truth(key, None, key, None, 1.0))
            continue
        flat = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(-1, 1)
        centred = flat.astype(np.float64) - flat.mean()
        noise = centred[rng.permutation(flat.shape[0])][:, rng.permutation(flat.shape[1])]
        spread = float(noise.std()) or 1.0
        weight = math.sqrt(1 - correlation**2) * float(centred.std()) / spread
        moved = correlation * centred + weight * noise
        moved = stored(new, (moved + flat.mean()).astype(np.float32).reshape(values.shape))
        out.tensors[key] = (new, moved)
        out.truth.append(Truth(key, None, key, None, _corr(values, moved)))
    return out


def interleave_heads(
    source: Tensors, groups: list[list[str]], head_dim: int, prefix: str = "layers"
) -> Derived:
    """q, k, v (each group's tensors, rows = heads x ``head_dim``) fused into one tensor whose rows
    go head by head: ``[q_h0, k_h0, v_h0, q_h1, ...]`` (GPT-NeoX's and BLOOM's ``query_key_value``).
    Biases (``.bias`` beside each weight) are laid out the same way. The truth has one entry a head."""
    out = Derived()
    fused_keys = {k for group in groups for k in group}
    fused_keys |= {_bias(k) for k in fused_keys if _bias(k) in source}
    for key, item in source.items():
        if key not in fused_keys:
            out.tensors[key] = item
            out.truth.append(Truth(key, None, key, None, 1.0))
    for n, group in enumerate(groups):
        for suffix in ("weight", "bias"):
            keys = [k if suffix == "weight" else _bias(k) for k in group]
            if not all(k in source for k in keys):
                continue
            name = f"{prefix}.{n}.attention.query_key_value.{suffix}"
            heads = source[keys[0]][1].shape[0] // head_dim
            pieces, start = [], 0
            for h in range(heads):
                for key in keys:
                    rows = (h * head_dim, (h + 1) * head_dim)
                    pieces.append(source[key][1][rows[0] : rows[1]])
                    out.truth.append(Truth(name, (0, start, start + head_dim), key, (0, *rows), 1.0))
                    start += head_dim
            out.tensors[name] = (source[keys[0]][0], np.ascontiguousarray(np.concatenate(pieces)))
    return out


def _bias(weight_key: str) -> str:
    return weight_key[: -len("weight")] + "bias" if weight_key.endswith("weight") else weight_key


def reorder_rows(source: Tensors, keys: list[str], order: np.ndarray, name: str = "") -> Derived:
    """The rows of ``keys`` (and of their biases) reordered: ``B[i] = A[order[i]]``. The truth
    is the whole tensor (the order is the compare's to find)."""
    out = Derived()
    moved = set(keys) | {_bias(k) for k in keys if _bias(k) in source}
    for key, (dtype, values) in source.items():
        new = values[order] if key in moved else values
        out.tensors[key + name] = (dtype, np.ascontiguousarray(new))
        out.truth.append(Truth(key + name, None, key, None, 1.0))
    return out


def rotary_order(rows: int, head_dim: int) -> np.ndarray:
    """llama.cpp's reordering of q and k rows (convert_hf_to_gguf.py, LlamaModel.permute):
    the rows of each head seen as (2, head_dim / 2) and transposed; ``B[i] = A[order[i]]``."""
    return np.arange(rows).reshape(rows // head_dim, 2, head_dim // 2).swapaxes(1, 2).reshape(rows)


def grouped_qkv(source: Tensors, layers: list[int], heads: int, kv_heads: int, head_dim: int) -> Derived:
    """Falcon's multi-query layout: per key-value group, the group's q heads, then its k and v
    head, in one ``query_key_value`` (A has q of ``heads`` and k, v of ``kv_heads`` heads)."""
    out = Derived()
    fused = {f"layer.{i}.attn.{p}.weight" for i in layers for p in "qkv"}
    for key, item in source.items():
        if key not in fused:
            out.tensors[key] = item
            out.truth.append(Truth(key, None, key, None, 1.0))
    per_group = heads // kv_heads
    for i in layers:
        q, k, v = (source[f"layer.{i}.attn.{p}.weight"][1] for p in "qkv")
        name, pieces, start = f"layers.{i}.self_attention.query_key_value.weight", [], 0
        for g in range(kv_heads):
            rows = (g * per_group * head_dim, (g + 1) * per_group * head_dim)
            parts = [(f"layer.{i}.attn.q.weight", q, rows)]
            parts += [
                (f"layer.{i}.attn.{p}.weight", t, (g * head_dim, (g + 1) * head_dim))
                for p, t in (("k", k), ("v", v))
            ]
            for key, values, (r0, r1) in parts:
                pieces.append(values[r0:r1])
                whole = (r0, r1) == (0, len(values))
                out.truth.append(
                    Truth(name, (0, start, start + r1 - r0), key, None if whole else (0, r0, r1), 1.0)
                )
                start += r1 - r0
        out.tensors[name] = ("F32", np.ascontiguousarray(np.concatenate(pieces)))
    return out


def minitron_bert(
    source: Tensors,
    seed: int,
    noise: float = 0.0,
    permuted: bool = False,
    hidden: int = 256,
    heads: int = 8,
    ffn: int = 1024,
    head_dim: int = 32,
    layers: list[int] | None = None,
) -> tuple[Tensors, dict]:
    """Minitron-style width pruning of a BERT checkpoint (all-MiniLM-L6-v2's names): ``hidden``
    of the residual channels kept on every axis that carries them (in order, or ``permuted``),
    ``heads`` whole heads and ``ffn`` FFN units per layer, then noise of ``noise`` x each
    tensor's std (brief retraining). ``layers``: the layers kept (depth pruning too), renumbered.

    Returns B's tensors and the truth: {B key: (A key, rows or None, cols or None)} with A's
    indices for each of B's rows and columns."""
    rng = np.random.default_rng(seed)
    width = next(v.shape[1] for k, (_, v) in source.items() if k.endswith("word_embeddings.weight"))
    total_heads, units = (
        width // head_dim,
        next(v.shape[0] for k, (_, v) in source.items() if k.endswith("intermediate.dense.weight")),
    )
    keep = np.sort(rng.choice(width, hidden, replace=False))
    keep = rng.permutation(keep) if permuted else keep
    depth = sorted({int(k.split(".")[2]) for k in source if k.startswith("encoder.layer.")})
    kept_layers = layers if layers is not None else depth
    per_layer = {}
    for i in kept_layers:
        chosen = np.sort(rng.choice(total_heads, heads, replace=False))
        rows = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in chosen])
        per_layer[i] = (rows, np.sort(rng.choice(units, ffn, replace=False)))
    tensors, truth = {}, {}
    for key, (dtype, values) in source.items():
        if dtype != "F32":
            continue
        parts = key.split(".")
        if key.startswith("encoder.layer."):
            layer = int(parts[2])
            if layer not in per_layer:
                continue
            head_rows, ffn_units = per_layer[layer]
            new_key = ".".join([*parts[:2], str(kept_layers.index(layer)), *parts[3:]])
        else:
            head_rows = ffn_units = None
            new_key = key
        rows, cols = _bert_axes(key, values, keep, width, head_rows, ffn_units)
        part = values if rows is None else values[rows]
        part = part if cols is None else part[:, cols]
        part = np.ascontiguousarray(part, dtype=np.float32)
        if noise:
            part = part + np.float32(noise * float(part.std())) * rng.standard_normal(part.shape).astype(
                np.float32
            )
        tensors[new_key] = ("F32", part)
        truth[new_key] = (key, rows, cols)
    return tensors, truth


def _bert_axes(key, values, keep, width, head_rows, ffn_units):
    """The A rows and columns a pruned BERT tensor keeps (None: all, in order)."""
    if re.search(r"attention\.self\.(query|key|value)\.weight$", key):
        return head_rows, keep
    if re.search(r"attention\.self\.(query|key|value)\.bias$", key):
        return head_rows, None
    if key.endswith("attention.output.dense.weight"):
        return keep, head_rows
    if key.endswith("intermediate.dense.weight"):
        return ffn_units, keep
    if key.endswith("intermediate.dense.bias"):
        return ffn_units, None
    if key.endswith("output.dense.weight") and values.shape[1] != width:
        return keep, ffn_units
    if values.ndim == 1:
        return (keep, None) if values.shape[0] == width else (None, None)
    rows = keep if values.shape[0] == width else None
    cols = keep if values.shape[1] == width else None
    return rows, cols
