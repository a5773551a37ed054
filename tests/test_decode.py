"""Every supported dtype decodes to the values a reference implementation gives."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.tensors import REFERENCE
from weightidx.io.safetensors import SUPPORTED_DTYPES, decode, encode


def every_bit_pattern(dtype: str) -> np.ndarray:
    """All 256 / 65536 patterns for narrow types (NaN and Inf included), random words for wide ones."""
    size = SUPPORTED_DTYPES[dtype]
    if dtype == "BOOL":
        return np.array([0, 1, 1, 0], dtype=np.uint8)
    if size <= 2:
        return np.arange(256**size, dtype=np.uint8 if size == 1 else np.uint16)
    return np.random.default_rng(0).integers(0, 2**63, 4096, dtype=np.int64).view(np.uint8)


def test_every_supported_dtype_has_a_reference() -> None:
    assert set(REFERENCE) == set(SUPPORTED_DTYPES)


@pytest.mark.parametrize("dtype", sorted(SUPPORTED_DTYPES))
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_decode_matches_reference_on_every_bit_pattern(dtype: str) -> None:
    raw = every_bit_pattern(dtype).tobytes()
    reference = np.frombuffer(raw, dtype=REFERENCE[dtype]).astype(np.float64)
    decoded = decode(raw, dtype).astype(np.float64)
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"])
def test_decode_into_a_scratch_buffer_gives_the_same_values(dtype: str) -> None:
    raw = every_bit_pattern(dtype).tobytes()
    out = np.empty(len(raw) // SUPPORTED_DTYPES[dtype], dtype=np.float32)
    np.testing.assert_array_equal(decode(raw, dtype, out=out), decode(raw, dtype))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F8_E4M3"])
def test_encode_rounds_to_nearest_and_decodes_back(dtype: str) -> None:
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    expected = values.astype(REFERENCE[dtype]).astype(np.float32)
    np.testing.assert_array_equal(decode(encode(values, dtype), dtype), expected)
