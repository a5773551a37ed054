"""Plain-text rendering of a compare report for the terminal (pure: report -> str)."""

from __future__ import annotations

_SYMBOL = {"match": "✓ MATCH", "partial": "~ PARTIAL", "different": "✗ DIFFERENT"}
_MAX_SHAPES, _MAX_MATCHES = 12, 60


def region_text(region: dict) -> str:
    """``key`` or ``key[start:stop]`` / ``key[:, start:stop]`` for a report region."""
    s = region["slice"]
    return (
        region["key"]
        if s is None
        else f"{region['key']}[{'' if s['axis'] == 0 else ':, '}{s['start']}:{s['stop']}]"
    )


def render_report(report: dict) -> str:
    """Verdict, shape table, block table, then one line per match."""
    summary, models = report["summary"], report["models"]
    a, b = models["a"]["name"], models["b"]["name"]
    lines = [
        f"{b} vs {a}: {summary['scenario']}",
        summary["verdict"],
        "",
        f"matched B tensors: {summary['matched_b_tensors']} of {models['b']['tensors']}   "
        f"unmatched A: {summary['unmatched_a']}   unmatched B: {summary['unmatched_b']}   "
        f"mean cosine: {_number(summary['mean_cosine_similarity'])}",
        "",
        f"{'shape':<24} {a:>12} {b:>12}",
    ]
    for row in report["shapes"][:_MAX_SHAPES]:
        lines.append(f"{tuple(row['shape'])!s:<24} {row['a_count']:>12} {row['b_count']:>12}")
    if len(report["shapes"]) > _MAX_SHAPES:
        lines.append(f"... {len(report['shapes']) - _MAX_SHAPES} more shapes")
    if report["blocks"]:
        lines += ["", f"{'B block':>8} <- {'A block':<8} {'tensors':>8} {'mean corr':>10}"]
        for row in report["blocks"]:
            correlation = _number(row["mean_correlation"])
            lines.append(f"{row['b_block']:>8} <- {row['a_block']:<8} {row['tensors']:>8} {correlation:>10}")
    lines.append("")
    for match in report["matches"][:_MAX_MATCHES]:
        lines.append(f"{_SYMBOL[match['verdict']]}: {region_text(match['a'])} -> {region_text(match['b'])}")
        transform = ", ".join(match["transform"]) or "none"
        lines.append(
            f"    corr {_number(match['correlation'])}  cosine {_number(match['cosine'])}  "
            f"rel L2 {_number(match['relative_l2'])}  z {_number(match['z_score'], 1)}  "
            f"[{transform}] ({match['evidence']})"
        )
    if len(report["matches"]) > _MAX_MATCHES:
        lines.append(f"... {len(report['matches']) - _MAX_MATCHES} more matches in the JSON report (-o)")
    return "\n".join(lines)


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
