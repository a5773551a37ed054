"""LoRA files as they come when something went wrong: every malformed module is refused by name
with a one-line reason (never a traceback), two spellings of one module never corrupt the output,
and a second factor of one kind is named, not dropped. (Found by trying to break ``lora convert``
and ``lora check``; each case is a file a user could hold.)"""

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
from weightidx.cli import app

runner = CliRunner()
Q = "diffusion_model.layer.0.attn.q"


def _good(prefix: str = Q, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}.lora_A.weight": (0.1 * rng.standard_normal((4, 128))).astype(np.float32),
        f"{prefix}.lora_B.weight": (0.1 * rng.standard_normal((128, 4))).astype(np.float32),
    }


def _bad_modules() -> dict[str, tuple[dict[str, np.ndarray], str]]:
    rng = np.random.default_rng(2)
    k = "diffusion_model.layer.0.attn.k"
    v = "diffusion_model.layer.0.attn.v"
    nan_up = _good(k)
    nan_up[f"{k}.lora_B.weight"][0, 0] = np.nan
    return {
        "empty alpha": (
            {**_good(k), f"{k}.alpha": np.zeros(0, np.float32)},
            "its alpha holds 0 values, not one",
        ),
        "two alphas": (
            {**_good(k), f"{k}.alpha": np.ones(2, np.float32)},
            "its alpha holds 2 values, not one",
        ),
        "infinite alpha": (
            {**_good(k), f"{k}.alpha": np.array(np.inf, np.float32)},
            "alpha is NaN or infinite",
        ),
        "0-d up": (
            {
                f"{k}.lora_A.weight": np.ones((4, 128), np.float32),
                f"{k}.lora_B.weight": np.array(1.0, np.float32),
            },
            "each needs 2 dimensions or more",
        ),
        "rank 0": (
            {
                f"{k}.lora_A.weight": np.ones((0, 128), np.float32),
                f"{k}.lora_B.weight": np.ones((128, 0), np.float32),
            },
            "do not chain (rank 0)",
        ),
        "ranks differ": (
            {
                f"{k}.lora_A.weight": np.ones((8, 128), np.float32),
                f"{k}.lora_B.weight": np.ones((128, 4), np.float32),
            },
            "do not chain (rank 8)",
        ),
        "NaN factor": (nan_up, "its factors hold NaN or infinite values"),
        "NaN magnitude": (
            {**_good(k), f"{k}.dora_scale": np.full((128, 1), np.nan, np.float32)},
            "its DoRA magnitude holds NaN or infinite values",
        ),
        "LoHa of rank 0": (
            {f"{v}.hada_w1_a": np.ones((128, 0), np.float32), f"{v}.hada_w1_b": np.ones((0, 128), np.float32)}
            | {
                f"{v}.hada_w2_a": np.ones((128, 0), np.float32),
                f"{v}.hada_w2_b": np.ones((0, 128), np.float32),
            }
            | {f"{v}.alpha": np.array(1.0, np.float32)},
            "LoHa (LyCORIS) module with an empty factor (rank 0)",
        ),
        "LoCon middle factor that does not fit": (
            {**_good(k), f"{k}.lora_mid.weight": rng.standard_normal((5, 5, 3, 3)).astype(np.float32)},
            "its LoCon middle factor of shape [5, 5, 3, 3] does not fit its down [4, 128]",
        ),
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model, its renamed copy's compare report, and the model file for ``lora check``."""
    folder = tmp_path_factory.mktemp("hostile")
    a = derive.toy_transformer(21)
    report = compare_report(folder, a, derive.rename(a, {k: "net." + k for k in a}).tensors)
    return folder / "a.safetensors", report


@pytest.mark.parametrize("case", list(_bad_modules()))
def test_a_malformed_module_is_refused_by_name_and_the_rest_converted(
    tmp_path: Path, model: tuple[Path, Path], case: str
) -> None:
    bad, reason = _bad_modules()[case]
    lora = {**_good(), **bad}
    result, out = convert(tmp_path, lora, model[1], "--verify")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "nan" not in result.output.split("=")[-1]
    conversion = json.loads(out.with_name(out.name + ".conversion.json").read_text())
    refused = {tensor: r["reason"] for r in conversion["refused"] for tensor in r["tensors"]}
    assert set(refused) == set(bad), refused  # every tensor of the bad module, and nothing else
    assert all(reason in text for text in refused.values()), refused
    assert set(load_file(str(out))) == {f"diffusion_model.net.layer.0.attn.q.lora_{s}.weight" for s in "AB"}
    checked = runner.invoke(
        app, ["lora", "check", str(tmp_path / "lora.safetensors"), str(model[0]), "--json"]
    )
    assert checked.exit_code == 1, checked.output
    ignored = json.loads(checked.output)["ignored"]
    assert any(reason in item["reason"] for item in ignored), ignored


def test_two_spellings_of_one_module_give_one_and_name_the_other(
    tmp_path: Path, model: tuple[Path, Path]
) -> None:
    """The same weight adapted under two names (a file merged from two trainers): a loader keeps
    one; the conversion keeps the first and refuses the second naming the first, and the output
    is a valid file (it once held two headers' worth of one key)."""
    kohya = {
        k.replace(f"{Q}.lora_A", "lora_unet_layer_0_attn_q.lora_down").replace(
            f"{Q}.lora_B", "lora_unet_layer_0_attn_q.lora_up"
        ): v
        for k, v in _good(seed=3).items()
    }
    result, out = convert(tmp_path, {**_good(), **kohya}, model[1], "--verify")
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "np") as handle:  # a readable file, one module
        assert len(list(handle.keys())) == 2
    (refused,) = json.loads(out.with_name(out.name + ".conversion.json").read_text())["refused"]
    assert sorted(refused["tensors"]) == sorted(kohya)
    assert refused["reason"] == (
        f"A's weight layer.0.attn.q.weight is adapted by {Q} too, and a loader applies only one of them"
    )


def test_a_second_factor_of_one_kind_is_named(tmp_path: Path, model: tuple[Path, Path]) -> None:
    lora = {**_good(), f"{Q}.lora_down.weight": np.ones((4, 128), np.float32)}
    result, out = convert(tmp_path, lora, model[1])
    assert result.exit_code == 0, result.output
    (refused,) = json.loads(out.with_name(out.name + ".conversion.json").read_text())["refused"]
    assert refused["tensors"] == [f"{Q}.lora_down.weight"]
    assert refused["reason"] == "a second LoRA down factor of one module: not converted"


def test_a_peft_adapter_without_its_config_is_refused(tmp_path: Path, model: tuple[Path, Path]) -> None:
    lora = {k.replace("diffusion_model.", "base_model.model."): v for k, v in _good().items()}
    result, _ = convert(tmp_path, lora, model[1])
    assert result.exit_code == 2
    assert "a PEFT adapter without its adapter_config.json beside it" in result.output
    assert "--from-format diffusers" in result.output


def test_the_output_never_overwrites_the_input(tmp_path: Path, model: tuple[Path, Path]) -> None:
    result, _ = convert(tmp_path, _good(), model[1], out=tmp_path / "lora.safetensors")
    assert result.exit_code == 2
    assert "this is the LoRA being converted" in result.output


def test_an_empty_lora_file_is_not_a_clean_check(tmp_path: Path, model: tuple[Path, Path]) -> None:
    save_file({}, str(tmp_path / "empty.safetensors"))
    result = runner.invoke(app, ["lora", "check", str(tmp_path / "empty.safetensors"), str(model[0])])
    assert result.exit_code == 2 and "holds no tensors; is it a LoRA?" in result.output


def test_peft_conv_magnitudes_are_per_output_channel(tmp_path: Path) -> None:
    """PEFT stores a Conv2d's DoRA magnitude as (1, out, 1, 1) (``tuners/lora/dora.py``): read per
    output channel, and written back in that layout."""
    rng = np.random.default_rng(4)
    a = {"conv.weight": ("F32", (rng.standard_normal((16, 8, 3, 3)) / 9).astype(np.float32))}
    a |= {"other.weight": ("F32", (rng.standard_normal((64, 64)) / 8).astype(np.float32))}
    report = compare_report(tmp_path, a, {"unet." + k: v for k, v in a.items()})
    p = "base_model.model.conv"
    lora = {
        f"{p}.lora_A.weight": (0.1 * rng.standard_normal((2, 8, 3, 3))).astype(np.float32),
        f"{p}.lora_B.weight": (0.1 * rng.standard_normal((16, 2, 1, 1))).astype(np.float32),
        f"{p}.lora_magnitude_vector": rng.uniform(0.5, 1.5, (1, 16, 1, 1)).astype(np.float32),
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "use_dora": True}))
    result, out = convert(tmp_path, lora, report, "--verify", "--strict")
    assert result.exit_code == 0, result.output
    written = load_file(str(out))
    np.testing.assert_array_equal(
        written["base_model.model.unet.conv.lora_magnitude_vector"], lora[f"{p}.lora_magnitude_vector"]
    )
