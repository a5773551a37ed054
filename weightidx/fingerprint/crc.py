"""CRC-32 (zlib's) of a byte stream hashed in pieces, possibly out of order.

Each piece is hashed with ``zlib.crc32`` on its own (in a worker thread); the
pieces are then joined in stream order with ``combine``, the GF(2) algebra zlib
uses in ``crc32_combine``. The result equals ``zlib.crc32`` of the whole stream.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

try:
    from weightidx.fingerprint._fused import (
        crc32,  # the same function, folded with PCLMUL: about 7x zlib 1.2's speed
    )
except ImportError:
    crc32 = zlib.crc32

_POLY = 0xEDB88320


def _multiply(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected), as in zlib's multmodp."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X2N = _powers()


@lru_cache(maxsize=256)
def _shift(length: int) -> int:
    """x^(8 * length) modulo the polynomial: moves a CRC past ``length`` bytes."""
    power, n, k = 1 << 31, length, 3
    while n:
        if n & 1:
            power = _multiply(_X2N[k & 31], power)
        n >>= 1
        k += 1
    return power


def combine(crc_first: int, crc_second: int, length_second: int) -> int:
    """CRC-32 of ``first + second`` from the CRCs of each and the length of ``second``."""
    return _multiply(_shift(length_second), crc_first) ^ crc_second
