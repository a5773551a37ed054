"""Every module kind there and back: a LoRA holding LoRA, DoRA, LoKr, LoHa and full-delta modules,
converted from A to B and the result back from B to A (through ``compare B A``), does to A what
the original does, for each transform and output format (applied as ComfyUI applies them,
``helpers/lora_apply.py``)."""

from __future__ import annotations

import json
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
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report

runner = CliRunner()


def _every_kind(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def f(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    p = "diffusion_model.layer"
    return {
        f"{p}.0.attn.q.lora_down.weight": f(4, 128),
        f"{p}.0.attn.q.lora_up.weight": f(128, 4),
        f"{p}.0.attn.q.alpha": np.array(2.0, np.float32),
        f"{p}.0.attn.k.lora_down.weight": f(4, 128),
        f"{p}.0.attn.k.lora_up.weight": f(128, 4),
        f"{p}.0.attn.k.dora_scale": rng.uniform(0.5, 1.5, (128, 1)).astype(np.float32),
        f"{p}.1.attn.v.lokr_w1": f(4, 4, scale=1.0),
        f"{p}.1.attn.v.lokr_w2_a": f(32, 2),
        f"{p}.1.attn.v.lokr_w2_b": f(2, 32),
        f"{p}.1.attn.v.alpha": np.array(1.0, np.float32),
        f"{p}.1.mlp.up.hada_w1_a": f(512, 2),
        f"{p}.1.mlp.up.hada_w1_b": f(2, 128),
        f"{p}.1.mlp.up.hada_w2_a": f(512, 2),
        f"{p}.1.mlp.up.hada_w2_b": f(2, 128),
        f"{p}.2.attn.o.diff": f(128, 128, scale=0.01),
    }


def _convert(lora: Path, report: Path, out: Path, fmt: str) -> Path:
    arguments = ["lora", "convert", str(lora), "--report", str(report), "-o", str(out), "--format", fmt]
    result = runner.invoke(app, [*arguments, "--verify", "--strict"])
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    conversion = json.loads(out.with_name(out.name + ".conversion.json").read_text())
    assert not conversion["refused"] and not conversion["partial"]
    return out


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
@pytest.mark.parametrize("derivation", ["rename", "transpose", "scale"])
def test_every_kind_goes_to_b_and_back_unchanged(tmp_path: Path, derivation: str, fmt: str) -> None:
    a = derive.toy_transformer(71)
    b = {
        "rename": lambda: derive.rename(a, {k: "net." + k for k in a}),
        "transpose": lambda: derive.transpose(a),
        "scale": lambda: derive.scale(a, 4.0),  # a power of two: the way back is exact too
    }[derivation]().tensors
    pa, pb = write_tensors(tmp_path / "a.safetensors", a), write_tensors(tmp_path / "b.safetensors", b)
    there = write_report(compare_paths(pa, pb, cache=tmp_path / "cache"), tmp_path / "there.json")
    back = write_report(compare_paths(pb, pa, cache=tmp_path / "cache"), tmp_path / "back.json")
    lora = _every_kind(72)
    save_file(lora, str(tmp_path / "lora.safetensors"))
    on_b = _convert(tmp_path / "lora.safetensors", there, tmp_path / "on_b.safetensors", fmt)
    on_a = _convert(on_b, back, tmp_path / "on_a.safetensors", "comfyui")
    expected, returned = apply_lora(a, lora), apply_lora(a, load_file(str(on_a)))
    for key, (_, values) in expected.items():
        error = np.linalg.norm(returned[key][1] - values) / np.linalg.norm(values)
        assert error < 1e-6, (key, error)


def _lycoris_on_mlp_up(seed: int) -> dict[str, np.ndarray]:
    """A LoKr (w1 4x4, w2 128x32: ΔW 512x128) on layer 1's MLP input, a LoHa on layer 2's."""
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    return {
        "diffusion_model.layer.1.mlp.up.lokr_w1": f(4, 4),
        "diffusion_model.layer.1.mlp.up.lokr_w2_a": f(128, 2),
        "diffusion_model.layer.1.mlp.up.lokr_w2_b": f(2, 32),
        "diffusion_model.layer.2.mlp.up.hada_w1_a": f(512, 2),
        "diffusion_model.layer.2.mlp.up.hada_w1_b": f(2, 128),
        "diffusion_model.layer.2.mlp.up.hada_w2_a": f(512, 2),
        "diffusion_model.layer.2.mlp.up.hada_w2_b": f(2, 128),
    }


UP = ["layer.1.mlp.up.weight", "layer.2.mlp.up.weight"]
BLOCKS = np.concatenate([np.arange(128) + 128 * b for b in (2, 0, 3, 1)])  # whole blocks of w2's rows


@pytest.mark.parametrize(
    ("derivation", "lokr_as_factors"),
    [
        ("split in 4", True),  # each part takes whole blocks: rows of w1
        ("blocks reordered", True),
        ("rows reordered", False),  # not a Kronecker product: a full delta, with the flag
    ],
)
def test_lokr_and_loha_follow_splits_and_reorderings_as_factors(
    tmp_path: Path, derivation: str, lokr_as_factors: bool
) -> None:
    a = derive.toy_transformer(73)
    order = np.random.default_rng(74).permutation(512)
    derived = {
        "split in 4": lambda t: derive.split(t, UP, parts=4),
        "blocks reordered": lambda t: derive.reorder_rows(t, UP, BLOCKS),
        "rows reordered": lambda t: derive.reorder_rows(t, UP, order),
    }[derivation]
    report = compare_report(tmp_path, a, derived(a).tensors)
    lora = _lycoris_on_mlp_up(75)
    strict, _ = convert(tmp_path, lora, report, "--strict")
    assert (strict.exit_code == 0) == lokr_as_factors, strict.output
    result, out = convert(tmp_path, lora, report, "--allow-full-delta", "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-5
    written = load_file(str(out))
    kinds = {key.rsplit(".", 1)[1] for key in written}
    assert "hada_w1_a" in kinds  # LoHa's rows follow any reordering or slice
    assert ("lokr_w1" in kinds) == lokr_as_factors and ("diff" in kinds) != lokr_as_factors
    expected = derived(apply_lora(a, lora)).tensors
    after = apply_lora(derived(a).tensors, written)
    for key, (_, values) in expected.items():
        error = np.linalg.norm(after[key][1] - values) / np.linalg.norm(values)
        assert error < 1e-6, (key, error)
