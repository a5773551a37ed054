"""Lineage across a width change: compare the tensors that read from (or write to) an axis
both models share, through their Gram matrices, against within-model controls.

When no weight matrix of B has a shape of A (hidden width 5120 vs 4096, say), values cannot
be matched tensor to tensor. But some axes are the models' interface and keep their size:
text-encoder features (4096), timestep frequencies (256), patch inputs (16·1·2·2 = 64),
patch outputs (64). A tensor reading from such an axis has an input-side Gram matrix
``WᵀW`` (axis × axis) that survives pruning, projecting or permuting its *other* axis. The
statistic is the correlation of the off-diagonal entries of the two Gram matrices (the
diagonal only says "weights have some norm" and makes unrelated models look alike). Its
null comes from the same statistic between different tensors of one model on that axis.

With the checkpoints at hand (``analyse``) the Gram matrices are computed from the values.
From the indexes alone (``analyse_sketches``) the index's Gram sketches stand in for them:
input side a 32 x 32 projection of ``WᵀW`` (``fingerprint.row_lanes``), of which only the
entries between different lanes are used, since those combine distinct columns only;
output side a 32 x 32 projection of ``WWᵀ`` (``fingerprint.output_terms``), whose entries
between different buckets combine distinct rows only. The sketches also stand in for the
axes too large to read whole (a vocabulary) when the checkpoints are at hand. Their
axis-shuffle test permutes the sketch's lanes or buckets instead of the axis.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from weightidx import policy
from weightidx.compare.report import is_matrix
from weightidx.fingerprint.sketch import GRAM_DIM, OUTPUT_BUCKETS
from weightidx.index.reader import IndexedModel, load_grams
from weightidx.index.schema import IndexRow
from weightidx.naming import is_attention

MAX_AXIS = 4096  # Gram matrices up to 4096 x 4096 (64 MB in float32)
MAX_VALUES = 1 << 25
_MAX_PER_AXIS = 8
_MAX_PER_AXIS_SKETCHED = 32  # a sketch signature is 480 numbers: many tensors cost nothing
_MIN_CONTROLS = 3
HEAD_DIMS = (64, 128)  # the head sizes tried on attention projections
_MAX_HEAD_TENSORS = 6  # attention projections a side, in key order (the first blocks)


@dataclass(frozen=True)
class AxisResult:
    """One shared axis: the best cross-model pair and how it compares with the controls."""

    side: str  # "input" (columns of the 2-D view) or "output" (rows)
    size: int
    source: str  # "checkpoint values" or "index sketches"
    a_key: str
    b_key: str
    score: float  # correlation of the off-diagonal Gram entries
    null_mean: float | None
    null_std: float | None
    null_pairs: int
    z_score: float | None
    mantel_z: float | None  # the score against the same pair with B's axis shuffled (a Mantel
    mantel_p: float | None  # test); for sketches, B's sketch lanes or buckets shuffled
    heads: list[str] | None = None  # side "head": for each head of B, A's best one as "key#head"

    def as_json(self) -> dict:
        return {
            "side": self.side,
            "size": self.size,
            "source": self.source,
            "a": self.a_key,
            "b": self.b_key,
            "score": round(self.score, 6),
            "null_mean": _round(self.null_mean),
            "null_std": _round(self.null_std),
            "null_pairs": self.null_pairs,
            "z_score": _round(self.z_score),
            "mantel_z": _round(self.mantel_z),
            "mantel_p": _round(self.mantel_p),
            "heads": self.heads,
        }


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


_SKETCH_COLUMNS = {"input": "input_gram", "output": "output_gram"}


def shared_axes(
    a: IndexedModel, b: IndexedModel, *, sketched: bool = False
) -> dict[tuple[str, int], tuple[list[str], list[str]]]:
    """Axis sizes present on the same side of weight matrices in both models, but where the
    other side differs (so the tensors could not be matched value for value).

    ``sketched``: tensors with a Gram sketch for that side in the index (any axis size, up to
    ``_MAX_PER_AXIS_SKETCHED`` tensors a side); otherwise axes up to ``MAX_AXIS`` and tensors
    up to ``MAX_VALUES`` values, whose Gram matrices are computed from the checkpoints.
    """
    found: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    keep = _MAX_PER_AXIS_SKETCHED if sketched else _MAX_PER_AXIS
    for side, this, other in (("input", "cols", "rows"), ("output", "rows", "cols")):
        sizes_a: dict[int, list[str]] = defaultdict(list)
        sizes_b: dict[int, list[str]] = defaultdict(list)
        for model, sizes in ((a, sizes_a), (b, sizes_b)):
            for key, row in model.rows.items():
                size = int(row[this])
                if not (is_matrix(row) and row["supported"] and size >= 16):
                    continue
                if sketched:  # null where the index has none (rows cut, or too narrow)
                    usable = row.get(_SKETCH_COLUMNS[side]) is not None
                else:
                    usable = size <= MAX_AXIS and row["numel"] <= MAX_VALUES
                if usable:
                    sizes[size].append(key)
        for size in sorted(set(sizes_a) & set(sizes_b)):
            others_a = {int(a.rows[k][other]) for k in sizes_a[size]}
            others_b = {int(b.rows[k][other]) for k in sizes_b[size]}
            if others_a != others_b:
                found[side, size] = (sizes_a[size][:keep], sizes_b[size][:keep])
    return found


def gram_matrix(values: np.ndarray, side: str) -> np.ndarray:
    """The correlation matrix over the shared axis (axis x axis, float32), columns centred."""
    matrix = values.astype(np.float32)
    if side == "output":
        matrix = matrix.T
    matrix = matrix - matrix.mean(axis=0, keepdims=True)
    gram = matrix.T @ matrix
    scale = np.sqrt(np.clip(np.diag(gram), 1e-30, None))
    return gram / scale[:, None] / scale[None, :]


def signature(gram: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Off-diagonal entries of a Gram matrix (its axis reordered by ``order``), centred, unit-norm."""
    rows, cols = _pairs(gram.shape[0])
    if order is not None:
        rows, cols = order[rows], order[cols]
    entries = gram[rows, cols].astype(np.float64)
    entries -= entries.mean()
    norm = np.linalg.norm(entries)
    return entries / norm if norm > 0 else entries


def gram_signature(values: np.ndarray, side: str) -> np.ndarray:
    """Off-diagonal entries of the Gram matrix over the shared axis, centred and unit-norm."""
    return signature(gram_matrix(values, side))


_PERMUTATIONS = 99


def mantel(target: np.ndarray, gram_b: np.ndarray, score: float, seed: int) -> tuple[float, float]:
    """z-score and p-value of ``score = target @ signature(gram_b)`` against B's axis shuffled
    (Mantel's permutation test); ``target`` is A's signature.

    Shuffling the axis keeps each matrix's own structure and destroys only the
    correspondence between A's position i and B's position i, which is what derivation keeps.
    """
    rng = np.random.default_rng(seed)
    null = [float(target @ signature(gram_b, rng.permutation(gram_b.shape[0]))) for _ in range(_PERMUTATIONS)]
    return _shuffled(score, np.array(null))


def _shuffled(score: float, null: np.ndarray) -> tuple[float, float]:
    """z-score and permutation p-value of ``score`` against its shuffled versions ``null``."""
    z = (abs(score) - abs(float(null.mean()))) / max(float(null.std()), 1e-12)
    p = (1 + int(np.count_nonzero(np.abs(null) >= abs(score)))) / (1 + _PERMUTATIONS)
    return z, p


_MAX_ENTRIES = 1 << 18


def _pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Off-diagonal positions (i < j) of a size x size Gram matrix: all of them, or a fixed
    random 262,144 of them for wide axes, so a signature stays 2 MB whatever the axis."""
    rows, cols = np.triu_indices(size, k=1)
    if rows.size > _MAX_ENTRIES:
        keep = np.sort(np.random.default_rng(size).choice(rows.size, _MAX_ENTRIES, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def analyse(
    a: IndexedModel, b: IndexedModel, read: Callable, progress: Callable[[int, int], None] | None = None
) -> dict:
    """The ``lineage`` section: per shared axis, the best pair, its null and z-score, and a verdict.

    Axes too large to read whole (or on tensors over ``MAX_VALUES``) come from the index
    sketches, when the indexes have them.

    Args:
        read: ``read(model, key) -> 2-D float array`` (the whole tensor's view).
        progress: called with (steps done, steps): one per shared axis, one for the heads.
    """
    load_grams(a)
    load_grams(b)
    results = []
    axes = shared_axes(a, b)
    steps = len(axes) + 1

    def step(done: int) -> None:
        if progress is not None:
            progress(done, steps)

    for position, ((side, size), (keys_a, keys_b)) in enumerate(axes.items()):
        step(position)
        signatures_a = {k: gram_signature(read(a, k), side) for k in keys_a}
        signatures_b = {k: gram_signature(read(b, k), side) for k in keys_b}
        result = _score_axis(
            side, size, "checkpoint values", signatures_a, signatures_b, floor=1 / math.sqrt(size)
        )
        # B's Gram matrix is rebuilt (one read) rather than kept for every candidate: at axis 4096
        # each is 64 MB. A's side needs only its signature, already computed.
        gram_b = gram_matrix(read(b, result.b_key), side)
        mantel_z, mantel_p = mantel(signatures_a[result.a_key], gram_b, result.score, seed=size)
        results.append(replace(result, mantel_z=mantel_z, mantel_p=mantel_p))
    done = {(r.side, r.size) for r in results}
    if not _stale(a, b):
        results += [r for r in _sketched_axes(a, b) if (r.side, r.size) not in done]
    step(len(axes))
    results += head_axes(a, b, read)
    step(steps)
    return {
        "method": "checkpoint values",
        "axes": [r.as_json() for r in results],
        "verdict": _verdict(results),
    }


def attention_tensors(model: IndexedModel, head_dim: int) -> list[str]:
    """Attention projections whose rows split into at least two heads of ``head_dim`` (q, k, v,
    fused qkv; an output projection's rows are not heads, but it costs only a null entry)."""
    keys = []
    for key, row in model.rows.items():
        rows = int(row["rows"])
        if (
            is_matrix(row)
            and row["supported"]
            and is_attention(key)
            and rows % head_dim == 0
            and rows >= 2 * head_dim
            and row["numel"] <= MAX_VALUES
        ):
            keys.append(key)
    return keys[:_MAX_HEAD_TENSORS]


def head_signatures(values: np.ndarray, head_dim: int) -> np.ndarray:
    """One Gram signature per head (rows ``h·d`` to ``(h+1)·d``): (heads, d(d-1)/2) float32."""
    heads = values.shape[0] // head_dim
    return np.stack(
        [gram_signature(values[h * head_dim : (h + 1) * head_dim], "output") for h in range(heads)]
    ).astype(np.float32)


def _pooled_score(heads: np.ndarray, pool: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over ``heads`` of each one's best correlation with a head of ``pool``, and which."""
    correlations = heads @ pool.T
    return float(correlations.max(axis=1).mean()), correlations.argmax(axis=1)


def _heads_by_dim(model: IndexedModel, read) -> dict[int, dict[str, np.ndarray]]:
    """Head signatures of the model's attention projections per head size, each tensor read once."""
    keys = {head_dim: attention_tensors(model, head_dim) for head_dim in HEAD_DIMS}
    found: dict[int, dict[str, np.ndarray]] = {head_dim: {} for head_dim in HEAD_DIMS}
    for key in dict.fromkeys(k for chosen in keys.values() for k in chosen):
        values = read(model, key)
        for head_dim, chosen in keys.items():
            if key in chosen:
                found[head_dim][key] = head_signatures(values, head_dim)
    return found


def head_axes(a: IndexedModel, b: IndexedModel, read) -> list[AxisResult]:
    """Per-head comparisons of attention projections, for each head size in ``HEAD_DIMS``.

    Pruning whole heads (Wan's 40 heads of 128 to 32 is exactly 5120 to 4096) keeps each
    surviving head's rows, so a head's Gram matrix over its ``d`` rows survives, while the
    tensor-level axes are all resized. Each head of a B projection is matched to its best
    head among all of A's projections (so a fused qkv finds q, k and v); the score is the
    mean best correlation of the best B projection. Controls: the same statistic for each
    projection of one model against the pooled heads of that model's other projections.
    """
    by_dim_a, by_dim_b = _heads_by_dim(a, read), _heads_by_dim(b, read)
    results = []
    for head_dim in HEAD_DIMS:
        heads_a, heads_b = by_dim_a[head_dim], by_dim_b[head_dim]
        if not heads_a or not heads_b:
            continue
        labels = [(k, h) for k, heads in heads_a.items() for h in range(len(heads))]
        pool_a = np.concatenate(list(heads_a.values()))
        scored = {k: _pooled_score(heads, pool_a) for k, heads in heads_b.items()}
        key_b = max(scored, key=lambda k: scored[k][0])
        score, best = scored[key_b]
        matched = [labels[i] for i in best]
        key_a = max(heads_a, key=[k for k, _ in matched].count)  # the projection most heads came from
        null = [
            _pooled_score(own, np.concatenate([h for k, h in heads.items() if k != key]))[0]
            for heads in (heads_a, heads_b)
            if len(heads) > 1
            for key, own in heads.items()
        ]
        mean, std, z = _against(score, null, floor=1 / math.sqrt(head_dim * (head_dim - 1) / 2))
        results.append(
            AxisResult("head", head_dim, "checkpoint values", key_a, key_b, score, mean, std, len(null), z,
                       None, None, heads=[f"{k}#{h}" for k, h in matched])
        )  # fmt: skip
    return results


def _against(
    score: float, null: list[float], floor: float
) -> tuple[float | None, float | None, float | None]:
    """Mean and spread of the controls, and the score's z against them (None with fewer than
    ``_MIN_CONTROLS``). ``floor``: the statistic's own sampling spread for independent
    matrices; a few controls can agree by chance, so their spread is never trusted below it."""
    if not null:
        return None, None, None
    mean, std = float(np.mean(null)), float(np.std(null))
    z = (abs(score) - abs(mean)) / max(std, floor) if len(null) >= _MIN_CONTROLS else None
    return mean, std, z


def _stale(a: IndexedModel, b: IndexedModel) -> list[str]:
    """Index files written before the current Gram sketches (no ``output_gram`` column)."""
    return [str(model.index) for model in (a, b) if not any("output_gram" in r for r in model.rows.values())]


def analyse_sketches(a: IndexedModel, b: IndexedModel) -> dict:
    """The ``lineage`` section from the indexes alone, through the Gram sketches."""
    load_grams(a)
    load_grams(b)
    stale = _stale(a, b)
    if stale:
        return {
            "method": "index sketches",
            "axes": [],
            "verdict": f"{' and '.join(stale)} predate{'s' if len(stale) == 1 else ''} the Gram sketches "
            "(index columns input_gram, input_lanes, output_gram): re-index with this weightidx, or "
            "compare with the checkpoints at hand.",
        }
    results = _sketched_axes(a, b)
    verdict = "From the index sketches alone (comparing attention head by head needs the checkpoints): "
    verdict += _verdict(results)
    return {"method": "index sketches", "axes": [r.as_json() for r in results], "verdict": verdict}


def _sketched_axes(a: IndexedModel, b: IndexedModel) -> list[AxisResult]:
    results = []
    for (side, size), (keys_a, keys_b) in shared_axes(a, b, sketched=True).items():
        sketches_a = {k: sketch_matrix(a.rows[k], side) for k in keys_a}
        sketches_b = {k: sketch_matrix(b.rows[k], side) for k in keys_b}
        pairs = _SKETCH_PAIRS[side]
        signatures_a = {k: _entries(m, pairs) for k, m in sketches_a.items()}
        signatures_b = {k: _entries(m, pairs) for k, m in sketches_b.items()}
        floor = 1 / math.sqrt(pairs[0].size)
        result = _score_axis(side, size, "index sketches", signatures_a, signatures_b, floor)
        mantel_z, mantel_p = sketch_mantel(
            signatures_a[result.a_key], sketches_b[result.b_key], side, result.score, seed=size
        )
        results.append(replace(result, mantel_z=mantel_z, mantel_p=mantel_p))
    return results


def _score_axis(
    side: str,
    size: int,
    source: str,
    signatures_a: dict[str, np.ndarray],
    signatures_b: dict[str, np.ndarray],
    floor: float,
) -> AxisResult:
    """The best cross-model pair on one axis against the within-model pairs (the controls)."""
    best = max(
        ((float(sa @ sb), ka, kb) for ka, sa in signatures_a.items() for kb, sb in signatures_b.items()),
        key=lambda item: abs(item[0]),
    )
    null = [
        float(s1 @ s2)
        for signatures in (signatures_a, signatures_b)
        for i, s1 in enumerate(signatures.values())
        for j, s2 in enumerate(signatures.values())
        if i < j
    ]
    mean, std, z = _against(best[0], null, floor)
    return AxisResult(side, size, source, best[1], best[2], best[0], mean, std, len(null), z, None, None)


def _sketch_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sketch entries the statistic uses: input side, pairs of different lanes (distinct
    columns); output side, pairs of different buckets (distinct rows)."""
    rows, cols = np.triu_indices(GRAM_DIM, k=1)
    distinct = rows % 16 != cols % 16
    return {"input": (rows[distinct], cols[distinct]), "output": np.triu_indices(OUTPUT_BUCKETS, k=1)}


_SKETCH_PAIRS = _sketch_pairs()


def sketch_matrix(row: IndexRow, side: str) -> np.ndarray:
    """A tensor's Gram sketch for one side as a full symmetric matrix, centred: the input side
    with ``input_lanes`` (the index stores it raw), the output side as stored."""
    column = _SKETCH_COLUMNS[side]
    dim = GRAM_DIM if side == "input" else OUTPUT_BUCKETS
    full = np.zeros((dim, dim), dtype=np.float64)
    full[np.triu_indices(dim)] = row[column]
    full = full + np.triu(full, k=1).T
    if side == "input":
        lanes = np.asarray(row["input_lanes"], dtype=np.float64)
        full -= np.outer(lanes, lanes) / max(int(row["rows"]), 1)
    return full


def _entries(matrix: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The statistic's entries of a centred Gram sketch, centred and unit-norm (the sketch
    counterpart of ``signature``)."""
    entries = matrix[pairs].astype(np.float64)
    entries -= entries.mean()
    norm = np.linalg.norm(entries)
    return entries / norm if norm > 0 else entries


def sketch_mantel(
    target: np.ndarray, sketch_b: np.ndarray, side: str, score: float, seed: int
) -> tuple[float, float]:
    """``mantel`` for sketches: B's sketch with its lanes (input side, the same lane order for
    both projections) or buckets (output side) shuffled. A lane or bucket gathers a fixed
    set of axis positions, so shuffling them breaks the correspondence of positions as
    shuffling the axis does, and keeps the statistic's entries the same kind of entries."""
    rng = np.random.default_rng(seed)
    pairs = _SKETCH_PAIRS[side]
    null = []
    for _ in range(_PERMUTATIONS):
        if side == "input":
            lanes = rng.permutation(16)
            order = np.concatenate([m * 16 + lanes for m in range(GRAM_DIM // 16)])
        else:
            order = rng.permutation(OUTPUT_BUCKETS)
        null.append(float(target @ _entries(sketch_b[np.ix_(order, order)], pairs)))
    return _shuffled(score, np.array(null))


def _verdict(results: list[AxisResult]) -> str:
    if not results:
        return (
            "No axis of the same size is shared by the two models' weight matrices, so there is "
            "nothing to compare across the width change: the evidence cannot decide."
        )
    mixed = len({r.source for r in results}) > 1
    described = "; ".join(
        (f"heads of {r.size} rows" if r.side == "head" else f"{r.side} axis of size {r.size}")
        + (f" (from the {r.source})" if mixed else "")
        + f" ({r.a_key} vs {r.b_key}): Gram correlation {r.score:.3f}"
        + (
            f", controls {r.null_mean:.3f} ± {r.null_std:.3f} over {r.null_pairs} pairs, z = {r.z_score:.1f}"
            if r.z_score is not None
            else f", too few within-model controls ({r.null_pairs}) to judge"
        )
        + (f", axis-shuffle z = {r.mantel_z:.1f} (p = {r.mantel_p:.2f})" if r.mantel_z is not None else "")
        for r in results
    )
    decided = [
        r
        for r in results
        if r.z_score is not None and r.z_score >= policy.LINEAGE_Z and abs(r.score) > policy.LINEAGE_SCORE
    ]
    undecided = [r for r in results if r.z_score is None]
    corresponding = [r for r in undecided if r.mantel_z is not None and r.mantel_z >= policy.LINEAGE_Z]
    if decided:
        return (
            f"Compared the axes both models share ({described}). {len(decided)} of {len(results)} stand far "
            "above the within-model controls: those tensors of B were derived from A's (pruned, projected or "
            "re-parameterised across the width change), not trained independently."
        )
    if corresponding:
        named = ", ".join(f"{r.side} axis of size {r.size}" for r in corresponding)
        return (
            f"Compared the axes both models share ({described}). The {named} "
            f"{'correspond' if len(corresponding) > 1 else 'corresponds'} position by position (axis-shuffle "
            "z of 5 or more), with no within-model controls to judge against: derivation keeps such "
            "correspondence, but models trained on the same inputs (the same tokens, positions or text "
            "encoder) can share it too, so the evidence cannot decide."
        )
    if undecided and len(undecided) == len(results):
        return (
            f"Compared the axes both models share ({described}). Without within-model controls the "
            "evidence cannot decide: an axis-shuffle test shows whether positions correspond, but "
            "models trained on the same inputs (the same text encoder, say) can correspond too."
        )
    return (
        f"Compared the axes both models share ({described}). None stands clear of the within-model "
        "controls: no sign that B was initialised from A; the evidence is consistent with independent "
        "training on the same recipe."
    )
