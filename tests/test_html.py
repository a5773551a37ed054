"""The HTML report: self-contained, drawn correctly, and loaded in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import derive
from tests.helpers.tensors import write_tensors
from weightidx.cli import app
from weightidx.compare.engine import compare_paths
from weightidx.compare.report import write_report
from weightidx.naming import tensor_type
from weightidx.render.html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.fixture(scope="module")
def reports(demo_pair, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("reports")
    copied = compare_paths(demo_pair["a"], demo_pair["b"], cache=folder / "cache")
    a = write_tensors(folder / "a.safetensors", derive.toy_transformer(90))
    b = write_tensors(folder / "b.safetensors", derive.toy_transformer(91))
    return {"copied": copied, "unrelated": compare_paths(a, b, cache=folder / "cache")}


def big_report(blocks: int = 48, per_block: int = 24) -> dict:
    """A synthetic report at scale: 48 x 48 block map, 1,000+ matches."""
    matches = [
        {
            "b": {"key": f"blocks.{j}.attn.w{t}.weight", "slice": None},
            "a": {"key": f"blocks.{j}.self_attn.w{t}.weight", "slice": None},
            "transform": ["rename"],
            "cosine": 0.99,
            "correlation": 0.99 - 0.001 * t,
            "relative_l2": 0.1,
            "scale": 1.0,
            "z_score": 50.0,
            "identical": False,
            "evidence": "exact",
            "verdict": "match",
        }
        for j in range(blocks)
        for t in range(per_block)
    ]
    cells = [
        {"a_block": i, "b_block": j, "tensors": 1, "mean_correlation": 1.0 / (1 + abs(i - j))}
        for i in range(blocks)
        for j in range(blocks)
    ]
    return {
        "schema_version": 1,
        "tool": {"name": "weightidx", "version": "test"},
        "models": {
            s: {
                "name": s.upper(),
                "index": "",
                "source": "",
                "tensors": len(matches),
                "parameters": 0,
                "bytes": 0,
            }
            for s in "ab"
        },
        "summary": {
            "mean_cosine_similarity": 0.99,
            "high_similarity_count": len(matches),
            "medium_similarity_count": 0,
            "low_similarity_count": 0,
            "matched_b_tensors": len(matches),
            "unmatched_a": 0,
            "unmatched_b": 0,
            "scenario": "copied",
            "verdict": "B is A </script> renamed.",
        },
        "matches": matches,
        "unmatched": {"a": [], "b": []},
        "blocks": cells,
        "shapes": [],
    }


def test_page_is_self_contained_with_one_cell_per_block_pair(reports) -> None:
    page = render_html(reports["copied"])
    assert not re.search(r"""(src|href)=["']?https?:""", page) and "<link" not in page
    assert page.count('class="cell"') == len(reports["copied"]["blocks"]) == 3
    assert "No block of B traces" in render_html(reports["unrelated"])
    assert render_html(big_report()).count('class="cell"') == 48 * 48


def test_text_is_escaped(reports) -> None:
    page = render_html(big_report())
    assert "B is A &lt;/script&gt; renamed." in page and "B is A </script>" not in page


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("blocks.0.attn.qkv.weight", "attention q/k/v"),
        ("blocks.0.attn.q_norm.weight", "norms"),
        ("blocks.3.ffn.w1.weight", "MLP"),
        ("encoder.layer.0.attention.self.query.weight", "attention q/k/v"),
        ("x_embedder.proj.weight", "embeddings"),
        ("blocks.0.cross_attn.proj.weight", "attention out"),
        ("head.head.weight", "other"),
        ("blocks.0.adaLN_modulation.1.weight", "other"),
        ("encoder.layer.0.output.LayerNorm.weight", "norms"),
        ("h.0.ln_1.weight", "norms"),
    ],
)
def test_tensor_types(key: str, kind: str) -> None:
    assert tensor_type(key) == kind


def test_report_command_writes_the_page(reports, tmp_path: Path) -> None:
    report = write_report(reports["copied"], tmp_path / "r.json")
    result = CliRunner().invoke(app, ["report", str(report), "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0 and (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def load_in_chromium(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM after scripts ran, and Chromium's log."""
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout, result.stderr


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (`make test` installs it as root)"
)
def test_real_browser_draws_the_heatmap_without_errors(reports, tmp_path: Path) -> None:
    fills = {}
    for name in ("copied", "unrelated"):
        page = tmp_path / f"{name}.html"
        page.write_text(render_html(reports[name]))
        dom, log = load_in_chromium(page, tmp_path)
        assert 'data-ready="yes"' in dom, log[-2000:]  # the script ran to the end
        assert re.search(r'<pre id="errors"></pre>', dom), dom
        assert "Uncaught" not in log
        fills[name] = re.findall(r'<rect class="cell"[^>]*fill="([^"]+)"', dom)
    lightness = [int(re.search(r"(\d+)%\)$", fill).group(1)) for fill in fills["copied"]]
    assert len(lightness) == 3 and max(lightness) <= 35  # dark blue: |corr| near 1 on the diagonal
    assert fills["unrelated"] == []  # a blank map
    screenshot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1400",
            f"--screenshot={screenshot}",
            (tmp_path / "copied.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 20_000


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (`make test` installs it as root)"
)
def test_real_browser_handles_48_by_48_blocks_and_1000_matches(tmp_path: Path) -> None:
    page = tmp_path / "big.html"
    page.write_text(render_html(big_report()))
    dom, log = load_in_chromium(page, tmp_path)
    assert 'data-ready="yes"' in dom and dom.count('class="cell"') == 2304
    assert dom.count('<tr class="match">') == 48 * 24 and "Uncaught" not in log
