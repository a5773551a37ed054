"""A converted LoRA loaded by the library users load it with: PEFT's ``PeftModel.from_pretrained``
on a torch model with B's weights, merged, gives T(A after the LoRA), for plain LoRA and DoRA
modules, on renamed and fused targets. Skipped without the ``torch`` and ``peft`` packages (the
``test`` extra installs them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from tests import derive
from tests.helpers.lora_apply import apply_lora
from tests.helpers.lora_runs import compare_report, convert
from tests.helpers.tensors import write_tensors
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
runner = CliRunner()
QKV = ["layer.0.attn.q.weight", "layer.0.attn.k.weight", "layer.0.attn.v.weight"]


def _torch_model(tensors: derive.Tensors) -> torch.nn.Module:
    """A module tree with one ``nn.Linear`` per 2-D weight key (``a.b.c.weight`` at ``a.b.c``)."""
    root = torch.nn.Module()
    for key, (_, values) in tensors.items():
        if not key.endswith(".weight") or values.ndim != 2:
            continue
        path = key.removesuffix(".weight").split(".")
        parent = root
        for name in path[:-1]:
            if not hasattr(parent, name):
                parent.add_module(name, torch.nn.Module())
            parent = getattr(parent, name)
        has_bias = key.removesuffix("weight") + "bias" in tensors
        linear = torch.nn.Linear(values.shape[1], values.shape[0], bias=has_bias, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(values.astype(np.float64)))
            if has_bias:
                linear.bias.copy_(
                    torch.from_numpy(tensors[key.removesuffix("weight") + "bias"][1].astype(np.float64))
                )
        parent.add_module(path[-1], linear)
    return root


def _lora(seed: int, dora: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lora: dict[str, np.ndarray] = {}
    for module, rows in (("layer.0.attn.q", 128), ("layer.0.attn.k", 128), ("layer.1.mlp.up", 512)):
        prefix = f"diffusion_model.{module}"
        lora[f"{prefix}.lora_A.weight"] = (0.1 * rng.standard_normal((4, 128))).astype(np.float32)
        lora[f"{prefix}.lora_B.weight"] = (0.1 * rng.standard_normal((rows, 4))).astype(np.float32)
        lora[f"{prefix}.alpha"] = np.array(8.0, np.float32)
        if dora and module != "layer.0.attn.k":  # k stays plain LoRA
            lora[f"{prefix}.dora_scale"] = rng.uniform(0.5, 1.5, (rows, 1)).astype(np.float32)
    return lora


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("derivation", ["rename", "fuse qkv"])
def test_peft_loads_the_converted_lora_and_merges_to_t_of_a_after_the_lora(
    tmp_path: Path, derivation: str, dora: bool
) -> None:
    a = derive.toy_transformer(51)
    derived = {
        "rename": lambda t: derive.rename(t, {k: "net." + k for k in t}),
        "fuse qkv": lambda t: derive.fuse(t, [QKV]),
    }[derivation]
    b = derived(a).tensors
    lora = _lora(52, dora)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    result, _ = convert(
        tmp_path,
        lora,
        compare_report(tmp_path, a, b),
        "--format",
        "peft",
        "--strict",
        out=adapter / "adapter_model.safetensors",
    )
    assert result.exit_code == 0, result.output
    model = peft.PeftModel.from_pretrained(_torch_model(b), str(adapter)).merge_and_unload()
    merged = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    expected = derived(apply_lora(a, lora)).tensors
    for key, values in merged.items():
        error = np.linalg.norm(values - expected[key][1]) / np.linalg.norm(expected[key][1])
        assert error < 1e-6, (key, error)
    changed = [k for k in merged if not np.array_equal(merged[k], b[k][1].astype(np.float64))]
    assert len(changed) == (2 if derivation == "fuse qkv" else 3)  # q and k land in one fused weight


#: diffusers' Wan keys -> the original Wan release's (``wan/modules/model.py``), for the blocks.
WAN_ORIGINAL = (
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_", "self_attn.norm_"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.norm_", "cross_attn.norm_"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm3"),
    ("scale_shift_table", "modulation"),
)


def _original_wan_key(key: str) -> str:
    if not key.startswith("blocks."):
        return key
    for diffusers_name, original in WAN_ORIGINAL:
        key = key.replace(diffusers_name, original)
    return key


def test_diffusers_loads_a_wan_lora_ported_to_its_layout(tmp_path: Path) -> None:
    """A LoRA written for the original Wan release (DoRA on q, plain on the FFN input) ported
    to diffusers' ``WanTransformer3DModel`` and loaded with ``load_lora_adapter``: fused, every
    weight equals the original model's after the LoRA."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    b = {key: ("F32", value.detach().numpy().copy()) for key, value in model.state_dict().items()}
    a = {_original_wan_key(key): item for key, item in b.items()}
    pa, pb = (
        write_tensors(tmp_path / "wan.safetensors", a),
        write_tensors(tmp_path / "diffusers.safetensors", b),
    )
    report = write_report(compare_paths(pa, pb, cache=tmp_path / "cache"), tmp_path / "report.json")
    rng = np.random.default_rng(53)
    lora: dict[str, np.ndarray] = {}
    for module, rows, cols in (("blocks.0.self_attn.q", 64, 64), ("blocks.1.ffn.0", 128, 64)):
        lora[f"diffusion_model.{module}.lora_A.weight"] = (0.1 * rng.standard_normal((4, cols))).astype(
            np.float32
        )
        lora[f"diffusion_model.{module}.lora_B.weight"] = (0.1 * rng.standard_normal((rows, 4))).astype(
            np.float32
        )
        lora[f"diffusion_model.{module}.alpha"] = np.array(2.0, np.float32)
    lora["diffusion_model.blocks.0.self_attn.q.dora_scale"] = rng.uniform(0.5, 1.5, (64, 1)).astype(
        np.float32
    )
    save_file(lora, str(tmp_path / "wan_lora.safetensors"))
    out = tmp_path / "diffusers_lora.safetensors"
    result = runner.invoke(
        app,
        [
            *("lora", "convert", str(tmp_path / "wan_lora.safetensors"), "--report", str(report)),
            *("-o", str(out), "--format", "diffusers", "--strict", "--verify"),
        ],
    )
    assert result.exit_code == 0, result.output
    model.load_lora_adapter(str(out), prefix="transformer", adapter_name="ported")
    model.fuse_lora(lora_scale=1.0)
    after = {
        key.replace(".base_layer", ""): value.detach().numpy().astype(np.float64)
        for key, value in model.state_dict().items()
        if ".lora_" not in key
    }
    expected = apply_lora(a, lora)
    for key, values in after.items():
        truth = expected[_original_wan_key(key)][1]
        error = np.linalg.norm(values - truth) / max(np.linalg.norm(truth), 1e-30)
        assert error < 1e-5, (key, error)
    changed = [k for k, v in after.items() if not np.allclose(v, b[k][1], atol=0)]
    assert sorted(changed) == ["blocks.0.attn1.to_q.weight", "blocks.1.ffn.net.0.proj.weight"]
