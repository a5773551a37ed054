"""Comparing generated pairs in tests and scoring the report's mapping against the truth."""

from __future__ import annotations

import json
from pathlib import Path

from tests import derive
from tests.helpers.tensors import write_tensors
from tests.helpers.verdicts import check_verdict
from weightidx.compare.engine import compare_paths

Key = tuple[str, tuple | None, str, tuple | None]


def _slice(region: dict) -> tuple | None:
    s = region["slice"]
    return None if s is None else (s["axis"], s["start"], s["stop"])


def predicted(report: dict) -> set[Key]:
    return {
        (m["b"]["key"], _slice(m["b"]), m["a"]["key"], _slice(m["a"]))
        for m in report["matches"]
        if m["verdict"] != "different"
    }


def compare(tmp_path: Path, a: derive.Tensors, b: derive.Tensors, **options) -> dict:
    pa = write_tensors(tmp_path / "a.safetensors", a)
    pb = write_tensors(tmp_path / "b.safetensors", b)
    report = compare_paths(pa, pb, cache=tmp_path / "cache", **options)
    json.dumps(report, allow_nan=False)  # strict JSON
    check_verdict(report)  # every sentence of the verdict follows from the report
    return report


def assert_mapping(report: dict, expected: set[Key], only: set[str] | None = None) -> None:
    """Precision and recall of the report's related pairs against the truth are >= 0.99
    (``only``: B keys to judge, when the others are below what their size can show)."""
    got = {k for k in predicted(report) if only is None or k[0] in only}
    hits = len(got & expected)
    precision = hits / len(got) if got else 1.0
    recall = hits / len(expected) if expected else 1.0
    assert precision >= 0.99 and recall >= 0.99, {
        "precision": precision,
        "recall": recall,
        "missing": sorted(expected - got)[:5],
        "extra": sorted(got - expected)[:5],
    }


def checked_phases(calls: list[tuple[str, int, int]]) -> list[str]:
    """The phases ``compare_paths`` reported progress for, in order, each checked: its total
    never changes, its count never goes back and ends at the total."""
    phases = list(dict.fromkeys(phase for phase, _, _ in calls))
    for phase in phases:
        counts = [(done, total) for name, done, total in calls if name == phase]
        assert len({total for _, total in counts}) == 1, (phase, counts[:5])
        dones = [done for done, _ in counts]
        assert dones == sorted(dones) and dones[-1] == counts[0][1], (phase, dones[-5:])
    return phases
