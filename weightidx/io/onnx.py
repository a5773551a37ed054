"""ONNX models, read through the ``onnx`` package (the ``onnx`` extra), imported only here.

An ``.onnx`` file is converted once into a safetensors file in the cache (as GGUF and pickles
are), which is what gets indexed and compared:

- every initialiser becomes a tensor of the same name and shape (``onnx::MatMul_471`` and
  all), read one at a time, external data files included (``numpy_helper.to_array`` with the
  model's folder); a MatMul weight keeps ONNX's [in, out] layout: compare finds the transpose;
- weight-only quantisation is dequantised and named after the initialiser that holds the
  values: ``DequantizeLinear(x, scale, zero_point)`` with ``x`` an int8/uint8 initialiser
  (per tensor, or per axis with ``axis``: ONNX operator spec), and ``Mul(Cast(x), scale)``
  with an optional ``Sub`` of a zero point before the ``Mul``; the scale and zero-point
  initialisers are consumed;
- initialiser types safetensors has no name for (strings, complex) are left out and listed in
  the metadata (``weightidx_skipped``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from weightidx.config import CACHE_FIX
from weightidx.errors import CheckpointError, InputError
from weightidx.io.atomic import ensure_folder
from weightidx.io.converted import converted_path
from weightidx.io.gguf import CONVERTED_FROM_KEY, QUANTISATION_KEY
from weightidx.io.safetensors import TensorSpec, write_safetensors

SUFFIX = ".onnx"
_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("float64"): "F64",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("int16"): "I16",
    np.dtype("int32"): "I32",
    np.dtype("int64"): "I64",
    np.dtype("bool"): "BOOL",
}


def is_onnx(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.onnx`` (ONNX has no magic bytes)."""
    return path.is_file() and path.suffix.lower() == SUFFIX


def convert_onnx(path: Path | str, cache: Path | None = None) -> Path:
    """The initialisers of an ONNX model as a safetensors file in the cache (module doc).

    Raises:
        InputError: the ``onnx`` package is not installed.
        CheckpointError: ``onnx`` cannot parse the file, or an external data file is missing.
    """
    path = Path(path)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise InputError(
            f"{path}: reading ONNX needs the onnx package; pip install 'weightidx[onnx]'"
        ) from None
    target = converted_path(path, cache)
    if target.exists():
        return target
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, and others
        raise CheckpointError(
            path, f"not an ONNX model onnx can read ({type(exc).__name__})", "the file is corrupt"
        ) from None
    graph = model.graph
    initialisers = {t.name: t for t in graph.initializer}

    def values(name: str) -> np.ndarray:
        try:
            return numpy_helper.to_array(initialisers[name], base_dir=str(path.parent))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                path,
                f"initialiser '{name}' cannot be read ({exc})",
                "keep its external data files beside the model",
            ) from None

    quantised, consumed = _weight_only_quantisation(graph, initialisers, values)
    specs, skipped, schemes = [], [], {}
    for name, tensor in initialisers.items():
        if name in consumed:
            continue
        if name in quantised:
            scheme, dequantise = quantised[name]
            schemes[name] = scheme
            shape = tuple(int(d) for d in tensor.dims)
            specs.append(TensorSpec(name, "F32", shape, dequantise))
            continue
        dtype = (
            _DTYPES.get(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)))
            if tensor.data_type
            else None
        )
        if dtype is None:
            skipped.append(name)
            continue
        specs.append(TensorSpec(name, dtype, tuple(int(d) for d in tensor.dims), lambda n=name: values(n)))
    metadata = {
        CONVERTED_FROM_KEY: str(path.resolve()),
        "weightidx_format": "onnx",
        QUANTISATION_KEY: json.dumps(schemes, sort_keys=True),
        "weightidx_consumed": json.dumps(sorted(consumed)),
        "weightidx_skipped": json.dumps(sorted(skipped)),
    }
    ensure_folder(target.parent, "converted checkpoints", CACHE_FIX)
    write_safetensors(target, specs, metadata)
    return target


def _weight_only_quantisation(graph, initialisers: dict, values) -> tuple[dict, set[str]]:
    """{values initialiser: (scheme, produce dequantised)} and the scale/zero-point initialisers
    they consume, from DequantizeLinear nodes and Cast -> [Sub] -> Mul chains."""
    by_input: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    found: dict[str, tuple] = {}
    consumed: set[str] = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in initialisers:
            x, scale = node.input[0], node.input[1] if len(node.input) > 1 else ""
            zero = node.input[2] if len(node.input) > 2 else ""
            if scale not in initialisers:
                continue
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            found[x] = _dequantiser(
                initialisers[x], initialisers[scale], zero if zero in initialisers else "", axis, values
            )
            consumed |= {scale} | ({zero} if zero in initialisers else set())
        elif node.op_type == "Cast" and node.input and node.input[0] in initialisers:
            x, step = node.input[0], node.output[0]
            zero = ""
            following = by_input.get(step, [])
            if len(following) == 1 and following[0].op_type == "Sub":
                other = [n for n in following[0].input if n != step]
                if other and other[0] in initialisers:
                    zero, step = other[0], following[0].output[0]
                    following = by_input.get(step, [])
            if len(following) != 1 or following[0].op_type != "Mul":
                continue
            scale = next((n for n in following[0].input if n != step and n in initialisers), None)
            if scale is None:
                continue
            found[x] = _dequantiser(initialisers[x], initialisers[scale], zero, None, values)
            consumed |= {scale} | ({zero} if zero else set())
    return found, consumed - set(found)


def _dequantiser(x, scale, zero: str, axis: int | None, values) -> tuple:
    """(scheme, produce) for ``(x - zero) * scale`` (initialisers ``x`` and ``scale``), the scale
    one value or one per index along ``axis`` (default 1, as DequantizeLinear's; for a Mul the
    scale's own shape broadcasts)."""
    per_axis = int(np.prod(scale.dims)) > 1 if scale.dims else False
    stored = "uint8" if x.data_type == 2 else "int8"  # TensorProto.UINT8 = 2, INT8 = 3

    def produce() -> np.ndarray:
        quantised = values(x.name).astype(np.float32)
        factors = values(scale.name).astype(np.float32)
        offset = values(zero).astype(np.float32) if zero else np.float32(0)
        if per_axis and axis is not None:
            shape = [1] * quantised.ndim
            shape[axis % quantised.ndim] = factors.size
            factors = factors.reshape(shape)
            offset = offset.reshape(shape) if np.ndim(offset) else offset
        return ((quantised - offset) * factors).astype(np.float32)

    return f"{stored}-{'channel' if per_axis else 'tensor'}", produce
