"""Pure exact metrics between two tensors (or slices), accumulated chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

#: For "equal after casting to the lower precision": mantissa bits of each float dtype.
_MANTISSA = {"F8_E5M2": 2, "F8_E4M3": 3, "BF16": 7, "F16": 10, "F32": 23, "F64": 52}
_CAST = {
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}


def lower_precision(dtype_a: str, dtype_b: str) -> str | None:
    """The dtype with fewer mantissa bits, or None for integer / bool tensors."""
    if dtype_a not in _MANTISSA or dtype_b not in _MANTISSA:
        return None
    return min(dtype_a, dtype_b, key=lambda d: _MANTISSA[d])


@dataclass
class PairAccumulator:
    """Running sums over aligned chunks of a and b, for the metrics of one pair.

    Each chunk is reduced with BLAS dot products in the chunk's own precision (float32
    for every dtype up to F32) and the chunk sums are added up in float64.
    """

    cast_to: str | None
    same_dtype: bool = False
    n: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(6))  # Σa Σb Σa² Σb² Σab Σ(b-a)²
    max_abs_diff: float = 0.0
    equal_after_cast: int = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one aligned chunk (any shapes with the same number of values)."""
        a, b = np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()
        if a.dtype != b.dtype:
            wide = np.result_type(a.dtype, b.dtype)
            a, b = a.astype(wide), b.astype(wide)
        sum_a, sum_b = float(a.sum(dtype=np.float64)), float(b.sum(dtype=np.float64))
        if not math.isfinite(sum_a + sum_b):  # NaN/Inf are left out, as in the index
            finite = np.isfinite(a) & np.isfinite(b)
            a, b = a[finite], b[finite]
            sum_a, sum_b = float(a.sum(dtype=np.float64)), float(b.sum(dtype=np.float64))
        if not a.size:
            return
        diff = b - a
        self.n += a.size
        self.sums += (sum_a, sum_b, np.dot(a, a), np.dot(b, b), np.dot(a, b), np.dot(diff, diff))
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()), -float(diff.min()))
        if self.same_dtype:
            self.equal_after_cast += int(np.count_nonzero(a == b))
        elif self.cast_to is not None:
            dtype = _CAST[self.cast_to]
            self.equal_after_cast += int(np.count_nonzero(a.astype(dtype) == b.astype(dtype)))

    def finish(self) -> PairMetrics:
        share = self.equal_after_cast / self.n if self.n and (self.cast_to or self.same_dtype) else None
        return pair_metrics(self.n, *self.sums, self.max_abs_diff, share)


@dataclass(frozen=True)
class PairMetrics:
    """Exact (or sample-estimated) similarity of two aligned tensors."""

    n: int
    cosine: float | None
    correlation: float | None
    relative_l2: float | None
    scale: float | None
    max_abs_diff: float | None
    equal_after_cast: float | None
    z_score: float | None


def pair_metrics(
    n: int,
    sa: float,
    sb: float,
    saa: float,
    sbb: float,
    sab: float,
    sdd: float,
    max_abs_diff: float | None,
    equal_after_cast: float | None,
    effective_n: int | None = None,
) -> PairMetrics:
    """Cosine, Pearson correlation, ‖b−a‖/‖a‖, least-squares scale and a z-score from sums."""
    if n == 0:
        return PairMetrics(0, None, None, None, None, None, None, None)
    cosine = sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else None
    var_a, var_b = saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
    cov = sab / n - (sa / n) * (sb / n)
    correlation = cov / math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else None
    if correlation is not None:
        correlation = max(-1.0, min(1.0, correlation))
    return PairMetrics(
        n=n,
        cosine=None if cosine is None else max(-1.0, min(1.0, cosine)),
        correlation=correlation,
        relative_l2=math.sqrt(max(sdd, 0.0) / saa) if saa > 0 else None,
        scale=sab / saa if saa > 0 else None,
        max_abs_diff=max_abs_diff,
        equal_after_cast=equal_after_cast,
        z_score=z_score(correlation, effective_n or n),
    )


def z_score(correlation: float | None, n: int) -> float | None:
    """Fisher z of a correlation against the null of unrelated tensors with n values."""
    if correlation is None or n < 4:
        return None
    clipped = max(-0.999999999999, min(0.999999999999, correlation))
    return math.atanh(clipped) * math.sqrt(n - 3)
