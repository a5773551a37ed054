"""Finding shards and validating safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tensors import raw_file
from weightidx.errors import CheckpointError, InputError
from weightidx.io.safetensors import open_checkpoint

ONE = {"w": ("F32", np.ones((4, 4), dtype=np.float32))}


def test_single_file_lists_tensors_in_offset_order(write) -> None:
    path = write("m.safetensors", {"b": ("F32", np.zeros(3, np.float32)), "a": ("BF16", np.zeros((2, 2)))})
    checkpoint = open_checkpoint(path)
    assert [t.key for t in checkpoint.tensors] == ["b", "a"]
    assert [t.nbytes for t in checkpoint.tensors] == [12, 8]
    assert checkpoint.tensors[0].shard == "m.safetensors"


def test_folder_without_index_json_reads_every_shard_in_sorted_order(tmp_path: Path, write) -> None:
    write("model-00002-of-00002.safetensors", {"y": ONE["w"]})
    write("model-00001-of-00002.safetensors", {"x": ONE["w"]})
    checkpoint = open_checkpoint(tmp_path)
    assert [(t.key, t.shard) for t in checkpoint.tensors] == [
        ("x", "model-00001-of-00002.safetensors"),
        ("y", "model-00002-of-00002.safetensors"),
    ]
    assert checkpoint.default_name() == tmp_path.name


@pytest.mark.parametrize(
    "index_name", ["model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"]
)
def test_folder_with_index_json_uses_its_weight_map(tmp_path: Path, write, index_name: str) -> None:
    write("s1.safetensors", {"x": ONE["w"]})
    write("s2.safetensors", {"y": ONE["w"]})
    write("stray.safetensors", {"z": ONE["w"]})  # not in the weight map: ignored
    (tmp_path / index_name).write_text(
        json.dumps({"weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}})
    )
    for source in (tmp_path, tmp_path / index_name):
        assert [t.key for t in open_checkpoint(source).tensors] == ["x", "y"]


def test_index_json_naming_a_missing_shard_is_refused(tmp_path: Path, write) -> None:
    write("s1.safetensors", {"x": ONE["w"]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "s1.safetensors", "y": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"names shard 'gone.safetensors', which does not exist"):
        open_checkpoint(index)


def test_index_json_placing_a_tensor_in_the_wrong_shard_is_refused(tmp_path: Path, write) -> None:
    write("s1.safetensors", {"x": ONE["w"]})
    write("s2.safetensors", {"y": ONE["w"]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "s2.safetensors", "y": "s2.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"puts 'x' in s2.safetensors but that shard does not hold it"):
        open_checkpoint(index)


def test_same_tensor_in_two_shards_is_refused(tmp_path: Path, write) -> None:
    write("a.safetensors", {"x": ONE["w"]})
    write("b.safetensors", {"x": ONE["w"]})
    with pytest.raises(CheckpointError, match=r"tensor 'x' is also in shard a.safetensors"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "is 0 bytes, too short for safetensors"),
        (lambda p: p.write_bytes(b"1234567"), "is 7 bytes, too short for safetensors"),
        (lambda p: p.write_bytes(struct.pack("<Q", 10**6) + b"{}"), "header length 1000000 does not fit"),
        (lambda p: raw_file(p, None, header_bytes=b"\xff\xfe{}"), "header is not UTF-8"),
        (lambda p: raw_file(p, None, header_bytes=b"{not json"), "header is not valid JSON"),
        (lambda p: raw_file(p, [1, 2]), "header is not a JSON object"),
        (
            lambda p: raw_file(
                p,
                None,
                header_bytes=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
                b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                data=bytes(8),
            ),
            "header lists tensor 'a' twice",
        ),
        (
            lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [1]}}),
            "tensor 'a' needs exactly dtype, shape and data_offsets",
        ),
        (
            lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
            "tensor 'a' has shape [-1]; dims must be integers >= 0",
        ),
        (
            lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
            "tensor 'a' has data_offsets [0, 16] outside the 8-byte data section",
        ),
        (
            lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16)),
            "tensor 'a' spans 16 bytes but F32[3] needs 12",
        ),
        (
            lambda p: raw_file(
                p,
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                bytes(12),
            ),
            "tensors 'a' and 'b' overlap",
        ),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(CheckpointError, match=f"^{path}: ") as caught:
        open_checkpoint(path)
    assert message in str(caught.value)


def test_missing_path_and_empty_folder_and_pickles_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or directory"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match=r"no \*\.safetensors files in this folder"):
        open_checkpoint(tmp_path)
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(
        InputError, match=r"pickle checkpoints are not read .loading them can run code.; convert"
    ):
        open_checkpoint(pickle)


def test_unknown_dtype_is_kept_as_an_unsupported_tensor(tmp_path: Path) -> None:
    path = raw_file(
        tmp_path / "m.safetensors",
        {"a": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}},
        bytes(4),
    )
    (tensor,) = open_checkpoint(path).tensors
    assert (tensor.dtype, tensor.supported) == ("F8_E8M0", False)
