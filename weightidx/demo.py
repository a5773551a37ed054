"""Generated checkpoint pairs with a known answer, for the demo, the tests and the benchmark.

Model A follows Wan2.1's DiT naming; model B is derived from A in LongCat-Video's
naming with the transforms people meet in the wild: renames, q/k/v fused into
``attn.qkv`` and k/v into ``cross_attn.kv_linear`` (concatenation on dim 0), a conv
patch embedding stored as a linear (reshape), a transposed projection, dtype
casts, fine-tuning noise at two levels, a re-initialised head, new tensors
(SwiGLU ``w3``, ``adaLN_modulation``) and deleted ones (A's per-block ``modulation``).

Every tensor's values come from its own seed, so B's tensors are rebuilt from A's
on demand and neither model is ever held in memory. ``truth.json`` lists, for each
B tensor (or slice), the A tensor it came from and how.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoint import TensorSpec, decode, encode, write_safetensors
from .errors import OutputError

Maker = Callable[[], np.ndarray]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the generated DiT; the defaults make a ~10 MB demo pair."""

    width: int = 256
    blocks: int = 4
    ffn: int | None = None  # default: 2.7 x width rounded up to 64, like Wan's 13824 / 5120
    text_dim: int = 512
    freq_dim: int = 256
    dtype: str = "BF16"
    seed: int = 0

    @property
    def ffn_width(self) -> int:
        return self.ffn or -(-int(self.width * 2.7) // 64) * 64


@dataclass(frozen=True)
class TruthEntry:
    """How one B tensor (or a slice of it) relates to A."""

    b: str
    b_slice: dict | None
    a: str | None
    transform: list[str]
    relation: str  # copied | cast | fine_tuned | reinitialised | new


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _matrix(seed: int, rows: int, cols: int) -> np.ndarray:
    """Trained-looking weights: Gaussian bulk, a low-rank part and uneven row scales."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, cols), dtype=np.float32)
    rank = 4
    values += (
        0.5
        * (
            rng.standard_normal((rows, rank), dtype=np.float32)
            @ rng.standard_normal((rank, cols), dtype=np.float32)
        )
        / math.sqrt(rank)
    )
    values *= np.exp(0.3 * rng.standard_normal((rows, 1), dtype=np.float32))
    values *= np.float32(1.0 / math.sqrt(cols))
    return values


def _norm(seed: int, n: int) -> np.ndarray:
    """Norm weights sit near 1: raw cosine between unrelated ones is > 0.99."""
    return 1.0 + 0.05 * np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


def _bias(seed: int, n: int) -> np.ndarray:
    return 0.02 * np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


def wan_tensors(config: DemoConfig, seed: int | None = None) -> dict[str, tuple[tuple[int, ...], Maker]]:
    """Model A: Wan2.1-style keys -> (shape, value maker), in checkpoint order."""
    seed = config.seed if seed is None else seed
    d, f = config.width, config.ffn_width
    tensors: dict[str, tuple[tuple[int, ...], Maker]] = {}

    def matrix(key: str, shape: tuple[int, ...]) -> None:
        rows, cols = shape[0], math.prod(shape[1:])
        tensors[key] = (shape, lambda: _matrix(_seed(seed, key), rows, cols).reshape(shape))

    def vector(key: str, n: int, kind: Callable[[int, int], np.ndarray]) -> None:
        tensors[key] = ((n,), lambda: kind(_seed(seed, key), n))

    matrix("patch_embedding.weight", (d, 16, 1, 2, 2))
    vector("patch_embedding.bias", d, _bias)
    matrix("text_embedding.0.weight", (d, config.text_dim))
    vector("text_embedding.0.bias", d, _bias)
    matrix("text_embedding.2.weight", (d, d))
    matrix("time_embedding.0.weight", (d, config.freq_dim))
    matrix("time_embedding.2.weight", (d, d))
    matrix("time_projection.1.weight", (6 * d, d))
    for i in range(config.blocks):
        for attn in ("self_attn", "cross_attn"):
            for part in ("q", "k", "v", "o"):
                matrix(f"blocks.{i}.{attn}.{part}.weight", (d, d))
                vector(f"blocks.{i}.{attn}.{part}.bias", d, _bias)
            vector(f"blocks.{i}.{attn}.norm_q.weight", d, _norm)
            vector(f"blocks.{i}.{attn}.norm_k.weight", d, _norm)
        vector(f"blocks.{i}.norm3.weight", d, _norm)
        matrix(f"blocks.{i}.ffn.0.weight", (f, d))
        vector(f"blocks.{i}.ffn.0.bias", f, _bias)
        matrix(f"blocks.{i}.ffn.2.weight", (d, f))
        matrix(f"blocks.{i}.modulation", (1, 6, d))
    matrix("head.head.weight", (64, d))
    vector("head.head.bias", 64, _bias)
    matrix("head.modulation", (1, 2, d))
    return tensors


def _finetuned(maker: Maker, level: float, seed: int) -> Maker:
    """A + level * std(A) * noise: correlation 1/sqrt(1 + level²) with A."""

    def make() -> np.ndarray:
        values = maker()
        noise = np.random.default_rng(seed).standard_normal(values.shape, dtype=np.float32)
        return values + np.float32(level * float(values.std())) * noise

    return make


def _as_stored(maker: Maker, shape: tuple[int, ...], dtype: str) -> Maker:
    """A's values as A's file holds them (rounded to its dtype), so that B's casts are exact."""
    return lambda: decode(encode(maker(), dtype), dtype).reshape(shape)


def longcat_tensors(
    config: DemoConfig, source: dict[str, tuple[tuple[int, ...], Maker]]
) -> tuple[dict[str, tuple[tuple[int, ...], Maker, str]], list[TruthEntry]]:
    """Model B derived from A: LongCat-style keys -> (shape, maker, dtype), and the truth."""
    d, f = config.width, config.ffn_width
    out: dict[str, tuple[tuple[int, ...], Maker, str]] = {}
    truth: list[TruthEntry] = []
    base = config.dtype

    def copy(b: str, a: str, dtype: str = base, transform: tuple[str, ...] = (), level: float = 0.0) -> None:
        shape, maker = source[a]
        maker = _as_stored(maker, shape, base)
        transforms = list(transform)
        if dtype != base:
            transforms.append(f"cast:{base.lower()}->{dtype.lower()}")
        if level:
            maker = _finetuned(maker, level, _seed(config.seed, "tune", b))
        if "transpose" in transform:
            inner, shape = maker, (shape[1], shape[0])
            maker = lambda: inner().T.copy()  # noqa: E731
        if "reshape" in transform:
            inner, shape = maker, (shape[0], math.prod(shape[1:]))
            maker = lambda: inner().reshape(shape)  # noqa: E731
        out[b] = (shape, maker, dtype)
        relation = "fine_tuned" if level else ("cast" if dtype != base else "copied")
        truth.append(TruthEntry(b, None, a, transforms, relation))

    def fuse(b: str, parts: list[str], dtype: str = base) -> None:
        makers = [_as_stored(source[p][1], source[p][0], base) for p in parts]
        rows = [source[p][0][0] for p in parts]
        width = source[parts[0]][0][1:]
        out[b] = ((sum(rows), *width), lambda: np.concatenate([m() for m in makers]), dtype)
        start = 0
        for part, n in zip(parts, rows, strict=True):
            transforms = ["concat:0"] + ([f"cast:{base.lower()}->{dtype.lower()}"] if dtype != base else [])
            truth.append(
                TruthEntry(b, {"axis": 0, "start": start, "stop": start + n}, part, transforms, "copied")
            )
            start += n

    def new(b: str, shape: tuple[int, ...], relation: str = "new") -> None:
        out[b] = (
            shape,
            lambda: _matrix(_seed(config.seed, "new", b), shape[0], math.prod(shape[1:])).reshape(shape),
            base,
        )
        truth.append(TruthEntry(b, None, None, [], relation))

    copy("x_embedder.proj.weight", "patch_embedding.weight", transform=("reshape",))
    copy("x_embedder.proj.bias", "patch_embedding.bias")
    copy("y_embedder.y_proj.0.weight", "text_embedding.0.weight")
    copy("y_embedder.y_proj.0.bias", "text_embedding.0.bias")
    copy("y_embedder.y_proj.2.weight", "text_embedding.2.weight", transform=("transpose",))
    copy("t_embedder.mlp.0.weight", "time_embedding.0.weight", dtype="F32")
    copy("t_embedder.mlp.2.weight", "time_embedding.2.weight", dtype="F32")
    copy("t_block.1.weight", "time_projection.1.weight")
    last = config.blocks - 1
    for i in range(config.blocks):
        a, b = f"blocks.{i}", f"blocks.{i}"
        fuse(f"{b}.attn.qkv.weight", [f"{a}.self_attn.{p}.weight" for p in "qkv"])
        fuse(f"{b}.attn.qkv.bias", [f"{a}.self_attn.{p}.bias" for p in "qkv"])
        copy(f"{b}.attn.proj.weight", f"{a}.self_attn.o.weight", dtype="F16" if i % 2 else base)
        copy(f"{b}.attn.proj.bias", f"{a}.self_attn.o.bias")
        copy(f"{b}.attn.q_norm.weight", f"{a}.self_attn.norm_q.weight", dtype="F32")
        copy(f"{b}.attn.k_norm.weight", f"{a}.self_attn.norm_k.weight", dtype="F32")
        copy(f"{b}.cross_attn.q_linear.weight", f"{a}.cross_attn.q.weight")
        fuse(f"{b}.cross_attn.kv_linear.weight", [f"{a}.cross_attn.{p}.weight" for p in "kv"])
        copy(f"{b}.cross_attn.proj.weight", f"{a}.cross_attn.o.weight")
        level = 0.2 if i == last else (0.6 if i == last - 1 else 0.0)
        copy(f"{b}.ffn.w1.weight", f"{a}.ffn.0.weight", level=level)
        copy(f"{b}.ffn.w2.weight", f"{a}.ffn.2.weight", level=level)
        new(f"{b}.ffn.w3.weight", (f, d))
        new(f"{b}.adaLN_modulation.1.weight", (6 * d, d))
    new("final_layer.linear.weight", (64, d), relation="reinitialised")
    new("final_layer.adaLN_modulation.1.weight", (2 * d, d))
    return out, truth


def _make_folder(folder: Path | str) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot create the folder ({exc.strerror or exc}); choose another"
        ) from None
    return folder


def write_demo_pair(folder: Path | str, config: DemoConfig = DemoConfig()) -> dict[str, Path]:
    """Write ``wan_a.safetensors``, ``longcat_b.safetensors``, ``truth.json`` and a LoRA for A
    (``wan_a_lora.safetensors``) into ``folder``.

    Returns:
        The paths written, by role: ``a``, ``b``, ``truth``, ``lora``.
    """
    folder = _make_folder(folder)
    source = wan_tensors(config)
    derived, truth = longcat_tensors(config, source)
    paths = {
        "a": folder / "wan_a.safetensors",
        "b": folder / "longcat_b.safetensors",
        "truth": folder / "truth.json",
    }
    note = {"generator": "weightidx.demo", "config": json.dumps(asdict(config))}
    write_safetensors(paths["a"], [TensorSpec(k, config.dtype, s, m) for k, (s, m) in source.items()], note)
    write_safetensors(paths["b"], [TensorSpec(k, dt, s, m) for k, (s, m, dt) in derived.items()], note)
    used = {entry.a for entry in truth if entry.a}
    document = {
        "config": asdict(config),
        "a": paths["a"].name,
        "b": paths["b"].name,
        "mapping": [asdict(entry) for entry in truth],
        "deleted_a": [key for key in source if key not in used],
    }
    paths["truth"].write_text(json.dumps(document, indent=1) + "\n")
    paths["lora"] = write_demo_lora(folder / "wan_a_lora.safetensors", config)
    return paths


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
    rng = np.random.default_rng(_seed(config.seed, "prune", narrow.width))
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

        out[key] = (new_shape, _finetuned(cut, level, _seed(config.seed, "prune-tune", key)))
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
    folder = _make_folder(folder)
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


def write_demo_lora(path: Path | str, config: DemoConfig = DemoConfig(), rank: int = 8) -> Path:
    """A ComfyUI-style bf16 LoRA for model A: attention and MLP of every block, alpha = rank/2."""
    path = Path(path)
    source = wan_tensors(config)
    targets = [
        key
        for key in source
        if key.endswith(".weight")
        and any(f".{part}.weight" in key for part in ("q", "k", "v", "o", "0", "2"))
        and (".self_attn." in key or ".cross_attn." in key or ".ffn." in key)
    ]
    specs = []
    for key in targets:
        shape = source[key][0]
        module = "diffusion_model." + key[: -len(".weight")]
        seed = _seed(config.seed, "lora", key)
        specs.append(
            TensorSpec(
                f"{module}.lora_down.weight",
                "BF16",
                (rank, shape[1]),
                lambda s=seed, n=shape[1]: _matrix(s, rank, n),
            )
        )
        specs.append(
            TensorSpec(
                f"{module}.lora_up.weight",
                "BF16",
                (shape[0], rank),
                lambda s=seed + 1, m=shape[0]: 0.1 * _matrix(s, m, rank),
            )
        )
        specs.append(TensorSpec(f"{module}.alpha", "F32", (), lambda: np.array(rank / 2, dtype=np.float32)))
    write_safetensors(path, specs, {"generator": "weightidx.demo", "target": "wan_a.safetensors"})
    return path
