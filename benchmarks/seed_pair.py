"""The seed's pair at full width: Wan2.1-style (5120) vs LongCat-style (4096), two blocks each.

Writes the models once (build/seed_pair, about 8.3 GB in bf16), then compares A with a
LongCat-style model pruned from it unit by unit, one pruned keeping whole attention heads
(40 of 128 to 32), and an independently initialised one, from the tensor values and from
the indexes alone, and prints each verdict: the tensors mapped (pruned models are traced
tensor by tensor from the values) and, where no tensor could be, the lineage section. Not part
of `make test` (it takes minutes); run it with `.venv/bin/python benchmarks/seed_pair.py`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.seed_pair import write_seed_pair
from weightidx.compare.engine import compare_paths

FOLDER = Path(__file__).resolve().parents[1] / "build" / "seed_pair"


def main() -> None:
    paths = {
        "a": FOLDER / "wan_like.safetensors",
        "derived": FOLDER / "longcat_like_pruned_from_a.safetensors",
        "heads": FOLDER / "longcat_like_heads_from_a.safetensors",
        "independent": FOLDER / "longcat_like_independent.safetensors",
    }
    if not all(path.exists() for path in paths.values()):
        print("generating the full-width pair (5120 vs 4096, two blocks) ...", flush=True)
        paths = write_seed_pair(FOLDER)
    for role in ("derived", "heads", "independent"):
        for index_only in (False, True):  # from the tensor values, then from the index sketches alone
            started = time.perf_counter()
            report = compare_paths(paths["a"], paths[role], cache=FOLDER / "cache", index_only=index_only)
            method = "index only" if index_only else "values"
            print(f"\n== A vs {paths[role].name} ({method}): {time.perf_counter() - started:.0f} s ==")
            summary = report["summary"]
            print("scenario:", summary["scenario"], "| B tensors mapped:", summary["matched_b_tensors"])
            print("pruned:", json.dumps(summary["pruned"]))
            print(summary["verdict"])
            if "lineage" in report:
                print(json.dumps(report["lineage"]["axes"], indent=1))
                print(report["lineage"]["verdict"])


if __name__ == "__main__":
    main()
