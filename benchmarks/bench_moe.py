"""`make bench` (part 3): compare where models hold thousands of tensors of one shape.

Each pair is B = A + 1 % noise stored as F16 under the same names (the mapping is known), both
indexed once (cached in build/bench/moe). Every comparison runs in a process of its own, which
reports the seconds `compare_indexes` took (imports excluded) while this one samples the peak
RSS of that process. Measured in one run:

  (a) the MoE sweep (``tests/helpers/moe.py``: 4 layers of width 128, E experts of gate and up
      (64, 128) and down (128, 64)), E = 16 ... 256: time, peak RSS, the growth exponent between
      successive E, tensors mapped right; and, up to E = 128, the all-pairs reference
      (``exhaustive=True``, the baseline: every same-view pair tested), its time and whether its
      mapping is the same;
  (b) dense models of width 128 with 40, 80 and 160 blocks, the same measures;
  (c) Qwen3-30B-A3B's expert layout at reduced width: 48 layers x 128 experts x 3 matrices
      (gate and up (32, 64), down (64, 32)): 18,432 expert matrices a side.

Machines here are noisy: compare the ratios and exponents, not the seconds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_index import CACHE, run_process
from tests.helpers.moe import moe_model, noisy_copy
from tests.helpers.tensors import Tensors, trained_like, write_tensors

FOLDER = CACHE / "moe"
EXPERTS = (16, 32, 64, 128, 256)
REFERENCE_UP_TO = 128  # the all-pairs reference beyond this takes minutes and gigabytes
DENSE_BLOCKS = (40, 80, 160)
DENSE_REFERENCE_UP_TO = 80


def dense_model(blocks: int, width: int = 128, seed: int = 0) -> Tensors:
    """Per block: q, k, v, o (width, width), FFN up (4 width, width) and down (width, 4 width),
    two norms (width,)."""
    rng = np.random.default_rng(seed)
    tensors: Tensors = {}
    for block in range(blocks):
        prefix = f"blocks.{block}"
        for name in ("q", "k", "v", "o"):
            tensors[f"{prefix}.attn.{name}.weight"] = ("F32", trained_like(rng, width, width))
        tensors[f"{prefix}.ffn.up.weight"] = ("F32", trained_like(rng, 4 * width, width))
        tensors[f"{prefix}.ffn.down.weight"] = ("F32", trained_like(rng, width, 4 * width))
        for norm in ("norm1", "norm2"):
            scale = 1 + 0.1 * rng.standard_normal(width)
            tensors[f"{prefix}.{norm}.weight"] = ("F32", scale.astype(np.float32))
    return tensors


def ensure_pair(name: str, make) -> tuple[Path, Path]:
    """The indexes of A (``make()``) and of its noisy F16 copy, built once."""
    from weightidx.index.writer import index_checkpoint

    folder = FOLDER / name
    a_index, b_index = folder / "a.parquet", folder / "b.parquet"
    if not b_index.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"generating {name} ...", flush=True)
        a = make()
        write_tensors(folder / "a.safetensors", a)
        write_tensors(folder / "b.safetensors", noisy_copy(a, 0.01, seed=1))
        del a
        index_checkpoint(folder / "a.safetensors", a_index)
        index_checkpoint(folder / "b.safetensors", b_index)
    return a_index, b_index


def measure(a_index: Path, b_index: Path, exhaustive: bool = False) -> dict:
    """One comparison in a process of its own: seconds, peak RSS (MiB), tensors right."""
    out = a_index.with_name("exhaustive.json" if exhaustive else "narrowed.json")
    argv = [sys.executable, __file__, "--run", str(a_index), str(b_index), str(out)]
    _, peak = run_process(argv + (["--exhaustive"] if exhaustive else []), "compare")
    result = json.loads(out.read_text())
    result["rss_mib"] = round(peak / 1024)
    return result


def run_one(a_index: str, b_index: str, out: str, exhaustive: bool) -> None:
    """The child: compare, then write the seconds and the mapping."""
    from weightidx.compare.engine import compare_indexes
    from weightidx.index.reader import load_index

    a, b = load_index(a_index), load_index(b_index)
    start = time.perf_counter()
    report = compare_indexes(a, b, exhaustive=exhaustive)
    seconds = time.perf_counter() - start
    mapping = {
        m["b"]["key"]: m["a"]["key"]
        for m in report["matches"]
        if m["verdict"] != "different" and m["b"]["slice"] is None and m["a"]["slice"] is None
    }
    right = sum(mapping.get(key) == key for key in b.rows)
    Path(out).write_text(
        json.dumps({"seconds": round(seconds, 2), "tensors": len(b.rows), "right": right, "mapping": mapping})
    )


def exponent(sizes: list[int], seconds: list[float]) -> list[float | None]:
    """The growth exponent from each size to the next: log(t2/t1) / log(n2/n1)."""
    found: list[float | None] = [None]
    for i in range(1, len(sizes)):
        found.append(round(math.log(seconds[i] / seconds[i - 1]) / math.log(sizes[i] / sizes[i - 1]), 2))
    return found


def sweep(label: str, sizes: tuple[int, ...], make, reference_up_to: int) -> list[dict]:
    rows = []
    for size in sizes:
        a_index, b_index = ensure_pair(f"{label}{size}", lambda size=size: make(size))
        row = {"size": size, **_without_mapping(narrowed := measure(a_index, b_index))}
        if size <= reference_up_to:
            reference = measure(a_index, b_index, exhaustive=True)
            row["reference_seconds"] = reference["seconds"]
            row["reference_rss_mib"] = reference["rss_mib"]
            row["speedup_vs_reference"] = round(reference["seconds"] / narrowed["seconds"], 1)
            row["same_mapping_as_reference"] = reference["mapping"] == narrowed["mapping"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    growth = exponent([r["size"] for r in rows], [r["seconds"] for r in rows])
    for row, step in zip(rows, growth, strict=True):
        row["exponent"] = step
    return rows


def _without_mapping(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "mapping"}


def table(title: str, unit: str, rows: list[dict]) -> str:
    lines = [
        f"\n{title}\n",
        f"| {unit} | tensors | compare s | exponent | peak RSS MiB | right | all-pairs s | ratio "
        "| same mapping |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        growth = r["exponent"] if r["exponent"] is not None else ""
        lines.append(
            f"| {r['size']} | {r['tensors']} | {r['seconds']} | {growth} "
            f"| {r['rss_mib']} | {r['right']} | {r.get('reference_seconds', '')} "
            f"| {str(r['speedup_vs_reference']) + '×' if 'speedup_vs_reference' in r else ''} "
            f"| {r.get('same_mapping_as_reference', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    moe = sweep("experts", EXPERTS, lambda e: moe_model(e), REFERENCE_UP_TO)
    dense = sweep("dense", DENSE_BLOCKS, lambda blocks: dense_model(blocks), DENSE_REFERENCE_UP_TO)
    qwen_a, qwen_b = ensure_pair("qwen3-30b-a3b", lambda: moe_model(128, layers=48, width=64, ffn=32))
    qwen = _without_mapping(measure(qwen_a, qwen_b))
    print(json.dumps({"moe": moe, "dense": dense, "qwen3_30b_a3b_layout": qwen}, indent=1))
    print(table("MoE sweep (4 layers, width 128; B = A + 1 % noise, F16)", "experts", moe))
    print(table("Dense sweep (width 128)", "blocks", dense))
    print(
        "\nQwen3-30B-A3B expert layout at width 64 (48 layers x 128 experts x 3): "
        f"{qwen['tensors']} tensors, compare {qwen['seconds']} s, peak RSS {qwen['rss_mib']} MiB, "
        f"{qwen['right']} mapped right"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        run_one(sys.argv[2], sys.argv[3], sys.argv[4], exhaustive="--exhaustive" in sys.argv)
    else:
        main()
