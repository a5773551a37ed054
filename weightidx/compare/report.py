"""The compare report (schema_version 1): summary, scenario, plain-English verdict, blocks
and shapes, built from the kept matches; and reading / writing it as strict JSON."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weightidx import policy
from weightidx._version import __version__
from weightidx.compare.document import Lineage, MatchEntry, ModelEntry, Quantised, Report
from weightidx.compare.gather import compact
from weightidx.compare.significance import critical_correlation, z_from_p
from weightidx.errors import InputError
from weightidx.index.schema import IndexRow
from weightidx.io.atomic import atomic_path
from weightidx.naming import block_of, expert_role, natural_key
from weightidx.sql.runner import run_query

if TYPE_CHECKING:
    from weightidx.compare.engine import Shortlist
    from weightidx.compare.structure import Layout, Structures
    from weightidx.compare.types import Match
    from weightidx.index.reader import IndexedModel


def is_matrix(row: IndexRow) -> bool:
    """A weight matrix large enough for the Gram statistics of lineage (``policy.WEAK_NUMEL``)."""
    return is_weight_matrix(row) and int(row["numel"]) >= policy.WEAK_NUMEL


def is_weight_matrix(row: IndexRow) -> bool:
    """A tensor whose 2-D view has at least two rows and two columns, with decoded values: what
    the model-level shares count (1-D tensors, norms and biases, are counted apart)."""
    return (
        bool(row["supported"]) and row["rows"] is not None and int(row["rows"]) > 1 and int(row["cols"]) > 1
    )


def build_report(
    a: IndexedModel,
    b: IndexedModel,
    matches: list[Match],
    shortlist: Shortlist,
    p_threshold: float,
    lineage: Lineage | None,
    structures: Structures | None = None,
    warnings: list[str] | None = None,
) -> Report:
    """The JSON report (schema_version 1, ``document.Report``) from the kept matches;
    ``lineage`` is the section across a width change (None when there is none to make);
    ``structures`` what the structured search found (layouts of tensors from several of A's,
    pruned axes); ``warnings`` lines for the user (metrics estimated because a checkpoint is
    missing)."""
    layouts = structures.layouts if structures is not None else []
    matched_a = {m.candidate.a.key for m in matches if m.verdict != "different"}
    matched_b = {m.candidate.b.key for m in matches if m.verdict != "different"}
    cosines = [m.metrics.cosine for m in matches if m.metrics.cosine is not None]
    high, medium = policy.COSINE_HIGH, policy.COSINE_MEDIUM
    summary = {
        "mean_cosine_similarity": _clean(sum(cosines) / len(cosines)) if cosines else None,
        "high_similarity_count": sum(1 for m in matches if (m.metrics.cosine or 0) > high),
        "medium_similarity_count": sum(1 for m in matches if medium <= (m.metrics.cosine or 0) <= high),
        "low_similarity_count": sum(1 for m in matches if (m.metrics.cosine or 0) < medium),
        "matched_b_tensors": len(matched_b),
        "unmatched_a": len(set(a.rows) - matched_a),
        "unmatched_b": len(set(b.rows) - matched_b),
        **_facts(a, b, matches, shortlist, p_threshold),
    }
    summary["layouts"] = _layout_lines(layouts)
    summary["pruned"] = structures.pruned() if structures is not None else None
    summary["scenario"] = scenario_of(summary)
    summary["verdict"] = verdict_text(summary, a.name, b.name, lineage)
    report = {
        "schema_version": 1,
        "tool": {"name": "weightidx", "version": __version__},
        "models": {side: _model_json(model) for side, model in (("a", a), ("b", b))},
        "summary": summary,
        "warnings": list(warnings or []),
        "matches": [_match_json(a, b, m) for m in matches],
        "unmatched": {"a": sorted(set(a.rows) - matched_a), "b": sorted(set(b.rows) - matched_b)},
        "unmatched_reasons": _unmatched_reasons(a, b, matches, shortlist, p_threshold),
        "blocks": _blocks(matches),
        "shapes": [
            {"shape": list(shape), "a_count": ac, "b_count": bc}
            for shape, ac, bc in run_query("shape_table", [a.index, b.index]).fetchall()
        ],
    }
    if layouts:
        report["layouts"] = [{"b": layout.b_key, "text": layout.text} for layout in layouts]
    if lineage is not None:
        report["lineage"] = lineage
    return report


def _facts(
    a: IndexedModel, b: IndexedModel, matches: list[Match], shortlist: Shortlist, p_threshold: float
) -> dict:
    """What the verdict is generated from: counts, the degree, the transforms and the test."""
    b_matrices = [k for k, r in b.rows.items() if is_weight_matrix(r)]
    b_others = [k for k, r in b.rows.items() if r["supported"] and not is_weight_matrix(r)]
    related = [m for m in matches if m.verdict != "different"]
    on_matrices = [m for m in related if is_weight_matrix(b.rows[m.candidate.b.key])]
    covered = {m.candidate.b.key for m in on_matrices}
    matched = {m.candidate.b.key for m in on_matrices if m.verdict == "match"}
    degrees = [m.strength for m in on_matrices]
    # Estimated pairs whose samples do not line up say nothing about their values: not counted.
    quantised = [m for m in on_matrices if any(t.kind == "quantise" for t in m.transform)]
    # A quantised tensor differs from A's by the quantisation: not counted as changed by training,
    # unless it differs by more than that quantisation leaves.
    beyond = [m for m in quantised if _beyond_quantisation(m)]
    moved = [
        m
        for m in on_matrices
        if not _equal_values(m) and m.metrics.max_abs_diff is not None and (m not in quantised or m in beyond)
    ]
    strongest = shortlist.strongest_z
    threshold = p_threshold
    sizes = shortlist.matrix_values
    kinds = sorted({t.kind for m in related for t in m.transform})
    return {
        "matrices": {
            "b": len(b_matrices),
            "related": len(covered),
            "match": len(matched),
            "partial": len(covered - matched),
        },
        "other_tensors": {
            "b": len(b_others),
            "related": len({m.candidate.b.key for m in related} - covered),
        },
        "correlation_range": [_round(min(degrees)), _round(max(degrees))] if degrees else None,
        "changed_values": {
            "matrices": len({m.candidate.b.key for m in moved}),
            "largest_relative_l2": _round(max((_distance(m) for m in moved), default=0.0)),
        },
        "quantised": _quantised(quantised, beyond),
        "weakest_z": _round(min(m.proof.z for m in on_matrices), 1) if on_matrices else None,
        "upcycled": _upcycled(related),
        "transforms": kinds,
        "identical": _identical(a, b, matches),
        "comparable": shortlist.comparable,
        "widths": [model_width(a), model_width(b)],
        "blocks": [_depth(a), _depth(b)],
        "significance": {
            "method": "Benjamini-Hochberg",
            "false_discovery_rate": policy.FALSE_DISCOVERY_RATE,
            "null_inflation": policy.NULL_INFLATION,
            "tests": shortlist.tests,
            "p_threshold": float(f"{threshold:.4g}"),
            "z_threshold": _round(z_from_p(threshold), 2),
            "strongest_matrix_z": None if strongest is None else _round(strongest, 1),
            "detectable_correlation": [_round(critical_correlation(size, threshold), 3) for size in sizes]
            if sizes
            else None,
        },
    }


#: Why a tensor is left unmatched, in the order they are checked (``_unmatched_reason``).
UNMATCHED_REASONS = {
    "dtype": "its dtype is not decoded",
    "constant": "constant (or no finite value): its values carry no evidence",
    "no_candidate": "no tensor of the other model has a compatible shape",
    "rejected": "its candidate did not hold up when the values were checked",
    "taken": "its candidates went to stronger matches",
    "null": "candidates were tested, none above the null",
}


def _unmatched_reasons(
    a: IndexedModel, b: IndexedModel, matches: list[Match], shortlist: Shortlist, p_threshold: float
) -> dict[str, dict[str, str]]:
    """For each side, each unmatched tensor -> the key of its reason in ``UNMATCHED_REASONS``."""
    related = [m for m in matches if m.verdict != "different"]
    out = {}
    for side, model, looks in (("a", a, shortlist.looks_a), ("b", b, shortlist.looks)):
        matched = {getattr(m.candidate, side).key for m in related}
        rejected = {getattr(m.candidate, side).key for m in matches if m.verdict == "different"}
        significant = {
            getattr(c, side).key
            for c in shortlist.candidates
            if c.identical or c.evidence.p_value <= p_threshold
        }
        reasons = {}
        for key in sorted(set(model.rows) - matched, key=natural_key):
            row = model.rows[key]
            if not row["supported"]:
                reasons[key] = "dtype"
            elif not row["std"]:
                reasons[key] = "constant"
            elif key in rejected:
                reasons[key] = "rejected"
            elif key in significant:
                reasons[key] = "taken"
            elif looks.get(key, 0):
                reasons[key] = "null"
            else:
                reasons[key] = "no_candidate"
        out[side] = reasons
    return out


def _upcycled(related: list[Match]) -> dict | None:
    """The summary's ``upcycled``: B's experts that derive from a dense tensor of A several
    experts share (``engine._upcycled``), as counts and one example; None when there are none."""
    by_source: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m in related:
        role = expert_role(m.candidate.b.key)
        if role is not None and m.candidate.a.axis is None and m.candidate.b.axis is None:
            by_source[m.candidate.a.key, role].append(m.candidate.b.key)
    shared = {source: experts for source, experts in by_source.items() if len(experts) > 1}
    if not shared:
        return None
    counts = [len(experts) for experts in shared.values()]
    (a_key, role) = min(shared, key=lambda source: natural_key(source[1]))
    return {
        "sources": len(shared),
        "experts": sum(counts),
        "per_source": [min(counts), max(counts)],
        "example": {"a": a_key, "b": role},
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _scheme(m: Match) -> str:
    return next(t.parameter or "" for t in m.transform if t.kind == "quantise")


def _residual(m: Match) -> float | None:
    """B's distance from A once a scale is taken out (``PairMetrics.residual``: the relative L2
    error for a plain quantised copy, the error alone when B is also scaled); None for metrics
    estimated from samples, which make no claim."""
    return None if m.metrics.max_abs_diff is None else m.metrics.residual


def _distance(m: Match) -> float:
    """How far B's values are from A's: the relative L2 distance, after the scale when the
    match has one (a scaled copy is not a change of values)."""
    if any(t.kind == "scale" for t in m.transform):
        return _residual(m) or 0.0
    return m.metrics.relative_l2 or 0.0


def _beyond_quantisation(m: Match) -> bool:
    """Whether B differs from A by more than its quantisation leaves on real weights
    (``policy.quantisation_error``): then it was changed before it was quantised."""
    bound, residual = policy.quantisation_error(_scheme(m)), _residual(m)
    return bound is not None and residual is not None and residual > bound


def _quantised(quantised: list[Match], beyond: list[Match]) -> Quantised:
    """How many related matrices of B are stored quantised, in which types, how far from A, and
    how many of them further than their quantisation leaves (``beyond``)."""
    types = {_scheme(m) for m in quantised}
    bounds = [policy.quantisation_error(t) for t in types]
    return {
        "matrices": len({m.candidate.b.key for m in quantised}),
        "types": sorted(types),
        "largest_relative_l2": _round(max((m.metrics.relative_l2 or 0.0 for m in quantised), default=0.0)),
        "expected_relative_l2": _round(max(bounds)) if bounds and None not in bounds else None,
        "beyond_expected": len({m.candidate.b.key for m in beyond}),
        "largest_residual_beyond": _round(max((_residual(m) or 0.0 for m in beyond), default=0.0)),
    }


def _equal_values(m: Match) -> bool:
    """B's values are A's, bytes or values after the cast (or a reordering, or equal constants),
    or A's times the match's scale up to rounding (``policy.SCALE_RESIDUAL``)."""
    metrics = m.metrics
    if m.candidate.identical or metrics.max_abs_diff == 0 or metrics.equal_after_cast == 1.0:
        return True
    scaled = any(t.kind == "scale" for t in m.transform)
    residual = _residual(m)
    return scaled and residual is not None and residual <= policy.SCALE_RESIDUAL


def _identical(a: IndexedModel, b: IndexedModel, matches: list[Match]) -> bool:
    """Every tensor of B is A's under the same name, byte for byte: no transform at all (a
    reordering or a cast can leave ``max_abs_diff`` 0 once undone, but the bytes differ)."""
    return len(a.rows) == len(b.rows) == len(matches) and all(
        m.candidate.a.key == m.candidate.b.key and m.metrics.max_abs_diff == 0 and not m.transform
        for m in matches
    )


def scenario_of(summary: dict) -> str:
    """The model-level scenario from the summary's facts (the table in docs/concepts/compare.md)."""
    matrices = summary["matrices"]
    if summary["identical"]:
        return "identical"
    if matrices["related"] == 0:
        return "unrelated" if summary["comparable"] else "incompatible"
    if matrices["related"] < policy.MAJORITY * matrices["b"]:
        return "partially_related"
    if summary.get("pruned") and "select" in summary["transforms"]:
        return "pruned"
    if matrices["partial"] * 2 >= matrices["related"]:
        return "fine_tuned"
    if set(summary["transforms"]) & _RESHAPING:
        return "transformed"
    return "copied"


_RESHAPING = {"concat", "split", "reshape", "scale", "permute", "transpose", "gather", "select"}


def verdict_text(summary: dict, a_name: str, b_name: str, lineage: dict | None) -> str:
    """The plain-English verdict, every sentence generated from the summary's facts."""
    scenario = summary["scenario"]
    if scenario == "identical":
        text = f"{b_name} is {a_name}: the same tensors under the same names, byte for byte."
    elif scenario == "unrelated":
        text = _unrelated_text(summary, a_name, b_name)
    elif scenario == "incompatible":
        text = _incompatible_text(summary, a_name, b_name)
    else:
        text = _related_text(summary, a_name, b_name)
    if lineage is not None:
        text += " Across the width change: " + lineage["verdict"]
    return text


def _related_text(summary: dict, a_name: str, b_name: str) -> str:
    scenario, matrices = summary["scenario"], summary["matrices"]
    low, high = summary["correlation_range"]
    test = summary["significance"]
    lead = "shares part of" if scenario == "partially_related" else "derives from"
    sentences = [_pruned_text(summary, a_name, b_name)] if scenario == "pruned" else []
    sentences += [
        f"{b_name} {lead} {a_name} ({scenario.replace('_', ' ')}): {matrices['related']} of "
        f"{matrices['b']} weight matrices (2-D tensors) of B are significantly related to A's "
        f"({matrices['match']} match, {matrices['partial']} partial; correlation {_range(low, high)}; "
        f"weakest z = {summary['weakest_z']}, threshold z = {test['z_threshold']})."
    ]
    others = summary["other_tensors"]
    if others["b"]:
        sentences.append(
            f"{others['related']} of B's {others['b']} other tensors (1-D: norms, biases) trace back too."
        )
    if scenario == "partially_related":
        rest = matrices["b"] - matrices["related"]
        sentences.append(
            f"The other {rest} weight matrices show no significant relation to A's: re-initialised, "
            "trained anew, or moved further than the tests can see."
        )
    changed = summary["changed_values"]
    if matrices["partial"]:
        further = ": B was trained further from A" if scenario == "fine_tuned" else ""
        sentences.append(
            f"{matrices['partial']} of them were changed by training (correlation below {policy.MATCH}, "
            f"still far beyond chance){further}."
        )
    elif changed["matrices"]:
        sentences.append(
            f"{changed['matrices']} of them differ from A's in value beyond the cast (relative L2 up to "
            f"{changed['largest_relative_l2']:.2g}): lightly trained after the copy."
        )
    sentences += _quantised_text(summary.get("quantised") or {"matrices": 0})
    upcycled = summary.get("upcycled")
    if upcycled:
        low, high = upcycled["per_source"]
        each = str(low) if low == high else f"{low} to {high}"
        example = upcycled["example"]
        sentences.append(
            f"Up-cycled: {upcycled['experts']} expert tensors of B derive from {upcycled['sources']} dense "
            f"tensor{'s' if upcycled['sources'] != 1 else ''} of A, {each} experts each "
            f"(e.g. {example['b']} from {example['a']})."
        )
    sentences.append(_how_text(summary["transforms"]))
    sentences += [f"{line}." for line in summary.get("layouts", [])]
    sentences.append(_lora_text(summary))
    return " ".join(sentences)


def _quantised_text(quantised: dict) -> list[str]:
    """The quantisation sentences: how many matrices, in which types, how far from A against
    what the types leave on real weights (``policy.QUANTISATION_ERROR``)."""
    if not quantised["matrices"]:
        return []
    stored = (
        f"{quantised['matrices']} of them are stored quantised ({', '.join(quantised['types'])}) and "
        f"differ from A's by up to relative L2 {quantised['largest_relative_l2']:.2g}"
    )
    expected = quantised.get("expected_relative_l2")
    beyond = quantised.get("beyond_expected", 0)
    if expected is None:
        return [f"{stored}; how much of that is quantisation the values do not tell."]
    if not beyond:
        leave = "these types leave" if len(quantised["types"]) > 1 else "this type leaves"
        return [
            f"{stored}, within what {leave} on real weights (up to {expected:.2g}); a change smaller "
            "than that the values cannot rule out."
        ]
    return [
        f"{stored}. {beyond} of them differ by more than their quantisation leaves (relative L2 up to "
        f"{quantised['largest_residual_beyond']:.2g} after any scale, against at most {expected:.2g}): "
        "changed before they were quantised."
    ]


def _layout_lines(layouts: Sequence[Layout]) -> list[str]:
    """One line per distinct layout: the tensors laid out that way (the first named) and how."""
    by_text: dict[str, list[str]] = defaultdict(list)
    for layout in layouts:
        by_text[layout.text].append(layout.b_key)
    lines = []
    for text, keys in by_text.items():
        more = f" and {_count(len(keys) - 1, 'other', 'others')} alike" if len(keys) > 1 else ""
        lines.append(f"{keys[0]}{more}: {text}")
    return lines


def _pruned_text(summary: dict, a_name: str, b_name: str) -> str:
    """``B is A pruned: hidden width 384 -> 256 (...), 8 of 12 heads of 32 and 1,024 of 1,536
    units in each of 6 blocks, then changed (correlation 0.99-1.00).``"""
    pruned = summary["pruned"]
    parts = []
    hidden = pruned["hidden"]
    if hidden is not None:
        kept, of = f"{hidden['kept']:,}", f"{hidden['of']:,}"
        order = "in order" if hidden["in_order"] else "reordered"
        parts.append(f"hidden width {of} → {kept} ({kept} of {of} channels kept, {order})")
    for axis in pruned["per_block"]:
        where = f"in {_count(axis['blocks'], 'block', 'blocks')}"
        if axis["head_size"]:
            size = axis["head_size"]
            parts.append(f"{axis['kept'] // size} of {axis['of'] // size} heads of {size} {where}")
        else:
            parts.append(f"{axis['kept']:,} of {axis['of']:,} units {where}")
    low, high = summary["correlation_range"]
    change = (
        "values kept"
        if summary["changed_values"]["matrices"] == 0
        else f"then changed (correlation {_range(low, high)})"
    )
    return f"{b_name} is {a_name} pruned: {'; '.join(parts)}; {change}."


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _range(low: float, high: float) -> str:
    return f"{low:.2f}" if round(low, 2) == round(high, 2) else f"{low:.2f}–{high:.2f}"


def _how_text(kinds: list[str]) -> str:
    if not kinds:
        return "Keys and layouts are unchanged."
    named = [kind for kind in kinds if kind != "rename"]
    keys = "Keys were renamed" if "rename" in kinds else "Keys are unchanged"
    return f"{keys}; transforms: {', '.join(named)}." if named else f"{keys}; no other transform."


def _lora_text(summary: dict) -> str:
    kinds = set(summary["transforms"]) - {"rename", "cast", "quantise"}  # storage: a LoRA applies as it is
    matrices = summary["matrices"]
    if summary["scenario"] == "partially_related":
        lead = f"A LoRA made for A converts to B only on the {matrices['related']} related weight matrices"
    elif not kinds:
        lead = (
            "A LoRA made for A converts to B by renaming keys"
            if "rename" in summary["transforms"]
            else "A LoRA made for A applies to B as it is"
        )
    else:
        lead = f"A LoRA made for A converts to B with these transforms ({', '.join(sorted(kinds))})"
    if matrices["partial"]:
        low = summary["correlation_range"][0]
        strength = "weakly" if low < _WEAK_TRANSFER else "less well"
        changed = _count(matrices["partial"], "changed matrix", "changed matrices")
        lead += f"; on the {changed} expect it to transfer {strength}"
    return lead + "."


_WEAK_TRANSFER = 0.5  # below this correlation most of a weight is new: a LoRA's delta lands on other weights


def _unrelated_text(summary: dict, a_name: str, b_name: str) -> str:
    test = summary["significance"]
    strongest = test["strongest_matrix_z"]
    found = f"the strongest at z = {strongest}" if strongest is not None else "none could be judged"
    detectable = [r for r in test["detectable_correlation"] or [] if r is not None]
    power = ""
    if detectable:
        reach = _range(min(detectable), max(detectable))
        power = f" At these sizes a weight matrix that kept a correlation of {reach} or more would be found."
    return (
        f"No weight matrix of {b_name} is significantly related to one of {a_name}: {test['tests']} pairs "
        f"were tested, {found} (threshold z = {test['z_threshold']}, false discovery rate "
        f"{test['false_discovery_rate']:g}).{power} B's weights show no sign of derivation from A's: "
        "trained independently, re-initialised, or moved further than the tests can see. "
        "A LoRA made for A cannot be converted to B."
    )


def _model_json(model: IndexedModel) -> ModelEntry:
    return {
        "name": model.name,
        "index": str(model.index),
        "source": model.source,
        "tensors": len(model.rows),
        "parameters": model.parameters,
        "bytes": model.bytes,
    }


def _clean(value: float | None) -> float | None:
    """Strict JSON: no NaN or Inf."""
    return None if value is None or not math.isfinite(value) else float(value)


def _match_json(a: IndexedModel, b: IndexedModel, m: Match) -> MatchEntry:
    metrics = m.metrics
    identical = bool(
        m.candidate.identical
        or (
            m.candidate.relation == "same"
            and metrics.max_abs_diff == 0
            and a.rows[m.candidate.a.key]["dtype"] == b.rows[m.candidate.b.key]["dtype"]
        )
    )
    entry = {
        "b": m.candidate.b.as_json(),
        "a": m.candidate.a.as_json(),
        "transform": [str(t) for t in m.transform],
        "cosine": _clean(metrics.cosine),
        "correlation": _clean(metrics.correlation),
        "relative_l2": _clean(metrics.relative_l2),
        "scale": _clean(metrics.scale),
        "z_score": _clean(m.proof.z),
        "max_abs_diff": _clean(metrics.max_abs_diff),
        "equal_after_cast": _clean(metrics.equal_after_cast),
        "identical": identical,
        "evidence": m.source,
        "significance": m.proof.as_json(),
        "screening": m.candidate.evidence.as_json(),
        "verdict": m.verdict,
        "weak_evidence": not is_matrix(b.rows[m.candidate.b.key]),
        "estimated_correlation": _clean(m.candidate.estimate),
    }
    if m.permutation is not None:
        entry["permutation"] = {
            "axis": m.permutation.axis,
            "order": m.permutation.order.tolist(),
            "one_to_one": m.permutation.one_to_one,
            "moved": m.permutation.moved,
            "pattern": m.permutation.pattern,
        }
    if m.selection is not None and any(kept is not None for kept in m.selection):
        rows, cols = m.selection
        entry["select"] = {
            "rows": None if rows is None else compact(rows),
            "cols": None if cols is None else compact(cols),
        }
    return entry


def _blocks(matches: list[Match]) -> list[dict]:
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for m in matches:
        a_block, b_block = block_of(m.candidate.a.key), block_of(m.candidate.b.key)
        if a_block is not None and b_block is not None and m.metrics.correlation is not None:
            cells[a_block, b_block].append(abs(m.metrics.correlation))
    return [
        {"a_block": ab, "b_block": bb, "tensors": len(v), "mean_correlation": _clean(sum(v) / len(v))}
        for (ab, bb), v in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def model_width(model: IndexedModel) -> int | None:
    """The most common axis size among the model's weight matrices: its hidden width."""
    dims: dict[int, int] = defaultdict(int)
    for r in model.rows.values():
        if is_matrix(r):
            dims[int(r["rows"])] += 1
            dims[int(r["cols"])] += 1
    return max(dims, key=dims.get) if dims else None


def _depth(model: IndexedModel) -> int:
    """How many numbered blocks the model's keys name."""
    return len({blk for k in model.rows if (blk := block_of(k)) is not None})


def _incompatible_text(summary: dict, a_name: str, b_name: str) -> str:
    (width_a, width_b), (depth_a, depth_b) = summary["widths"], summary["blocks"]
    return (
        f"No weight matrix of {b_name} has a shape compatible with one of {a_name}: hidden width "
        f"{width_a} vs {width_b}, {depth_a} vs {depth_b} blocks. Tensor-to-tensor matching cannot "
        "show derivation across a width change; LoRAs for A cannot be converted to B."
    )


def report_schema() -> dict:
    """The JSON Schema (draft 2020-12) every report this version writes conforms to, as shipped in
    ``weightidx/data/report.schema.json``."""
    from importlib import resources

    return json.loads(resources.files("weightidx.data").joinpath("report.schema.json").read_text("utf-8"))


def write_report(report: Report, out: Path | str) -> Path:
    """Write the report as strict JSON, atomically."""
    out = Path(out)
    with atomic_path(out) as temporary:
        temporary.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return out


def read_report(path: Path | str) -> Report:
    """A report written by ``write_report``; raises ``InputError`` for anything else."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:  # not UTF-8, or not JSON
        raise InputError(
            f"{path}: not a weightidx compare report (not JSON); give the file `weightidx compare -o` wrote"
        ) from None
    if not isinstance(report, dict) or report.get("schema_version") != 1 or "matches" not in report:
        raise InputError(f"{path}: not a weightidx compare report (schema_version 1)")
    return report
