"""Plain-text rendering of a compare report for the terminal (pure: report -> str)."""

from __future__ import annotations

from itertools import groupby

from weightidx.compare.document import Report
from weightidx.compare.report import UNMATCHED_REASONS
from weightidx.naming import block_of, natural_key

_SYMBOL = {"match": "✓ MATCH", "partial": "~ PARTIAL", "different": "✗ DIFFERENT"}
_MAX_SHAPES, _MAX_MATCHES, _MAX_UNMATCHED = 12, 60, 40


def region_text(region: dict) -> str:
    """``key`` or ``key[start:stop]`` / ``key[:, start:stop]`` for a report region."""
    s = region["slice"]
    return (
        region["key"]
        if s is None
        else f"{region['key']}[{'' if s['axis'] == 0 else ':, '}{s['start']}:{s['stop']}]"
    )


def render_report(report: Report) -> str:
    """Heading and verdict; then, unless B is A unchanged, the shape table, the block table, a
    line per match and the unmatched tensors with their reasons, in natural key order."""
    summary, models = report["summary"], report["models"]
    a, b = models["a"]["name"], models["b"]["name"]
    lines = [f"{a} → {b}: {summary['scenario']}", summary["verdict"]]
    if summary["identical"]:
        lines.append(
            f"{models['b']['tensors']} tensors, the same names and the same bytes: nothing more to list."
        )
        return "\n".join(lines)
    lines += [
        "",
        f"matched B tensors: {summary['matched_b_tensors']} of {models['b']['tensors']}   "
        f"unmatched A: {summary['unmatched_a']}   unmatched B: {summary['unmatched_b']}   "
        f"mean cosine: {number(summary['mean_cosine_similarity'])}",
        "",
        f"{'shape':<24} {a:>12} {b:>12}",
    ]
    for row in report["shapes"][:_MAX_SHAPES]:
        lines.append(f"{tuple(row['shape'])!s:<24} {row['a_count']:>12} {row['b_count']:>12}")
    if len(report["shapes"]) > _MAX_SHAPES:
        lines.append(f"... {len(report['shapes']) - _MAX_SHAPES} more shapes")
    if report["blocks"]:
        lines += ["", f"{'A block':>8} -> {'B block':<8} {'tensors':>8} {'mean corr':>10}"]
        for row in report["blocks"]:
            correlation = number(row["mean_correlation"])
            lines.append(f"{row['a_block']:>8} -> {row['b_block']:<8} {row['tensors']:>8} {correlation:>10}")
    lines.append("")
    matches = sorted(report["matches"], key=lambda m: (natural_key(m["b"]["key"]), _start(m["b"])))
    for match in matches[:_MAX_MATCHES]:
        lines.append(f"{_SYMBOL[match['verdict']]}: {region_text(match['a'])} -> {region_text(match['b'])}")
        transform = ", ".join(match["transform"]) or "none"
        lines.append(
            f"    corr {number(match['correlation'])}  cosine {number(match['cosine'])}  "
            f"rel L2 {number(match['relative_l2'])}  z {number(match['z_score'], 1)}  "
            f"[{transform}] ({match['evidence']})"
        )
    if len(matches) > _MAX_MATCHES:
        lines.append(f"... {len(matches) - _MAX_MATCHES} more matches in the JSON report (-o)")
    for side, name in (("b", b), ("a", a)):
        lines += _unmatched_lines(report.get("unmatched_reasons", {}).get(side, {}), name)
    return "\n".join(lines)


def _start(region: dict) -> int:
    return region["slice"]["start"] if region["slice"] else -1


def _unmatched_lines(reasons: dict[str, str], name: str) -> list[str]:
    """The unmatched tensors of one side, grouped by block, each with its reason."""
    if not reasons:
        return []
    keys = sorted(reasons, key=lambda k: (block_of(k) is not None, block_of(k) or 0, natural_key(k)))
    lines = ["", f"unmatched in {name} ({len(keys)}):"]
    shown = 0
    for block, group in groupby(keys, key=block_of):
        if shown >= _MAX_UNMATCHED:
            break
        lines.append(f"  {'outside the blocks' if block is None else f'block {block}'}:")
        for key in group:
            if shown >= _MAX_UNMATCHED:
                break
            lines.append(f"    {key}: {UNMATCHED_REASONS[reasons[key]]}")
            shown += 1
    if len(keys) > shown:
        lines.append(f"  ... {len(keys) - shown} more in the JSON report (-o)")
    return lines


def number(value: float | None, digits: int = 4, missing: str = "-") -> str:
    """``value`` with ``digits`` decimals, or ``missing`` for None (the text and HTML reports')."""
    return missing if value is None else f"{value:.{digits}f}"
