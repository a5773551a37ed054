"""Calibrate the null of "related": how the evidence statistics spread among unrelated pairs,
how often a comparison would claim one, and how well they detect related pairs.

Nulls (every statistic is computed raw, without ``policy.NULL_INFLATION``, so its spread can
be read in units of its nominal 1):

- twins: trained-looking matrices against fresh Gaussian tensors with their mean and std, at
  sizes from 256 to 10^7 values;
- rows kept / columns kept: real all-MiniLM-L6-v2 tensors against themselves with the columns
  (or rows) shuffled, the worst case of unrelated models that share one axis (token rows,
  positions, input features), since every row (column) is the very same;
- real: all-MiniLM-L6-v2 against DINOv2-small (trained independently, on images), every pair of
  the same shape or its transpose.

Pairs of different tensors within all-MiniLM-L6-v2 are printed too, to show why they are not
taken as the null: they are related (one residual basis; q and k trained together; LayerNorm
weights of different layers correlate about 0.95).

Then the false-positive rate of a claim at the decision threshold of a comparison of 1,000
pairs (with the inflation), by tensor size, and the detection rate against correlation (B = A
moved to that correlation by ``tests.derive.drift``), from the index (sketches and samples)
and from the checkpoint values.

Run: ``.venv/bin/python -m benchmarks.calibrate_null`` (about two minutes).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from tests import derive
from tests.helpers import real_models
from tests.helpers.tensors import trained_like
from weightidx import policy
from weightidx.compare.engine import pair_candidates
from weightidx.compare.metrics import array_metrics
from weightidx.compare.significance import exact_evidence, false_discovery_threshold, p_from_z, z_from_p
from weightidx.index.writer import index_row

SIZES = {"256": (16, 16), "4k": (64, 64), "65k": (256, 256), "1M": (1024, 1024), "10M": (4096, 2560)}
TWINS = {"256": 400, "4k": 200, "65k": 100, "1M": 30, "10M": 16}
CORRELATIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 0.9)
DETECTION_SEEDS = {"256": 40, "4k": 30, "65k": 20, "1M": 6, "10M": 2}
VALUES_TWINS = {"256": 60, "4k": 60, "65k": 60, "1M": 6}  # reading values costs more
TESTS = 1000  # the comparison size the thresholds are quoted for


def threshold_p() -> float:
    """The Benjamini-Hochberg boundary with one discovery among ``TESTS`` pairs (the strictest)."""
    return false_discovery_threshold([], TESTS, policy.FALSE_DISCOVERY_RATE)


def raw_z(row_a: dict, row_b: dict, relation: str = "same") -> float | None:
    """The index evidence z of a whole-tensor pair without the inflation (None: no statistic)."""
    found = list(pair_candidates(row_a, row_b, relation))
    if not found:
        return None
    return found[0].evidence.z * _inflation_of(found[0].evidence)


def _inflation_of(found) -> float:
    return policy.NULL_INFLATION if found.null_spread is not None else 1.0


def values_z(a: np.ndarray, b: np.ndarray) -> float | None:
    metrics = array_metrics(_view(a), _view(b))
    found = exact_evidence(metrics.row_sums, metrics.col_sums, metrics.correlation)
    return None if found is None else found.z


def _view(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(-1, 1)


def summarise(label: str, zs: list[float]) -> str:
    z = np.abs(np.array([v for v in zs if v is not None]))
    if not z.size:
        return f"{label:<34} no pair"
    claim = z_from_p(threshold_p()) * policy.NULL_INFLATION
    return (
        f"{label:<34} {z.size:>6} pairs  spread {float(np.sqrt(np.mean(z**2))):.2f}  "
        f"max |z| {z.max():.2f}  over the claim line ({claim:.2f}): {int((z > claim).sum())}"
    )


def twin_nulls() -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for size, shape in SIZES.items():
        for seed in range(TWINS[size]):
            rng = np.random.default_rng([seed, shape[0]])
            a = trained_like(rng, *shape)
            b = (rng.standard_normal(shape) * a.std() + a.mean()).astype(np.float32)
            found[size].append(raw_z(index_row("a", a), index_row("b", b)))
            if seed < VALUES_TWINS.get(size, 0):
                found[size + " values"].append(values_z(a, b))
    return found


def one_axis_nulls(tensors: dict) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    rng = np.random.default_rng(7)
    for key, (dtype, values) in tensors.items():
        if dtype != "F32" or values.ndim != 2 or min(values.shape) < 16 or values.std() == 0:
            continue
        row = index_row(key, values)
        for axis, label in ((1, "rows kept, columns shuffled"), (0, "columns kept, rows shuffled")):
            for _ in range(3):
                order = rng.permutation(values.shape[axis])
                moved = np.ascontiguousarray(values[:, order] if axis == 1 else values[order])
                found[label].append(raw_z(row, index_row(key, moved)))
                if values.size <= 1 << 20:
                    found[label + " (values)"].append(values_z(values, moved))
    return found


def within_model(tensors: dict) -> dict[str, list[float]]:
    """Pairs of different tensors of one model, same shape: not a null (layers share the residual
    stream's basis, q and k of a layer are trained together), printed to show why the null is
    not taken from them."""
    rows = {k: index_row(k, v) for k, (d, v) in tensors.items() if d == "F32" and v.std() > 0}
    found: dict[str, list[float]] = defaultdict(list)
    keys = sorted(rows)
    for i, ka in enumerate(keys):
        for kb in keys[i + 1 :]:
            ra, rb = rows[ka], rows[kb]
            if (ra["rows"], ra["cols"]) == (rb["rows"], rb["cols"]):
                label = "1-D" if ra["cols"] == 1 else "matrices"
                found[label].append(raw_z(ra, rb))
    return found


def real_null(a: dict, b: dict) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(size, z) of every same-shape or transposed pair of MiniLM and DINOv2, from the index
    and (for matrices) from the values."""
    rows_a = {k: index_row(k, v) for k, (d, v) in a.items() if d == "F32" and v.std() > 0}
    rows_b = {k: index_row(k, v) for k, (d, v) in b.items() if d == "F32" and v.std() > 0}
    index, values = [], []
    for ka, ra in rows_a.items():
        for kb, rb in rows_b.items():
            if (ra["rows"], ra["cols"]) == (rb["rows"], rb["cols"]):
                relation = "same"
            elif (ra["rows"], ra["cols"]) == (rb["cols"], rb["rows"]) and ra["cols"] > 1:
                relation = "transpose"
            else:
                continue
            index.append((ra["numel"], raw_z(ra, rb, relation)))
            if ra["cols"] > 1 and ra["rows"] > 1 and relation == "transpose" and len(values) < 3000:
                va, vb = _view(a[ka][1]), _view(b[kb][1]).T
                values.append((ra["numel"], values_z(va, np.ascontiguousarray(vb))))
    return index, values


def detection() -> dict[tuple[str, str], list[float]]:
    """Share of related pairs claimed at the threshold (with the inflation), per size and correlation."""
    p_star = threshold_p()
    shares: dict[tuple[str, str], list[float]] = {}
    for size, shape in SIZES.items():
        for rho in CORRELATIONS:
            hits = {"index": 0, "values": 0}
            seeds = DETECTION_SEEDS[size]
            for seed in range(seeds):
                rng = np.random.default_rng([seed, 99, shape[0]])
                a = trained_like(rng, *shape)
                b = derive.drift({"w": ("F32", a)}, rho, seed).tensors["w"][1]
                found = list(pair_candidates(index_row("a", a), index_row("b", b), "same"))
                hits["index"] += bool(found and found[0].evidence.p_value <= p_star)
                z = values_z(a, b)
                hits["values"] += bool(z is not None and p_from_z(z) <= p_star)
            shares[size, f"{rho:g}"] = [hits["index"] / seeds, hits["values"] / seeds]
    return shares


def main() -> None:
    start = time.time()
    print(f"weightidx null calibration: raw z (inflation 1), claims at a comparison of {TESTS:,} pairs")
    print(f"(false discovery rate {policy.FALSE_DISCOVERY_RATE:g}, inflation {policy.NULL_INFLATION})\n")
    twins = twin_nulls()
    for size in SIZES:
        print(summarise(f"twins, {size} values (index)", twins[size]))
    for size in ("256", "4k", "65k", "1M"):
        print(summarise(f"twins, {size} values (values)", twins[size + " values"]))
    minilm = real_models.load(real_models.minilm())
    for label, zs in one_axis_nulls(minilm).items():
        print(summarise(f"MiniLM, {label}", zs))
    for label, zs in within_model(minilm).items():
        print(summarise(f"MiniLM within itself, {label} (no null)", zs))
    dinov2 = real_models.load(real_models.dinov2_small())
    index, values = real_null(minilm, dinov2)
    bins: dict[str, list[float]] = defaultdict(list)
    for numel, z in index:
        bins["vectors" if numel <= 1536 else f"{numel:,} values"].append(z)
    for label, zs in sorted(bins.items()):
        print(summarise(f"MiniLM vs DINOv2, {label}", zs))
    print(summarise("MiniLM vs DINOv2, matrices (values)", [z for _, z in values]))
    print(f"\ndetection: share claimed at the line of {TESTS:,} pairs (index / values)")
    shares = detection()
    print(f"{'correlation':>12}" + "".join(f"{size:>14}" for size in SIZES))
    for rho in CORRELATIONS:
        cells = "".join(
            f"{shares[size, f'{rho:g}'][0]:>7.2f}/{shares[size, f'{rho:g}'][1]:<6.2f}" for size in SIZES
        )
        print(f"{rho:>12g}{cells}")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
