"""Quantised safetensors with companion scales (``weightidx/io/scaled.py``), written here from
all-MiniLM-L6-v2's weights by each convention's published layout: ComfyUI's fp8-scaled
(``scale_weight``), block fp8 (``weight_scale_inv``, DeepSeek-V3), per-channel fp8
(``weight_scale``, compressed-tensors), bitsandbytes int8 (``SCB``) and 4-bit (NF4/FP4, plain and
double-quantised), GPTQ and AWQ int4. Each is an exact quantised copy: compared with its source it
is traced whole, its quantisation named, and a LoRA ported to it keeps its ΔW."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from tests.helpers import real_models
from tests.helpers.quantisers import CONVENTIONS
from tests.helpers.verdicts import check_verdict
from weightidx import policy
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report

pytestmark = pytest.mark.real_model


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
    scheme = convention.split()[0]
    assert summary["quantised"] == {
        "matrices": len(matrices),
        "types": [scheme],
        "largest_relative_l2": summary["quantised"]["largest_relative_l2"],
        "expected_relative_l2": policy.quantisation_error(scheme),
        "beyond_expected": 0,  # a quantised copy is within what its type leaves
        "largest_residual_beyond": 0.0,
    }
    assert 0 < summary["quantised"]["largest_relative_l2"] < policy.quantisation_error(scheme)
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


def test_a_quantised_copy_of_a_changed_model_is_told_from_a_quantised_copy(source, tmp_path) -> None:
    """NF4 leaves at most 0.154 relative L2 on real weights (policy.QUANTISATION_ERROR): an NF4
    copy of MiniLM after a change of 0.35 is named as changed before quantisation; an NF4 copy
    of MiniLM itself stays within, with the limit of what the values can tell."""
    save_file(source, str(tmp_path / "a.safetensors"))
    rng = np.random.default_rng(5)
    changed = {
        k: (v + 0.35 * v.std() * rng.standard_normal(v.shape)).astype(np.float32) if v.ndim == 2 else v
        for k, v in source.items()
    }
    verdicts = {}
    for name, model in (("plain", source), ("changed", changed)):
        save_file(quantised_copy(model, "nf4-bnb"), str(tmp_path / f"{name}.safetensors"))
        report = compare_paths(
            tmp_path / "a.safetensors", tmp_path / f"{name}.safetensors", cache=tmp_path / "c"
        )
        check_verdict(report)
        verdicts[name] = report["summary"]
    plain, moved = verdicts["plain"]["quantised"], verdicts["changed"]["quantised"]
    assert plain["beyond_expected"] == 0 and plain["expected_relative_l2"] == 0.154
    assert "a change smaller than that the values cannot rule out" in verdicts["plain"]["verdict"]
    assert moved["beyond_expected"] == moved["matrices"] > 0
    assert "changed before they were quantised" in verdicts["changed"]["verdict"]
