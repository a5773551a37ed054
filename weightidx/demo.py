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

from weightidx.errors import OutputError
from weightidx.io.safetensors import TensorSpec, decode, encode, write_safetensors

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


def seed_of(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def trained_matrix(seed: int, rows: int, cols: int) -> np.ndarray:
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


def norm_vector(seed: int, n: int) -> np.ndarray:
    """Norm weights sit near 1: raw cosine between unrelated ones is > 0.99."""
    return 1.0 + 0.05 * np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


def bias_vector(seed: int, n: int) -> np.ndarray:
    return 0.02 * np.random.default_rng(seed).standard_normal(n, dtype=np.float32)


def wan_tensors(config: DemoConfig, seed: int | None = None) -> dict[str, tuple[tuple[int, ...], Maker]]:
    """Model A: Wan2.1-style keys -> (shape, value maker), in checkpoint order."""
    seed = config.seed if seed is None else seed
    d, f = config.width, config.ffn_width
    tensors: dict[str, tuple[tuple[int, ...], Maker]] = {}

    def matrix(key: str, shape: tuple[int, ...]) -> None:
        rows, cols = shape[0], math.prod(shape[1:])
        tensors[key] = (shape, lambda: trained_matrix(seed_of(seed, key), rows, cols).reshape(shape))

    def vector(key: str, n: int, kind: Callable[[int, int], np.ndarray]) -> None:
        tensors[key] = ((n,), lambda: kind(seed_of(seed, key), n))

    matrix("patch_embedding.weight", (d, 16, 1, 2, 2))
    vector("patch_embedding.bias", d, bias_vector)
    matrix("text_embedding.0.weight", (d, config.text_dim))
    vector("text_embedding.0.bias", d, bias_vector)
    matrix("text_embedding.2.weight", (d, d))
    matrix("time_embedding.0.weight", (d, config.freq_dim))
    matrix("time_embedding.2.weight", (d, d))
    matrix("time_projection.1.weight", (6 * d, d))
    for i in range(config.blocks):
        for attn in ("self_attn", "cross_attn"):
            for part in ("q", "k", "v", "o"):
                matrix(f"blocks.{i}.{attn}.{part}.weight", (d, d))
                vector(f"blocks.{i}.{attn}.{part}.bias", d, bias_vector)
            vector(f"blocks.{i}.{attn}.norm_q.weight", d, norm_vector)
            vector(f"blocks.{i}.{attn}.norm_k.weight", d, norm_vector)
        vector(f"blocks.{i}.norm3.weight", d, norm_vector)
        matrix(f"blocks.{i}.ffn.0.weight", (f, d))
        vector(f"blocks.{i}.ffn.0.bias", f, bias_vector)
        matrix(f"blocks.{i}.ffn.2.weight", (d, f))
        matrix(f"blocks.{i}.modulation", (1, 6, d))
    matrix("head.head.weight", (64, d))
    vector("head.head.bias", 64, bias_vector)
    matrix("head.modulation", (1, 2, d))
    return tensors


def finetuned(maker: Maker, level: float, seed: int) -> Maker:
    """A + level * std(A) * noise: correlation 1/sqrt(1 + level²) with A."""

    def make() -> np.ndarray:
        values = maker()
        noise = np.random.default_rng(seed).standard_normal(values.shape, dtype=np.float32)
        return values + np.float32(level * float(values.std())) * noise

    return make


def as_stored(maker: Maker, shape: tuple[int, ...], dtype: str) -> Maker:
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
        maker = as_stored(maker, shape, base)
        transforms = list(transform)
        if dtype != base:
            transforms.append(f"cast:{base.lower()}->{dtype.lower()}")
        if level:
            maker = finetuned(maker, level, seed_of(config.seed, "tune", b))
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
        makers = [as_stored(source[p][1], source[p][0], base) for p in parts]
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
            lambda: trained_matrix(seed_of(config.seed, "new", b), shape[0], math.prod(shape[1:])).reshape(
                shape
            ),
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


def make_folder(folder: Path | str) -> Path:
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
    folder = make_folder(folder)
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
        seed = seed_of(config.seed, "lora", key)
        specs.append(
            TensorSpec(
                f"{module}.lora_down.weight",
                "BF16",
                (rank, shape[1]),
                lambda s=seed, n=shape[1]: trained_matrix(s, rank, n),
            )
        )
        specs.append(
            TensorSpec(
                f"{module}.lora_up.weight",
                "BF16",
                (shape[0], rank),
                lambda s=seed + 1, m=shape[0]: 0.1 * trained_matrix(s, m, rank),
            )
        )
        specs.append(TensorSpec(f"{module}.alpha", "F32", (), lambda: np.array(rank / 2, dtype=np.float32)))
    write_safetensors(path, specs, {"generator": "weightidx.demo", "target": "wan_a.safetensors"})
    return path
