"""LoRAs as people ship them: every tensor of the input is converted, refused with a reason or
kept as metadata; module names are resolved by one algorithm; ΔW that lands nowhere in B is
reported, checked by --verify and refused by --strict (the reports replayed at small width)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from tests import derive
from tests.helpers.lora_runs import compare_report, convert
from tests.helpers.tensors import trained_like, write_tensors
from weightidx.cli import app
from weightidx.lora.names import Resolver, normalised

runner = CliRunner()
RANK = 4


def _factors(rng: np.random.Generator, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    down = (0.1 * rng.standard_normal((RANK, cols))).astype(np.float32)
    up = (0.1 * rng.standard_normal((rows, RANK))).astype(np.float32)
    return down, up


@pytest.mark.parametrize(
    "spelling",
    [
        "lora_unet_layer_0_attn_q",  # kohya
        "lora_unet_layer_0.attn.q",  # underscores up to the block index, dots after
        "diffusion_model.layer.0.attn.q",
        "model.diffusion_model.layer.0.attn.q",
        "base_model.model.layer.0.attn.q",
        "transformer.layer_0.attn_q",
    ],
)
def test_module_names_resolve_however_they_are_spelt(spelling: str) -> None:
    a_keys = set(derive.toy_transformer(1))
    assert Resolver(a_keys).resolve(spelling).key == "layer.0.attn.q.weight"


def test_unresolved_names_say_why_and_what_is_near() -> None:
    resolver = Resolver(set(derive.toy_transformer(1)))
    missing = resolver.resolve("lora_unet_layer_0_attn_qq")
    assert missing.key is None and missing.reason.startswith(
        "no weight of A has this name; nearest: layer.0.attn.q.weight"
    )
    encoder = resolver.resolve("lora_te1_text_model_encoder_layers_0_mlp_fc1")
    assert encoder.key is None and encoder.reason.startswith("a text-encoder module")
    assert normalised("lora_unet_blocks_0.self_attn.q.weight") == "blocks_0_self_attn_q"


def test_every_tensor_is_converted_or_refused_by_name(tmp_path: Path) -> None:
    """8 LoKr modules, 2 LoRA modules, 2 bias deltas and a DoRA magnitude: the LoRA modules and
    bias deltas are converted, every other tensor is listed with its kind; --strict refuses."""
    a = derive.toy_transformer(2)
    report = compare_report(tmp_path, a, a)
    rng = np.random.default_rng(0)
    lora: dict[str, np.ndarray] = {}
    for name in ("layer.0.attn.q", "layer.1.attn.k"):
        down, up = _factors(rng, 128, 128)
        lora[f"diffusion_model.{name}.lora_A.weight"], lora[f"diffusion_model.{name}.lora_B.weight"] = (
            down,
            up,
        )
    for i in range(8):
        lora[f"lycoris_layer_{i % 3}_mlp_up.lokr_w1"] = rng.standard_normal((4, 4)).astype(np.float32)
        lora[f"lycoris_layer_{i % 3}_mlp_up_{i}.lokr_w2"] = rng.standard_normal((128, 32)).astype(np.float32)
    lora["diffusion_model.layer.0.attn.q.diff_b"] = rng.standard_normal(128).astype(np.float32)
    lora["diffusion_model.layer.1.attn.k.diff_b"] = rng.standard_normal(128).astype(np.float32)
    lora["diffusion_model.layer.0.attn.q.dora_scale"] = rng.standard_normal((128, 1)).astype(np.float32)
    lora["lycoris_layer_0_mlp_up.alpha"] = np.array(4.0, dtype=np.float32)
    lora["diffusion_model.layer.0.mlp.up.diff_b"] = rng.standard_normal(512).astype(
        np.float32
    )  # no such bias
    result, out = convert(tmp_path, lora, report)
    assert result.exit_code == 0, result.output
    conversion = json.loads(out.with_name(out.name + ".conversion.json").read_text())
    written = load_file(str(out))
    refused = {t for r in conversion["refused"] for t in r["tensors"]}
    converted = {
        k
        for k in lora
        if ".lora_" in k or k.endswith(".dora_scale") or (k.endswith(".diff_b") and "mlp" not in k)
    }
    assert refused == set(lora) - converted  # nothing dropped without a word
    assert len(written) == len(converted) and len(conversion["converted"]) == 4
    np.testing.assert_allclose(
        written["diffusion_model.layer.0.attn.q.diff_b"], lora["diffusion_model.layer.0.attn.q.diff_b"]
    )
    entries = len(conversion["refused"])
    inputs = 2 + 3 + 3 + 8  # LoRA modules, bias deltas, LoKr names with a w1 only, with a w2 only
    assert result.output.startswith(
        f"4 module(s) converted from {inputs} (comfyui -> comfyui), {entries} refused"
    )
    assert all(r["tensors"] for r in conversion["refused"])  # each refusal names the input's tensors
    kinds = {r["tensors"][0]: r["reason"] for r in conversion["refused"]}
    assert kinds["diffusion_model.layer.0.mlp.up.diff_b"] == "A's weight layer.0.mlp.up.weight has no bias"
    assert kinds["lycoris_layer_0_mlp_up.lokr_w1"].startswith("LoKr (LyCORIS) module without its w2")
    strict, _ = convert(tmp_path, lora, report, "--strict")
    assert strict.exit_code == 2 and "cannot be converted whole (--strict)" in strict.output


def _lokr_delta(parts: dict, alpha: float | None = None) -> np.ndarray:
    """LoKr's ΔW by its definition (LyCORIS lokr.py): alpha / w2_b's rows · kron(w1, w2)."""
    w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
    w2 = parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_a"] @ parts["lokr_w2_b"]
    scale = 1.0 if alpha is None or "lokr_w2_b" not in parts else alpha / parts["lokr_w2_b"].shape[0]
    return scale * np.kron(w1.astype(np.float64), w2.astype(np.float64))


def _loha_delta(parts: dict, alpha: float) -> np.ndarray:
    """LoHa's ΔW by its definition (LyCORIS loha.py): alpha / rank · (w1_a w1_b) ∘ (w2_a w2_b)."""
    w1 = parts["hada_w1_a"].astype(np.float64) @ parts["hada_w1_b"]
    w2 = parts["hada_w2_a"].astype(np.float64) @ parts["hada_w2_b"]
    return alpha / parts["hada_w1_b"].shape[0] * w1 * w2


@pytest.mark.parametrize("derivation", ["rename", "transpose", "scale"])
def test_lokr_and_loha_follow_renames_transposes_and_scales_as_factors(
    tmp_path: Path, derivation: str
) -> None:
    a = derive.toy_transformer(13)
    derived = {
        "rename": lambda: derive.rename(a, {k: "net." + k for k in a}),
        "transpose": lambda: derive.transpose(a),
        "scale": lambda: derive.scale(a, 3.0),
    }[derivation]()
    report = compare_report(tmp_path, a, derived.tensors)
    rng = np.random.default_rng(14)
    lokr = {
        "lokr_w1": rng.standard_normal((4, 4)).astype(np.float32),
        "lokr_w2_a": rng.standard_normal((32, 2)).astype(np.float32),
        "lokr_w2_b": rng.standard_normal((2, 32)).astype(np.float32),
    }
    loha = {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in (
            ("hada_w1_a", (128, 4)),
            ("hada_w1_b", (4, 128)),
            ("hada_w2_a", (128, 4)),
            ("hada_w2_b", (4, 128)),
        )
    }
    lora = {f"lycoris_layer_0_attn_q.{k}": v for k, v in lokr.items()}
    lora |= {f"lycoris_layer_1_attn_v.{k}": v for k, v in loha.items()}
    lora["lycoris_layer_0_attn_q.alpha"] = np.array(2.0, np.float32)
    lora["lycoris_layer_1_attn_v.alpha"] = np.array(4.0, np.float32)
    result, out = convert(tmp_path, lora, report, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-6
    written = load_file(str(out))
    truth = {t.a: t.b for t in derived.truth}
    factor = 3.0 if derivation == "scale" else 1.0
    for a_key, parts, alpha, delta in (
        ("layer.0.attn.q.weight", lokr, 2.0, _lokr_delta),
        ("layer.1.attn.v.weight", loha, 4.0, _loha_delta),
    ):
        prefix = "diffusion_model." + truth[a_key].removesuffix(".weight")
        got_parts = {
            k.rsplit(".", 1)[1]: v
            for k, v in written.items()
            if k.startswith(prefix + ".") and not k.endswith("alpha")
        }
        assert set(got_parts) == set(parts), sorted(written)
        expected = factor * delta(parts, alpha)
        if derivation == "transpose":
            expected = expected.T
        np.testing.assert_allclose(
            delta(got_parts, float(written[prefix + ".alpha"])), expected, rtol=1e-5, atol=1e-6
        )


def test_lokr_on_a_fused_target_is_a_full_delta_only_when_allowed(tmp_path: Path) -> None:
    a = derive.toy_transformer(15)
    qkv = ["layer.0.attn.q.weight", "layer.0.attn.k.weight", "layer.0.attn.v.weight"]
    derived = derive.fuse(a, [qkv])
    report = compare_report(tmp_path, a, derived.tensors)
    rng = np.random.default_rng(16)
    lora = {
        "lycoris_layer_0_attn_k.lokr_w1": rng.standard_normal((4, 4)).astype(np.float32),
        "lycoris_layer_0_attn_k.lokr_w2": rng.standard_normal((32, 32)).astype(np.float32),
    }
    refused, _ = convert(tmp_path, lora, report)
    assert refused.exit_code == 2
    assert (
        "LoKr (LyCORIS) cannot follow concat:0 as factors; --allow-full-delta writes it as a full delta"
        in refused.output
    )
    allowed, out = convert(tmp_path, lora, report, "--allow-full-delta", "--verify", "--strict")
    assert allowed.exit_code == 0, allowed.output
    diff = load_file(str(out))["diffusion_model.fused.0.diff"]
    expected = np.zeros((384, 128))
    expected[128:256] = _lokr_delta({k.rsplit(".", 1)[1]: v for k, v in lora.items()})
    np.testing.assert_allclose(diff, expected, rtol=1e-5, atol=1e-6)


def test_delta_that_lands_nowhere_in_b_is_reported_verified_and_strict(tmp_path: Path) -> None:
    """FLUX's single_blocks.N.linear1 fuses q, k, v and the MLP input; B keeps only the MLP part
    (its proj_mlp) under the trace: 3/4 of the rows of ΔW have nowhere to go."""
    rng = np.random.default_rng(5)
    fused = trained_like(rng, 256, 64)
    a = {"single_blocks.0.linear1.weight": ("F32", fused), "other.weight": ("F32", trained_like(rng, 64, 64))}
    b = {"proj_mlp.weight": ("F32", fused[192:]), "other.weight": a["other.weight"]}
    report = compare_report(tmp_path, a, b)
    down, up = _factors(rng, 256, 64)
    lora = {
        "diffusion_model.single_blocks.0.linear1.lora_A.weight": down,
        "diffusion_model.single_blocks.0.linear1.lora_B.weight": up,
    }
    result, out = convert(tmp_path, lora, report, "--verify")
    assert result.exit_code == 0, result.output
    conversion = json.loads(out.with_name(out.name + ".conversion.json").read_text())
    (part,) = conversion["partial"]
    delta = up.astype(np.float64) @ down.astype(np.float64)
    expected = np.linalg.norm(delta[:192]) / np.linalg.norm(delta)
    assert part["module"] == "single_blocks.0.linear1.weight" and part["rows_lost"] == 192
    assert abs(part["lost_share"] - expected) < 1e-9
    assert "1 only in part" in result.output.splitlines()[0]
    assert conversion["worst_relative_error"] >= expected  # --verify checks the whole T(ΔW_A)
    strict, _ = convert(tmp_path, lora, report, "--strict")
    assert strict.exit_code == 2 and "lands nowhere in B" in strict.output


def test_user_metadata_is_kept_and_paths_are_not_recorded(tmp_path: Path) -> None:
    a = derive.toy_transformer(4)
    report = compare_report(tmp_path, a, a)
    down, up = _factors(np.random.default_rng(6), 128, 128)
    lora = {"lora_unet_layer_0_attn_q.lora_down.weight": down, "lora_unet_layer_0_attn_q.lora_up.weight": up}
    result, out = convert(tmp_path, lora, report, metadata={"ss_network_dim": "4", "modelspec.title": "mine"})
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "np") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_dim"] == "4" and metadata["modelspec.title"] == "mine"
    assert metadata["weightidx_source_lora"] == "lora.safetensors" and str(tmp_path) not in json.dumps(
        metadata
    )
    assert len(metadata["weightidx_source_lora_sha256"]) == 64


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("comfyui", "diffusion_model.layer.0.attn.q.lora_A.weight"),
        ("kohya", "lora_unet_layer_0_attn_q.lora_down.weight"),
    ],
)
def test_a_b_whose_keys_carry_the_loader_wrapper_gets_it_once(
    tmp_path: Path, fmt: str, expected: str
) -> None:
    a = derive.toy_transformer(7)
    b = {f"model.diffusion_model.{key}": value for key, value in a.items()}
    report = compare_report(tmp_path, a, b)
    down, up = _factors(np.random.default_rng(8), 128, 128)
    lora = {
        "diffusion_model.layer.0.attn.q.lora_A.weight": down,
        "diffusion_model.layer.0.attn.q.lora_B.weight": up,
    }
    result, out = convert(tmp_path, lora, report, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert expected in load_file(str(out))


def test_lora_check_lists_what_would_be_ignored(tmp_path: Path) -> None:
    a = derive.toy_transformer(9)
    model = write_tensors(tmp_path / "tiny.safetensors", a)
    rng = np.random.default_rng(10)
    down, up = _factors(rng, 128, 128)
    lora = {
        "lora_unet_layer_0_attn_q.lora_down.weight": down,
        "lora_unet_layer_0_attn_q.lora_up.weight": up,
        "lora_unet_layer_0_attn_qq.lora_down.weight": down,  # no such weight
        "lora_unet_layer_0_attn_qq.lora_up.weight": up,
        "lora_unet_layer_1_mlp_up.lora_down.weight": down,  # (512, 128) weight: up has 128 rows
        "lora_unet_layer_1_mlp_up.lora_up.weight": up,
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up,
        "lora_unet_layer_2_attn_k.hada_w1_a": down,
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))
    env = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["lora", "check", str(tmp_path / "lora.safetensors"), str(model)], env=env)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "1 module(s) of lora.safetensors load on tiny; 4 item(s) would be ignored"
    assert any(
        "layer_0_attn_qq" in line and "no weight of the model has this name; nearest" in line
        for line in lines
    )
    assert any(
        "lora_unet_layer_1_mlp_up.lora_down" in line and "do not fit the weight [512, 128]" in line
        for line in lines
    )
    assert any("lora_te1" in line and "text-encoder" in line for line in lines)
    assert any("hada_w1_a" in line and "LoHa (LyCORIS)" in line for line in lines)
    clean = {k: v for k, v in lora.items() if k.startswith("lora_unet_layer_0_attn_q.")}
    save_file(clean, str(tmp_path / "clean.safetensors"))
    as_json = runner.invoke(
        app, ["lora", "check", str(tmp_path / "clean.safetensors"), str(model), "--json"], env=env
    )
    assert as_json.exit_code == 0
    assert json.loads(as_json.output)["loads"] == [
        {"module": "lora_unet_layer_0_attn_q", "weight": "layer.0.attn.q.weight", "rank": 4}
    ]


@pytest.mark.parametrize("derivation", ["transpose", "fuse", "split", "scale"])
def test_full_deltas_follow_the_transform_exactly(tmp_path: Path, derivation: str) -> None:
    """``diff`` (ΔW), ``diff_b`` (Δb) and ``set_weight`` on A become B's under T, exactly."""
    a = derive.toy_transformer(11)
    qkv = ["layer.0.attn.q.weight", "layer.0.attn.k.weight", "layer.0.attn.v.weight"]
    derived = {
        "transpose": lambda: derive.transpose(a),
        "fuse": lambda: derive.fuse(a, [qkv]),
        "split": lambda: derive.split(a, ["layer.1.mlp.up.weight"], parts=4),
        "scale": lambda: derive.scale(a, 2.0),
    }[derivation]()
    report = compare_report(tmp_path, a, derived.tensors)
    rng = np.random.default_rng(12)
    lora = {
        "diffusion_model.layer.0.attn.k.diff": rng.standard_normal((128, 128)).astype(np.float32),
        "diffusion_model.layer.1.mlp.up.diff": rng.standard_normal((512, 128)).astype(np.float32),
        "diffusion_model.layer.2.attn.o.set_weight": rng.standard_normal((128, 128)).astype(np.float32),
        "diffusion_model.layer.2.attn.q.diff_b": rng.standard_normal(128).astype(np.float32),
    }
    result, out = convert(tmp_path, lora, report, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    assert float(result.output.rsplit("=", 1)[1].split()[0]) < 1e-6
    written = load_file(str(out))
    expected = {}
    for truth in derived.truth:
        for key, values in lora.items():
            module, kind = key.removeprefix("diffusion_model.").rsplit(".", 1)
            a_key = f"{module}.bias" if kind == "diff_b" else f"{module}.weight"
            if truth.a != a_key:
                continue
            delta = values.astype(np.float64) * (2.0 if derivation == "scale" else 1.0)
            if truth.a_slice is not None:
                axis, start, stop = truth.a_slice
                delta = delta[start:stop] if axis == 0 else delta[:, start:stop]
            if derivation == "transpose" and delta.ndim == 2:
                delta = delta.T
            b_module = truth.b.removesuffix(".bias").removesuffix(".weight")
            full = np.zeros(derived.tensors[truth.b][1].shape)
            if truth.b_slice is None:
                full = delta
            else:
                axis, start, stop = truth.b_slice
                full[start:stop] = delta
            expected[f"diffusion_model.{b_module}.{kind}"] = (
                expected.get(f"diffusion_model.{b_module}.{kind}", 0) + full
            )
    assert set(written) == set(expected), (sorted(written), sorted(expected))
    for key, values in expected.items():
        np.testing.assert_allclose(written[key], values, rtol=1e-6, atol=1e-6)
