"""A compare report as one self-contained HTML page (pure: report dict -> str).

Inline CSS, JS and SVG only: the page opens from a file with no network. The heatmap and
the histogram are drawn here as SVG, so they render without JavaScript; the small script
only sorts and filters the match table and records any script error in ``#errors``.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from functools import partial

from weightidx import policy
from weightidx.compare.document import Report
from weightidx.compare.report import UNMATCHED_REASONS
from weightidx.naming import block_of, natural_key, tensor_type, tensor_types
from weightidx.render.text import number, region_text

_BINS = 20


def _color(correlation: float) -> str:
    """White (0) to deep blue (1) by |correlation|."""
    level = max(0.0, min(1.0, abs(correlation)))
    return f"hsl(215, 80%, {round(97 - 67 * level)}%)"


_number = partial(number, missing="–")  # the text report's format, with a typographic dash


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def heatmap_svg(report: Report) -> str:
    """Block × block mean |correlation|: A blocks across, B blocks down; a title per cell."""
    blocks = report["blocks"]
    if not blocks:
        return (
            '<p class="empty" id="heatmap-empty">No block of B traces to a block of A: the map is blank.</p>'
        )
    tensors: dict[tuple[int, int], list[str]] = defaultdict(list)
    for match in report["matches"]:
        a_block, b_block = block_of(match["a"]["key"]), block_of(match["b"]["key"])
        if a_block is not None and b_block is not None:
            tensors[a_block, b_block].append(f"{region_text(match['a'])} → {region_text(match['b'])}")
    a_count = max(b["a_block"] for b in blocks) + 1
    b_count = max(b["b_block"] for b in blocks) + 1
    cell = max(6, min(24, 640 // max(a_count, b_count)))
    margin = 40
    width, height = margin + a_count * cell + 10, margin + b_count * cell + 10
    parts = [f'<svg id="heatmap" width="{width}" height="{height}" role="img" aria-label="block heatmap">']
    parts.append(f'<text x="{margin}" y="12" class="axis">A block →</text>')
    parts.append(f'<text x="2" y="{margin - 4}" class="axis">B ↓</text>')
    for a in range(0, a_count, max(1, a_count // 12)):
        parts.append(f'<text x="{margin + a * cell + cell / 2}" y="{margin - 6}" class="tick">{a}</text>')
    for b in range(0, b_count, max(1, b_count // 12)):
        parts.append(
            f'<text x="{margin - 4}" y="{margin + b * cell + cell * 0.75}" class="tick right">{b}</text>'
        )
    parts.append(
        f'<rect x="{margin}" y="{margin}" width="{a_count * cell}" height="{b_count * cell}" class="frame"/>'
    )
    for entry in blocks:
        a, b, mean = entry["a_block"], entry["b_block"], entry["mean_correlation"] or 0.0
        listed = tensors.get((a, b), [])
        title = (
            f"A block {a} → B block {b}: mean |corr| {mean:.4f}, {entry['tensors']} tensor(s)\n"
            + "\n".join(listed[:20])
            + (f"\n… {len(listed) - 20} more" if len(listed) > 20 else "")
        )
        parts.append(
            f'<rect class="cell" x="{margin + a * cell}" y="{margin + b * cell}" width="{cell}" height="{cell}" '
            f'fill="{_color(mean)}" data-a="{a}" data-b="{b}" data-corr="{mean:.4f}"><title>{_esc(title)}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(report: Report) -> str:
    """How many matches fall in each 0.05-wide bin of |correlation|."""
    counts = Counter(
        min(_BINS - 1, int(abs(m["correlation"]) * _BINS))
        for m in report["matches"]
        if m["correlation"] is not None
    )
    if not counts:
        return '<p class="empty">No matches.</p>'
    top, bar, height = max(counts.values()), 22, 120
    parts = [f'<svg id="histogram" width="{_BINS * bar + 40}" height="{height + 30}">']
    for i in range(_BINS):
        h = round(height * counts.get(i, 0) / top)
        low = i / _BINS
        parts.append(
            f'<rect class="bar" x="{30 + i * bar}" y="{height - h}" width="{bar - 2}" height="{h}" '
            f'fill="{_color(low + 0.025)}"><title>|corr| {low:.2f}–{low + 0.05:.2f}: {counts.get(i, 0)}</title></rect>'
        )
    for tick in (0, 0.5, policy.COSINE_MEDIUM, policy.COSINE_HIGH, 1.0):
        parts.append(f'<text x="{30 + tick * _BINS * bar}" y="{height + 14}" class="tick">{tick}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _type_table(report: Report) -> str:
    rows: dict[str, Counter] = defaultdict(Counter)
    best: dict[str, str] = {}
    rank = {"match": 2, "partial": 1, "different": 0}
    for m in report["matches"]:
        key = m["b"]["key"]
        if key not in best or rank[m["verdict"]] > rank[best[key]]:
            best[key] = m["verdict"]
    for key, verdict in best.items():
        rows[tensor_type(key)][verdict] += 1
    for key in report["unmatched"]["b"]:
        if key not in best:
            rows[tensor_type(key)]["unmatched"] += 1
    body = "".join(
        f"<tr><td>{_esc(t)}</td>"
        + "".join(f"<td>{rows[t][c]}</td>" for c in ("match", "partial", "different", "unmatched"))
        + "</tr>"
        for t in tensor_types()
        if rows[t]
    )
    return (
        '<table id="types"><thead><tr><th>B tensors</th><th>match</th><th>partial</th><th>different</th>'
        f"<th>unmatched</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _match_table(report: Report) -> str:
    rows = []
    for m in report["matches"]:
        rows.append(
            f'<tr class="{m["verdict"]}"><td>{_esc(m["verdict"])}</td><td>{_esc(region_text(m["a"]))}</td>'
            f"<td>{_esc(region_text(m['b']))}</td><td>{_esc(', '.join(m['transform']) or '–')}</td>"
            f'<td data-v="{m["correlation"] if m["correlation"] is not None else ""}">{_number(m["correlation"])}</td>'
            f'<td data-v="{m["cosine"] if m["cosine"] is not None else ""}">{_number(m["cosine"])}</td>'
            f'<td data-v="{m["relative_l2"] if m["relative_l2"] is not None else ""}">{_number(m["relative_l2"])}</td>'
            f"<td>{_esc(m['evidence'])}</td></tr>"
        )
    return (
        '<input id="filter" type="search" placeholder="filter by key, verdict or transform">'
        '<table id="matches"><thead><tr><th>verdict</th><th>A</th><th>B</th><th>transform</th>'
        "<th>corr</th><th>cosine</th><th>rel L2</th><th>evidence</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _lineage(report: Report) -> str:
    """The cross-width section (present only when compare looked across a width change)."""
    lineage = report.get("lineage")
    if not lineage:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(axis['side'])}</td><td>{axis['size']}</td><td>{_esc(axis['a'])}</td>"
        f"<td>{_esc(axis['b'])}</td><td>{_number(axis['score'], 3)}</td>"
        f"<td>{_number(axis['null_mean'], 3)} ± {_number(axis['null_std'], 3)} ({axis['null_pairs']})</td>"
        f"<td>{_number(axis['z_score'], 1)}</td><td>{_number(axis.get('mantel_z'), 1)}</td>"
        f"<td>{_esc(axis.get('source', ''))}</td></tr>"
        for axis in lineage["axes"]
    )
    table = (
        '<table id="lineage"><thead><tr><th>side</th><th>axis size</th><th>A tensor</th><th>B tensor</th>'
        "<th>Gram correlation</th><th>controls (pairs)</th><th>z</th><th>shuffle z</th><th>from</th>"
        "</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    return (
        "<h2>Lineage across the width change</h2>"
        f'<div class="verdict" id="lineage-verdict">{_esc(lineage["verdict"])}</div>{table}'
    )


def _permutations(report: Report) -> str:
    permuted = [m for m in report["matches"] if m.get("permutation")]
    if not permuted:
        return ""
    items = "".join(
        f"<li>{_esc(region_text(m['b']))} = {_esc(region_text(m['a']))} with its "
        f"{'rows' if m['permutation']['axis'] == 0 else 'columns'} reordered "
        f"({m['permutation']['moved']:.0%} of them moved), correlation {_number(m['correlation'], 3)}</li>"
        for m in permuted
    )
    return f'<h2>Permuted neurons or heads</h2><ul id="permutations">{items}</ul>'


def _unmatched(report: Report) -> str:
    """Each side's unmatched tensors in natural key order, each with its reason."""
    columns = []
    for side in ("a", "b"):
        keys = sorted(report["unmatched"][side], key=natural_key)
        reasons = report.get("unmatched_reasons", {}).get(side, {})
        items = (
            "".join(
                f"<li>{_esc(k)}"
                + (f" <small>{_esc(UNMATCHED_REASONS[reasons[k]])}</small>" if k in reasons else "")
                + "</li>"
                for k in keys
            )
            or "<li>none</li>"
        )
        name = report["models"][side]["name"]
        columns.append(
            f'<div><h3>{_esc(name)} ({len(keys)})</h3><ul id="unmatched-{side}">{items}</ul></div>'
        )
    return f'<div class="columns">{"".join(columns)}</div>'


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
.scenario{display:inline-block;padding:2px 10px;border-radius:12px;background:#1f4e8c;color:#fff;font-weight:600}
.verdict{background:#f4f6fa;border-left:4px solid #1f4e8c;padding:10px 14px;margin:12px 0}
.counts{display:flex;gap:12px;flex-wrap:wrap}.counts div{background:#f4f6fa;padding:8px 12px;border-radius:6px}
.counts b{display:block;font-size:18px} table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #eef;text-align:left} th{cursor:pointer;background:#f4f6fa}
tr.match td:first-child{color:#176a2b} tr.partial td:first-child{color:#9a6700} tr.different td:first-child{color:#b42318}
.tick{font-size:10px;text-anchor:middle;fill:#556}.tick.right{text-anchor:end}.axis{font-size:11px;fill:#334}
.frame{fill:#fafbfd;stroke:#ccd} .columns{display:flex;gap:24px}.columns div{flex:1} ul{max-height:320px;overflow:auto}
#filter{width:320px;padding:4px 8px;margin-bottom:6px} .empty{color:#667;font-style:italic} #errors:empty{display:none}
#errors{color:#b42318}
"""

_SCRIPT = """
window.onerror = function (message) { document.getElementById('errors').textContent += message + '\\n'; };
(function () {
  var table = document.getElementById('matches');
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  document.getElementById('filter').addEventListener('input', function (event) {
    var needle = event.target.value.toLowerCase();
    rows.forEach(function (row) { row.style.display = row.textContent.toLowerCase().indexOf(needle) < 0 ? 'none' : ''; });
  });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
    var ascending = true;
    header.addEventListener('click', function () {
      rows.sort(function (x, y) {
        var a = x.cells[column], b = y.cells[column];
        var va = a.dataset.v !== undefined && a.dataset.v !== '' ? parseFloat(a.dataset.v) : a.textContent;
        var vb = b.dataset.v !== undefined && b.dataset.v !== '' ? parseFloat(b.dataset.v) : b.textContent;
        return (va < vb ? -1 : va > vb ? 1 : 0) * (ascending ? 1 : -1);
      });
      ascending = !ascending;
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  document.body.dataset.ready = 'yes';
})();
"""


def render_html(report: Report) -> str:
    """The whole page for one compare report."""
    summary, models = report["summary"], report["models"]
    a, b = models["a"]["name"], models["b"]["name"]
    high, medium = policy.COSINE_HIGH, policy.COSINE_MEDIUM  # the summary's bins (report.py)
    counts = [
        ("scenario", summary["scenario"]),
        ("matched B tensors", f"{summary['matched_b_tensors']} / {models['b']['tensors']}"),
        (f"high (> {high:.2f})", summary["high_similarity_count"]),
        (f"medium ({medium:.2f}–{high:.2f})", summary["medium_similarity_count"]),
        (f"low (< {medium:.2f})", summary["low_similarity_count"]),
        ("unmatched A / B", f"{summary['unmatched_a']} / {summary['unmatched_b']}"),
        ("mean cosine", _number(summary["mean_cosine_similarity"])),
    ]
    count_html = "".join(f"<div><b>{_esc(v)}</b>{_esc(k)}</div>" for k, v in counts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>weightidx: {_esc(a)} → {_esc(b)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body>
<h1>{_esc(a)} → {_esc(b)} <span class="scenario" id="scenario">{_esc(summary["scenario"])}</span></h1>
<div class="verdict" id="verdict">{_esc(summary["verdict"])}</div>
<div class="counts" id="counts">{count_html}</div>
<pre id="errors"></pre>
<h2>Block × block mean |correlation|</h2>
{heatmap_svg(report)}
<h2>Correlation of the matches</h2>
{histogram_svg(report)}
<h2>By tensor type</h2>
{_type_table(report)}
<h2>Matches</h2>
{_match_table(report)}
{_permutations(report)}
{_lineage(report)}
<h2>Unmatched tensors</h2>
{_unmatched(report)}
<p class="empty">weightidx {_esc(report["tool"]["version"])} · report schema {report["schema_version"]}</p>
<script type="application/json" id="report-data">{_embed(report)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def _embed(report: Report) -> str:
    """The report itself, for anyone who saves the page; '</' is escaped so it cannot end the script."""
    return json.dumps(report, allow_nan=False).replace("</", "<\\/")


def write_html(report: Report, out) -> None:
    """Write the page atomically."""
    from weightidx.io.atomic import atomic_path

    with atomic_path(out) as temporary:
        temporary.write_text(render_html(report), encoding="utf-8")
