"""Stage 2: shortlist candidate pairs in DuckDB, score them from sketches, verify exactly.

1. ``queries/candidate_groups.sql`` joins the two indexes on 2-D views that fit a
   transform (same view, transpose, slice along rows or columns either way);
   ``candidates.py`` turns the groups into pairs, narrowing groups of thousands of
   same-shaped tensors (experts) to their likely partners.
2. Each candidate is scored from the sketches alone (``estimate.py``); for slices every
   block-aligned offset on a ``gcd`` grid is tried.
3. A greedy one-to-one assignment keeps the best-scoring candidates whose score stands
   clear of the null of unrelated tensors.
4. Only the kept pairs are reloaded from the safetensors files, chunk by chunk, for
   exact metrics; without the files (or with ``index_only``) metrics are estimated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from weightidx import policy
from weightidx.compare import lineage
from weightidx.compare.block_gather import gathered_matches
from weightidx.compare.candidates import candidate_pairs, content_key
from weightidx.compare.document import Report
from weightidx.compare.estimate import (
    Sketches,
    aligned_samples,
    estimated_metrics,
    layout_parts,
    same_layout,
    slice_scan,
    slice_values,
    transposed,
)
from weightidx.compare.metrics import PairMetrics, pair_metrics
from weightidx.compare.permutation import Permutation
from weightidx.compare.reads import Count, exact_metrics, verify, whole_view
from weightidx.compare.report import build_report, is_weight_matrix, model_width
from weightidx.compare.significance import (
    EQUAL_BYTES,
    SHUFFLE_BELOW_P,
    Evidence,
    combined,
    evidence,
    false_discovery_threshold,
    grid_values,
    p_from_z,
    sample_evidence,
    scaled,
    unit_ranks,
    weakest,
    z_from_p,
)
from weightidx.compare.structure import Structures, find_structures
from weightidx.compare.types import Candidate, Match, Region, Transform, judge, strength_of
from weightidx.fingerprint.sketch import BLOCK
from weightidx.index.cache import cached_index
from weightidx.index.reader import IndexedModel, is_index_file, load_index
from weightidx.index.schema import IndexRow
from weightidx.io.safetensors import ShardReader
from weightidx.naming import block_of, expert_role, in_block, role_of

_DECISIVE_P = 1e-12  # a sketch this significant needs no second statistic


@dataclass(frozen=True)
class Shortlist:
    """Every pair a comparison tested, reduced to those that may be significant.

    ``candidates``: pairs with a p-value under the false discovery rate (no other can be a
    discovery), and byte-identical pairs. ``tests``: how many pairs and slice offsets were
    tested, for the correction. ``strongest_z``: the largest z among weight-matrix pairs
    (significant or not); ``matrix_values``: the fewest and the most values
    a weight-matrix pair's evidence covered (what the tests could see). ``comparable``: whether
    any weight matrix of B shares a shape (or its transpose) with one of A. ``constant_pairs``: byte-identical
    constant tensors, which carry no evidence of their own.
    """

    candidates: list[Candidate]
    tests: int
    strongest_z: float | None
    matrix_values: tuple[int, int] | None
    comparable: bool
    constant_pairs: list[tuple[str, str]]
    best: dict[str, Candidate] = field(default_factory=dict)
    looks: dict[str, int] = field(default_factory=dict)  # B key -> pairs tested
    looks_a: dict[str, int] = field(default_factory=dict)  # A key -> pairs tested

    def p_threshold(self) -> float:
        """The Benjamini-Hochberg cut-off at ``policy.FALSE_DISCOVERY_RATE``."""
        p_values = [c.evidence.p_value for c in self.candidates]
        return false_discovery_threshold(p_values, self.tests, policy.FALSE_DISCOVERY_RATE)


def compare_indexes(
    a: IndexedModel,
    b: IndexedModel,
    *,
    index_only: bool = False,
    second_looks: bool = True,
    exhaustive: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Compare two indexed models and return the report (``schema_version`` 1, ``document.Report``).

    Args:
        a: model A, the possible source (``load_index``).
        b: model B, the model whose origin is asked.
        index_only: estimate every metric from the fingerprints, reading no tensor values.
        second_looks: after the fingerprints' matches, look again (from the values: weak
            matrices, tensors where their neighbours point, structured derivations; from the
            sketches alone with ``index_only``: gathers of whole sketch blocks); False skips
            that (the benchmark measures its cost).
        exhaustive: test every pair of fitting views, also in groups of thousands of
            same-shaped tensors (``candidates.py`` narrows those): the reference for tests.
        progress: called with (phase, done, total) as the comparison goes: ``"scoring"`` the
            candidate pairs from the fingerprints, ``"verifying"`` the kept pairs from the
            values, ``"tracing structures, round N"`` over B's untraced weight matrices and
            ``"lineage"`` over the shared axes (these three with the checkpoints only, where
            there is work); each phase's total is known from its first call.

    Returns:
        The report: ``summary`` (scenario, verdict and the facts it is generated from),
        ``matches``, ``unmatched`` with ``unmatched_reasons``, ``warnings``, ``blocks``,
        ``shapes``, and ``layouts`` / ``lineage`` where there are any.

    Raises:
        IndexFileError: a checkpoint changed after it was indexed (its offsets are stale).
    """
    shortlist = _score_candidates(a, b, exhaustive, _phase(progress, "scoring"))
    p_threshold = shortlist.p_threshold()
    significant = [c for c in shortlist.candidates if c.identical or c.evidence.p_value <= p_threshold]
    kept = _assign(significant, tie_key=lambda key: content_key(b.rows[key]))
    kept = sorted(kept + _upcycled(significant, kept), key=lambda c: (c.b.key, c.b.start))
    missing = [] if index_only else [m for m in (a, b) if not m.files_present()]
    exact = not index_only and not missing
    matches = []
    with ShardReader() as reader:  # one set of open shard files for verification, permutations, lineage
        if exact:
            verified = verify(reader, a, b, kept, _phase(progress, "verifying"))
        else:
            verified = [estimated_metrics(a.rows[c.a.key], b.rows[c.b.key], c) for c in kept]
        for candidate, metrics in zip(kept, verified, strict=True):
            verdict, proof = judge(candidate, metrics, p_threshold)
            matches.append(Match(candidate, metrics, "exact" if exact else "estimated", verdict, proof))
        if exact and second_looks:
            matches += _second_looks(reader, a, b, shortlist, matches, p_threshold)
        second, cut = _within_blocks(a, b, shortlist, matches) if second_looks else ([], 0.0)
        for candidate in second:
            metrics = (
                exact_metrics(reader, a, b, candidate)
                if exact
                else estimated_metrics(a.rows[candidate.a.key], b.rows[candidate.b.key], candidate)
            )
            verdict, proof = judge(candidate, metrics, cut)
            if verdict != "different":
                matches.append(Match(candidate, metrics, "exact" if exact else "estimated", verdict, proof))
        structures = Structures([], [], [])
        if exact and second_looks:
            structured, structures = _structured_matches(reader, a, b, matches, p_threshold, progress)
            matches += structured
        elif second_looks:
            structured, structures = _block_gathered_matches(a, b, matches, p_threshold)
            matches += structured
        matches += _constant_matches(a, b, shortlist.constant_pairs, matches)
        for match in matches:
            match.transform = _transforms(a, b, match)
        lineage_section = _lineage(
            reader, a, b, matches, shortlist.comparable, exact, _phase(progress, "lineage")
        )
    warnings = [
        f"{model.index}: the checkpoint it was built from is missing ({model.source}); "
        "metrics are estimated from the fingerprints"
        for model in missing
    ]
    return build_report(a, b, matches, shortlist, p_threshold, lineage_section, structures, warnings)


def _settled(b: IndexedModel, related: list[Match]) -> set[str]:
    """B tensors their related matches explain: a whole-tensor match, or slices that cover every
    row (or column), unless the degree stands out below the model's own (by more than
    ``_OUTLIER``: a slice that straddles interleaved heads relates at 0.3 where the rest of the
    model copies at 1.0). Those are looked at again for structure."""
    degrees = sorted(m.strength for m in related if is_weight_matrix(b.rows[m.candidate.b.key]))
    floor = degrees[len(degrees) // 2] - _OUTLIER if degrees else 0.0
    parts: dict[str, list[Match]] = defaultdict(list)
    for m in related:
        parts[m.candidate.b.key].append(m)
    settled = set()
    for key, found in parts.items():
        if any(m.strength < floor for m in found):
            continue
        if any(m.candidate.b.axis is None for m in found):
            settled.add(key)
            continue
        axes = {m.candidate.b.axis for m in found}
        if len(axes) == 1:
            length = int(b.rows[key]["rows" if axes == {0} else "cols"])
            if sum(m.candidate.b.stop - m.candidate.b.start for m in found) == length:
                settled.add(key)
    return settled


_OUTLIER = 0.2


def _structured_matches(
    reader: ShardReader,
    a: IndexedModel,
    b: IndexedModel,
    matches: list[Match],
    p_threshold: float,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Match], Structures]:
    """Interleaved, permuted and pruned tensors of B, found from the values (``structure.py``)."""
    related = [m for m in matches if m.verdict != "different"]
    settled = _settled(b, related)
    taken_a = {m.candidate.a.key for m in related if m.candidate.b.key in settled}
    read = lambda model, key: whole_view(reader, model, key)  # noqa: E731
    rounds = None
    if progress is not None:
        rounds = lambda number, done, total: progress(f"tracing structures, round {number}", done, total)  # noqa: E731
    pairs = [(m.candidate.b.key, m.candidate.a.key) for m in related]
    structures = find_structures(
        a, b, taken_a, settled, block_map(related), read, p_threshold, rounds, pairs=pairs
    )
    found = structures.found
    redone = {item.b.key for item in found}
    matches[:] = [m for m in matches if m.candidate.b.key not in redone]
    out = []
    for item in found:
        if item.relation == "gather":
            relation = "gather_rows" if item.b.axis == 0 else "gather_cols"
        elif item.relation == "permute":
            relation = "permute_rows" if item.rows is not None else "permute_cols"
        else:
            relation = "select"
        candidate = Candidate(item.a, item.b, relation, item.metrics.correlation or 0.0, item.evidence, False)
        verdict = "match" if strength_of(item.metrics) >= policy.MATCH else "partial"
        permutation = None
        if item.relation == "permute":
            order = item.rows if item.rows is not None else item.cols
            moved = float(np.mean(order != np.arange(len(order))))
            permutation = Permutation(0 if item.rows is not None else 1, order, 1.0, moved, item.pattern)
        selection = (item.rows, item.cols) if item.relation != "permute" else None
        out.append(
            Match(
                candidate,
                item.metrics,
                "exact",
                verdict,
                item.evidence,
                permutation=permutation,
                selection=selection,
            )
        )
    return out, structures


def _block_gathered_matches(
    a: IndexedModel, b: IndexedModel, matches: list[Match], p_threshold: float
) -> tuple[list[Match], Structures]:
    """Without the values: B's tensors made of whole sketch blocks of A's rows (``block_gather.py``)."""
    related = [m for m in matches if m.verdict != "different"]
    settled = _settled(b, related)
    taken_a = {m.candidate.a.key for m in related if m.candidate.b.key in settled}
    found, structures = gathered_matches(a, b, taken_a, settled, block_map(related), p_threshold)
    redone = {m.candidate.b.key for m in found}
    matches[:] = [m for m in matches if m.candidate.b.key not in redone]
    return found, structures


def _lineage(
    reader: ShardReader,
    a: IndexedModel,
    b: IndexedModel,
    matches: list[Match],
    comparable: bool,
    exact: bool,
    progress: Count | None = None,
) -> dict | None:
    """The lineage section, when no weight matrix of B is related to one of A and the widths
    differ (or no matrix shape is in common); two models of one width have no width change to
    look across: None."""
    if any(is_weight_matrix(b.rows[m.candidate.b.key]) and m.verdict != "different" for m in matches):
        return None
    if comparable and model_width(a) == model_width(b):
        return None
    if exact:
        return lineage.analyse(a, b, lambda model, key: whole_view(reader, model, key), progress)
    return lineage.analyse_sketches(a, b)


def block_map(matches: list[Match]) -> dict[int, int]:
    """For each numbered block of B, the block of A most of its related tensors come from."""
    votes: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for m in matches:
        a_block, b_block = block_of(m.candidate.a.key), block_of(m.candidate.b.key)
        if a_block is not None and b_block is not None:
            votes[b_block][a_block] += 1
    return {b_block: max(sorted(found), key=found.get) for b_block, found in votes.items()}


def _within_blocks(
    a: IndexedModel, b: IndexedModel, shortlist: Shortlist, matches: list[Match]
) -> tuple[list[Candidate], float]:
    """Tensors of B left unclaimed, looked for again where the related tensors around them say
    their source should be.

    Norms and biases of a few hundred values rarely clear a comparison-wide threshold when
    training moved them far, and a model's LayerNorm weights resemble each other across blocks.
    The related tensors give a map of blocks (B's block 3 is A's block 3) and of roles (B's
    ``blocks.#.attn.qkv.bias`` is A's ``layers.#.self_attn.q.bias``; unmapped roles keep their
    name): a tensor whose predicted source is a candidate is tested against it alone; one
    without, against the best of A's tensors of its shape in the mapped block, its p-value
    multiplied by how many there were (Bonferroni). These second looks form a family of their
    own, corrected with Benjamini-Hochberg at the same rate (the rates of the two families add
    up, to twice ``policy.FALSE_DISCOVERY_RATE`` at most). Returns the chosen candidates and the
    family's cut-off.
    """
    related = [m for m in matches if m.verdict != "different"]
    blocks, roles = block_map(related), role_map(related)
    used_a = {m.candidate.a.key for m in related}
    used_b = {m.candidate.b.key for m in related}
    shapes: dict[tuple[int | None, tuple[int, int]], int] = defaultdict(int)
    for key, row in a.rows.items():
        if row["supported"] and row["rows"] is not None:
            shapes[block_of(key), (int(row["rows"]), int(row["cols"]))] += 1
    looked: dict[str, Candidate] = {}
    for c in shortlist.candidates:
        if c.b.key in used_b or c.a.key in used_a or c.a.axis is not None or c.b.axis is not None:
            continue
        b_block = block_of(c.b.key)
        target = blocks.get(b_block) if b_block is not None else None
        if c.a.key == in_block(roles.get(role_of(c.b.key), role_of(c.b.key)), target):
            looks = 1
        elif target is not None and block_of(c.a.key) == target:
            looks = shapes[target, (int(b.rows[c.b.key]["rows"]), int(b.rows[c.b.key]["cols"]))]
        else:
            continue
        judged = replace(c, evidence=scaled(c.evidence, looks))
        if c.b.key not in looked or judged.evidence.p_value < looked[c.b.key].evidence.p_value:
            looked[c.b.key] = judged
    family = sum(1 for k, r in b.rows.items() if k not in used_b and r["supported"])
    p_values = [c.evidence.p_value for c in looked.values()]
    cut = false_discovery_threshold(p_values, max(family, len(looked)), policy.FALSE_DISCOVERY_RATE)
    chosen = []
    for c in sorted(looked.values(), key=lambda c: c.evidence.p_value):
        if c.evidence.p_value <= cut and c.a.key not in used_a:
            used_a.add(c.a.key)
            chosen.append(c)
    return chosen, cut


def role_map(matches: list[Match]) -> dict[str, str]:
    """For each role of B (``role_of``), the role of A most of its related tensors come from."""
    votes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in matches:
        if m.candidate.a.axis is None and m.candidate.b.axis is None:
            votes[role_of(m.candidate.b.key)][role_of(m.candidate.a.key)] += 1
    return {role: max(sorted(found), key=found.get) for role, found in votes.items()}


def _second_looks(
    reader: ShardReader,
    a: IndexedModel,
    b: IndexedModel,
    shortlist: Shortlist,
    matches: list[Match],
    p_threshold: float,
) -> list[Match]:
    """Weight matrices of B with no significant candidate get a second look from the values,
    which see far more than the fingerprints (a matrix that kept a correlation of 0.1 stands
    out): first their best candidate, then, for those still unclaimed, the A tensor the related
    tensors around them point to (``predicted_source``). Each p-value is multiplied by the
    number of candidates the B tensor had, so choosing costs what testing them all would
    (Bonferroni)."""
    found: list[Match] = []
    rounds = (
        lambda b_key: shortlist.best.get(b_key),
        lambda b_key: _whole_candidate(a, b, predicted_source(a, b_key, matches + found), b_key),
    )
    for pick in rounds:
        used_a = {m.candidate.a.key for m in matches + found if m.verdict != "different"}
        used_b = {m.candidate.b.key for m in matches + found if m.verdict != "different"}
        for b_key in sorted(shortlist.best):
            candidate = None if b_key in used_b else pick(b_key)
            if candidate is None or candidate.a.key in used_a or candidate.identical:
                continue
            metrics = exact_metrics(reader, a, b, candidate)
            verdict, proof = judge(candidate, metrics, p_threshold, looks=shortlist.looks.get(b_key, 1))
            if verdict != "different":
                used_a.add(candidate.a.key)
                found.append(Match(candidate, metrics, "exact", verdict, proof))
    return found


def predicted_source(a: IndexedModel, b_key: str, matches: list[Match]) -> str | None:
    """The A tensor the related tensors point to for ``b_key``: its role mapped as theirs are
    (``role_map``; unmapped roles keep their name), in the block its block maps to."""
    related = [m for m in matches if m.verdict != "different"]
    block = block_of(b_key)
    target = block_map(related).get(block) if block is not None else None
    if block is not None and target is None:
        return None
    role = role_of(b_key)
    key = in_block(role_map(related).get(role, role), target)
    return key if key in a.rows else None


def _whole_candidate(a: IndexedModel, b: IndexedModel, a_key: str | None, b_key: str) -> Candidate | None:
    """The whole-tensor candidate of two tensors of one view (or transposed), judged from their
    fingerprints; None when their views do not fit."""
    if a_key is None:
        return None
    row_a, row_b = a.rows[a_key], b.rows[b_key]
    if not (row_a["std"] and row_b["std"]):
        return None
    if (row_a["rows"], row_a["cols"]) == (row_b["rows"], row_b["cols"]):
        relation = "same"
    elif (row_a["rows"], row_a["cols"]) == (row_b["cols"], row_b["rows"]):
        relation = "transpose"
    else:
        return None
    return next(pair_candidates(row_a, row_b, relation), None)


def _constant_matches(
    a: IndexedModel, b: IndexedModel, pairs: list[tuple[str, str]], matches: list[Match]
) -> list[Match]:
    """Byte-identical constant tensors (zero biases, LayerNorm weights of ones) are the same in
    unrelated models, so they are paired only when other tensors show the models are related:
    one to one, the same key first. They stay ``weak_evidence`` and decide nothing."""
    if not any(m.verdict != "different" for m in matches):
        return []
    used_a = {m.candidate.a.key for m in matches}
    used_b = {m.candidate.b.key for m in matches}
    found = []
    for a_key, b_key in sorted(pairs, key=lambda pair: (pair[0] != pair[1], pair[1], pair[0])):
        if a_key in used_a or b_key in used_b:
            continue
        used_a.add(a_key)
        used_b.add(b_key)
        candidate = Candidate(Region(a_key), Region(b_key), "same", 1.0, EQUAL_BYTES, True)
        metrics = pair_metrics(int(b.rows[b_key]["numel"]), 0, 0, 0, 0, 0, 0, 0.0, 1.0)
        found.append(Match(candidate, metrics, "exact", "match", EQUAL_BYTES))
    return found


def _phase(progress: Callable[[str, int, int], None] | None, phase: str) -> Count | None:
    """``progress`` for one phase: called with (done, total)."""
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


def _score_candidates(
    a: IndexedModel, b: IndexedModel, exhaustive: bool = False, progress: Count | None = None
) -> Shortlist:
    """Every pair ``candidates.candidate_pairs`` proposes, judged from the fingerprints."""
    proposed = candidate_pairs(a, b, exhaustive)
    pairs = proposed.pairs
    every = max(1, len(pairs) // 200)  # a few hundred updates at most
    sketches: dict[tuple[str, str], Sketches] = {}

    def sketch(side: str, key: str) -> Sketches:
        if (side, key) not in sketches:
            sketches[side, key] = Sketches.from_row((a if side == "a" else b).rows[key])
        return sketches[side, key]

    ranks = _RankCache(a, b)
    kept: list[Candidate] = []
    tests = proposed.skipped  # pairs left out of a large group count as tests found null
    tally = _Tally()
    comparable = False
    constant: list[tuple[str, str]] = []
    best: dict[str, Candidate] = {}
    looks: dict[str, int] = defaultdict(int)
    looks_a: dict[str, int] = defaultdict(int)
    for done, (a_key, b_key, relation, identical) in enumerate(pairs):
        if progress is not None and done % every == 0:
            progress(done, len(pairs))
        row_a, row_b = a.rows[a_key], b.rows[b_key]
        matrices = is_weight_matrix(row_a) and is_weight_matrix(row_b)
        comparable |= matrices and relation in ("same", "transpose")
        if not (row_a["std"] and row_b["std"]):  # constant (or no finite value): no evidence
            if identical or _same_constant(row_a, row_b, relation):
                constant.append((a_key, b_key))
            continue
        if identical:
            found: Iterator[Candidate] = iter(
                [Candidate(Region(a_key), Region(b_key), relation, 1.0, EQUAL_BYTES, True)]
            )
        elif relation == "same" and int(row_a["cols"]) == 1:
            found = _vector_candidates(row_a, row_b, ranks)
        else:
            found = _candidates(
                a_key,
                b_key,
                row_a,
                row_b,
                sketch("a", a_key),
                sketch("b", b_key),
                relation,
                ranks,
                tally if matrices else None,
            )
        tests += 1  # a slice pair's offsets are corrected within the pair (``scaled``)
        looks[b_key] += 1
        looks_a[a_key] += 1
        for candidate in found:
            whole = matrices and relation in ("same", "transpose") and not candidate.identical
            if whole and (b_key not in best or candidate.evidence.p_value < best[b_key].evidence.p_value):
                best[b_key] = candidate
            if candidate.identical or candidate.evidence.p_value <= policy.FALSE_DISCOVERY_RATE:
                kept.append(candidate)
    if progress is not None:
        progress(len(pairs), len(pairs))
    return Shortlist(
        kept, tests, tally.strongest, tally.sizes(), comparable, constant, best, dict(looks), dict(looks_a)
    )


@dataclass
class _Tally:
    """What every weight-matrix test adds up to, candidate or not: the largest z and the fewest
    and most values a test covered."""

    strongest: float | None = None
    fewest: int | None = None
    most: int | None = None

    def add(self, z: float, values: int) -> None:
        self.strongest = z if self.strongest is None else max(self.strongest, z)
        self.fewest = values if self.fewest is None else min(self.fewest, values)
        self.most = values if self.most is None else max(self.most, values)

    def sizes(self) -> tuple[int, int] | None:
        return None if self.fewest is None or self.most is None else (self.fewest, self.most)


def _same_constant(row_a: IndexRow, row_b: IndexRow, relation: str) -> bool:
    """Both tensors hold one value, the same one (zeros in F32 and in BF16, say)."""
    return (
        relation == "same"
        and row_a["std"] == 0
        and row_b["std"] == 0
        and row_a["min"] == row_b["min"]
        and row_a["finite"] == row_a["numel"]
        and row_b["finite"] == row_b["numel"]
    )


def pair_candidates(
    row_a: IndexRow, row_b: IndexRow, relation: str, sa: Sketches | None = None, sb: Sketches | None = None
) -> Iterator[Candidate]:
    """The pair of index rows under ``relation`` (see ``queries/candidate_groups.sql``) judged
    from their fingerprints, in full (no pair is passed over as clearly null, as a comparison
    does): one candidate for a whole tensor, one per plausible offset for a slice, none when
    nothing can be judged. ``sa``, ``sb``: the rows' sketches, if at hand."""
    if relation == "same" and int(row_a["cols"]) == 1:
        return _vector_candidates(row_a, row_b, None)
    sa = sa or Sketches.from_row(row_a)
    sb = sb or Sketches.from_row(row_b)
    return _candidates(row_a["key"], row_b["key"], row_a, row_b, sa, sb, relation, screen=False)


def _dot64(x: np.ndarray, y: np.ndarray) -> float:
    """The dot product of two float32 unit vectors, summed in float64 and kept within [-1, 1]."""
    return max(-1.0, min(1.0, float(x.astype(np.float64) @ y.astype(np.float64))))


class _RankCache:
    """Each tensor's sample ranks (``significance.unit_ranks``), computed once: two tensors of one
    view (or transposed views) share their sample lattice, so their rank correlation is one dot
    product."""

    _LATTICE = ("sample_rows", "sample_cols", "sample_stride_rows", "sample_stride_cols")

    def __init__(self, a: IndexedModel, b: IndexedModel) -> None:
        self.models = {"a": a, "b": b}
        self.found: dict[tuple[str, str, bool], np.ndarray | None] = {}

    def ranks(self, side: str, key: str, transposed: bool = False) -> np.ndarray | None:
        if (side, key, transposed) not in self.found:
            row = self.models[side].rows[key]
            grid = np.asarray(row["sample"], dtype=np.float64).reshape(row["sample_rows"], row["sample_cols"])
            ranks = unit_ranks(grid.T if transposed else grid)
            # Kept as float32: 18,528 tensors a side of 1,024 samples (Qwen3-30B-A3B's experts)
            # would hold 300 MB as float64; the correlation moves by ~1e-7.
            self.found[side, key, transposed] = None if ranks is None else ranks.astype(np.float32)
        return self.found[side, key, transposed]

    def _rank_pair(
        self, row_a: IndexRow, row_b: IndexRow, transposed: bool
    ) -> tuple[np.ndarray, np.ndarray] | bool | None:
        """Both tensors' sample ranks; False when their sample lattices differ (B's transposed
        with ``transposed``), None when a grid is constant."""
        lattice_a = [row_a[k] for k in self._LATTICE]
        lattice_b = [row_b[k] for k in self._LATTICE]
        if transposed:
            lattice_b = [lattice_b[1], lattice_b[0], lattice_b[3], lattice_b[2]]
        if lattice_a != lattice_b:
            return False
        ra, rb = self.ranks("a", row_a["key"]), self.ranks("b", row_b["key"], transposed)
        return None if ra is None or rb is None else (ra, rb)

    def correlation(
        self, row_a: IndexRow, row_b: IndexRow, transposed: bool = False
    ) -> tuple[float, int] | None:
        """The samples' rank correlation and free values, or None when the lattices differ or a
        grid is constant."""
        pair = self._rank_pair(row_a, row_b, transposed)
        if not isinstance(pair, tuple):
            return None
        return _dot64(*pair), grid_values((int(row_a["sample_rows"]), int(row_a["sample_cols"])))

    def same_view(self, row_a: IndexRow, row_b: IndexRow, transposed: bool = False) -> Evidence | bool | None:
        """The samples' evidence of two tensors of one view (or B transposed); False when the
        lattices differ or the pair may be claimed (the grids are then judged in full, shuffles
        included)."""
        pair = self._rank_pair(row_a, row_b, transposed)
        if not isinstance(pair, tuple):
            return pair
        shape = (int(row_a["sample_rows"]), int(row_a["sample_cols"]))
        found = evidence("sample", _dot64(*pair), grid_values(shape))
        return False if found is not None and found.p_value <= SHUFFLE_BELOW_P else found


def _vector_candidates(row_a: IndexRow, row_b: IndexRow, ranks: _RankCache | None) -> Iterator[Candidate]:
    """A vector's sketch sees only variation inside blocks of 16 values, which misses smooth
    vectors (position ids); its sample holds up to 1,024 of its values: judged by their ranks.
    With ``ranks`` (a comparison), clearly null pairs are passed over."""
    region_a, region_b = Region(row_a["key"]), Region(row_b["key"])
    quick = ranks.same_view(row_a, row_b) if ranks is not None else False
    if quick is not False and (quick is None or quick.z < _CLEARLY_NULL_Z):
        return  # clearly unrelated: not worth the rest
    va, vb = aligned_samples(row_a, row_b, region_a, region_b, "same")
    proof = sample_evidence(va, vb)
    estimate = _pearson(va.ravel(), vb.ravel())
    if proof is not None and estimate is not None:
        yield Candidate(region_a, region_b, "same", estimate, proof, False, va.size)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 4:
        return None
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.sqrt((x @ x) * (y @ y)))
    return float(x @ y) / norm if norm > 0 else None


def _candidates(
    a_key: str,
    b_key: str,
    row_a: IndexRow,
    row_b: IndexRow,
    sa: Sketches,
    sb: Sketches,
    relation: str,
    ranks: _RankCache | None = None,
    tally: _Tally | None = None,
    screen: bool = True,
) -> Iterator[Candidate]:
    """The pair (or, for slices, each offset where a part of a concatenation can sit: the start,
    the end, or a multiple of its own length, which covers q/k/v of one size, GQA's q + k + v,
    gate + up, k + v) with its estimate and evidence: the sketches, combined with the samples
    where both lattices line up. Runs that go head by head are the structured search's. A
    weight-matrix pair adds its z to ``tally``; a whole pair below ``_WORTH_A_LOOK_Z`` and
    offsets below the clearly-null bar are not made candidates (no threshold or second look
    could take them)."""
    if relation in ("same", "transpose"):
        estimate = same_layout(sa, sb) if relation == "same" else transposed(sa, sb)
        sizes = layout_parts(sa, sb, relation)
        cheap = _cheap_z(sizes, ranks, row_a, row_b, relation == "transpose") if screen else None
        if cheap is not None and cheap[0] < _WORTH_A_LOOK_Z - _CHEAP_MARGIN:
            if tally is not None:  # clearly nothing: counted, no objects made
                tally.add(*cheap)
            return
        parts = [evidence("sketch", r, n) for r, n in sizes]
        region_a, region_b = Region(a_key), Region(b_key)
        quick = ranks.same_view(row_a, row_b, relation == "transpose") if ranks is not None else False
        if quick is not False:
            proof = combined(weakest(*parts), quick)
            capacity = max([n for _, n in sizes] + [int(row_a["sample_rows"]) * int(row_a["sample_cols"])])
        else:
            samples = aligned_samples(row_a, row_b, region_a, region_b, relation)
            proof = _with_sample(weakest(*parts), samples)
            capacity = max([n for _, n in sizes] + [samples[0].size])
        if proof is None or estimate is None:
            return
        if tally is not None:
            tally.add(proof.z, proof.values)
        if proof.z >= _WORTH_A_LOOK_Z or not screen:
            yield Candidate(region_a, region_b, relation, estimate, proof, False, capacity)
        return
    axis = 0 if relation.endswith("rows") else 1
    part, whole = (sa, sb) if relation.startswith("a_in_b") else (sb, sa)
    part_len = part.rows if axis == 0 else part.cols
    whole_len = whole.rows if axis == 0 else whole.cols
    step = max(BLOCK, math.gcd(part_len, whole_len) // BLOCK * BLOCK)
    starts, estimates = slice_scan(part, whole, axis, step)
    plausible = (starts == 0) | (starts == whole_len - part_len) | (starts % part_len == 0)
    starts, estimates = starts[plausible], estimates[plausible]
    values = slice_values(part, axis)
    offsets = len(starts)
    if offsets and values >= policy.MIN_EVIDENCE_VALUES:
        # Offsets whose sketch is clearly null cannot be claimed: dropped before any object is
        # made (a small sketch, whose samples are as small, with a lower bar). The best offset
        # always stays: it is the pair's strongest test.
        fisher = np.arctanh(np.clip(np.abs(estimates), 0.0, 1 - 1e-12)) * math.sqrt(values - 3)
        fisher /= policy.NULL_INFLATION
        if tally is not None:  # Fisher's z: what the exact test gives below 3, where no claim is
            tally.add(z_from_p(min(1.0, p_from_z(float(fisher.max())) * offsets)), values)
        bar = _CLEARLY_NULL_Z if values >= _SAMPLE_WORTH_VALUES else _SMALL_SKETCH_Z
        keep = (fisher >= bar) | (not screen)
        starts, estimates = starts[keep], estimates[keep]
    for start, estimate in zip(starts.tolist(), estimates.tolist(), strict=True):
        region = (start, start + part_len)
        if relation.startswith("a_in_b"):
            region_a, region_b = Region(a_key), Region(b_key, axis, *region)
        else:
            region_a, region_b = Region(a_key, axis, *region), Region(b_key)
        sketched = evidence("sketch", estimate, values)
        if sketched is not None and sketched.p_value > _SAMPLE_WORTH_P and values >= _SAMPLE_WORTH_VALUES:
            proof, capacity = sketched, values  # clearly unrelated at this offset: no need for samples
        else:
            samples = aligned_samples(row_a, row_b, region_a, region_b, relation)
            proof, capacity = _with_sample(sketched, samples), max(values, samples[0].size)
        if proof is not None:
            yield Candidate(region_a, region_b, relation, estimate, scaled(proof, offsets), False, capacity)


_WORTH_A_LOOK_Z = 1.28  # a whole pair under this z (one-sided p 0.1) gets no second look
_CHEAP_MARGIN = 0.05  # Fisher's z against the exact test's, below z = 3: under 1 % apart


def _cheap_z(
    sizes: list[tuple[float | None, int]],
    ranks: _RankCache | None,
    row_a: IndexRow,
    row_b: IndexRow,
    transposed: bool,
) -> tuple[float, int] | None:
    """The pair's combined z by Fisher's approximation, in floats (no evidence objects), and the
    values it covers; None when the samples' lattices differ (the full path then decides)."""
    sample = ranks.correlation(row_a, row_b, transposed) if ranks is not None else None
    if sample is None or sample[1] < policy.MIN_EVIDENCE_VALUES:
        return None
    r_sample, n_sample = sample
    parts = [
        (abs(_fisher(r, n)), n, r) for r, n in sizes if r is not None and n >= policy.MIN_EVIDENCE_VALUES
    ]
    z = _fisher(r_sample, n_sample)
    total = n_sample
    if parts:
        z_sketch, n_sketch, r_sketch = min(parts)  # the weaker sketch, as ``weakest``
        signed = math.copysign(z_sketch, r_sketch)
        z = (math.sqrt(n_sketch) * signed + math.sqrt(n_sample) * z) / math.sqrt(n_sketch + n_sample)
        total += n_sketch
    return abs(z) / policy.NULL_INFLATION, total


def _fisher(r: float, n: int) -> float:
    return math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r))) * math.sqrt(n - 3)


_SAMPLE_WORTH_P = 0.05  # slice offsets: samples are read only where the sketch is not clearly null
_CLEARLY_NULL_Z = 1.95  # the z of that p-value
_SMALL_SKETCH_Z = 1.65  # for sketches under _SAMPLE_WORTH_VALUES: a tenth of null offsets go on
_SAMPLE_WORTH_VALUES = 64  # ... or too small to judge


def _with_sample(sketched: Evidence | None, samples: tuple[np.ndarray, np.ndarray]) -> Evidence | None:
    """The sketch's evidence combined with the samples' (Spearman on the aligned samples). A
    sketch that is decisive on its own (p <= 1e-12) is taken alone: looking at the samples only
    when it is not adds at most 1e-12 to the error."""
    va, vb = samples
    if va.size < policy.MIN_EVIDENCE_VALUES:
        return sketched
    if sketched is not None and sketched.p_value <= _DECISIVE_P:
        return sketched
    return combined(sketched, sample_evidence(va, vb))


def _assign(candidates: list[Candidate], tie_key: Callable[[str], tuple]) -> list[Candidate]:
    """Greedy one-to-one over significant candidates: strongest estimates first; each region of
    A and of B used once.

    The exception is weights B really ties: a B tensor byte-identical to another B tensor
    may map to the A region that other one took (e.g. an embedding and a tied LM head).
    """

    ranked = sorted(
        candidates,
        key=lambda c: (not c.identical, -abs(c.estimate), c.relation != "same", c.b.key != c.a.key, c.b.key),
    )
    kept: list[Candidate] = []
    used_a: dict[str, list[tuple[Region, tuple]]] = defaultdict(list)
    used_b: dict[str, list[Region]] = defaultdict(list)
    for candidate in ranked:
        if any(candidate.b.overlaps(r) for r in used_b[candidate.b.key]):
            continue
        tie = (*tie_key(candidate.b.key), candidate.b.axis, candidate.b.start, candidate.relation)
        if any(candidate.a.overlaps(r) and t != tie for r, t in used_a[candidate.a.key]):
            continue
        kept.append(candidate)
        used_a[candidate.a.key].append((candidate.a, tie))
        used_b[candidate.b.key].append(candidate.b)
    return sorted(kept, key=lambda c: (c.b.key, c.b.start))


def _upcycled(significant: list[Candidate], kept: list[Candidate]) -> list[Candidate]:
    """Experts copied from one dense tensor (mixture-of-experts up-cycling, Komatsuzaki et al.
    2023, *Sparse Upcycling*): B tensors of an expert role (``naming.expert_role``) left without a
    partner, whose strongest significant candidate is the whole A tensor another expert of that
    role took. One A tensor is then the source of many B tensors; any other A tensor stays one
    B tensor's."""
    taken_b = {c.b.key for c in kept}
    sources: dict[str, set[str]] = defaultdict(set)  # expert role -> A tensors its experts took
    for c in kept:
        role = expert_role(c.b.key)
        if role is not None and c.a.axis is None and c.b.axis is None:
            sources[role].add(c.a.key)
    best: dict[str, Candidate] = {}
    for c in significant:
        role = expert_role(c.b.key)
        if c.b.key in taken_b or role is None or c.a.axis is not None or c.b.axis is not None:
            continue
        if c.a.key in sources.get(role, ()) and (
            c.b.key not in best or c.evidence.p_value < best[c.b.key].evidence.p_value
        ):
            best[c.b.key] = c
    return list(best.values())


def _transforms(a: IndexedModel, b: IndexedModel, match: Match) -> list[Transform]:
    c, ra, rb = match.candidate, a.rows[match.candidate.a.key], b.rows[match.candidate.b.key]
    steps = []
    if c.a.key != c.b.key:
        steps.append(Transform("rename"))
    stored_a = a.quantisation.get(c.a.key, ra["dtype"])
    stored_b = b.quantisation.get(c.b.key)
    if stored_b is not None:  # dequantised for the index: the step is the quantisation, not a cast
        steps.append(Transform("quantise", stored_b))
    elif stored_a != rb["dtype"]:
        steps.append(Transform("cast", f"{stored_a.lower()}->{rb['dtype'].lower()}"))
    if c.relation.startswith("permute"):
        steps.append(Transform("permute", "rows" if c.relation == "permute_rows" else "cols"))
    elif c.relation.startswith("gather"):
        steps.append(Transform("gather", str(c.b.axis)))
    elif c.relation == "select":
        rows, cols = match.selection or (None, None)
        steps += [
            Transform("select", axis) for axis, kept in (("rows", rows), ("cols", cols)) if kept is not None
        ]
    elif c.relation == "transpose":
        steps.append(Transform("transpose"))
    elif c.relation.startswith("a_in_b"):
        steps.append(Transform("concat", str(c.b.axis)))
    elif c.relation.startswith("b_in_a"):
        steps.append(Transform("split", str(c.a.axis)))
    elif list(ra["shape"]) != list(rb["shape"]):
        steps.append(Transform("reshape"))
    scale = match.metrics.scale
    if (
        scale is not None
        and match.strength >= policy.MATCH
        and abs(scale - 1) > policy.SCALE_TOLERANCE
        and not (stored_b is not None and abs(scale - 1) <= _quantisation_shrink(match.metrics))
    ):
        steps.append(Transform("scale", f"{scale:.4g}"))
    return steps


def _quantisation_shrink(metrics: PairMetrics) -> float:
    """How far from 1 quantisation alone can move the least-squares scale of B on A: with
    ``b = a + e``, ``|s − 1| = |⟨a, e⟩| / ‖a‖² ≤ ‖e‖ / ‖a‖`` (Cauchy–Schwarz), and ``‖e‖ / ‖a‖`` is
    about the residual left after the scale, ``√(1 − cos²) / |cos|``. Coarse grids shrink values
    (FP4's largest steps are at the largest values), so a quantised copy shows a scale of 0.97;
    within this bound the values cannot tell that from a real scale, and none is claimed."""
    return metrics.residual or 0.0


def compare_paths(
    a: Path | str,
    b: Path | str,
    *,
    names: tuple[str, str] | None = None,
    index_only: bool = False,
    cache: Path | None = None,
    reindex: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Report:
    """Compare two models given as index files or checkpoints (indexed on first use, then cached).

    With ``reindex``, an index whose checkpoint changed since it was built is rebuilt in place.
    ``progress`` is ``compare_indexes``'s, with the phases ``"indexing A"`` and ``"indexing B"``
    (tensors indexed, tensors) first when a checkpoint is indexed.
    """
    from weightidx.index.writer import IndexProgress, index_checkpoint

    sides = []
    for position, path in enumerate((Path(a), Path(b))):
        name = names[position] if names else None
        phase = f"indexing {'AB'[position]}"

        def indexed(done: IndexProgress, phase: str = phase) -> None:
            if progress is not None:
                progress(phase, done.tensors_done, done.tensors_total)

        index = path if is_index_file(path) else cached_index(path, cache, indexed)
        model = load_index(index, name)
        if reindex and model.stale_shards():
            index_checkpoint(model.source, index, name=model.name, progress=indexed)
            model = load_index(index, name)
        sides.append(model)
    return compare_indexes(sides[0], sides[1], index_only=index_only, progress=progress)
