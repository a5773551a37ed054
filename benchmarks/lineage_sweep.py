"""Width-change lineage on 30 seeds of generated families: what each is called, and the
false-positive rate on independently initialised twins (not part of `make test`).

For each seed: a model of width 128 (three tensors reading each of the text 256, time 192
and patch 64 axes, three writing an FFN width of 160, one head writing 64 outputs), then
B = A pruned to width 96 (noise 0, 0.3 or 0.6 × std), B = A projected onto a random
96-dim subspace, and B = an independently initialised twin of width 96. Each pair is
compared from the checkpoint values (a pruned model is mapped tensor by tensor: scenario
`pruned`) and from the index sketches (`--index-only`: the lineage section); per method,
side and family, the z-scores against the within-model controls, the shuffle z-scores, the
Gram correlations and the verdicts are summarised. Run:
`.venv/bin/python -m benchmarks.lineage_sweep` (about three minutes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tests.helpers.lineage_models import INPUTS, model, projected, pruned
from tests.helpers.tensors import write_tensors
from weightidx.compare.engine import compare_paths

SEEDS = range(10, 40)


def reports(a: dict, b: dict) -> dict[str, dict]:
    """The compare report by method: from the checkpoint values, and from the index sketches."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pa, pb = write_tensors(root / "a.safetensors", a), write_tensors(root / "b.safetensors", b)
        return {
            method: compare_paths(pa, pb, cache=root / "cache", index_only=index_only)
            for method, index_only in (("checkpoint values", False), ("index sketches", True))
        }


def called(report: dict) -> str:
    """What the report says of B: pruned (mapped tensor by tensor), related (some tensors
    matched outright), derived (lineage), cannot tell (axes correspond without controls), or
    no sign."""
    if report["summary"]["scenario"] == "pruned":
        return "pruned"
    if report["summary"]["scenario"] not in ("unrelated", "incompatible"):
        return "related"  # some tensor of B matched one of A outright
    verdict = report.get("lineage", {}).get("verdict", "")
    if "derived from A's" in verdict:
        return "derived"
    return "cannot tell" if "cannot decide" in verdict else "no sign"


def main() -> None:
    methods = ("checkpoint values", "index sketches")
    axes = {m: {"pruned": [], "projected": [], "twin": []} for m in methods}
    verdicts = {m: {family: [] for family in axes[m]} for m in methods}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        a = model(rng, 128, INPUTS)
        families = {
            "pruned": pruned(a, 96, rng, float(rng.choice([0.0, 0.3, 0.6]))),
            "projected": projected(a, rng),
            "twin": model(rng, 96, INPUTS),
        }
        for family, b in families.items():
            for method, report in reports(a, b).items():
                axes[method][family] += report.get("lineage", {}).get("axes", [])
                verdicts[method][family].append(called(report))
    for method in methods:
        print(f"== {method} ==")
        for family, found in axes[method].items():
            summarise(family, found, verdicts[method][family])
    twins = [v for method in methods for v in verdicts[method]["twin"]]
    claims = sum(v in ("pruned", "related", "derived") for v in twins)
    print(f"false-positive rate on twins: {claims} of {len(twins)} comparisons called derived or pruned")


def summarise(family: str, found: list[dict], said: list[str]) -> None:
    for side in ("input", "output"):
        on_side = [x for x in found if x["side"] == side]
        if not on_side:
            continue
        z = [x["z_score"] for x in on_side if x["z_score"] is not None] or [float("nan")]
        shuffle = [x["mantel_z"] for x in on_side]
        score = [x["score"] for x in on_side]
        print(
            f"{family}, {side} side: controls z {min(z):.1f} to {max(z):.1f} ({len(z)} axes with "
            f"controls), shuffle z {min(shuffle):.1f} to {max(shuffle):.1f}, Gram correlation "
            f"{min(score):.3f} to {max(score):.3f} over {len(on_side)} axes"
        )
    counts = ", ".join(
        f"{label} {said.count(label)}" for label in ("pruned", "derived", "cannot tell", "no sign")
    )
    print(f"{family}: of {len(said)}: {counts}")


if __name__ == "__main__":
    main()
