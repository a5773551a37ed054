"""Check that a report's verdict says only what its matches and facts say.

``check_verdict(report)`` validates the report against the shipped JSON Schema, then re-derives
every count, range and claim of the verdict text from the match list and from B's index,
independently of the code that wrote them, and fails on the first sentence that does not follow.
"""

from __future__ import annotations

import functools
import json
import math
import re

import jsonschema

from weightidx import policy
from weightidx.compare.report import report_schema
from weightidx.index.reader import load_index


def _weight_matrix(row: dict) -> bool:
    return bool(row["supported"]) and row["rows"] is not None and row["rows"] > 1 and row["cols"] > 1


def _number(text: str, pattern: str) -> list[str]:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in {text!r}"
    return list(found.groups())


def recount(report: dict) -> dict:
    """The facts, counted again from the matches and B's index."""
    rows = load_index(report["models"]["b"]["index"]).rows
    matrices = {k for k, r in rows.items() if _weight_matrix(r)}
    others = {k for k, r in rows.items() if r["supported"] and k not in matrices}
    related = [m for m in report["matches"] if m["verdict"] != "different"]
    on_matrices = [m for m in related if m["b"]["key"] in matrices]
    strengths = [1.0 if m["max_abs_diff"] == 0 else abs(m["correlation"]) for m in on_matrices]
    kinds = {t.split(":")[0] for m in related for t in m["transform"]}
    return {
        "matrices": len(matrices),
        "related": len({m["b"]["key"] for m in on_matrices}),
        "match": len({m["b"]["key"] for m in on_matrices if m["verdict"] == "match"}),
        "others": len(others),
        "related_others": len({m["b"]["key"] for m in related} & others),
        "low": min(strengths, default=None),
        "high": max(strengths, default=None),
        "weakest_z": min((m["significance"]["z"] for m in on_matrices), default=None),
        "renamed": "rename" in kinds,
        "kinds": sorted(kinds - {"rename"}),
        "quantised": {
            m["b"]["key"]: t.split(":")[1]
            for m in on_matrices
            for t in m["transform"]
            if t.startswith("quantise:")
        },
        "quantised_beyond": {
            m["b"]["key"]
            for m in on_matrices
            for t in m["transform"]
            if t.startswith("quantise:") and _beyond(t.split(":")[1], m)
        },
        "whole_expert_matches": [
            (m["a"]["key"], m["b"]["key"])
            for m in related
            if m["a"]["slice"] is None and m["b"]["slice"] is None
        ],
    }


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = report_schema()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def check_schema(report: dict) -> None:
    """The report (as JSON would carry it) conforms to ``weightidx/data/report.schema.json``."""
    errors = sorted(_validator().iter_errors(json.loads(json.dumps(report))), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def check_verdict(report: dict) -> None:
    """The report conforms to the shipped JSON Schema, and every number and claim in
    ``report["summary"]["verdict"]`` follows from the report."""
    check_schema(report)
    summary, text = report["summary"], report["summary"]["verdict"]
    facts = recount(report)
    scenario = summary["scenario"]
    assert ("Across the width change" in text) == ("lineage" in report), text
    if "lineage" in report:
        assert report["lineage"]["verdict"] in text
    if scenario in ("unrelated", "incompatible"):
        assert facts["related"] == 0, "a related matrix, yet no relation claimed"
    if scenario == "unrelated":
        tests, strongest = _number(text, r": (\d+) pairs were tested, the strongest at z = ([-\d.]+)")
        assert int(tests) == summary["significance"]["tests"]
        assert float(strongest) == summary["significance"]["strongest_matrix_z"]
        (threshold,) = _number(text, r"threshold z = ([\d.]+)")
        assert float(threshold) == summary["significance"]["z_threshold"]
        assert float(strongest) < float(threshold), "the strongest pair would have been claimed"
    elif scenario == "incompatible":
        wa, wb, da, db = _number(text, r"hidden width (\w+) vs (\w+), (\d+) vs (\d+) blocks")
        assert [wa, wb] == [str(w) for w in summary["widths"]] and [int(da), int(db)] == summary["blocks"]
    elif scenario == "identical":  # "byte for byte": every tensor matched as it is
        assert "byte for byte" in text
        assert all(m["transform"] == [] and m["max_abs_diff"] == 0 for m in report["matches"]), text
    else:
        _check_related(text, summary, facts)


_EXPERT = re.compile(r"(?:^|\.)(?:experts|expert|local_experts)\.(\d+)\.")


def _check_upcycled(text: str, report_matches: list[tuple[str, str]]) -> None:
    """The up-cycling sentence, recounted: related whole-tensor matches grouped by A tensor and by
    B's key with its expert number blanked; groups of two or more are up-cycled experts."""
    groups: dict[tuple[str, str], int] = {}
    for a_key, b_key in report_matches:
        found = _EXPERT.search(b_key)
        if found:
            role = b_key[: found.start(1)] + "*" + b_key[found.end(1) :]
            groups[a_key, role] = groups.get((a_key, role), 0) + 1
    shared = [n for n in groups.values() if n > 1]
    if not shared:
        assert "Up-cycled" not in text, text
        return
    experts, sources = map(
        int, _number(text, r"Up-cycled: (\d+) expert tensors of B derive from (\d+) dense")
    )
    assert (experts, sources) == (sum(shared), len(shared)), (text, shared)


def _beyond(scheme: str, match: dict) -> bool:
    """A quantised match further from A, after any scale, than its type leaves on real weights."""
    bound, cosine = policy.quantisation_error(scheme), match["cosine"]
    if bound is None or not cosine or match["max_abs_diff"] is None:
        return False
    return math.sqrt(max(0.0, 1 - cosine * cosine)) / abs(cosine) > bound


def _check_quantised(text: str, quantised: dict[str, str], beyond: set[str]) -> None:
    """The quantisation sentences: how many related matrices are stored quantised, in which
    types, and how many differ by more than their quantisation leaves (else: within it)."""
    if not quantised:
        assert "stored quantised" not in text, text
        return
    count, types = _number(text, r"(\d+) of them are stored quantised \(([^)]+)\)")
    assert int(count) == len(quantised) and types.split(", ") == sorted(set(quantised.values())), text
    if beyond:
        (more,) = _number(text, r"(\d+) of them differ by more than their quantisation leaves")
        assert int(more) == len(beyond), (text, beyond)
    else:
        assert "differ by more than their quantisation leaves" not in text, text
        assert "trained after the copy" not in text, "quantisation called training"


def _check_related(text: str, summary: dict, facts: dict) -> None:
    related, total, match, partial = map(
        int, _number(text, r"(\d+) of (\d+) weight matrices .*?\((\d+) match, (\d+) partial")
    )
    assert (related, total, match, partial) == (
        facts["related"],
        facts["matrices"],
        facts["match"],
        facts["related"] - facts["match"],
    ), (text, facts)
    (degrees,) = _number(text, r"correlation ([\d.–]+);")
    low, _, high = degrees.partition("–")
    # each printed to 2 decimals: within half a unit of the fact (a fact of 0.99502, stored as
    # 0.995, prints either way)
    assert abs(float(low) - facts["low"]) <= 0.0051 and abs(float(high or low) - facts["high"]) <= 0.0051, (
        text,
        facts,
    )
    (weakest,) = _number(text, r"weakest z = ([\d.]+)")
    assert abs(float(weakest) - facts["weakest_z"]) <= 0.05 + 1e-9
    (threshold,) = _number(text, r"threshold z = ([\d.]+)")
    assert float(threshold) == summary["significance"]["z_threshold"]
    assert facts["weakest_z"] >= float(threshold) - 0.05, "a claimed matrix below the threshold"
    if facts["others"]:
        others, of = map(int, _number(text, r"(\d+) of B's (\d+) other tensors"))
        assert (others, of) == (facts["related_others"], facts["others"])
    assert ("Keys were renamed" in text) == facts["renamed"], text
    if facts["kinds"]:
        (listed,) = _number(text, r"transforms: ([^.]+)\.")
        assert listed.split(", ") == facts["kinds"], (listed, facts["kinds"])
    else:
        assert "transforms:" not in text
    if partial:
        assert "changed by training" in text and "transfer" in text
    else:
        assert "changed by training" not in text
    _check_upcycled(text, report_matches=facts["whole_expert_matches"])
    _check_quantised(text, facts["quantised"], facts["quantised_beyond"])
    if summary["scenario"] == "partially_related":
        (rest,) = _number(text, r"The other (\d+) weight matrices show no significant relation")
        assert int(rest) == total - related
