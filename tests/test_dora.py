"""DoRA modules ported exactly: a converted LoRA applied to B (as ComfyUI applies it,
``helpers/lora_apply.py``) gives T(A after the LoRA), for every transform a magnitude can follow,
and is refused, or written as its exact full change with --allow-full-delta, where it cannot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from tests import derive
from tests.helpers.lora_apply import apply_lora
from tests.helpers.lora_runs import compare_report, convert
from tests.helpers.tensors import write_tensors
from weightidx.cli import app
from weightidx.lora.dora import Magnitude, merged, read_magnitude

runner = CliRunner()
QKV = ["layer.0.attn.q.weight", "layer.0.attn.k.weight", "layer.0.attn.v.weight"]
DERIVATIONS: dict[str, Callable[[derive.Tensors], derive.Derived]] = {
    "rename": lambda t: derive.rename(t, {k: "net." + k for k in t}),
    "transpose": derive.transpose,
    "negative scale": lambda t: derive.scale(t, -2.0),
    "fuse qkv by rows": lambda t: derive.fuse(t, [QKV]),
    "split by rows": lambda t: derive.split(t, ["layer.1.mlp.up.weight"], parts=4),
    "reordered rows": lambda t: derive.reorder_rows(
        t, ["layer.1.mlp.up.weight"], np.random.default_rng(3).permutation(512)
    ),
}


def _dora_lora(seed: int) -> dict[str, np.ndarray]:
    """DoRA on q (per row), o (per column) and the MLP's up (per row); plain LoRA on k."""
    rng = np.random.default_rng(seed)
    lora: dict[str, np.ndarray] = {}
    for module, rows, cols, axis in (
        ("layer.0.attn.q", 128, 128, 0),
        ("layer.0.attn.k", 128, 128, None),
        ("layer.2.attn.o", 128, 128, 1),
        ("layer.1.mlp.up", 512, 128, 0),
    ):
        prefix = f"diffusion_model.{module}"
        lora[f"{prefix}.lora_A.weight"] = (0.1 * rng.standard_normal((4, cols))).astype(np.float32)
        lora[f"{prefix}.lora_B.weight"] = (0.1 * rng.standard_normal((rows, 4))).astype(np.float32)
        lora[f"{prefix}.alpha"] = np.array(2.0, np.float32)
        if axis is not None:
            shape = (rows, 1) if axis == 0 else (1, cols)
            lora[f"{prefix}.dora_scale"] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return lora


def _convert(tmp_path: Path, a: derive.Tensors, b: derive.Tensors, lora: dict, *options: str):
    return convert(tmp_path, lora, compare_report(tmp_path, a, b), *options)


def _assert_same_models(actual: derive.Tensors, expected: derive.Tensors) -> None:
    assert set(actual) == set(expected)
    for key, (_, values) in expected.items():
        error = np.linalg.norm(actual[key][1] - values) / max(np.linalg.norm(values), 1e-30)
        assert error < 2e-6, (key, error)


def test_merged_is_the_definition() -> None:
    """W' = m ⊙ (W + ΔW) / ‖W + ΔW‖ per row, and per column (Liu et al. 2024, eq. 5)."""
    rng = np.random.default_rng(1)
    weight, delta = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    m_rows, m_cols = rng.uniform(1, 2, 6), rng.uniform(1, 2, 5)
    combined = weight + delta
    np.testing.assert_allclose(
        merged(weight, delta, Magnitude(m_rows, 0, "F32")),
        combined / np.linalg.norm(combined, axis=1, keepdims=True) * m_rows[:, None],
    )
    np.testing.assert_allclose(
        merged(weight, delta, Magnitude(m_cols, 1, "F32")),
        combined / np.linalg.norm(combined, axis=0, keepdims=True) * m_cols[None, :],
    )
    assert read_magnitude(np.ones((6, 1)), "F32", 6).axis == 0
    assert read_magnitude(np.ones((1, 5)), "F32", 6).axis == 1
    assert read_magnitude(np.ones(6), "F32", 6).axis == 0  # PEFT's lora_magnitude_vector


@pytest.mark.parametrize("derivation", list(DERIVATIONS))
def test_dora_modules_follow_the_transform_exactly(tmp_path: Path, derivation: str) -> None:
    a = derive.toy_transformer(31)
    derived = DERIVATIONS[derivation]
    lora = _dora_lora(32)
    result, out = _convert(tmp_path, a, derived(a).tensors, lora, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    written = load_file(str(out))
    assert any(key.endswith(".dora_scale") for key in written)
    expected = {k: (d, v.astype(np.float64)) for k, (d, v) in derived(apply_lora(a, lora)).tensors.items()}
    _assert_same_models(apply_lora(derived(a).tensors, written), expected)


def test_a_magnitude_across_a_column_fusion_is_refused_or_written_as_its_exact_change(tmp_path: Path) -> None:
    """q, k, v joined by columns: every row of the fused weight spans all three, so q's norms
    per row are not the fused weight's."""
    a = derive.toy_transformer(33)
    fuse = lambda t: derive.fuse(t, [QKV], axis=1)  # noqa: E731
    lora = {k: v for k, v in _dora_lora(34).items() if ".attn.q." in k}
    refused, _ = _convert(tmp_path, a, fuse(a).tensors, lora)
    assert refused.exit_code == 2
    assert (
        "DoRA: B's weight joins it with other columns, which mixes the norms its magnitude divides by; "
        "--allow-full-delta writes its exact change as a full delta"
    ) in refused.output
    allowed, out = _convert(tmp_path, a, fuse(a).tensors, lora, "--allow-full-delta", "--verify", "--strict")
    assert allowed.exit_code == 0, allowed.output
    written = load_file(str(out))
    assert list(written) == ["diffusion_model.fused.0.diff"]
    expected = {k: (d, v.astype(np.float64)) for k, (d, v) in fuse(apply_lora(a, lora)).tensors.items()}
    _assert_same_models(apply_lora(fuse(a).tensors, written), expected)


def test_peft_output_keeps_magnitudes_per_row_and_refuses_a_transposed_one(tmp_path: Path) -> None:
    """PEFT makes every module DoRA when ``use_dora`` is set: k (plain LoRA) gets the magnitude
    that leaves it plain, the row norms of B's W + ΔW."""
    a = derive.toy_transformer(35)
    lora = {k: v for k, v in _dora_lora(36).items() if ".attn.q." in k or ".attn.k." in k}
    result, out = _convert(tmp_path, a, derive.rename(a, {}).tensors, lora, "--format", "peft", "--verify")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    written = load_file(str(out))
    magnitude = written["base_model.model.layer.0.attn.q.lora_magnitude_vector"]
    np.testing.assert_array_equal(magnitude, lora["diffusion_model.layer.0.attn.q.dora_scale"][:, 0])
    k = "base_model.model.layer.0.attn.k"
    delta = written[f"{k}.lora_B.weight"].astype(np.float64) @ written[f"{k}.lora_A.weight"]
    plain = a["layer.0.attn.k.weight"][1] + delta
    np.testing.assert_allclose(
        written[f"{k}.lora_magnitude_vector"], np.linalg.norm(plain, axis=1), rtol=1e-6
    )
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    only_q = {key: v for key, v in lora.items() if ".attn.q." in key}
    transposed, _ = _convert(tmp_path, a, derive.transpose(a).tensors, only_q, "--format", "peft")
    assert transposed.exit_code == 2
    assert "DoRA: on B's transposed weight it is per column; peft stores magnitudes per output row only" in (
        transposed.output
    )


def test_a_magnitude_without_its_module_is_refused_by_name(tmp_path: Path) -> None:
    a = derive.toy_transformer(37)
    lora = {k: v for k, v in _dora_lora(38).items() if ".attn.q." in k}
    lora["diffusion_model.layer.2.attn.v.dora_scale"] = np.ones((128, 1), np.float32)
    result, out = _convert(tmp_path, a, a, lora)
    assert result.exit_code == 0, result.output
    refused = json.loads(out.with_name(out.name + ".conversion.json").read_text())["refused"]
    assert refused == [
        {
            "module": "diffusion_model.layer.2.attn.v.dora_scale",
            "tensors": ["diffusion_model.layer.2.attn.v.dora_scale"],
            "reason": "a DoRA magnitude without its module's factors: not converted",
        }
    ]


@pytest.mark.parametrize("derivation", ["transpose", "negative scale"])
def test_lokr_with_a_magnitude_is_carried_as_factors(tmp_path: Path, derivation: str) -> None:
    a = derive.toy_transformer(39)
    rng = np.random.default_rng(40)
    lora = {
        "diffusion_model.layer.0.attn.v.lokr_w1": rng.standard_normal((4, 4)).astype(np.float32),
        "diffusion_model.layer.0.attn.v.lokr_w2_a": (0.1 * rng.standard_normal((32, 2))).astype(np.float32),
        "diffusion_model.layer.0.attn.v.lokr_w2_b": (0.1 * rng.standard_normal((2, 32))).astype(np.float32),
        "diffusion_model.layer.0.attn.v.alpha": np.array(1.0, np.float32),
        "diffusion_model.layer.0.attn.v.dora_scale": rng.uniform(0.5, 1.5, (128, 1)).astype(np.float32),
    }
    derived = DERIVATIONS[derivation]
    result, out = _convert(tmp_path, a, derived(a).tensors, lora, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    written = load_file(str(out))
    assert {k.rsplit(".", 1)[1] for k in written} == {
        "lokr_w1",
        "lokr_w2_a",
        "lokr_w2_b",
        "alpha",
        "dora_scale",
    }
    expected = {k: (d, v.astype(np.float64)) for k, (d, v) in derived(apply_lora(a, lora)).tensors.items()}
    _assert_same_models(apply_lora(derived(a).tensors, written), expected)


def test_lora_check_loads_dora_modules_and_names_a_magnitude_that_does_not_fit(tmp_path: Path) -> None:
    a = derive.toy_transformer(41)
    model = write_tensors(tmp_path / "tiny.safetensors", a)
    lora = {k: v for k, v in _dora_lora(42).items() if ".attn.q." in k or ".attn.o." in k}
    lora["diffusion_model.layer.2.attn.o.dora_scale"] = np.ones((1, 64), np.float32)  # 128 columns
    save_file(lora, str(tmp_path / "lora.safetensors"))
    env = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(
        app, ["lora", "check", str(tmp_path / "lora.safetensors"), str(model), "--json"], env=env
    )
    assert result.exit_code == 1
    checked = json.loads(result.output)
    assert [m["weight"] for m in checked["loads"]] == ["layer.0.attn.q.weight"]
    (ignored,) = checked["ignored"]
    assert "diffusion_model.layer.2.attn.o.dora_scale" in ignored["item"]
    assert ignored["reason"] == (
        "DoRA: its DoRA magnitude of shape [1, 64] fits neither the weight's 128 rows nor its 128 columns"
    )
