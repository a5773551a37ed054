"""The one table of the tensor dtypes weightidx decodes, by their safetensors names.

Each entry gives the bytes per element, the numpy dtype that holds the stored bytes
(``ml_dtypes`` for bfloat16 and the fp8 formats), the mantissa bits of float types (for
"equal after casting to the lower precision"), the torch dtype name a pickle reports, and
the compiled index kernel's code for the dtypes it decodes itself. Any other dtype
(F8_E8M0, F4, U16, C64, ...) is recorded as unsupported, never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    """One safetensors dtype. ``numpy``: how its bytes are viewed; ``mantissa``: bits of a
    float's mantissa (None for integers and bool); ``torch``: the name torch gives it;
    ``kernel``: the fused kernel's dtype code (None where numpy decodes)."""

    name: str
    itemsize: int
    numpy: np.dtype
    mantissa: int | None
    torch: str
    kernel: int | None = None


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("F64", 8, np.dtype("<f8"), 52, "float64"),
        DType("F32", 4, np.dtype("<f4"), 23, "float32", 0),
        DType("F16", 2, np.dtype("<f2"), 10, "float16", 2),
        DType("BF16", 2, np.dtype(ml_dtypes.bfloat16), 7, "bfloat16", 1),
        DType("F8_E4M3", 1, np.dtype(ml_dtypes.float8_e4m3fn), 3, "float8_e4m3fn"),
        DType("F8_E5M2", 1, np.dtype(ml_dtypes.float8_e5m2), 2, "float8_e5m2"),
        DType("I64", 8, np.dtype("<i8"), None, "int64"),
        DType("I32", 4, np.dtype("<i4"), None, "int32"),
        DType("I16", 2, np.dtype("<i2"), None, "int16"),
        DType("I8", 1, np.dtype("i1"), None, "int8"),
        DType("U8", 1, np.dtype("u1"), None, "uint8"),
        DType("BOOL", 1, np.dtype("?"), None, "bool"),
    )
}

#: Safetensors dtype name -> bytes per element, for every dtype weightidx decodes.
SUPPORTED_DTYPES: dict[str, int] = {name: d.itemsize for name, d in DTYPES.items()}

#: Every dtype name the safetensors format defines (``safetensors/src/tensor.rs``, ``Dtype``);
#: those missing from ``DTYPES`` are indexed without a fingerprint (sub-byte floats, unsigned
#: words, complex numbers, MX scales). A name outside this set is not safetensors at all.
SAFETENSORS_DTYPES = frozenset(
    {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
     "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"}
)  # fmt: skip

#: torch's dtype names (as a pickle reports them) -> safetensors names.
FROM_TORCH: dict[str, str] = {d.torch: name for name, d in DTYPES.items()}


def lower_precision(dtype_a: str, dtype_b: str) -> str | None:
    """The float dtype with fewer mantissa bits, or None when either is an integer or bool."""
    a, b = DTYPES.get(dtype_a), DTYPES.get(dtype_b)
    if a is None or b is None or a.mantissa is None or b.mantissa is None:
        return None
    return a.name if a.mantissa <= b.mantissa else b.name
