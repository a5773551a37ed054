"""Pure exact metrics between two tensors (or slices), accumulated chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from weightidx.dtypes import DTYPES
from weightidx.fingerprint.sketch import SCALE_LIMIT

CHUNK_VALUES = 1 << 20  # per side; float32 chunk sums stay accurate to ~1e-6


def chunk_rows(cols: int) -> int:
    """Rows per chunk when streaming a pair of views ``cols`` wide (the shape alone decides, so
    the per-chunk column centring of ``UnitSums`` is the same on every run)."""
    return max(1, CHUNK_VALUES // max(cols, 1))


def array_metrics(
    a: np.ndarray, b: np.ndarray, cast_to: str | None = None, same_dtype: bool = False
) -> PairMetrics:
    """The exact metrics of two aligned in-memory 2-D arrays (values decoded from tensors of
    the dtypes ``lower_precision`` and ``same_dtype`` describe), chunked as the compare stage
    streams them."""
    accumulator = PairAccumulator(cast_to, same_dtype)
    step = chunk_rows(a.shape[1])
    for start in range(0, a.shape[0], step):
        accumulator.add(a[start : start + step], b[start : start + step])
    return accumulator.finish()


#: The per-row and per-column sums are taken over the first chunk(s) of a pair, up to this many
#: values: rows chosen by position, not by their values, so the evidence stays valid, and a
#: quarter of a million values already carry far more than any threshold needs (z saturates
#: near 37). It keeps the sums from tripling the cost of verifying a large tensor.
UNIT_VALUES = 1 << 18


@dataclass
class UnitSums:
    """Per-row and per-column sums of the products of the two tensors, each double-centred.

    ``c_i = Σ_j ã_ij b̃_ij`` (rows) and ``c_j = Σ_i ã_ij b̃_ij`` (columns), with ``ã`` the values
    minus their row means and minus their column means. Rows come whole in each chunk, so row
    means are exact; column means are taken within each chunk of rows (whose size depends on
    the shape alone). Only the first ``UNIT_VALUES`` values count. ``significance.exact_evidence``
    turns them into self-normalised sums.
    """

    rows: list[np.ndarray] = field(default_factory=list)
    cols: np.ndarray | None = None
    values: int = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """One chunk of whole rows of both (2-D, the same shape); chunks after the first
        ``UNIT_VALUES`` values are passed over."""
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0 or self.values >= UNIT_VALUES:
            return
        rows = max(1, min(a.shape[0], -(-(UNIT_VALUES - self.values) // a.shape[1])))
        a, b = a[:rows], b[:rows]
        self.values += a.size
        products = _double_centred(a) * _double_centred(b)
        self.rows.append(products.sum(axis=1, dtype=np.float64))
        column_sums = products.sum(axis=0, dtype=np.float64)
        self.cols = column_sums if self.cols is None else self.cols + column_sums

    def rescale(self, factor: float) -> None:
        """Multiply the sums so far by ``factor`` (the values' scale changed)."""
        self.rows = [r * factor for r in self.rows]
        if self.cols is not None:
            self.cols = self.cols * factor

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-row and per-column sums (float64)."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0)
        return rows, (self.cols if self.cols is not None else np.zeros(0))


def _double_centred(values: np.ndarray) -> np.ndarray:
    """Row means, then column means, taken out; an axis of length 1 keeps its mean (a vector
    as one column would otherwise be all zeros)."""
    centred = values.astype(np.float32, copy=False)
    if not np.isfinite(centred.sum(dtype=np.float64)):  # NaN/Inf count as 0, as the sums leave them out
        centred = np.nan_to_num(centred, nan=0.0, posinf=0.0, neginf=0.0)
    if centred.shape[1] > 1:
        centred = centred - centred.mean(axis=1, keepdims=True)
    if centred.shape[0] > 1:
        centred = centred - centred.mean(axis=0, keepdims=True)
    return centred


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
    units: UnitSums = field(default_factory=UnitSums)
    exponent: int = 0  # the sums are of x·2⁻ᵉ (``_scaled``)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one aligned chunk: whole rows of both as 2-D arrays of one shape (any other shapes
        with the same number of values add to every metric but the per-row and per-column sums)."""
        two_d = a.ndim == 2 and a.shape == b.shape
        shape = a.shape
        a, b = np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()
        if a.dtype != b.dtype:
            wide = np.result_type(a.dtype, b.dtype)
            a, b = a.astype(wide), b.astype(wide)
        sum_a, sum_b = float(a.sum(dtype=np.float64)), float(b.sum(dtype=np.float64))
        if not math.isfinite(sum_a + sum_b):  # NaN/Inf are left out, as in the index
            finite = np.isfinite(a) & np.isfinite(b)
            two_d = two_d and bool(finite.all())
            a, b = a[finite], b[finite]
        if not a.size:
            return
        if self.same_dtype:
            self.equal_after_cast += int(np.count_nonzero(a == b))
        elif self.cast_to is not None:
            dtype = DTYPES[self.cast_to].numpy
            self.equal_after_cast += int(np.count_nonzero(a.astype(dtype) == b.astype(dtype)))
        sums = self._sums_of(a, b)
        if not np.all(np.isfinite(sums)):  # squares beyond float32: the values are huge
            sums = self._sums_of(*self._scaled(a, b, rescale=True))
        elif self.exponent:
            sums = self._sums_of(*self._scaled(a, b))
        a, b = self._scaled(a, b)
        if two_d:
            self.units.add(a.reshape(shape), b.reshape(shape))
        self.n += a.size
        self.sums += sums[:6]
        self.max_abs_diff = max(self.max_abs_diff, float(sums[6]))

    @staticmethod
    def _sums_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Σa, Σb, Σa², Σb², Σab, Σ(b−a)² and max |b−a| of one chunk."""
        with np.errstate(over="ignore", invalid="ignore"):
            diff = b - a
            return np.array(
                [
                    a.sum(dtype=np.float64),
                    b.sum(dtype=np.float64),
                    np.dot(a, a),
                    np.dot(b, b),
                    np.dot(a, b),
                    np.dot(diff, diff),
                    max(float(diff.max()), -float(diff.min())),
                ]
            )

    def _scaled(self, a: np.ndarray, b: np.ndarray, rescale: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Both sides as x·2⁻ᵉ once either held values whose squares overflow float32
        (``rescale``: this chunk does; e from its largest value), the sums so far brought to the
        same scale. Every metric but the largest difference is a ratio the common scale leaves
        unchanged."""
        exponent = self.exponent
        if rescale:
            largest = max(float(np.abs(a).max()), float(np.abs(b).max()))
            exponent = max(exponent, math.frexp(largest)[1] if largest > SCALE_LIMIT else 0)
        if exponent > self.exponent:
            factor = 2.0 ** (self.exponent - exponent)
            self.sums *= (factor, factor, factor**2, factor**2, factor**2, factor**2)
            self.max_abs_diff *= factor
            self.units.rescale(factor**2)
            self.exponent = exponent
        if not self.exponent:
            return a, b
        return (
            np.ldexp(a.astype(np.float64), -self.exponent).astype(a.dtype),
            np.ldexp(b.astype(np.float64), -self.exponent).astype(b.dtype),
        )

    def finish(self) -> PairMetrics:
        share = self.equal_after_cast / self.n if self.n and (self.cast_to or self.same_dtype) else None
        largest = math.ldexp(self.max_abs_diff, self.exponent)
        metrics = pair_metrics(self.n, *self.sums, largest, share)
        rows, cols = self.units.totals()
        return replace(metrics, row_sums=rows, col_sums=cols)


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
    row_sums: np.ndarray | None = None  # UnitSums.totals(), exact metrics only
    col_sums: np.ndarray | None = None

    @property
    def residual(self) -> float | None:
        """B's relative L2 distance from A once the least-squares scale is taken out,
        ``‖b − s·a‖ / ‖s·a‖ = √(1 − cos²) / |cos|`` (None without a cosine, or a zero one)."""
        if self.cosine is None or self.cosine == 0:
            return None
        return math.sqrt(max(0.0, 1 - self.cosine * self.cosine)) / abs(self.cosine)


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
) -> PairMetrics:
    """Cosine, Pearson correlation, ‖b−a‖/‖a‖ and least-squares scale from sums.

    The correlation measures how far B moved from A; it does not decide whether they are
    related (``significance.py`` does, on statistics whose null holds for trained weights)."""
    if n == 0:
        return PairMetrics(0, None, None, None, None, None, None)
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
    )
