"""Write the malformed-file corpus (run once; the files are checked in). Add a case per bug found.

Each case is a file and, in expected.json, the exit code and a fragment of the one-line error.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).parent


def header_file(header: object | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def f32(shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


CASES: dict[str, tuple[bytes, str]] = {
    "empty.safetensors": (b"", "is 0 bytes, too short for safetensors"),
    "seven_bytes.safetensors": (b"\x01" * 7, "is 7 bytes, too short for safetensors"),
    "header_longer_than_file.safetensors": (header_file({}, length=4096), "does not fit a"),
    "header_absurd.safetensors": (header_file({}, length=2**40), "header length 1099511627776 does not fit"),
    "header_not_utf8.safetensors": (header_file(b"\xff\xfe\xfd{}"), "header is not UTF-8"),
    "header_not_json.safetensors": (header_file(b"{this is not json}"), "header is not valid JSON"),
    "header_array.safetensors": (header_file([1, 2, 3]), "header is not a JSON object"),
    "header_string.safetensors": (header_file("hello"), "header is not a JSON object"),
    "header_nested_deep.safetensors": (header_file(b"[" * 5000 + b"]" * 5000), "nested too deeply"),
    "duplicate_keys.safetensors": (
        header_file(
            b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            bytes(4),
        ),
        "header lists tensor 'a' twice",
    ),
    "missing_field.safetensors": (
        header_file({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)),
        "tensor 'a' needs exactly dtype, shape and data_offsets",
    ),
    "extra_field.safetensors": (
        header_file({"a": {**f32([1], 0, 4), "x": 1}}, bytes(4)),
        "tensor 'a' needs exactly dtype, shape and data_offsets",
    ),
    "dtype_not_string.safetensors": (
        header_file({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        "tensor 'a' has a non-string dtype",
    ),
    "negative_dim.safetensors": (
        header_file({"a": f32([-1, 4], 0, 16)}, bytes(16)),
        "dims must be integers >= 0",
    ),
    "float_dim.safetensors": (header_file({"a": f32([2.5], 0, 10)}, bytes(10)), "dims must be integers >= 0"),
    "span_mismatch.safetensors": (
        header_file({"a": f32([3], 0, 16)}, bytes(16)),
        "spans 16 bytes but F32[3] needs 12",
    ),
    "offsets_out_of_range.safetensors": (
        header_file({"a": f32([4], 0, 16)}, bytes(8)),
        "outside the 8-byte data section",
    ),
    "offsets_reversed.safetensors": (
        header_file({"a": f32([1], 8, 4)}, bytes(8)),
        "outside the 8-byte data section",
    ),
    "offsets_bool.safetensors": (
        header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, 4]}}, bytes(4)),
        "outside the",
    ),
    "overlapping.safetensors": (
        header_file({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, bytes(12)),
        "tensors 'a' and 'b' overlap",
    ),
    "truncated_data.safetensors": (
        header_file({"a": f32([1024], 0, 4096)}, bytes(100)),
        "outside the 100-byte data section",
    ),
    "metadata_not_strings.safetensors": (
        header_file({"__metadata__": {"a": 1}}),
        "__metadata__ must map strings",
    ),
    "not_safetensors.safetensors": (b"PK\x03\x04 this is a zip file, not safetensors at all", "does not fit"),
}


def main() -> None:
    expected = {}
    for name, (content, message) in CASES.items():
        (HERE / name).write_bytes(content)
        expected[name] = {"exit_code": 2, "message": message}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
