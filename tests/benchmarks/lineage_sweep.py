"""Lineage from the indexes alone on 15 seeds of generated families (not part of `make test`).

For each seed: a model of width 128 (three tensors reading each of the text 256, time 192
and patch 64 axes, three writing an FFN width of 160, one head writing 64 outputs), then
B = A pruned to width 96 (noise 0, 0.3 or 0.6 × std), B = A projected onto a random
96-dim subspace, and B = an independently initialised twin of width 96. Each pair is
compared from the checkpoint values and with `--index-only`; per method and side, the
z-scores against the within-model controls, the shuffle z-scores, the Gram correlations
and the verdicts are summarised. Run: `.venv/bin/python -m tests.benchmarks.lineage_sweep`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tests.conftest import write_tensors
from tests.test_lineage import INPUTS, model, projected, pruned
from weightidx.compare import compare_paths

SEEDS = range(10, 25)


def lineages(a: dict, b: dict) -> dict[str, dict]:
    """The lineage section by method: from the checkpoint values, and from the index sketches."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pa, pb = write_tensors(root / "a.safetensors", a), write_tensors(root / "b.safetensors", b)
        found = {}
        for index_only in (False, True):
            lineage = compare_paths(pa, pb, cache=root / "cache", index_only=index_only)["lineage"]
            found[lineage["method"]] = lineage
        return found


def main() -> None:
    methods = ("checkpoint values", "index sketches")
    axes = {m: {"pruned": [], "projected": [], "twin": []} for m in methods}
    derived = {m: dict.fromkeys(axes[m], 0) for m in methods}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        a = model(rng, 128, INPUTS)
        families = {
            "pruned": pruned(a, 96, rng, float(rng.choice([0.0, 0.3, 0.6]))),
            "projected": projected(a, rng),
            "twin": model(rng, 96, INPUTS),
        }
        for family, b in families.items():
            for method, lineage in lineages(a, b).items():
                axes[method][family] += lineage["axes"]
                derived[method][family] += "derived from A's" in lineage["verdict"]
    for method in methods:
        print(f"== {method} ==")
        for family, found in axes[method].items():
            summarise(family, found, derived[method][family])


def summarise(family: str, found: list[dict], derived: int) -> None:
    for side in ("input", "output"):
        on_side = [x for x in found if x["side"] == side]
        z = [x["z_score"] for x in on_side if x["z_score"] is not None]
        shuffle = [x["mantel_z"] for x in on_side]
        score = [x["score"] for x in on_side]
        print(
            f"{family}, {side} side: controls z {min(z):.1f} to {max(z):.1f} ({len(z)} axes with "
            f"controls), shuffle z {min(shuffle):.1f} to {max(shuffle):.1f}, Gram correlation "
            f"{min(score):.3f} to {max(score):.3f} over {len(on_side)} axes"
        )
    print(f"{family}: called derived {derived} of {len(SEEDS)}")


if __name__ == "__main__":
    main()
