"""Is a pair of tensors related? Evidence against a calibrated null, and error control over a comparison.

A pair's evidence is a correlation over ``n`` values that are close to independent under the
null of unrelated tensors: the index sketches (block sums of random projections) or the
index samples (a strided lattice of single values). Its p-value comes from the exact null
of a correlation over ``n`` independent pairs (Student's t with ``n - 2`` degrees of freedom),
turned into a normal-equivalent z and divided by ``policy.NULL_INFLATION``, the widest spread
measured on nulls with the structure of trained weights (``benchmarks/calibrate_null.py``).

The exact correlation over every value (``metrics.py``) is *not* used to decide: trained
matrices that share an interface axis (token rows, positions) give unrelated pairs a
correlation whose spread is many times ``1/sqrt(values)`` (measured: z = 10.5 for the word
embeddings of all-MiniLM-L6-v2 against a copy with its hidden axis permuted). It measures the
degree once a pair is known to be related.

Over a whole comparison the false discovery rate is controlled with the Benjamini-Hochberg
procedure (Benjamini & Hochberg 1995, J. R. Stat. Soc. B 57:289), counting every pair and
every slice offset tested. With no related pair at all (a twin), this is the family-wise error
rate: the chance of one false claim in the comparison is at most ``policy.FALSE_DISCOVERY_RATE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from weightidx import policy

_NORMAL = NormalDist()
_EXACT_FROM = 3.0  # below this Fisher z the t null and Fisher's approximation agree to < 1 %
_NEAR_ONE = 1 - 1e-12
_MAX_Z = 37.5  # the normal tail underflows double precision beyond this
_TINY_P = 1e-300


@dataclass(frozen=True)
class Evidence:
    """One statistic a pair was judged on.

    ``statistic``: ``"sketch"`` (index sketches), ``"sample"`` (index samples, Spearman's rank
    correlation), ``"sketch+sample"`` (the two combined), ``"values"`` (self-normalised row and
    column sums of the checkpoint values), ``"sketch blocks"`` (sketch blocks matched unit by
    unit, Fisher-combined: ``block_gather``) or ``"equal bytes"``. ``correlation``: the
    statistic's own correlation; ``values``: how many near-independent values (or rows and
    columns) it covers; ``null_spread``: the spread of that correlation among unrelated pairs,
    where it has one; ``z``: normal-equivalent, after the
    null's inflation; ``p_value``: two-sided, before the comparison-wide correction.
    """

    statistic: str
    correlation: float
    values: int
    z: float
    p_value: float
    null_spread: float | None = None

    def as_json(self) -> dict:
        return {
            "statistic": self.statistic,
            "correlation": round(self.correlation, 6),
            "values": self.values,
            "null_spread": None if self.null_spread is None else round(self.null_spread, 6),
            "z": round(self.z, 3),
            "p_value": float(f"{self.p_value:.4g}"),
        }


EQUAL_BYTES = Evidence("equal bytes", 1.0, 0, 37.5, 0.0)


def correlation_p_value(r: float, n: int) -> float:
    """Two-sided p-value of a correlation ``r`` over ``n`` independent pairs under no correlation.

    The exact null: ``t = r·sqrt((n-2)/(1-r²))`` has Student's t distribution with ``n - 2``
    degrees of freedom (Fisher 1915). Raises ``ValueError`` for ``n < 4``.
    """
    if n < 4:
        raise ValueError(f"a correlation over {n} values has no usable null")
    r2 = min(r * r, 1.0)
    if r2 >= 1.0:
        return 0.0
    df = n - 2
    # P(|T| > t) = I_x(df/2, 1/2) with x = df / (df + t²) = 1 - r²
    return _incomplete_beta(df / 2, 0.5, 1.0 - r2)


def z_from_p(p: float) -> float:
    """The normal-equivalent z of a two-sided p-value (capped where doubles underflow)."""
    if p <= _TINY_P:  # p / 2 may underflow to zero
        return _MAX_Z
    if p >= 1.0:
        return 0.0
    return min(_MAX_Z, -_NORMAL.inv_cdf(p / 2))


def p_from_z(z: float) -> float:
    """Two-sided normal tail of ``z``."""
    return math.erfc(abs(z) / math.sqrt(2))


def evidence(
    statistic: str, r: float | None, n: int, inflation: float = policy.NULL_INFLATION
) -> Evidence | None:
    """The evidence of a correlation ``r`` over ``n`` near-independent values, or None when it
    cannot be judged (fewer than ``policy.MIN_EVIDENCE_VALUES`` values, or r undefined).
    ``inflation``: how much wider than nominal the null is taken to be (1 for the raw test, as
    the calibration measures it)."""
    if r is None or not math.isfinite(r) or n < policy.MIN_EVIDENCE_VALUES:
        return None
    fisher = math.atanh(max(-_NEAR_ONE, min(_NEAR_ONE, r))) * math.sqrt(n - 3)
    if abs(fisher) < _EXACT_FROM:  # far from any threshold: Fisher's z is as good and far cheaper
        z = abs(fisher) / inflation
    else:
        z = z_from_p(correlation_p_value(r, n)) / inflation
    return Evidence(statistic, float(r), int(n), z, p_from_z(z), inflation / math.sqrt(n - 3))


def combined(sketched: Evidence | None, sampled: Evidence | None) -> Evidence | None:
    """The sketch's and the samples' evidence as one: Stouffer's z weighted by ``sqrt(values)``
    (Stouffer et al. 1949; the weights that are optimal when both estimate one correlation).
    The two are nearly independent under the null: the samples are single values, the sketch
    sums over all of them with random signs. Where one is missing, the other."""
    if sketched is None or sampled is None:
        return sketched or sampled
    total = sketched.values + sampled.values
    signed = [math.copysign(e.z, e.correlation) * math.sqrt(e.values) for e in (sketched, sampled)]
    z = sum(signed) / math.sqrt(total)
    correlation = (sketched.values * sketched.correlation + sampled.values * sampled.correlation) / total
    spread = None
    if sketched.null_spread is not None:  # the same inflation, over the values of both
        spread = sketched.null_spread * math.sqrt((sketched.values - 3) / total)
    return Evidence("sketch+sample", correlation, total, abs(z), p_from_z(z), spread)


_MIN_UNITS = 8


def exact_evidence(
    row_sums: np.ndarray | None, col_sums: np.ndarray | None, correlation: float | None
) -> Evidence | None:
    """Evidence from the checkpoint values: the self-normalised sums ``Σc / sqrt(Σc²)`` of the
    per-row and per-column products (``metrics.UnitSums``), the weaker of the two.

    Under the null each sum is of terms symmetric about zero, whatever their sizes, so
    ``P(|S| >= z) <= 2 exp(-z²/2)`` (Efron 1969, "Student's t-test under symmetry conditions",
    JASA 64:1278). Rows hold up when only the columns of unrelated models correspond (inputs both
    read, such as a text encoder's features), and columns when only the rows do (token rows,
    positions): requiring both keeps each such pair inside the null, while a derived matrix,
    whose every row and column keeps part of its values, stands out on both. None when either
    axis has fewer than 8 units (vectors, a handful of rows): the index's rank statistics judge
    those, and an outlier channel would swamp a sum of so few terms.
    """
    found = []
    for sums in (row_sums, col_sums):
        if sums is None or sums.size < _MIN_UNITS:
            return None
        norm = math.sqrt(float(sums @ sums))
        found.append((float(sums.sum()) / norm if norm > 0 else 0.0, sums.size))
    if found[0][0] * found[1][0] < 0:
        z, units = 0.0, min(n for _, n in found)  # the two axes disagree on the sign: no relation
    else:
        z, units = min(((abs(z), n) for z, n in found), key=lambda item: item[0])
    p = min(1.0, 2 * math.exp(-z * z / 2))
    return Evidence("values", correlation if correlation is not None else 0.0, units, z_from_p(p), p)


def strongest(*found: Evidence | None) -> Evidence | None:
    """The most significant of several statistics of one pair, its p-value multiplied by how
    many there were (Bonferroni: taking the best of them is itself a choice)."""
    usable = [e for e in found if e is not None]
    if not usable:
        return None
    return scaled(min(usable, key=lambda e: e.p_value), len(usable))


def scaled(found: Evidence, tests: int) -> Evidence:
    """``found`` with its p-value multiplied by ``tests`` (Bonferroni: the best of ``tests``
    looks, such as the best offset of a slice)."""
    if tests <= 1:
        return found
    p = min(1.0, found.p_value * tests)
    return Evidence(found.statistic, found.correlation, found.values, z_from_p(p), p, found.null_spread)


def fisher_combined(statistic: str, p_values: list[float], correlation: float, values: int) -> Evidence:
    """One evidence from independent tests: Fisher's method (Fisher 1925, *Statistical Methods
    for Research Workers* §21.1): ``X = -2 Σ ln p_i`` has a χ² distribution with ``2k`` degrees
    of freedom when the ``k`` p-values are uniform, and a smaller one when they are larger than
    uniform (Bonferroni-corrected ones), so the combined p-value is exact or conservative.

    ``correlation`` and ``values`` describe the statistic for the report (the degree, and how
    many values it rests on). Raises ``ValueError`` for an empty list."""
    if not p_values:
        raise ValueError("no p-values to combine")
    half = -sum(math.log(max(p, _SMALLEST_P)) for p in p_values)  # X / 2
    p = _chi2_even_tail(half, len(p_values))
    z = z_from_p(p)
    return Evidence(statistic, float(correlation), int(values), z, p, None)


_SMALLEST_P = 1e-300


def _chi2_even_tail(half: float, k: int) -> float:
    """P(χ²_{2k} > 2·half) = e^{-half} Σ_{j<k} half^j / j!, summed in logs (no overflow)."""
    if half <= 0:
        return 1.0
    log_terms = [j * math.log(half) - math.lgamma(j + 1) for j in range(k)]
    top = max(log_terms)
    log_sum = top + math.log(sum(math.exp(t - top) for t in log_terms))
    return min(1.0, math.exp(log_sum - half))


def weakest(*found: Evidence | None) -> Evidence | None:
    """The weakest of the statistics that all must hold (no correction needed: the least
    significant one bounds the error of requiring every one)."""
    usable = [e for e in found if e is not None]
    return max(usable, key=lambda e: e.p_value) if usable else None


def sample_evidence(a: np.ndarray, b: np.ndarray) -> Evidence | None:
    """The evidence of two aligned sample grids (rows x columns of the same elements): Spearman's
    rank correlation of the grids with their row and column means taken out.

    Taking the means out keeps a shared axis from looking like a relation: unrelated models
    whose columns are the same features (or rows the same tokens) share column (row) means,
    which would otherwise correlate the grids. It leaves ``(rows - 1)(cols - 1)`` free values
    (``n - 1`` for a single column). Smooth or low-rank tables (positions) that share an axis
    correlate further; a pair that looks significant is therefore judged against its own
    grids with B's rows, then its columns, shuffled (``_shuffled_spread``): where that spreads
    wider than ``policy.NULL_INFLATION`` allows, the z is divided by the excess.
    """
    a, b = _double_centred(a), _double_centred(b)
    found = evidence("sample", rank_correlation(a.ravel(), b.ravel()), grid_values(a.shape))
    if found is None or found.p_value > _SHUFFLE_BELOW_P:
        return found
    widening = _shuffled_spread(a, b) / policy.NULL_INFLATION  # beyond what the inflation allows for
    if widening <= 1.0:
        return found
    z = found.z / widening
    spread = None if found.null_spread is None else found.null_spread * widening
    return Evidence("sample", found.correlation, found.values, z, p_from_z(z), spread)


def grid_values(shape: tuple[int, int]) -> int:
    """The free values of a sample grid once its row and column means are taken out."""
    rows, cols = shape
    return (rows - 1) * (cols - 1) if rows > 1 and cols > 1 else rows * cols - 1


def unit_ranks(grid: np.ndarray) -> np.ndarray | None:
    """A sample grid's ranks after its row and column means are taken out, centred and of unit
    norm (None when constant): Spearman's correlation of two grids is the dot product of theirs."""
    ranks = _ranks(_double_centred(grid).ravel())
    ranks -= ranks.mean()
    norm = float(np.linalg.norm(ranks))
    return ranks / norm if norm > 0 else None


SHUFFLE_BELOW_P = 1e-3  # only a pair that may be claimed is worth the shuffles
_SHUFFLE_BELOW_P = SHUFFLE_BELOW_P
_SHUFFLES = 16


def _shuffled_spread(a: np.ndarray, b: np.ndarray) -> float:
    """How many times wider than nominal the rank correlation spreads when B's grid keeps its
    rows but not its columns, or its columns but not its rows (16 fixed shuffles of each):
    the pair's own null under one shared axis. Deterministic: the shuffles are seeded."""
    rng = np.random.default_rng(_SHUFFLE_SEED)
    nominal = 1.0 / math.sqrt(max(a.size - 1, 1))
    widest = 0.0
    for axis in (0, 1):
        if b.shape[axis] < _MIN_UNITS:  # too few positions to shuffle into a null
            continue
        found = []
        for _ in range(_SHUFFLES):
            order = rng.permutation(b.shape[axis])
            moved = b[order] if axis == 0 else b[:, order]
            r = rank_correlation(a.ravel(), _double_centred(moved).ravel())
            found.append(0.0 if r is None else r)
        widest = max(widest, math.sqrt(float(np.mean(np.square(found)))) / nominal)
    return widest


_SHUFFLE_SEED = 0x53485546  # "SHUF"


def _double_centred(grid: np.ndarray) -> np.ndarray:
    centred = grid.astype(np.float64) - grid.mean(axis=0, keepdims=True)
    if grid.shape[1] > 1:
        centred -= centred.mean(axis=1, keepdims=True)
    return centred


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None when either is constant.

    Ranks make the statistic's null the same whatever the values' distribution, so a few
    outlier channels (trained LayerNorm weights, embeddings) cannot make unrelated vectors look
    alike.
    """
    if x.size < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / norm if norm > 0 else None


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.concatenate([starts[1:], [ordered.size]])
    mean_rank = (starts + ends - 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def false_discovery_threshold(p_values: list[float], tests: int, rate: float) -> float:
    """The Benjamini-Hochberg boundary ``rate·k/tests``, ``k`` the largest rank with
    ``p_(k) <= rate·k/tests``; with no discovery, the first step ``rate/tests`` (which nothing
    reached). Every p-value at or under it is a discovery, and a pair judged later (a recovered
    permutation) is held to the same boundary.

    ``p_values`` may leave out tests whose p-value exceeds ``rate``: they can never be
    discoveries, but they count in ``tests``. Raises ``ValueError`` when ``tests`` is smaller
    than the number of p-values.
    """
    if tests < len(p_values):
        raise ValueError(f"{len(p_values)} p-values from {tests} tests")
    if tests == 0:
        return rate
    discoveries = 0
    for k, p in enumerate(sorted(p_values), start=1):
        if p <= rate * k / tests:
            discoveries = k
    return rate * max(discoveries, 1) / tests


def critical_correlation(values: int, p_threshold: float) -> float | None:
    """The smallest |correlation| over ``values`` values that is significant at ``p_threshold``
    (after the null's inflation), by bisection on ``evidence``."""
    if values < policy.MIN_EVIDENCE_VALUES or p_threshold <= 0:
        return None
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        found = evidence("sketch", middle, values)  # index statistics: the widened t-test
        if found is not None and found.p_value <= p_threshold:
            high = middle
        else:
            low = middle
    return high


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified
    Lentz; Numerical Recipes 3rd ed., 6.4), using the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
