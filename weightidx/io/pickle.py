"""Opt-in reading of pickle checkpoints (.bin, .pt, .pth, .ckpt) through torch, and nothing else.

Unpickling can run arbitrary code, so weightidx refuses these files unless asked
(``--allow-pickle``), and even then loads them only with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. The tensors are written once to
a safetensors file in the cache, which is what gets indexed and compared. torch is
imported only here, and only then: it is an optional extra.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from weightidx.config import CACHE_FIX
from weightidx.dtypes import FROM_TORCH
from weightidx.errors import CheckpointError, InputError
from weightidx.io.atomic import ensure_folder
from weightidx.io.converted import converted_path
from weightidx.io.safetensors import TensorSpec, write_safetensors


def convert_pickle(path: Path | str, cache: Path | None = None) -> Path:
    """The tensors of a pickle checkpoint as a safetensors file in the cache (converted once).

    Raises:
        InputError: torch is not installed.
        CheckpointError: ``torch.load(weights_only=True)`` refuses the file, or it holds no tensors.
    """
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: --allow-pickle needs torch; pip install 'weightidx[torch]'") from None
    target = converted_path(path, cache)
    if target.exists():
        return target
    state = _load(torch, path)
    specs = []
    for key, tensor in state.items():
        dtype = FROM_TORCH.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise CheckpointError(
                path, f"tensor '{key}' has dtype {tensor.dtype}, which weightidx cannot store"
            )
        specs.append(TensorSpec(key, dtype, tuple(tensor.shape), lambda t=tensor, d=dtype: _numpy(t, d)))
    ensure_folder(target.parent, "converted pickles", CACHE_FIX)
    write_safetensors(target, specs, {"weightidx_converted_from": str(path.resolve())})
    return target


def _load(torch, path: Path) -> dict:
    with warnings.catch_warnings():  # torch's own warnings would break the one-line contract
        warnings.simplefilter("ignore")
        return _tensors(torch, path, _unpickle(torch, path))


def _unpickle(torch, path: Path) -> object:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # old (non-zip) format
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for refused content
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            path,
            f"torch.load(weights_only=True) refused it ({reason[:200]})",
            "it may hold code or objects other than tensors; convert it to safetensors where you trust it",
        ) from None
    return state


def _tensors(torch, path: Path, state: object) -> dict:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = (
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    )
    if not tensors:
        raise CheckpointError(path, "holds no tensors (expected a state dict)")
    return tensors


def _numpy(tensor, dtype: str) -> np.ndarray:
    if dtype in ("BF16", "F8_E4M3", "F8_E5M2"):  # numpy has no such dtypes: go through float32, exactly
        return tensor.float().numpy()
    return tensor.numpy()
