"""Quantised safetensors with companion scales (``weightidx/io/scaled.py``), written here from
all-MiniLM-L6-v2's weights by each convention's published layout: ComfyUI's fp8-scaled
(``scale_weight``), block fp8 (``weight_scale_inv``, DeepSeek-V3), per-channel fp8
(``weight_scale``, compressed-tensors), bitsandbytes int8 (``SCB``) and 4-bit (NF4/FP4, plain and
double-quantised), GPTQ and AWQ int4. Each is an exact quantised copy: compared with its source it
is traced whole, its quantisation named, and a LoRA ported to it keeps its ΔW."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from tests.helpers import real_models
from tests.helpers.verdicts import check_verdict
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report

E4M3_MAX = 448.0
pytestmark = pytest.mark.real_model


def _e4m3(values: np.ndarray) -> np.ndarray:
    return values.astype(ml_dtypes.float8_e4m3fn)


def fp8_scaled(values: np.ndarray) -> dict[str, np.ndarray]:
    scale = np.float32(np.abs(values).max() / E4M3_MAX)
    return {"weight": _e4m3(values / scale), "scale_weight": np.array(scale, dtype=np.float32)}


def fp8_block(values: np.ndarray, block: int = 128) -> dict[str, np.ndarray]:
    rows, cols = values.shape
    grid = np.zeros((math.ceil(rows / block), math.ceil(cols / block)), dtype=np.float32)
    stored = np.zeros_like(values)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            piece = values[i * block : (i + 1) * block, j * block : (j + 1) * block]
            grid[i, j] = max(np.abs(piece).max() / E4M3_MAX, 1e-12)
            stored[i * block : (i + 1) * block, j * block : (j + 1) * block] = piece / grid[i, j]
    return {"weight": _e4m3(stored), "weight_scale_inv": grid}


def fp8_channel(values: np.ndarray) -> dict[str, np.ndarray]:
    scale = (np.abs(values).max(axis=1, keepdims=True) / E4M3_MAX).astype(np.float32)
    return {"weight": _e4m3(values / scale), "weight_scale": scale}


def int8_bnb(values: np.ndarray) -> dict[str, np.ndarray]:
    """bitsandbytes 8-bit (``Int8Params``): int8 rows and their absolute maxima (SCB)."""
    scb = np.abs(values).max(axis=1).astype(np.float32)
    stored = np.clip(np.round(values / scb[:, None] * 127), -127, 127).astype(np.int8)
    return {"weight": stored, "SCB": scb, "weight_format": np.zeros(1, dtype=np.uint8)}


def _pack(nibbles: np.ndarray, axis: int) -> np.ndarray:
    """Eight 4-bit values per int32 word, lowest bits first, along ``axis``."""
    moved = np.moveaxis(nibbles.astype(np.uint32), axis, -1)
    words = moved.reshape(*moved.shape[:-1], -1, 8) << (4 * np.arange(8, dtype=np.uint32))
    return np.moveaxis(np.bitwise_or.reduce(words, axis=-1), -1, axis).view(np.int32)


def gptq_int4(values: np.ndarray, group: int = 128, act_order: bool = False) -> dict[str, np.ndarray]:
    """AutoGPTQ's 4-bit layout (asymmetric, per group of input rows; the stored zero one less
    than the real one). ``act_order``: input rows assigned to groups in a shuffled order."""
    weight = values.T.astype(np.float64)  # (in, out)
    inputs = weight.shape[0]
    order = np.random.default_rng(inputs).permutation(inputs) if act_order else np.arange(inputs)
    g_idx = np.empty(inputs, dtype=np.int32)
    g_idx[order] = np.arange(inputs) // group
    groups = inputs // group
    low = np.stack([weight[g_idx == g].min(axis=0) for g in range(groups)])
    high = np.stack([weight[g_idx == g].max(axis=0) for g in range(groups)])
    scales = np.maximum((high - low) / 15, 1e-8).astype(np.float16)
    zeros = np.clip(np.round(-low / scales.astype(np.float64)), 1, 15)  # 0 would overflow the stored zero - 1
    q = np.clip(np.round(weight / scales.astype(np.float64)[g_idx] + zeros[g_idx]), 0, 15)
    return {
        "qweight": _pack(q, axis=0),
        "qzeros": _pack(zeros - 1, axis=1),
        "scales": scales,
        "g_idx": g_idx,
    }


#: AutoAWQ's packing order (``awq/utils/packing_utils.py``): nibble k holds output 8·word + order[k].
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_int4(values: np.ndarray, group: int = 128) -> dict[str, np.ndarray]:
    """AutoAWQ's GEMM layout: qweight (in, out/8) and qzeros packed along the outputs in AWQ's
    order, the zero stored as it is, scales per group of input rows."""
    weight = values.T.astype(np.float64)  # (in, out)
    groups = weight.reshape(-1, group, weight.shape[1])
    low, high = groups.min(axis=1), groups.max(axis=1)
    scales = np.maximum((high - low) / 15, 1e-8).astype(np.float16)
    zeros = np.clip(np.round(-low / scales.astype(np.float64)), 0, 15)
    per_row = np.arange(weight.shape[0]) // group
    q = np.clip(np.round(weight / scales.astype(np.float64)[per_row] + zeros[per_row]), 0, 15)

    def packed(nibbles: np.ndarray) -> np.ndarray:
        order = (np.arange(nibbles.shape[1]) // 8) * 8 + np.tile(AWQ_ORDER, nibbles.shape[1] // 8)
        return _pack(nibbles[:, order], axis=1)

    return {"qweight": packed(q), "qzeros": packed(zeros), "scales": scales}


NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip
FP4 = [
    0,
    0.0052,
    0.6667,
    1,
    0.3333,
    0.5,
    0.1667,
    0.25,
    0,
    -0.0052,
    -0.6667,
    -1,
    -0.3333,
    -0.5,
    -0.1667,
    -0.25,
]


def bnb_4bit(values: np.ndarray, quant_type: str = "nf4", nested: bool = False) -> dict[str, np.ndarray]:
    """bitsandbytes ``Linear4bit`` as transformers saves it: two codes per byte (the even element
    high), absmax per 64 values, the 16-value map and the JSON state as bytes; ``nested``: the
    absmax itself 8-bit codes per 256 with their own absmax and the mean as offset."""
    table = np.array(NF4 if quant_type == "nf4" else FP4, dtype=np.float32)
    flat = values.astype(np.float64).reshape(-1, 64)
    absmax = np.abs(flat).max(axis=1)
    codes = np.abs(flat[..., None] / absmax[:, None, None] - table).argmin(axis=-1).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    state = {"quant_type": quant_type, "blocksize": 64, "dtype": "float32", "shape": list(values.shape)}
    out = {"weight": packed, "weight.quant_map": table}
    if nested:
        offset = absmax.mean()
        centred = (absmax - offset).reshape(-1, 256) if absmax.size % 256 == 0 else None
        assert centred is not None
        nested_table = np.linspace(-1, 1, 256).astype(np.float32)
        nested_absmax = np.abs(centred).max(axis=1)
        nested_codes = np.abs(centred[..., None] / nested_absmax[:, None, None] - nested_table).argmin(
            axis=-1
        )
        out |= {
            "weight.absmax": nested_codes.reshape(-1).astype(np.uint8),
            "weight.nested_absmax": nested_absmax.astype(np.float32),
            "weight.nested_quant_map": nested_table,
        }
        state |= {"nested_blocksize": 256, "nested_offset": float(offset), "nested_dtype": "float32"}
    else:
        out["weight.absmax"] = absmax.astype(np.float32)
    out[f"weight.quant_state.bitsandbytes__{quant_type}"] = np.frombuffer(
        json.dumps(state).encode(), np.uint8
    )
    return out


CONVENTIONS = {
    "fp8-scaled": fp8_scaled,
    "fp8-block128": fp8_block,
    "fp8-channel": fp8_channel,
    "int8-bnb": int8_bnb,
    "gptq-int4": gptq_int4,
    "gptq-int4 act-order": lambda v: gptq_int4(v, act_order=True),
    "awq-int4": awq_int4,
    "nf4-bnb": bnb_4bit,
    "nf4-bnb nested": lambda v: bnb_4bit(v, nested=True),
    "fp4-bnb": lambda v: bnb_4bit(v, "fp4"),
}


@pytest.fixture(scope="module")
def source(minilm) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, (dtype, v) in real_models.load(minilm).items() if dtype != "I64"}


def quantised_copy(source: dict[str, np.ndarray], convention: str) -> dict[str, np.ndarray]:
    """Every 2-D weight stored by ``convention``, the rest as BF16 (and ComfyUI's marker)."""
    out: dict[str, np.ndarray] = {}
    for key, values in source.items():
        fits = {
            "gptq": values.ndim == 2 and values.shape[1] % 128 == 0 and values.shape[0] % 8 == 0,
            "awq-": values.ndim == 2 and values.shape[1] % 128 == 0 and values.shape[0] % 8 == 0,
            "nf4-": values.size % (64 * 256) == 0,  # whole blocks, and whole nested blocks
            "fp4-": values.size % 64 == 0,
        }.get(convention[:4], True)
        if values.ndim == 2 and key.endswith(".weight") and fits:
            module = key.removesuffix(".weight")
            # safetensors writes an array's buffer as it lies: each must be row-major
            quantised = CONVENTIONS[convention](values).items()
            out.update({f"{module}.{name}": np.ascontiguousarray(v) for name, v in quantised})
        else:
            out[key] = values.astype(ml_dtypes.bfloat16)
    if convention == "fp8-scaled":
        out["scaled_fp8"] = np.zeros(0, dtype=ml_dtypes.float8_e4m3fn)
    return out


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_a_scaled_fp8_copy_is_a_copy_with_no_companion_left_over(source, tmp_path, convention: str) -> None:
    save_file(source, str(tmp_path / "a.safetensors"))
    save_file(quantised_copy(source, convention), str(tmp_path / "b.safetensors"))
    report = compare_paths(tmp_path / "a.safetensors", tmp_path / "b.safetensors", cache=tmp_path / "cache")
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "copied", summary["verdict"]
    assert summary["matched_b_tensors"] == len(source) and not report["unmatched"]["b"]
    quantised = quantised_copy(source, convention)
    stored_plainly = {k for k, v in quantised.items() if v.dtype == ml_dtypes.bfloat16}
    matrices = [
        k for k, v in source.items() if v.ndim == 2 and k.endswith(".weight") and k not in stored_plainly
    ]
    assert summary["quantised"] == {
        "matrices": len(matrices),
        "types": [convention.split()[0]],
        "largest_relative_l2": summary["quantised"]["largest_relative_l2"],
    }
    assert 0 < summary["quantised"]["largest_relative_l2"] < 0.25  # FP4's grid is the coarsest: 0.21
    for match in report["matches"]:
        assert not any(t.startswith("scale") for t in match["transform"]), match
    assert "applies to B as it is" in summary["verdict"]


def test_a_lora_ported_to_an_fp8_scaled_copy_keeps_its_delta(source, tmp_path) -> None:
    """The LoRA's ΔW on B equals ΔW on A, checked here from the files (not by --verify): the
    storage scale is not folded into it."""
    save_file(source, str(tmp_path / "a.safetensors"))
    save_file(quantised_copy(source, "fp8-scaled"), str(tmp_path / "b.safetensors"))
    report = compare_paths(tmp_path / "a.safetensors", tmp_path / "b.safetensors", cache=tmp_path / "cache")
    write_report(report, tmp_path / "report.json")
    rng = np.random.default_rng(0)
    targets = ["encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense"]
    lora = {}
    for module in targets:
        rows, cols = source[f"{module}.weight"].shape
        lora[f"diffusion_model.{module}.lora_A.weight"] = (0.1 * rng.standard_normal((4, cols))).astype(
            np.float32
        )
        lora[f"diffusion_model.{module}.lora_B.weight"] = (0.1 * rng.standard_normal((rows, 4))).astype(
            np.float32
        )
    save_file(lora, str(tmp_path / "lora.safetensors"))
    out = tmp_path / "ported.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "lora",
            "convert",
            str(tmp_path / "lora.safetensors"),
            "--report",
            str(tmp_path / "report.json"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ported = load_file(str(out))
    for module in targets:
        ups = [k for k in ported if module in k and ("lora_B" in k or "lora_up" in k)]
        downs = [k for k in ported if module in k and ("lora_A" in k or "lora_down" in k)]
        assert len(ups) == len(downs) == 1, sorted(ported)
        got = ported[ups[0]].astype(np.float64) @ ported[downs[0]].astype(np.float64)
        want = lora[f"diffusion_model.{module}.lora_B.weight"].astype(np.float64) @ lora[
            f"diffusion_model.{module}.lora_A.weight"
        ].astype(np.float64)
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def test_a_float_weight_with_a_scale_beside_it_is_left_as_it_is(tmp_path) -> None:
    """Only quantised storage (fp8, int8) is dequantised: a bf16 weight and a learnt
    ``weight_scale`` parameter stay two tensors."""
    rng = np.random.default_rng(1)
    tensors = {
        "layer.weight": rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
        "layer.weight_scale": np.ones(1, dtype=np.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    report = compare_paths(tmp_path / "m.safetensors", tmp_path / "m.safetensors", cache=tmp_path / "cache")
    assert report["summary"]["identical"] and report["summary"]["quantised"]["matrices"] == 0


def test_a_real_scale_under_quantisation_is_still_named(source, tmp_path) -> None:
    """FP4's shrink of the least-squares scale (0.97) is not claimed as a scale; a model scaled
    by 2 and then quantised still is."""
    save_file(source, str(tmp_path / "a.safetensors"))
    doubled = {k: v * 2 for k, v in source.items()}
    save_file(quantised_copy(doubled, "nf4-bnb"), str(tmp_path / "b.safetensors"))
    report = compare_paths(tmp_path / "a.safetensors", tmp_path / "b.safetensors", cache=tmp_path / "cache")
    quantised = [m for m in report["matches"] if any(t.startswith("quantise") for t in m["transform"])]
    assert quantised
    for match in quantised:
        (scale,) = [float(t.split(":")[1]) for t in match["transform"] if t.startswith("scale:")]
        assert abs(scale - 2) < 0.05, match["transform"]
