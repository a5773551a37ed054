"""Lineage from the indexes alone on 15 seeds of generated families (not part of `make test`).

For each seed: a model of width 128 (three tensors reading each of the text 256, time 192
and patch 64 axes), then B = A pruned to width 96 (noise 0, 0.3 or 0.6 × std), B = A
projected onto a random 96-dim subspace, and B = an independently initialised twin of
width 96. Each pair is compared with `--index-only` and the input-axis z-scores, Gram-sketch
correlations and verdicts are summarised. Run: `.venv/bin/python -m tests.benchmarks.lineage_sweep`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tests.conftest import write_tensors
from tests.test_lineage import INPUTS, model, projected, pruned
from weightidx.compare import compare_paths

SEEDS = range(10, 25)


def sketched_lineage(a: dict, b: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pa, pb = write_tensors(root / "a.safetensors", a), write_tensors(root / "b.safetensors", b)
        return compare_paths(pa, pb, cache=root / "cache", index_only=True)["lineage"]


def main() -> None:
    axes: dict[str, list[dict]] = {"pruned": [], "projected": [], "twin": []}
    derived = dict.fromkeys(axes, 0)
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        a = model(rng, 128, INPUTS)
        families = {
            "pruned": pruned(a, 96, rng, float(rng.choice([0.0, 0.3, 0.6]))),
            "projected": projected(a, rng),
            "twin": model(rng, 96, INPUTS),
        }
        for family, b in families.items():
            lineage = sketched_lineage(a, b)
            axes[family] += lineage["axes"]
            derived[family] += "derived from A's" in lineage["verdict"]
    for family, found in axes.items():
        z = [x["z_score"] for x in found]
        score = [x["score"] for x in found]
        print(
            f"{family}: z {min(z):.1f} to {max(z):.1f}, Gram-sketch correlation {min(score):.3f} to "
            f"{max(score):.3f} over {len(found)} axes; called derived {derived[family]} of {len(SEEDS)}"
        )


if __name__ == "__main__":
    main()
