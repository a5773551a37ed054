"""LoRA conversion: every input and output format, every transform, alpha handling, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests import derive
from tests.helpers.tensors import trained_like, write_tensors
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report
from weightidx.errors import LoraError
from weightidx.fingerprint.sketch import view_2d
from weightidx.io.safetensors import TensorSpec, write_safetensors
from weightidx.lora.convert import convert_lora, read_lora

RANK = 4


def make_pair(
    tmp_path: Path, a: derive.Tensors, b: derive.Tensors, name: str = "ab", index_only: bool = False
) -> Path:
    """Write A and B, compare them, and return the report path."""
    folder = tmp_path / name
    folder.mkdir()
    pa = write_tensors(folder / "a.safetensors", a)
    pb = write_tensors(folder / "b.safetensors", b)
    report = compare_paths(pa, pb, cache=folder / "cache", index_only=index_only)
    return write_report(report, folder / "report.json")


def make_lora(a: derive.Tensors, targets: list[str], seed: int, alpha: float | None) -> dict[str, tuple]:
    """{A weight key: (down, up, alpha)} with random factors of rank RANK."""
    rng = np.random.default_rng(seed)
    modules = {}
    for key in targets:
        shape = a[key][1].shape
        rows, _cols = view_2d(shape)
        down = rng.standard_normal((RANK, *shape[1:])).astype(np.float32) * 0.1
        up = rng.standard_normal((rows, RANK, *([1] * (len(shape) - 2)))).astype(np.float32) * 0.1
        modules[key] = (down, up, alpha)
    return modules


def write_lora(path: Path, modules: dict[str, tuple], fmt: str, a_keys: set[str]) -> Path:
    """Write a LoRA with hand-built keys in the given format (independent of weightidx's writer)."""
    specs = []
    for key, (down, up, alpha) in modules.items():
        name = key.removesuffix(".weight")
        if fmt == "kohya":
            prefix, d, u = "lora_unet_" + name.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif fmt == "comfyui":
            prefix, d, u = "diffusion_model." + name, "lora_A.weight", "lora_B.weight"
        elif fmt == "comfyui_updown":
            prefix, d, u = "model.diffusion_model." + name, "lora_down.weight", "lora_up.weight"
        elif fmt == "diffusers":
            prefix, d, u = "transformer." + name, "lora_A.weight", "lora_B.weight"
            up = up * np.float32((alpha or RANK) / RANK)  # diffusers has alpha folded in
            alpha = None
        else:
            prefix, d, u = "base_model.model." + name, "lora_A.default.weight", "lora_B.default.weight"
        specs.append(TensorSpec(f"{prefix}.{d}", "F32", down.shape, lambda v=down: v))
        specs.append(TensorSpec(f"{prefix}.{u}", "F32", up.shape, lambda v=up: v))
        if alpha is not None and fmt not in ("peft", "diffusers"):
            specs.append(TensorSpec(f"{prefix}.alpha", "F32", (), lambda a=alpha: np.array(a, np.float32)))
    write_safetensors(path, specs)
    if fmt == "peft":
        alpha = next(iter(modules.values()))[2]
        config = {"peft_type": "LORA", "r": RANK, "lora_alpha": alpha if alpha is not None else RANK}
        path.with_name("adapter_config.json").write_text(json.dumps(config))
    return path


def delta(down: np.ndarray, up: np.ndarray, alpha: float | None) -> np.ndarray:
    rank = down.shape[0]
    scale = 1.0 if alpha is None else alpha / rank
    return (
        scale * up.reshape(up.shape[0], rank).astype(np.float64) @ down.reshape(rank, -1).astype(np.float64)
    )


def converted_deltas(path: Path, b_keys: set[str]) -> dict[str, np.ndarray]:
    """ΔW per B weight, read back with the format detection a user gets."""
    _, modules = read_lora(path, b_keys)
    return {m.target: m.delta() for m in modules}


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> None:
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error < tolerance, error


ATTN = [f"layer.{i}.attn.{p}.weight" for i in range(3) for p in "qkvo"]


@pytest.mark.parametrize("fmt_in", ["comfyui", "comfyui_updown", "kohya", "diffusers", "peft"])
@pytest.mark.parametrize("fmt_out", ["comfyui", "kohya", "diffusers", "peft"])
def test_every_input_and_output_format_under_renaming(tmp_path: Path, fmt_in: str, fmt_out: str) -> None:
    a = derive.toy_transformer(80)
    b = derive.rename(a, {k: k.replace("layer.", "blocks.").replace("attn.", "self_attn.") for k in a})
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, [*ATTN, "layer.0.mlp.up.weight"], seed=1, alpha=2.0)
    folder = tmp_path / "lora"
    folder.mkdir()  # PEFT keeps adapter_config.json beside the weights
    lora = write_lora(folder / "adapter_model.safetensors", modules, fmt_in, set(a))
    out = tmp_path / "out" / "lora.safetensors"
    out.parent.mkdir()
    conversion = convert_lora(lora, report, out, output_format=fmt_out, verify=True)
    assert conversion.refused == [] and conversion.worst_relative_error < 1e-6
    assert (conversion.source_format, conversion.output_format) == (fmt_in.removesuffix("_updown"), fmt_out)
    got = converted_deltas(out, set(b.tensors))
    for key, factors in modules.items():
        new_key = key.replace("layer.", "blocks.").replace("attn.", "self_attn.")
        assert_close(got[new_key], delta(*factors))  # the effective scale alpha/r is kept in every format


def test_fused_qkv_stacks_downs_and_block_diagonal_ups(tmp_path: Path) -> None:
    a = derive.toy_transformer(81)
    groups = [[f"layer.{i}.attn.{p}.weight" for p in "qkv"] for i in range(3)]
    b = derive.fuse(a, groups, axis=0)
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, [k for g in groups for k in g][:8], seed=2, alpha=1.0)  # layer 2's v has no LoRA
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    conversion = convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    assert conversion.worst_relative_error < 1e-6
    got = converted_deltas(tmp_path / "out.safetensors", set(b.tensors))
    fused = got["fused.0.weight"]
    assert fused.shape == (384, 128)
    for index, part in enumerate("qkv"):
        down, up, alpha = modules[f"layer.0.attn.{part}.weight"]
        assert_close(fused[128 * index : 128 * (index + 1)], delta(down, up, alpha))
    _, out_modules = read_lora(tmp_path / "out.safetensors", set(b.tensors))
    layer2 = next(m for m in out_modules if m.target == "fused.2.weight")
    assert layer2.rank == 2 * RANK and layer2.alpha == 2 * RANK  # q and k only; v rows stay zero
    assert np.abs(got["fused.2.weight"][256:]).max() == 0


def test_fused_on_dim_1(tmp_path: Path) -> None:
    a = derive.toy_transformer(82)
    b = derive.fuse(a, [["layer.0.attn.q.weight", "layer.0.attn.o.weight"]], axis=1)
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, ["layer.0.attn.q.weight", "layer.0.attn.o.weight"], seed=3, alpha=None)
    lora = write_lora(tmp_path / "in.safetensors", modules, "kohya", set(a))
    convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    got = converted_deltas(tmp_path / "out.safetensors", set(b.tensors))["fused.0.weight"]
    assert_close(got[:, :128], delta(*modules["layer.0.attn.q.weight"]))
    assert_close(got[:, 128:], delta(*modules["layer.0.attn.o.weight"]))


def test_split_copies_down_and_splits_up(tmp_path: Path) -> None:
    a = derive.toy_transformer(83)
    b = derive.split(a, ["layer.1.mlp.up.weight"], parts=4)
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, ["layer.1.mlp.up.weight"], seed=4, alpha=8.0)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    conversion = convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    assert conversion.worst_relative_error < 1e-6
    got = converted_deltas(tmp_path / "out.safetensors", set(b.tensors))
    whole = delta(*modules["layer.1.mlp.up.weight"])
    for part in range(4):
        assert_close(got[f"layer.1.mlp.up.weight.part{part}"], whole[128 * part : 128 * (part + 1)])


def test_transpose_swaps_and_transposes_the_factors(tmp_path: Path) -> None:
    a = derive.toy_transformer(84)
    b = derive.transpose(a)
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, ["layer.0.mlp.up.weight", "layer.2.attn.v.weight"], seed=5, alpha=3.0)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    got = converted_deltas(tmp_path / "out.safetensors", set(b.tensors))
    for key, factors in modules.items():
        assert_close(got[key + ".t"], delta(*factors).T)


def test_permuted_neurons_reorder_the_factors(tmp_path: Path) -> None:
    a = derive.toy_transformer(86)
    rng = np.random.default_rng(6)
    b = dict(a)
    rows = rng.permutation(512)  # B's MLP neurons are A's, reordered: up's rows and down's columns
    b["layer.0.mlp.up.weight"] = ("F32", a["layer.0.mlp.up.weight"][1][rows])
    b["layer.0.mlp.down.weight"] = ("F32", np.ascontiguousarray(a["layer.0.mlp.down.weight"][1][:, rows]))
    report = make_pair(tmp_path, a, b)
    modules = make_lora(a, ["layer.0.mlp.up.weight", "layer.0.mlp.down.weight"], seed=6, alpha=2.0)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    conversion = convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    assert conversion.refused == [] and conversion.worst_relative_error < 1e-6
    got = converted_deltas(tmp_path / "out.safetensors", set(b))
    assert_close(got["layer.0.mlp.up.weight"], delta(*modules["layer.0.mlp.up.weight"])[rows])
    assert_close(got["layer.0.mlp.down.weight"], delta(*modules["layer.0.mlp.down.weight"])[:, rows])


def test_conv_to_linear_reshape_and_scale(tmp_path: Path) -> None:
    a = derive.toy_transformer(85)
    a["patch.weight"] = ("F32", trained_like(np.random.default_rng(1), 128, 16, 1, 2, 2))
    b = dict(derive.scale(a, 0.5).tensors)
    b["patch.weight"] = ("F32", a["patch.weight"][1].reshape(128, 64) * np.float32(0.5))
    report = make_pair(tmp_path, a, b)
    modules = make_lora(a, ["patch.weight", "layer.0.attn.q.weight"], seed=6, alpha=2.0)
    assert modules["patch.weight"][0].shape == (RANK, 16, 1, 2, 2)
    lora = write_lora(tmp_path / "in.safetensors", modules, "kohya", set(a))
    convert_lora(lora, report, tmp_path / "out.safetensors", verify=True)
    _, out = read_lora(tmp_path / "out.safetensors", set(b))
    patch = next(m for m in out if m.target == "patch.weight")
    assert patch.down.shape == (RANK, 64) and patch.up.shape == (128, RANK)
    got = {m.target: m.delta() for m in out}
    assert_close(got["patch.weight"], 0.5 * delta(*modules["patch.weight"]))
    assert_close(got["layer.0.attn.q.weight"], 0.5 * delta(*modules["layer.0.attn.q.weight"]))


def test_absent_alpha_means_scale_one_and_stays_absent(tmp_path: Path) -> None:
    a = derive.toy_transformer(86)
    report = make_pair(tmp_path, a, a)
    modules = make_lora(a, ATTN[:2], seed=7, alpha=None)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    convert_lora(lora, report, tmp_path / "out.safetensors")
    _, out = read_lora(tmp_path / "out.safetensors", set(a))
    assert all(m.alpha is None for m in out)


def test_round_trip_a_to_b_to_a_reproduces_delta_w(tmp_path: Path) -> None:
    a = derive.toy_transformer(87)
    groups = [[f"layer.{i}.attn.{p}.weight" for p in "qkv"] for i in range(3)]
    b = derive.fuse(a, groups[:1], axis=0).tensors  # layer 0's q, k, v fused (and split on the way back)
    down = a["layer.1.mlp.down.weight"][1]
    b["layer.1.mlp.down.weight"] = ("F32", np.ascontiguousarray(down.T))  # transposed
    forward = make_pair(tmp_path, a, b, "forward")
    backward = make_pair(tmp_path, b, a, "backward")
    modules = make_lora(a, [*ATTN, "layer.1.mlp.down.weight"], seed=8, alpha=2.0)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    convert_lora(lora, forward, tmp_path / "b.safetensors", verify=True)
    convert_lora(tmp_path / "b.safetensors", backward, tmp_path / "back.safetensors", verify=True)
    back = converted_deltas(tmp_path / "back.safetensors", set(a))
    for key, factors in modules.items():
        assert_close(back[key], delta(*factors))


def test_refusals_are_listed_and_strict_fails_without_output(tmp_path: Path) -> None:
    a = derive.toy_transformer(88)
    b = derive.edit(a, reinit=["layer.0.attn.q.weight"], delete=["layer.0.attn.k.weight"], add={}, seed=1)
    report = make_pair(tmp_path, a, b.tensors)
    modules = make_lora(a, ATTN[:3], seed=9, alpha=1.0)
    lora = write_lora(tmp_path / "in.safetensors", modules, "comfyui", set(a))
    conversion = convert_lora(lora, report, tmp_path / "out.safetensors")
    reasons = {r["module"]: r["reason"] for r in conversion.refused}
    assert reasons == {
        "layer.0.attn.q.weight": "the report matches this weight to nothing in B",
        "layer.0.attn.k.weight": "the report matches this weight to nothing in B",
    }
    sidecar = json.loads((tmp_path / "out.safetensors.conversion.json").read_text())
    assert sidecar["refused"] == conversion.refused and len(sidecar["converted"]) == 1
    with pytest.raises(
        LoraError, match=r"2 module\(s\) or tensor\(s\) cannot be converted whole \(--strict\)"
    ):
        convert_lora(lora, report, tmp_path / "strict.safetensors", strict=True)
    assert not (tmp_path / "strict.safetensors").exists()


def test_demo_wan_lora_converts_to_the_longcat_layout(demo_pair, tmp_path: Path) -> None:
    report = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path / "cache")
    report_path = write_report(report, tmp_path / "report.json")
    from weightidx.io.safetensors import open_checkpoint

    a_shapes = {t.key: t.shape for t in open_checkpoint(demo_pair["a"]).tensors}
    targets = [
        k
        for k in a_shapes
        if ".self_attn." in k and k.endswith((".q.weight", ".k.weight", ".v.weight", ".o.weight"))
    ]
    targets += [k for k in a_shapes if ".cross_attn." in k and k.endswith(".weight") and "norm" not in k]
    targets += ["text_embedding.2.weight", "patch_embedding.weight"]
    a = {k: ("BF16", np.zeros(s, np.float32)) for k, s in a_shapes.items()}
    modules = make_lora(a, targets, seed=10, alpha=16.0)
    lora = write_lora(tmp_path / "wan_lora.safetensors", modules, "comfyui", set(a_shapes))
    result = CliRunner().invoke(
        app,
        [
            "lora",
            "convert",
            str(lora),
            "--report",
            str(report_path),
            "-o",
            str(tmp_path / "longcat_lora.safetensors"),
            "--verify",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # 26 modules for A: q, k, v fuse into one qkv per block, cross-attention k, v into one kv
    assert lines[0].startswith("17 module(s) converted from 26 (comfyui -> comfyui), 0 refused")
    assert float(lines[-1].rsplit("= ", 1)[1]) < 1e-6
    got = converted_deltas(
        tmp_path / "longcat_lora.safetensors",
        {t for t in report["unmatched"]["b"]} | {m["b"]["key"] for m in report["matches"]},
    )
    q, k, v = (modules[f"blocks.1.self_attn.{p}.weight"] for p in "qkv")
    qkv = got["blocks.1.attn.qkv.weight"]
    for index, factors in enumerate((q, k, v)):
        assert_close(qkv[128 * index : 128 * (index + 1)], delta(*factors))
    assert_close(got["y_embedder.y_proj.2.weight"], delta(*modules["text_embedding.2.weight"]).T)


def test_mapping_export(demo_pair, tmp_path: Path) -> None:
    report = compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path / "cache")
    report_path = write_report(report, tmp_path / "report.json")
    result = CliRunner().invoke(app, ["lora", "mapping", str(report_path), "-o", str(tmp_path / "map.json")])
    assert result.exit_code == 0, result.output
    mapping = json.loads((tmp_path / "map.json").read_text())
    entry = next(e for e in mapping if e["a"] == "blocks.0.self_attn.k.weight")
    assert entry == {
        "a": "blocks.0.self_attn.k.weight",
        "a_slice": None,
        "b": "blocks.0.attn.qkv.weight",
        "b_slice": {"axis": 0, "start": 128, "stop": 256},
        "transform": ["rename", "concat:0"],
        "verdict": "match",
        "permutation": None,
        "select": None,
    }


def test_a_checkpoint_changed_after_the_report_is_refused(tmp_path: Path) -> None:
    import os

    a = derive.toy_transformer(89)
    report = make_pair(tmp_path, a, a)
    lora = write_lora(
        tmp_path / "in.safetensors", make_lora(a, ATTN[:1], seed=1, alpha=1.0), "comfyui", set(a)
    )
    b_file = tmp_path / "ab" / "b.safetensors"
    os.utime(b_file, ns=(1, 1))
    with pytest.raises(
        LoraError, match=r"b\.safetensors: changed after the report was made; run `weightidx compare"
    ):
        convert_lora(lora, report, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_mapping_to_a_missing_folder_is_one_line(demo_pair, tmp_path: Path) -> None:
    report = write_report(
        compare_paths(demo_pair["a"], demo_pair["b"], cache=tmp_path / "c"), tmp_path / "r.json"
    )
    out = tmp_path / "no" / "map.json"
    result = CliRunner().invoke(app, ["lora", "mapping", str(report), "-o", str(out)])
    assert result.exit_code == 3
    assert (
        result.output
        == f"Error: {out}: cannot write (No such file or directory); choose another output path\n"
    )


def _convert(tmp_path: Path, report: Path, modules: dict, a_keys: set[str], b_keys: set[str]) -> dict:
    lora = write_lora(tmp_path / "lora.safetensors", modules, "comfyui", a_keys)
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(
        app, ["lora", "convert", str(lora), "--report", str(report), "-o", str(out), "--verify", "--strict"]
    )
    assert result.exit_code == 0, result.output
    assert "worst relative error" in result.output
    error = float(result.output.rsplit("=", 1)[1].split()[0])
    assert error < 1e-5
    return converted_deltas(out, b_keys)


@pytest.mark.parametrize("index_only", [False, True], ids=["values", "index only"])
def test_lora_through_heads_interleaved(tmp_path: Path, index_only: bool) -> None:
    """q, k, v modules into GPT-NeoX's query_key_value, head by head: each head's rows of ΔW
    land on that head's rows of B (checked here from the factors, not by --verify), whether the
    layout was found from the values or from the fingerprints alone."""
    a = derive.toy_transformer(40, width=128, layers=2)
    groups = [[f"layer.{i}.attn.{p}.weight" for p in "qkv"] for i in range(2)]
    b = derive.interleave_heads(a, groups, head_dim=32).tensors
    report = make_pair(tmp_path, a, b, index_only=index_only)
    modules = make_lora(a, [k for group in groups for k in group], seed=1, alpha=4.0)
    got = _convert(tmp_path, report, modules, set(a), set(b))
    for i in range(2):
        fused = got[f"layers.{i}.attention.query_key_value.weight"]
        deltas = [delta(*modules[f"layer.{i}.attn.{p}.weight"]) for p in "qkv"]
        expected = np.concatenate([d[h * 32 : (h + 1) * 32] for h in range(4) for d in deltas])
        assert_close(fused, expected)


def test_lora_through_the_rotary_order(tmp_path: Path) -> None:
    a = derive.toy_transformer(41, width=128, layers=2)
    keys = [f"layer.{i}.attn.{p}.weight" for i in range(2) for p in "qk"]
    order = derive.rotary_order(128, 32)
    b = derive.cast(derive.reorder_rows(a, keys, order).tensors, "F16").tensors
    report = make_pair(tmp_path, a, b)
    modules = make_lora(a, keys, seed=2, alpha=None)
    got = _convert(tmp_path, report, modules, set(a), set(b))
    for key in keys:
        assert_close(got[key], delta(*modules[key])[order])


@pytest.mark.slow
@pytest.mark.real_model
def test_lora_through_width_pruning(minilm: Path, tmp_path: Path) -> None:
    """ΔW_B = ΔW_A[rows][:, cols] for a Minitron-pruned all-MiniLM-L6-v2: up's rows and down's
    columns selected."""
    from tests.helpers import real_models

    a = real_models.load(minilm)
    b, truth = derive.minitron_bert(a, seed=3, noise=0.02)
    report = make_pair(tmp_path, a, b)
    targets = [
        f"encoder.layer.{i}.{m}.weight"
        for i in (0, 3)
        for m in ("attention.self.query", "intermediate.dense", "output.dense", "attention.output.dense")
    ]
    modules = make_lora(a, targets, seed=3, alpha=8.0)
    got = _convert(tmp_path, report, modules, set(a), set(b))
    for key in targets:
        _, rows, cols = truth[key]
        expected = delta(*modules[key])
        expected = expected if rows is None else expected[rows]
        expected = expected if cols is None else expected[:, cols]
        assert_close(got[key], expected)
