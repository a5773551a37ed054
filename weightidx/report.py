"""The compare report (schema_version 1): summary, scenario, plain-English verdict, blocks
and shapes, built from the kept matches; and reading / writing it as strict JSON."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .atomic import atomic_path
from .errors import InputError
from .sql import run_query

if TYPE_CHECKING:
    from .compare import Match
    from .indexes import IndexedModel

MATCH, PARTIAL = 0.95, 0.80
_WEAK_NUMEL = 4096
_BLOCK_PATTERN = re.compile(
    r"(?:^|\.)(?:blocks|layers|layer|h|block|transformer_blocks|single_blocks|double_blocks)\.(\d+)\."
)


def block_of(key: str) -> int | None:
    found = _BLOCK_PATTERN.search(key)
    return int(found.group(1)) if found else None


def is_matrix(row: dict) -> bool:
    return int(row["rows"]) > 1 and int(row["cols"]) > 1 and int(row["numel"]) >= _WEAK_NUMEL


def build_report(a: IndexedModel, b: IndexedModel, matches: list[Match], comparable: bool) -> dict:
    """The JSON report (schema_version 1) from the kept matches.

    ``comparable``: whether any weight matrix of B shares a shape (or its transpose) with one of A.
    """
    matched_a = {m.candidate.a.key for m in matches if m.verdict != "different"}
    matched_b = {m.candidate.b.key for m in matches if m.verdict != "different"}
    cosines = [m.metrics.cosine for m in matches if m.metrics.cosine is not None]
    summary = {
        "mean_cosine_similarity": _clean(sum(cosines) / len(cosines)) if cosines else None,
        "high_similarity_count": sum(1 for m in matches if (m.metrics.cosine or 0) > MATCH),
        "medium_similarity_count": sum(1 for m in matches if PARTIAL <= (m.metrics.cosine or 0) <= MATCH),
        "low_similarity_count": sum(1 for m in matches if (m.metrics.cosine or 0) < PARTIAL),
        "matched_b_tensors": len(matched_b),
        "unmatched_a": len(set(a.rows) - matched_a),
        "unmatched_b": len(set(b.rows) - matched_b),
    }
    scenario, verdict = _scenario(a, b, matches, comparable)
    summary.update(scenario=scenario, verdict=verdict)
    return {
        "schema_version": 1,
        "tool": {"name": "weightidx", "version": __version__},
        "models": {side: _model_json(model) for side, model in (("a", a), ("b", b))},
        "summary": summary,
        "matches": [_match_json(a, b, m) for m in matches],
        "unmatched": {"a": sorted(set(a.rows) - matched_a), "b": sorted(set(b.rows) - matched_b)},
        "blocks": _blocks(matches),
        "shapes": [
            {"shape": list(shape), "a_count": ac, "b_count": bc}
            for shape, ac, bc in run_query("shape_table", [a.index, b.index]).fetchall()
        ],
    }


def _model_json(model: IndexedModel) -> dict:
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


def _match_json(a: IndexedModel, b: IndexedModel, m: Match) -> dict:
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
        "transform": m.transform,
        "cosine": _clean(metrics.cosine),
        "correlation": _clean(metrics.correlation),
        "relative_l2": _clean(metrics.relative_l2),
        "scale": _clean(metrics.scale),
        "z_score": _clean(metrics.z_score),
        "max_abs_diff": _clean(metrics.max_abs_diff),
        "equal_after_cast": _clean(metrics.equal_after_cast),
        "identical": identical,
        "evidence": m.evidence,
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


def _scenario(a: IndexedModel, b: IndexedModel, matches: list[Match], comparable: bool) -> tuple[str, str]:
    b_matrices = [k for k, r in b.rows.items() if is_matrix(r)]
    matrix_matches = [m for m in matches if m.candidate.b.key in set(b_matrices)]
    strong = [m for m in matrix_matches if m.verdict != "different"]
    covered = {m.candidate.b.key for m in strong}
    share = len(covered) / len(b_matrices) if b_matrices else 0.0
    transforms = {t.split(":")[0] for m in strong for t in m.transform}
    if not strong and not comparable:
        return "incompatible", _incompatible_text(a, b)
    if not strong:
        return "unrelated", (
            f"No matrix of {b.name} matches one of {a.name}: {len(matrix_matches)} shape-compatible "
            "candidates all scored near zero. B's weights are not derived from A's (trained independently, "
            "or fully re-initialised). A LoRA made for A cannot be converted to B; train a new one."
        )
    identical = len(a.rows) == len(b.rows) == len(matches) and all(
        m.candidate.a.key == m.candidate.b.key and m.metrics.max_abs_diff == 0 for m in matches
    )
    if identical:
        return "identical", f"{b.name} is {a.name}: the same tensors under the same names, byte for byte."
    fine = [m for m in strong if m.verdict == "partial"]
    if share < 0.5:
        scenario = "partially_related"
    elif fine and len(fine) >= len(strong) / 2:
        scenario = "fine_tuned"
    elif transforms & {"concat", "split", "reshape", "scale"}:
        scenario = "transformed"
    else:
        scenario = "copied"
    return scenario, _related_text(a, b, scenario, strong, share, transforms)


def _related_text(a, b, scenario: str, strong: list[Match], share: float, transforms: set[str]) -> str:
    matched = sum(1 for m in strong if m.verdict == "match")
    partial = len(strong) - matched
    how = ", ".join(sorted(transforms - {"rename"})) or "renaming only"
    lora = (
        "LoRAs for A convert to B by renaming keys"
        if transforms <= {"rename", "cast"}
        else f"LoRAs for A convert to B with these transforms ({how})"
    )
    if partial:
        lora += f"; {partial} module(s) were changed by training, so expect those to transfer less well"
    return (
        f"{b.name} derives from {a.name} ({scenario.replace('_', ' ')}): {share:.0%} of B's weight matrices "
        f"trace back to A ({matched} match, {partial} partial), under {how}. {lora}."
    )


def _incompatible_text(a: IndexedModel, b: IndexedModel) -> str:
    def width(model: IndexedModel) -> int | None:
        dims: dict[int, int] = defaultdict(int)
        for r in model.rows.values():
            if is_matrix(r):
                dims[int(r["rows"])] += 1
                dims[int(r["cols"])] += 1
        return max(dims, key=dims.get) if dims else None

    def depth(model: IndexedModel) -> int:
        return len({blk for k in model.rows if (blk := block_of(k)) is not None})

    return (
        f"No tensor of {b.name} has a shape compatible with any tensor of {a.name}: hidden width "
        f"{width(a)} vs {width(b)}, {depth(a)} vs {depth(b)} blocks. Tensor-to-tensor matching cannot "
        "show derivation across a width change (only the shared axes below can); LoRAs for A cannot be "
        "converted to B."
    )


def write_report(report: dict, out: Path | str) -> Path:
    """Write the report as strict JSON, atomically."""
    out = Path(out)
    with atomic_path(out) as temporary:
        temporary.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return out


def read_report(path: Path | str) -> dict:
    """A report written by ``write_report``; raises ``InputError`` for anything else."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: not a readable compare report ({exc}); run `weightidx compare A B -o FILE`"
        ) from None
    if not isinstance(report, dict) or report.get("schema_version") != 1 or "matches" not in report:
        raise InputError(f"{path}: not a weightidx compare report (schema_version 1)")
    return report
