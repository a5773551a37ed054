"""What users hold besides a plain safetensors file: GGUF (written with the ``gguf`` package's own
quantisers from real weights), Hugging Face cache layouts (symbolic links into ``blobs/``),
diffusers pipeline roots, lone shards, and dtypes weightidx does not decode."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import real_models
from tests.helpers.kquants import quantize_q6_k
from tests.helpers.tensors import trained_like, write_tensors
from tests.helpers.verdicts import check_verdict
from weightidx import policy
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.errors import InputError
from weightidx.index.reader import load_index
from weightidx.index.writer import index_checkpoint
from weightidx.io.locate import locate

gguf = pytest.importorskip("gguf")
runner = CliRunner()
QUANTISED = ("Q8_0", "Q4_0", "Q5_1")


def write_gguf(path: Path, tensors: dict, types: tuple[str, ...] = QUANTISED) -> dict[str, str]:
    """MiniLM's tensors as a GGUF file: matrices whose rows hold whole 32-value blocks quantised
    in turn to ``types`` by gguf's own quantisers, the rest as F32. Returns key -> type."""
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_name("all-MiniLM-L6-v2")
    chosen, turn = {}, 0
    for key, (dtype, values) in tensors.items():
        values = values.astype(np.float32)
        if dtype.startswith(("F", "BF")) and values.ndim == 2 and values.shape[1] % 32 == 0:
            kind = gguf.GGMLQuantizationType[types[turn % len(types)]]
            turn += 1
            if kind.name == "Q6_K" and values.shape[1] % 256:  # rows of whole 256-value blocks only
                kind = gguf.GGMLQuantizationType.Q8_0
            quantise = quantize_q6_k if kind.name == "Q6_K" else lambda v, k=kind: gguf.quants.quantize(v, k)
            stored = quantise(values)
            writer.add_tensor(key, stored, raw_dtype=kind)
            chosen[key] = kind.name
        else:
            writer.add_tensor(key, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return chosen


@pytest.fixture(scope="module")
def minilm_tensors(minilm: Path) -> dict:
    return real_models.load(minilm)


@pytest.mark.real_model
@pytest.mark.parametrize("types", [QUANTISED, ("Q6_K",)], ids=["legacy quants", "K-quant"])
def test_a_gguf_quantisation_of_minilm_is_a_copy_with_its_types_named(
    minilm: Path, minilm_tensors: dict, tmp_path: Path, types: tuple[str, ...]
) -> None:
    chosen = write_gguf(tmp_path / "minilm-q.gguf", minilm_tensors, types)
    env = {"WEIGHTIDX_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(
        app, ["index", str(tmp_path / "minilm-q.gguf"), "-o", str(tmp_path / "q.parquet")], env=env
    )
    assert result.exit_code == 0, result.output
    model = load_index(tmp_path / "q.parquet")
    assert model.name == "minilm-q" and model.quantisation == chosen
    assert tuple(model.rows["encoder.layer.0.attention.self.query.weight"]["shape"]) == (384, 384)
    report = compare_paths(minilm, tmp_path / "q.parquet", cache=tmp_path / "cache")
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "copied"
    assert summary["matched_b_tensors"] == len(minilm_tensors)
    assert summary["quantised"]["matrices"] == len(chosen)
    assert summary["quantised"]["types"] == sorted(set(chosen.values()))
    assert summary["changed_values"]["matrices"] == 0  # quantisation is not called training
    for match in report["matches"]:
        expected = f"quantise:{chosen[match['b']['key']]}" if match["b"]["key"] in chosen else None
        assert match["a"]["key"] == match["b"]["key"]
        assert (
            (expected in match["transform"])
            if expected
            else not any("quantise" in t for t in match["transform"])
        )
    assert "applies to B as it is" in summary["verdict"]


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``): q and k rows of each head
    from the Hugging Face rotary layout (halves) to GGML's (interleaved pairs)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.real_model
def test_llama_cpps_rotary_permutation_is_found_by_the_values(
    minilm: Path, minilm_tensors: dict, tmp_path: Path
) -> None:
    """A GGUF written as llama.cpp writes llama models: q and k rows permuted per head (MiniLM's 12
    heads of 32), then quantised. compare finds the reordering from the values, no name table."""
    permuted = dict(minilm_tensors)
    heads = 12
    moved = [k for k in minilm_tensors if k.endswith(("self.query.weight", "self.key.weight"))]
    for key in moved:
        dtype, values = minilm_tensors[key]
        permuted[key] = (dtype, np.ascontiguousarray(llama_cpp_permute(values, heads)))
        bias = key.removesuffix("weight") + "bias"
        permuted[bias] = (dtype, np.ascontiguousarray(llama_cpp_permute(minilm_tensors[bias][1], heads)))
    write_gguf(tmp_path / "rotary.gguf", permuted, ("Q8_0",))
    report = compare_paths(minilm, tmp_path / "rotary.gguf", cache=tmp_path / "cache")
    check_verdict(report)
    by_b = {m["b"]["key"]: m for m in report["matches"] if m["verdict"] != "different"}
    for key in moved:
        match = by_b[key]
        assert match["a"]["key"] == key and "permute:rows" in match["transform"], match["transform"]
        assert "quantise:Q8_0" in match["transform"]
        order = np.asarray(match["permutation"]["order"])
        np.testing.assert_array_equal(order, llama_cpp_permute(np.arange(384), heads))
        assert "rotary" in (match["permutation"]["pattern"] or "")


@pytest.mark.real_model
def test_a_gguf_type_gguf_cannot_dequantise_is_an_unsupported_tensor(
    minilm_tensors: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = dict(list(minilm_tensors.items())[:12])
    chosen = write_gguf(tmp_path / "m.gguf", small, types=("Q8_0", "Q5_1"))
    original = gguf.quants.dequantize

    def no_q5_1(data, kind):
        if kind == gguf.GGMLQuantizationType.Q5_1:
            raise NotImplementedError("Q5_1")
        return original(data, kind)

    monkeypatch.setattr(gguf.quants, "dequantize", no_q5_1)
    summary = index_checkpoint(tmp_path / "m.gguf", tmp_path / "m.parquet")
    model = load_index(tmp_path / "m.parquet")
    refused = {k for k, t in chosen.items() if t == "Q5_1"}
    assert refused and {k for k, r in model.rows.items() if not r["supported"]} == refused
    assert {model.rows[k]["dtype"] for k in refused} == {"GGUF_Q5_1"}
    assert len(summary.warnings) == len(refused)


def test_gguf_without_its_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setitem(sys.modules, "gguf", None)
    result = runner.invoke(app, ["index", str(path), "-o", str(tmp_path / "m.parquet")])
    assert result.exit_code == 2
    assert (
        result.output
        == f"Error: {path}: reading GGUF needs the gguf package; pip install 'weightidx[gguf]'\n"
    )


def test_a_truncated_gguf_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(10))
    result = runner.invoke(app, ["index", str(path)], env={"WEIGHTIDX_CACHE": str(tmp_path / "cache")})
    assert result.exit_code != 0 and result.output.count("\n") == 1 and str(path) in result.output


def _hub_repo(hub: Path, repo: str = "acme/tiny-model", commit: str = "a1b2c3d4e5f6") -> Path:
    """A Hugging Face cache repo as huggingface_hub lays it out: the file in blobs/, the
    snapshot entry a relative symbolic link to it, refs/main naming the commit."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    rng = np.random.default_rng(0)
    (folder / "blobs").mkdir(parents=True)
    blob = write_tensors(folder / "blobs" / "0123abcd", {"w": ("F32", trained_like(rng, 32, 32))})
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder


def test_hugging_face_cache_entries_are_named_after_the_repo(tmp_path: Path) -> None:
    folder = _hub_repo(tmp_path / "hub")
    snapshot = folder / "snapshots" / "a1b2c3d4e5f6"
    for given in (folder, snapshot, snapshot / "model.safetensors"):
        located = locate(given)
        assert located.name == "acme/tiny-model", given
        summary = index_checkpoint(given, tmp_path / "x.parquet")
        assert summary.model == "acme/tiny-model" and summary.tensors == 1
    assert locate(folder, revision="main").path == snapshot
    with pytest.raises(InputError, match="no single snapshot for revision 'v2'"):
        locate(folder, revision="v2")


def test_a_repo_indexed_without_an_output_path_gets_a_file_name(tmp_path: Path, monkeypatch) -> None:
    folder = _hub_repo(tmp_path / "hub")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["index", str(folder)], env={"WEIGHTIDX_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("acme/tiny-model: 1 tensors")
    assert load_index(tmp_path / "acme--tiny-model.weightidx.parquet").name == "acme/tiny-model"


def test_a_repo_id_is_found_in_the_local_cache_only(tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    _hub_repo(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "weightidx", "index"]
    found = subprocess.run(
        [*command, "acme/tiny-model", "-o", str(tmp_path / "t.parquet"), "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    assert load_index(tmp_path / "t.parquet").name == "acme/tiny-model"
    missing = subprocess.run([*command, "acme/absent", "-q"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        f"Error: acme/absent: not in the Hugging Face cache ({tmp_path / 'hub'})"
    )


def test_a_diffusers_pipeline_root_lists_its_components(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "pipeline"
    for component in ("transformer", "vae", "text_encoder"):
        (root / component).mkdir(parents=True)
        write_tensors(
            root / component / "diffusion_pytorch_model.safetensors",
            {"w": ("F32", trained_like(rng, 16, 16))},
        )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    (root / "scheduler").mkdir()
    result = runner.invoke(app, ["index", str(root)])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {root}: a diffusers pipeline of 3 models (text_encoder, transformer, vae); "
        f"index one with --component text_encoder (or pass its folder: {root / 'text_encoder'})\n"
    )
    out = tmp_path / "transformer.parquet"
    taken = runner.invoke(app, ["index", str(root), "--component", "transformer", "-o", str(out), "-q"])
    assert taken.exit_code == 0, taken.output
    assert load_index(out).name == "pipeline/transformer"
    wrong = runner.invoke(app, ["index", str(root), "--component", "unet"])
    assert wrong.exit_code == 2
    assert wrong.output == (
        f"Error: {root}: no component 'unet' (its components: text_encoder, transformer, vae); "
        "check --component\n"
    )


def test_a_component_of_a_cached_pipeline_repo_is_named_after_the_repo(tmp_path: Path) -> None:
    repo = _hub_repo(tmp_path / "hub", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    snapshot = repo / "snapshots" / "a1b2c3d4e5f6"
    for name in list(snapshot.iterdir()):
        name.unlink()
    (snapshot / "model_index.json").write_text("{}")
    (snapshot / "transformer").mkdir()
    write_tensors(
        snapshot / "transformer" / "diffusion_pytorch_model.safetensors",
        {"w": ("F32", trained_like(np.random.default_rng(2), 16, 16))},
    )
    refused = runner.invoke(app, ["index", str(repo)])
    assert refused.exit_code == 2 and "--component transformer" in refused.output
    out = tmp_path / "t.parquet"
    result = runner.invoke(app, ["index", str(repo), "--component", "transformer", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert load_index(out).name == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer"


def test_a_pipelines_model_index_json_names_the_pipeline(tmp_path: Path) -> None:
    root = tmp_path / "pipe"
    (root / "vae").mkdir(parents=True)
    write_tensors(
        root / "vae" / "diffusion_pytorch_model.safetensors", {"w": ("F32", np.ones((4, 4), np.float32))}
    )
    (root / "model_index.json").write_text("{}")
    result = runner.invoke(app, ["index", str(root / "model_index.json")])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {root}: a diffusers pipeline of 1 model (vae)")


def test_a_gguf_name_without_gguf_bytes_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"")
    result = runner.invoke(app, ["index", str(path)])
    assert result.exit_code == 2
    assert (
        result.output
        == f"Error: {path}: not a GGUF file (it does not start with GGUF's magic bytes); check the file\n"
    )


def test_a_lone_shard_is_indexed_with_a_note(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for i, name in enumerate(names):
        write_tensors(tmp_path / name, {f"w{i}": ("F32", trained_like(rng, 16, 16))})
    weight_map = {"w0": names[0], "w1": names[1]}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    summary = index_checkpoint(tmp_path / names[0], tmp_path / "one.parquet")
    assert summary.tensors == 1
    assert summary.warnings == (
        f"{tmp_path / names[0]}: shard 1 of 2 of the model model.safetensors.index.json lists; "
        f"this indexes that shard alone (for the whole model: weightidx index {tmp_path})",
    )


def test_dtypes_weightidx_does_not_decode_leave_the_rest_compared(tmp_path: Path) -> None:
    """U16/U32 (GPTQ's g_idx, perm), F8_E8M0 (MX scales), F4: indexed unsupported, compared
    without a crash, each named unmatched with its reason."""
    rng = np.random.default_rng(3)
    path = write_tensors(tmp_path / "odd.safetensors", {"w": ("F32", trained_like(rng, 64, 64))})
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
    for key, dtype, shape, nbytes in (
        ("g_idx", "U32", [64], 256),
        ("perm", "U16", [64], 128),
        ("scales", "F8_E8M0", [64, 2], 128),
        ("packed", "F4", [64, 64], 2048),
    ):
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
        data += bytes(nbytes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    twin = tmp_path / "twin.safetensors"
    twin.write_bytes(path.read_bytes())
    report = compare_paths(path, twin, cache=tmp_path / "cache")
    check_verdict(report)
    assert report["summary"]["matched_b_tensors"] == 1
    assert report["unmatched_reasons"]["b"] == {key: "dtype" for key in ("g_idx", "perm", "scales", "packed")}


def write_onnx(
    path: Path, tensors: dict, quantise: str | None = None, external: bool = False
) -> dict[str, str]:
    """MiniLM's tensors as ONNX initialisers with exporter-style names: each linear weight as a
    MatMul weight ([in, out], named ``onnx::MatMul_N``), the rest under their own names; with
    ``quantise``, the MatMul weights int8 behind ``DequantizeLinear`` (per output column) or
    ``Cast`` -> ``Mul`` (per tensor). Returns the ONNX name of each source key."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    initialisers, nodes, names = [], [], {}
    for number, (key, (dtype, values)) in enumerate(tensors.items()):
        values = np.asarray(values)
        if (
            dtype.startswith(("F", "BF"))
            and values.ndim == 2
            and key.endswith(".weight")
            and "embeddings" not in key
        ):
            name = f"onnx::MatMul_{1000 + number}"
            weight = np.ascontiguousarray(values.astype(np.float32).T)
            if quantise == "dequantize_linear":
                scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
                stored = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
                initialisers += [
                    numpy_helper.from_array(stored, name),
                    numpy_helper.from_array(scale, f"{name}_scale"),
                ]
                nodes.append(
                    helper.make_node("DequantizeLinear", [name, f"{name}_scale"], [f"{name}_dq"], axis=1)
                )
            elif quantise == "cast_mul":
                scale = np.array(np.abs(weight).max() / 127, dtype=np.float32)
                stored = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
                initialisers += [
                    numpy_helper.from_array(stored, name),
                    numpy_helper.from_array(scale, f"{name}_scale"),
                ]
                nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
                nodes.append(helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [f"{name}_dq"]))
            else:
                initialisers.append(numpy_helper.from_array(weight, name))
            names[key] = name
        else:
            initialisers.append(
                numpy_helper.from_array(values.astype(np.float32 if dtype != "I64" else np.int64), key)
            )
            names[key] = key
    graph = helper.make_graph(nodes, "minilm", [], [], initialisers)
    model = helper.make_model(graph)
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0
        )
    else:
        onnx.save_model(model, str(path))
    return names


@pytest.mark.real_model
@pytest.mark.parametrize(
    ("quantise", "external"), [(None, False), (None, True), ("dequantize_linear", False), ("cast_mul", False)]
)
def test_an_onnx_export_of_minilm_is_traced(
    minilm: Path, minilm_tensors: dict, tmp_path: Path, quantise: str | None, external: bool
) -> None:
    names = write_onnx(tmp_path / "model.onnx", minilm_tensors, quantise, external)
    report = compare_paths(minilm, tmp_path / "model.onnx", cache=tmp_path / "cache")
    check_verdict(report)
    summary = report["summary"]
    assert summary["scenario"] == "transformed", summary["verdict"]
    traced = {m["b"]["key"]: m["a"]["key"] for m in report["matches"] if m["verdict"] != "different"}
    expected = {names[k]: k for k in minilm_tensors if k != "embeddings.position_ids"}
    right = sum(traced.get(b) == a for b, a in expected.items())
    assert right >= 0.99 * len(expected), (right, len(expected))
    assert not report["unmatched"]["b"] or set(report["unmatched"]["b"]) <= {"embeddings.position_ids"}
    if quantise:
        assert summary["quantised"]["matrices"] == sum(
            name.startswith("onnx::MatMul") for name in names.values()
        )
        assert summary["quantised"]["types"] == [
            "int8-channel" if quantise == "dequantize_linear" else "int8-tensor"
        ]
        assert summary["changed_values"]["matrices"] == 0


def test_a_corrupt_onnx_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf" * 10)
    result = runner.invoke(app, ["index", str(path)], env={"WEIGHTIDX_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 2
    expected = f"Error: {path}: not an ONNX model onnx can read (DecodeError); the file is corrupt\n"
    assert result.output == expected


def test_the_bits_per_weight_table_is_ggmls() -> None:
    """``policy.GGUF_BITS_PER_WEIGHT`` (the error bound of each GGUF type) from ggml's block sizes."""
    for name, bits in policy.GGUF_BITS_PER_WEIGHT.items():
        values, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
        assert bits == size * 8 / values, name


def test_a_folder_with_a_precision_variant_indexes_the_main_file(tmp_path: Path) -> None:
    """diffusers and transformers keep ``<name>.fp16.safetensors`` beside ``<name>.safetensors``:
    the same weights again, left out with a note (not refused as a duplicate shard)."""
    folder = tmp_path / "pipe" / "transformer"
    folder.mkdir(parents=True)
    (folder.parent / "model_index.json").write_text("{}")
    weights = {"w": ("F32", trained_like(np.random.default_rng(3), 32, 32))}
    write_tensors(folder / "diffusion_pytorch_model.safetensors", weights)
    write_tensors(folder / "diffusion_pytorch_model.fp16.safetensors", {"w": ("F16", weights["w"][1])})
    out = tmp_path / "t.parquet"
    result = runner.invoke(app, ["index", str(folder.parent), "--component", "transformer", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "left out diffusion_pytorch_model.fp16.safetensors (the same weights in another precision)" in (
        result.output
    )
    assert [row["dtype"] for row in load_index(out).rows.values()] == ["F32"]
