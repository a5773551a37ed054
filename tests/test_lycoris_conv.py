"""Convolution adapters: LyCORIS LoKr and LoHa in Tucker form and LoCon with a middle factor,
ported through a rename and a scale, give B after the LoRA = T(A after the LoRA) when applied as
ComfyUI applies them (``helpers/lora_apply.py``); a transposed target takes the full delta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from tests import derive
from tests.helpers.lora_apply import apply_lora
from tests.helpers.lora_runs import compare_report, convert
from weightidx.lora.lycoris import LycorisModule

runner = CliRunner()
RANK = 4


def _conv_model(seed: int) -> derive.Tensors:
    rng = np.random.default_rng(seed)
    shapes = {
        "block.0.conv1.weight": (64, 32, 3, 3),
        "block.0.conv2.weight": (64, 64, 3, 3),
        "block.0.conv3.weight": (64, 64, 3, 3),
        "block.0.proj.weight": (64, 64),
        "block.1.conv1.weight": (64, 64, 3, 3),
    }
    return {
        key: ("F32", (rng.standard_normal(shape) / 24).astype(np.float32)) for key, shape in shapes.items()
    }


def _conv_lora(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    p = "diffusion_model.block.0"
    return {
        # LoKr, w2 in Tucker form: kron((4, 4), (16, 8, 3, 3)) = (64, 32, 3, 3)
        f"{p}.conv1.lokr_w1": f(4, 4),
        f"{p}.conv1.lokr_t2": f(RANK, RANK, 3, 3),
        f"{p}.conv1.lokr_w2_a": f(RANK, 16),
        f"{p}.conv1.lokr_w2_b": f(RANK, 8),
        f"{p}.conv1.alpha": np.array(2.0, np.float32),
        # LoHa in Tucker form: (64, 64, 3, 3) ∘ (64, 64, 3, 3)
        f"{p}.conv2.hada_t1": f(RANK, RANK, 3, 3),
        f"{p}.conv2.hada_w1_a": f(RANK, 64),
        f"{p}.conv2.hada_w1_b": f(RANK, 64),
        f"{p}.conv2.hada_t2": f(RANK, RANK, 3, 3),
        f"{p}.conv2.hada_w2_a": f(RANK, 64),
        f"{p}.conv2.hada_w2_b": f(RANK, 64),
        f"{p}.conv2.alpha": np.array(4.0, np.float32),
        # LoCon with a middle factor
        f"{p}.conv3.lora_down.weight": f(RANK, 64, 1, 1),
        f"{p}.conv3.lora_mid.weight": f(RANK, RANK, 3, 3),
        f"{p}.conv3.lora_up.weight": f(64, RANK, 1, 1),
        f"{p}.conv3.alpha": np.array(2.0, np.float32),
    }


def _convert(tmp_path: Path, a: derive.Tensors, b: derive.Tensors, lora: dict, *options: str):
    return convert(tmp_path, lora, compare_report(tmp_path, a, b), *options)


def test_tucker_forms_rebuild_as_the_loaders_do() -> None:
    lora = {k.rsplit(".", 1)[1]: v for k, v in _conv_lora(1).items() if ".conv1." in k}
    module = LycorisModule("lokr", "conv1", {k: v for k, v in lora.items() if k != "alpha"}, alpha=2.0)
    assert module.problem() is None
    model = {"conv1.weight": ("F32", np.zeros((64, 32, 3, 3)))}
    expected = apply_lora(model, {f"diffusion_model.conv1.{k}": v for k, v in lora.items()})["conv1.weight"][
        1
    ]
    np.testing.assert_allclose(module.delta(), expected.reshape(64, -1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("derivation", ["rename", "scale"])
def test_convolution_adapters_follow_renames_and_scales(tmp_path: Path, derivation: str) -> None:
    a = _conv_model(61)
    derived = {
        "rename": lambda t: derive.rename(t, {k: "unet." + k for k in t}),
        "scale": lambda t: derive.scale(t, 3.0),
    }[derivation]
    lora = _conv_lora(62)
    result, out = _convert(tmp_path, a, derived(a).tensors, lora, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    assert result.output.startswith("3 module(s) converted from 3")
    written = load_file(str(out))
    kinds = {k.rsplit(".", 1)[1] for k in written}
    assert {"lokr_t2", "hada_t1", "hada_t2"} <= kinds and "lora_mid" not in kinds  # LoCon: plain LoRA
    expected = derived(apply_lora(a, lora)).tensors
    after = apply_lora(derived(a).tensors, written)
    for key, (_, values) in expected.items():
        error = np.linalg.norm(after[key][1] - values) / np.linalg.norm(values)
        assert error < 1e-6, (key, error)


def test_a_fused_convolution_target_takes_the_full_delta_and_locon_fuses(tmp_path: Path) -> None:
    """conv2 and conv3 joined by output channels: the LoHa cannot follow as factors (refused,
    or its exact full delta with --allow-full-delta); the LoCon, a plain LoRA, fuses."""
    a = _conv_model(63)
    fuse = lambda t: derive.fuse(t, [["block.0.conv2.weight", "block.0.conv3.weight"]])  # noqa: E731
    lora = {k: v for k, v in _conv_lora(64).items() if ".conv2." in k or ".conv3." in k}
    refused, _ = _convert(tmp_path, a, fuse(a).tensors, lora, "--strict")
    assert refused.exit_code == 2, refused.output
    assert "LoHa (LyCORIS) cannot follow concat:0 as factors" in refused.output
    allowed, out = _convert(tmp_path, a, fuse(a).tensors, lora, "--allow-full-delta", "--verify", "--strict")
    assert allowed.exit_code == 0, allowed.output
    written = load_file(str(out))
    assert list(written) == ["diffusion_model.fused.0.diff"]  # one patch per weight, as ComfyUI keeps
    expected = fuse(apply_lora(a, lora)).tensors
    after = apply_lora(fuse(a).tensors, written)
    for key, (_, values) in expected.items():
        error = np.linalg.norm(after[key][1] - values) / np.linalg.norm(values)
        assert error < 1e-6, (key, error)
