"""Safetensors checkpoints: find shards, parse and validate headers, read byte ranges.

Nothing here loads a whole checkpoint: headers are parsed on their own and tensor
bytes are read on demand with ``os.pread`` into caller-owned buffers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from weightidx.dtypes import DTYPES, SUPPORTED_DTYPES
from weightidx.errors import CheckpointError, InputError
from weightidx.io.atomic import atomic_path

#: Headers above this size are refused: real ones are a few MB even for 1,000s of tensors.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_LUT_E4M3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
_LUT_E5M2 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e5m2).astype(np.float32)

_INDEX_JSON_SUFFIX = ".safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard and its absolute byte range in that file."""

    key: str
    shard: str  # path relative to the checkpoint root, as recorded in the index
    path: Path  # absolute path of the shard file
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int  # absolute file offset one past the last byte

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def supported(self) -> bool:
        return self.dtype in SUPPORTED_DTYPES


@dataclass(frozen=True)
class ShardInfo:
    """One safetensors file: identity fields recorded so stale indexes can be detected."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    header_sha256: str
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint: its shards and every tensor, in file order."""

    source: Path
    root: Path
    shards: tuple[ShardInfo, ...]
    tensors: tuple[TensorInfo, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def default_name(self) -> str:
        """A model name for reports: the file stem, or the folder for generic names."""
        generic = {"model", "diffusion_pytorch_model", "pytorch_model", "adapter_model"}
        if self.source.is_dir():
            return self.source.resolve().name
        stem = self.source.name.split(".safetensors")[0]
        if stem in generic or self.source.name.endswith(_INDEX_JSON_SUFFIX):
            return self.source.resolve().parent.name
        return stem


def open_checkpoint(path: Path | str) -> Checkpoint:
    """Resolve ``path`` (file, shard folder or ``*.safetensors.index.json``) and parse every header.

    Args:
        path: a ``.safetensors`` file, a directory of shards, or a shard index json.

    Returns:
        A ``Checkpoint`` listing shards and tensors, sorted by shard then offset.

    Raises:
        InputError: the path is missing or is not a safetensors checkpoint.
        CheckpointError: a header or the shard index is malformed.
    """
    source = Path(path)
    if source.is_symlink() and not source.exists():
        raise InputError(
            f"{source}: is a symbolic link that leads nowhere (dangling, or a loop); check the link"
        )
    if not source.exists():
        raise InputError(f"{source}: no such file or directory; check the path")
    shard_paths, weight_map = _resolve_shards(source)
    root = source if source.is_dir() else source.parent
    shards: list[ShardInfo] = []
    tensors: list[TensorInfo] = []
    seen: dict[str, str] = {}
    for shard_path in shard_paths:
        name = os.path.relpath(shard_path, root)
        info, shard_tensors = read_header(shard_path, name)
        shards.append(info)
        for tensor in shard_tensors:
            if tensor.key in seen:
                raise CheckpointError(
                    shard_path,
                    f"tensor '{tensor.key}' is also in shard {seen[tensor.key]}",
                    "remove the duplicate shard",
                )
            seen[tensor.key] = name
            tensors.append(tensor)
    if weight_map is not None:
        _check_weight_map(source, weight_map, seen, root)
    return Checkpoint(source=source, root=root, shards=tuple(shards), tensors=tuple(tensors))


def _resolve_shards(source: Path) -> tuple[list[Path], dict[str, str] | None]:
    if source.is_dir():
        indexes = sorted(source.glob("*" + _INDEX_JSON_SUFFIX))
        if len(indexes) > 1:
            names = ", ".join(p.name for p in indexes)
            raise InputError(f"{source}: several shard indexes ({names}); pass the one to use")
        if indexes:
            return _shards_from_index(indexes[0])
        variants = set(variant_files(source))
        files = sorted(p for p in source.glob("*.safetensors") if p.is_file() and p not in variants)
        if not files:
            raise InputError(
                f"{source}: no *.safetensors files in this folder; "
                "point at a .safetensors file or a folder of shards"
            )
        return files, None
    if source.name.endswith(".json"):
        return _shards_from_index(source)
    if not source.is_file():
        raise InputError(
            f"{source}: not a regular file (a device, socket or pipe?); pass a .safetensors file"
        )
    if is_pickle(source):
        raise InputError(
            f"{source}: pickle checkpoints are not read (loading them can run code); "
            "convert it to .safetensors first, or pass --allow-pickle to load it with torch's "
            "weights_only loader"
        )
    return [source], None


_VARIANT = re.compile(r"^(?P<stem>[^.]+)\.(?P<variant>[A-Za-z0-9_]+)\.safetensors$")


def variant_files(folder: Path) -> list[Path]:
    """Files of a folder that are another precision of one beside them, as diffusers and
    transformers name them (``<stem>.fp16.safetensors`` beside ``<stem>.safetensors``,
    ``_add_variant`` in their ``utils``): the same weights again, not more of them."""
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        match = _VARIANT.match(path.name)
        if match and (folder / f"{match['stem']}.safetensors").is_file():
            found.append(path)
    return found


def header_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's length prefix and header, as recorded in an index."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        return hashlib.sha256(prefix + handle.read(min(length, MAX_HEADER_BYTES))).hexdigest()


def is_pickle(path: Path) -> bool:
    """Whether the file name says pickle (PyTorch .bin / .pt / .pth / .ckpt / .pkl)."""
    return path.name.endswith(_PICKLE_SUFFIXES)


def _shards_from_index(index_path: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        document = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(index_path, f"not a readable shard index ({exc})") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            index_path, "has no 'weight_map' of tensor name -> shard file", "pass a shard file"
        )
    shard_names = sorted(set(weight_map.values()))
    shards = []
    for name in shard_names:
        try:
            shard = (index_path.parent / name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            shard = index_path.parent / name
        if not shard.is_file():
            raise CheckpointError(
                index_path, f"names shard '{name}', which does not exist", "restore the shard"
            )
        shards.append(shard)
    return shards, weight_map


def _check_weight_map(source: Path, weight_map: dict[str, str], seen: dict[str, str], root: Path) -> None:
    for key, shard_name in weight_map.items():
        where = seen.get(key)
        expected = os.path.relpath((root / shard_name).resolve(), root.resolve())
        if where is None or os.path.normpath(where) != os.path.normpath(expected):
            raise CheckpointError(
                source,
                f"weight_map puts '{key}' in {shard_name} but that shard does not hold it",
                "regenerate the shard index",
            )


def read_header(path: Path, name: str) -> tuple[ShardInfo, list[TensorInfo]]:
    """Parse and validate one safetensors header; returns the shard and its tensors in offset order."""
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, f"is {len(prefix)} bytes, too short for safetensors")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len > stat.st_size - 8:
                raise CheckpointError(
                    path,
                    f"header length {header_len} does not fit a {stat.st_size}-byte file",
                    "the file is truncated or not safetensors",
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    header = _decode_header(path, raw)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_size = stat.st_size - data_start
    tensors = [_tensor_info(path, name, key, entry, data_start, data_size) for key, entry in header.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    _check_no_overlap(path, tensors)
    shard = ShardInfo(
        name=name,
        path=path.resolve(),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        header_sha256=hashlib.sha256(prefix + raw).hexdigest(),
        metadata=metadata,
    )
    return shard, tensors


def _decode_header(path: Path, raw: bytes) -> dict:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        result: dict = {}
        for key, value in pairs:
            if key in result:
                raise CheckpointError(path, f"header lists tensor '{key}' twice")
            result[key] = value
        return result

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise CheckpointError(path, "header is not UTF-8", "the file is not safetensors") from None
    except RecursionError:
        raise CheckpointError(
            path, "header JSON is nested too deeply", "the file is not safetensors"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            path, f"header is not valid JSON ({exc.msg})", "the file is corrupt or not safetensors"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object", "the file is not safetensors")
    return header


def _tensor_info(
    path: Path, shard: str, key: str, entry: object, data_start: int, data_size: int
) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(path, f"tensor '{key}' needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise CheckpointError(path, f"tensor '{key}' has a non-string dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(path, f"tensor '{key}' has shape {shape!r}; dims must be integers >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(
            path,
            f"tensor '{key}' has data_offsets {offsets!r} outside the {data_size}-byte data section",
            "the file is truncated or corrupt",
        )
    itemsize = SUPPORTED_DTYPES.get(dtype)
    if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise CheckpointError(
            path,
            f"tensor '{key}' spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs "
            f"{math.prod(shape) * itemsize}",
            "the file is corrupt",
        )
    return TensorInfo(
        key=key,
        shard=shard,
        path=path.resolve(),
        dtype=dtype,
        shape=tuple(shape),
        begin=data_start + offsets[0],
        end=data_start + offsets[1],
    )


def _check_no_overlap(path: Path, tensors: list[TensorInfo]) -> None:
    for before, after in itertools.pairwise(tensors):
        if after.begin < before.end:
            raise CheckpointError(
                path, f"tensors '{before.key}' and '{after.key}' overlap", "the file is corrupt"
            )


class ShardReader:
    """Positional reads from the shard files of one checkpoint; safe to share across threads."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._opening = threading.Lock()  # two threads opening one shard would leak a descriptor

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        with self._opening:
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    raise InputError(f"{path}: cannot open ({exc.strerror})") from None
                self._fds[path] = fd
        return fd

    def read_into(self, path: Path, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``offset``; a short read means the file shrank."""
        fd = self._fd(path)
        done = 0
        while done < len(out):
            got = os.preadv(fd, [out[done:]], offset + done)
            if got == 0:
                raise CheckpointError(path, f"ends before byte {offset + len(out)}", "the file was truncated")
            done += got

    def read(self, path: Path, offset: int, length: int) -> bytearray:
        buffer = bytearray(length)
        self.read_into(path, offset, memoryview(buffer))
        return buffer


def decode(
    raw: memoryview | bytes | bytearray | np.ndarray, dtype: str, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode little-endian safetensors bytes to float32 (float64 for F64, I64, I32, whose
    values float32 cannot hold exactly).

    Args:
        raw: the tensor's bytes (or a piece of them).
        dtype: the safetensors dtype name.
        out: optional float32 array of the right length to decode into (ignored for
            F32 and F64, which are returned as views of ``raw``).
    """
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4")
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8")
    if dtype in ("I64", "I32"):
        return np.frombuffer(raw, dtype="<i8" if dtype == "I64" else "<i4").astype(np.float64)
    if dtype == "BF16":
        half = np.frombuffer(raw, dtype="<u2")
        wide = out.view(np.uint32) if out is not None else np.empty(half.size, dtype=np.uint32)
        np.left_shift(half, 16, out=wide, dtype=np.uint32)
        return wide.view(np.float32)
    if out is None:
        out = np.empty(len(raw) // SUPPORTED_DTYPES[dtype], dtype=np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        table = _LUT_E4M3 if dtype == "F8_E4M3" else _LUT_E5M2
        return np.take(table, np.frombuffer(raw, dtype=np.uint8), out=out)
    if dtype == "BOOL":
        np.copyto(out, np.frombuffer(raw, dtype=np.uint8) != 0)
        return out
    code = {"F16": "<f2", "I16": "<i2", "I8": "i1", "U8": "u1"}.get(dtype)
    if code is None:
        raise ValueError(f"dtype {dtype} has no decoder")
    np.copyto(out, np.frombuffer(raw, dtype=code))
    return out


def encode(values: np.ndarray, dtype: str) -> bytes:
    """Cast ``values`` to a safetensors dtype (round to nearest) and return its bytes."""
    return np.ascontiguousarray(values).astype(DTYPES[dtype].numpy).tobytes()


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its bytes are produced only when it is its turn.

    ``produce`` returns the values as one array of ``shape``, or as an iterable of blocks of
    rows (arrays whose concatenation along the first axis is the tensor), so that a tensor
    larger than memory can be written. ``nbytes`` is needed only for a ``dtype`` weightidx does
    not decode (the blocks are then raw bytes, written as they are).
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray | Iterable[np.ndarray]]
    nbytes: int | None = None

    @property
    def size(self) -> int:
        """Bytes in the file."""
        if self.nbytes is not None:
            return self.nbytes
        return math.prod(self.shape) * SUPPORTED_DTYPES[self.dtype]


def write_safetensors(
    path: Path | str, specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file one tensor at a time, atomically (temp file + rename).

    Memory holds one tensor at a time, so generated checkpoints can exceed RAM.

    Raises:
        ValueError: two specs share a key (the header could name only one of them).
    """
    path = Path(path)
    keys = [spec.key for spec in specs]
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"{path}: tensor key(s) written twice: {', '.join(twice[:3])}")
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for spec in specs:
        nbytes = spec.size
        header[spec.key] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for spec in specs:
            produced = spec.produce()
            if isinstance(produced, np.ndarray) and produced.shape != spec.shape:
                raise ValueError(f"{spec.key}: produced {produced.shape}, declared {spec.shape}")
            written = 0
            for block in [produced] if isinstance(produced, np.ndarray) else produced:
                raw = encode(block, spec.dtype) if spec.nbytes is None else np.asarray(block).tobytes()
                handle.write(raw)
                written += len(raw)
            if written != spec.size:
                raise ValueError(f"{spec.key}: produced {written} bytes, declared {spec.size}")
