"""The seed's hard case (Wan2.1-style A against LongCat-style Bs of another width) and
independently initialised twins, written from ``weightidx.demo``'s generators: test and
benchmark data, not part of the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weightidx.demo import (
    DemoConfig,
    Maker,
    finetuned,
    longcat_tensors,
    make_folder,
    seed_of,
    wan_tensors,
)
from weightidx.io.safetensors import TensorSpec, write_safetensors

_HEAD_ROWS = (
    "q.weight",
    "k.weight",
    "v.weight",
    "q.bias",
    "k.bias",
    "v.bias",
    "norm_q.weight",
    "norm_k.weight",
)


def pruned_wan_tensors(
    source: dict[str, tuple[tuple[int, ...], Maker]],
    config: DemoConfig,
    narrow: DemoConfig,
    level: float,
    head_dim: int | None = None,
) -> dict[str, tuple[tuple[int, ...], Maker]]:
    """A's Wan-style tensors cut down to ``narrow``'s width: a fixed random choice of hidden
    units (and of FFN units) is kept on every axis of that size, then fine-tuning noise
    ``level`` is added. Interface axes (text, timestep, patch) keep their size.

    ``head_dim``: attention keeps whole heads of this size instead (the rows of q, k, v and
    their norms, the columns of o), as pruning 40 heads of 128 to 32 would; the residual
    width is still cut unit by unit.
    """
    rng = np.random.default_rng(seed_of(config.seed, "prune", narrow.width))
    keep = np.sort(rng.choice(config.width, narrow.width, replace=False))
    keep_ffn = np.sort(rng.choice(config.ffn_width, narrow.ffn_width, replace=False))
    by_size = {
        config.width: keep,
        config.ffn_width: keep_ffn,
        6 * config.width: np.concatenate([keep + k * config.width for k in range(6)]),
    }
    heads = None
    if head_dim is not None:
        kept_heads = np.sort(rng.choice(config.width // head_dim, narrow.width // head_dim, replace=False))
        heads = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in kept_heads])
    out: dict[str, tuple[tuple[int, ...], Maker]] = {}
    for key, (shape, maker) in source.items():
        block = key.split(".")[1] if key.startswith("blocks.") else None
        if block is not None and int(block) >= narrow.blocks:
            continue
        cuts = [(axis, by_size[size]) for axis, size in enumerate(shape) if size in by_size]
        if heads is not None and "_attn." in key:  # the head axis: rows of q/k/v, columns of o
            head_axis = 1 if key.endswith(".o.weight") else 0 if key.endswith(_HEAD_ROWS) else None
            cuts = [(axis, heads if axis == head_axis else units) for axis, units in cuts]
        new_shape = list(shape)
        for axis, kept in cuts:
            new_shape[axis] = len(kept)
        new_shape = tuple(new_shape)

        def cut(maker: Maker = maker, cuts: list = cuts) -> np.ndarray:
            values = maker()
            for axis, kept in cuts:
                values = np.take(values, kept, axis=axis)
            return values

        out[key] = (new_shape, finetuned(cut, level, seed_of(config.seed, "prune-tune", key)))
    return out


def write_seed_pair(
    folder: Path | str,
    blocks: int = 2,
    wide: int = 5120,
    narrow: int = 4096,
    text_dim: int = 4096,
    head_dim: int = 128,
) -> dict[str, Path]:
    """The seed's hard case at full width, few blocks: a Wan2.1-style A (width ``wide``) and
    three LongCat-style models of width ``narrow``: ``derived`` (A's hidden units pruned,
    fine-tuned with noise 0.3, renamed and fused as LongCat), ``heads`` (the same, but
    attention keeps whole heads of ``head_dim``: 40 of 128 to 32 at full width) and
    ``independent`` (same recipe, its own initialisation, one block deeper). No weight
    matrix shape is shared across the widths.

    Returns:
        The paths written, by role: ``a``, ``derived``, ``heads``, ``independent``.
    """
    folder = make_folder(folder)
    config_a = DemoConfig(width=wide, blocks=blocks, text_dim=text_dim)
    config_b = DemoConfig(width=narrow, blocks=blocks, text_dim=text_dim)
    source = wan_tensors(config_a)
    derived, _ = longcat_tensors(config_b, pruned_wan_tensors(source, config_a, config_b, level=0.3))
    by_heads = pruned_wan_tensors(source, config_a, config_b, level=0.3, head_dim=head_dim)
    heads, _ = longcat_tensors(config_b, by_heads)
    twin_config = DemoConfig(width=narrow, blocks=blocks + 1, text_dim=text_dim, seed=1)
    independent, _ = longcat_tensors(twin_config, wan_tensors(twin_config))
    paths = {
        "a": folder / "wan_like.safetensors",
        "derived": folder / "longcat_like_pruned_from_a.safetensors",
        "heads": folder / "longcat_like_heads_from_a.safetensors",
        "independent": folder / "longcat_like_independent.safetensors",
    }
    write_safetensors(paths["a"], [TensorSpec(k, config_a.dtype, s, m) for k, (s, m) in source.items()])
    for role, tensors in (("derived", derived), ("heads", heads), ("independent", independent)):
        write_safetensors(paths[role], [TensorSpec(k, dt, s, m) for k, (s, m, dt) in tensors.items()])
    return paths


def write_twin(path: Path | str, config: DemoConfig, seed: int) -> Path:
    """An independently initialised model of A's architecture (the 'unrelated' control)."""
    path = Path(path)
    tensors = wan_tensors(config, seed=seed)
    write_safetensors(path, [TensorSpec(k, config.dtype, s, m) for k, (s, m) in tensors.items()])
    return path
