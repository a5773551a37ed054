"""`make bench` (part 2): compare against brute force on the 1.66 GB benchmark pair.

Model B is the LongCat-style derivation of the benchmark checkpoint (renamed, fused
q/k/v and k/v, cast, transposed, reshaped, two blocks fine-tuned, new tensors). With
both indexes built, one run measures:

  (a) `weightidx compare a.parquet b.parquet`, whole process, best of 2, and its
      peak RSS over the process tree;
  (b) brute force: exact Pearson correlation of every same-shape or transposed pair,
      plain numpy, one B tensor and one A tensor in memory at a time;

and checks both pick the same best A tensor for every B tensor brute force can see
(whole tensors of the same or transposed shape, best |correlation| > 0.8).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_index import CACHE, ensure_checkpoint, run_command, time_index
from weightidx.fingerprint.sketch import view_2d
from weightidx.io.safetensors import ShardReader, decode, open_checkpoint


def ensure_index(checkpoint: Path, name: str) -> Path:
    out = CACHE / f"{name}.parquet"
    if not out.exists():
        time_index(checkpoint, out)
    return out


def load(reader: ShardReader, tensor) -> np.ndarray:
    values = decode(reader.read(tensor.path, tensor.begin, tensor.nbytes), tensor.dtype)
    return values.astype(np.float32, copy=False).reshape(view_2d(tensor.shape))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator else 0.0


def brute_force(a_path: Path, b_path: Path) -> dict[str, tuple[str, float]]:
    """For each B matrix: the A tensor of the same or transposed view with the largest |Pearson|."""
    a_tensors = [t for t in open_checkpoint(a_path).tensors if t.supported]
    by_view: dict[tuple[int, int], list] = defaultdict(list)
    for tensor in a_tensors:
        by_view[view_2d(tensor.shape)].append(tensor)
    best: dict[str, tuple[str, float]] = {}
    with ShardReader() as reader:
        for tb in open_checkpoint(b_path).tensors:
            rows, cols = view_2d(tb.shape)
            if rows < 2 or cols < 2:
                continue
            values_b = load(reader, tb)
            for ta in by_view.get((rows, cols), []) + (by_view.get((cols, rows), []) if rows != cols else []):
                values_a = load(reader, ta)
                if values_a.shape != values_b.shape:
                    values_a = np.ascontiguousarray(values_a.T)
                score = abs(pearson(values_a, values_b))
                if score > best.get(tb.key, ("", -1.0))[1]:
                    best[tb.key] = (ta.key, score)
    return best


def main() -> None:
    a_path = ensure_checkpoint("x1", blocks=14)
    b_path = a_path.with_name("longcat_b.safetensors")
    a_index, b_index = ensure_index(a_path, "bench_a"), ensure_index(b_path, "bench_b")
    report_path = CACHE / "report.json"
    command = ["compare", str(a_index), str(b_index), "-o", str(report_path), "-q"]
    runs = [run_command(command) for _ in range(2)]
    compare_time, compare_rss = min(t for t, _ in runs), max(r for _, r in runs)
    start = time.perf_counter()
    brute = brute_force(a_path, b_path)
    brute_time = time.perf_counter() - start

    looks = second_look_cost(a_index, b_index)
    report = json.loads(report_path.read_text())
    ours = {
        m["b"]["key"]: m["a"]["key"]
        for m in report["matches"]
        if m["b"]["slice"] is None and m["a"]["slice"] is None
    }
    visible = {b: a for b, (a, score) in brute.items() if score > 0.8}
    agree = sum(ours.get(b) == a for b, a in visible.items())
    results = {
        "compare_seconds": round(compare_time, 2),
        "brute_force_seconds": round(brute_time, 2),
        "speedup": round(brute_time / compare_time, 1),
        "compare_peak_rss_mib": round(compare_rss / 1024, 1),
        "best_matches_compared": len(visible),
        "best_matches_agreeing": agree,
        **looks,
    }
    print(json.dumps(results, indent=1))
    print(
        "\n| measure | value |\n|---|---|\n"
        f"| `weightidx compare`, indexes built, whole process | {results['compare_seconds']} s |\n"
        "| brute force, exact Pearson of every same/transposed-shape pair | "
        f"{results['brute_force_seconds']} s |\n"
        f"| **speed-up** | **{results['speedup']}×** |\n"
        f"| compare peak RSS, process tree | {results['compare_peak_rss_mib']} MiB |\n"
        f"| same best match as brute force | {agree} of {len(visible)} |\n"
        f"| compare in-process, second looks and structured search off (median of 3) | "
        f"{looks['without_second_looks_seconds']} s |\n"
        f"| the same, on (the default) | {looks['with_second_looks_seconds']} s |\n"
        f"| **cost of the second looks** | **{looks['second_look_ratio']}×** |\n"
        f"| the same two with `--index-only` | {looks['index_only_without_second_looks_seconds']} s, "
        f"{looks['index_only_with_second_looks_seconds']} s |\n"
        f"| **cost of the gathers from the sketches** | **{looks['index_only_second_look_ratio']}×** |"
    )


def second_look_cost(a_index: Path, b_index: Path) -> dict:
    """compare_indexes with and without the second looks (from the values: weak matrices, block
    neighbours, structured derivations; with ``index_only``: gathers of sketch blocks),
    interleaved, medians of 3: what they cost on a pair that has nothing structured to find."""
    from statistics import median

    from weightidx.compare.engine import compare_indexes
    from weightidx.index.reader import load_index

    a, b = load_index(a_index), load_index(b_index)
    results = {}
    for index_only, label in ((False, ""), (True, "index_only_")):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for on in (False, True):
                start = time.perf_counter()
                compare_indexes(a, b, second_looks=on, index_only=index_only)
                times[on].append(time.perf_counter() - start)
        off, on = median(times[False]), median(times[True])
        results[f"{label}without_second_looks_seconds"] = round(off, 2)
        results[f"{label}with_second_looks_seconds"] = round(on, 2)
        results[f"{label}second_look_ratio"] = round(on / off, 2)
    return results


if __name__ == "__main__":
    main()
