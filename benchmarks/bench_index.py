"""`make bench`: index throughput and memory against sha256sum and a plain numpy decode floor.

Builds the ~1.6 GB bf16 benchmark checkpoint once (cached in build/bench), and a
second one twice its size for the memory-scaling check, then in one run measures:

  (a) sha256sum of the file                       -- the baseline everyone knows
  (b) decode floor: numpy decodes every tensor to float32 in 2^20-element chunks,
      one thread, best of 3                       -- informational
  (c) `weightidx index`, whole process, best and median of 5, interleaved with the same
      command on the numpy path (WEIGHTIDX_KERNEL=numpy): the compiled kernel's gain
  (d) peak RSS of the index run, the whole process tree (parent + workers),
      sampled from /proc, for the 1x and the 2x checkpoint, in runs of their own (the
      sampler's CPU would slow the timed runs)

and prints ratios. Machines here are noisy: compare the ratios, not the seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from weightidx.demo import DemoConfig, write_demo_pair
from weightidx.io.safetensors import ShardReader, decode, open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "bench"
CHUNK = 1 << 20
RUNS = 5


def ensure_checkpoint(name: str, blocks: int) -> Path:
    folder = CACHE / name
    path = folder / "wan_a.safetensors"
    if not path.exists():
        print(f"generating {name} checkpoint ({blocks} blocks, width 2048, bf16) ...", flush=True)
        write_demo_pair(folder, DemoConfig(width=2048, blocks=blocks, text_dim=4096))
    return path


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def sha256sum(path: Path) -> float:
    return best_of(2, lambda: subprocess.run(["sha256sum", str(path)], check=True, capture_output=True))


def decode_floor(path: Path) -> float:
    checkpoint = open_checkpoint(path)
    raw = np.empty(CHUNK * 8, dtype=np.uint8)
    out = np.empty(CHUNK, dtype=np.float32)

    def one_pass() -> None:
        with ShardReader() as reader:
            for tensor in checkpoint.tensors:
                itemsize = tensor.nbytes // max(tensor.numel, 1)
                for start in range(0, tensor.numel, CHUNK):
                    count = min(CHUNK, tensor.numel - start)
                    view = raw[: count * itemsize]
                    reader.read_into(tensor.path, tensor.begin + start * itemsize, memoryview(view))
                    decode(view, tensor.dtype, out=out[:count])

    return best_of(3, one_pass)


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def weightidx_command(arguments: list[str]) -> list[str]:
    """The `weightidx` console script of this environment with ``arguments``."""
    return [str(Path(sys.executable).with_name("weightidx")), *arguments]


def index_arguments(path: Path, out: Path) -> list[str]:
    return ["index", str(path), "-o", str(out), "-q"]


def time_index(path: Path, out: Path, kernel: str | None = None) -> float:
    """Wall time of one `weightidx index` run, nothing else running; ``kernel="numpy"`` runs it
    without the compiled kernel (the baseline it replaced)."""
    env = {**os.environ, "WEIGHTIDX_KERNEL": kernel} if kernel else None
    start = time.perf_counter()
    subprocess.run(weightidx_command(index_arguments(path, out)), check=True, env=env)
    return time.perf_counter() - start


def index_rss(path: Path, out: Path) -> int:
    """Peak process-tree RSS (KiB) of one `weightidx index` run (a run of its own: the sampler
    takes CPU that the timed runs must not lose on a 2-core machine)."""
    return run_command(index_arguments(path, out))[1]


def run_command(arguments: list[str]) -> tuple[float, int]:
    """Wall time and peak process-tree RSS (KiB) of one `weightidx ...` run."""
    return run_process(weightidx_command(arguments), f"weightidx {arguments[0]}")


def run_process(argv: list[str], label: str) -> tuple[float, int]:
    """Wall time and peak process-tree RSS (KiB) of one process run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_kib(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if code:
        raise SystemExit(f"{label} failed with exit code {code}")
    return elapsed, peak


def main() -> None:
    single = ensure_checkpoint("x1", blocks=14)
    double = ensure_checkpoint("x2", blocks=28)
    size = single.stat().st_size
    out = CACHE / "index.parquet"
    print(f"checkpoint: {single} ({size / 1e9:.2f} GB), cores: {len(os.sched_getaffinity(0))}", flush=True)

    sha = sha256sum(single)
    floor = decode_floor(single)
    # Interleaved so both see the same machine noise: the kernel build and the numpy path.
    index_runs, numpy_runs = [], []
    for _ in range(RUNS):
        index_runs.append(time_index(single, out))
        numpy_runs.append(time_index(single, CACHE / "index-numpy.parquet", kernel="numpy"))
    index_time = min(index_runs)
    index_median = statistics.median(index_runs)
    numpy_median = statistics.median(numpy_runs)
    # The 2x checkpoint: best of 2, so it is read from the page cache like the 1x one.
    double_time = min(time_index(double, CACHE / "index2.parquet") for _ in range(2))
    # The extra 1.6 GB over the extra time: throughput without the fixed start-up (Python,
    # imports, worker processes).
    marginal = (double.stat().st_size - size) / max(double_time - index_median, 1e-9)
    rss_single = index_rss(single, out)
    rss_double = index_rss(double, CACHE / "index2.parquet")

    results = {
        "checkpoint_gb": round(size / 1e9, 3),
        "sha256sum_gbps": round(size / sha / 1e9, 3),
        "decode_floor_gbps": round(size / floor / 1e9, 3),
        "index_gbps": round(size / index_time / 1e9, 3),
        "index_median_gbps": round(size / index_median / 1e9, 3),
        "index_numpy_path_median_gbps": round(size / numpy_median / 1e9, 3),
        "index_over_sha256sum": round(sha / index_time, 2),
        "index_median_over_sha256sum": round(sha / index_median, 2),
        "kernel_over_numpy_path": round(numpy_median / index_median, 2),
        "index_marginal_gbps": round(marginal / 1e9, 3),
        "index_marginal_over_sha256sum": round(marginal / (size / sha), 2),
        "index_over_floor": round(floor / index_time, 2),
        "peak_rss_mib": round(rss_single / 1024, 1),
        "peak_rss_2x_mib": round(rss_double / 1024, 1),
        "rss_growth_2x": round(rss_double / rss_single, 3),
    }
    print(json.dumps(results, indent=1))
    print(
        "\n| measure | value |\n|---|---|\n"
        f"| sha256sum (baseline) | {results['sha256sum_gbps']} GB/s |\n"
        f"| numpy decode floor, 1 thread (informational) | {results['decode_floor_gbps']} GB/s |\n"
        f"| `weightidx index`, whole process, best of {RUNS} | {results['index_gbps']} GB/s |\n"
        f"| `weightidx index`, median of {RUNS} | {results['index_median_gbps']} GB/s |\n"
        f"| same, numpy path (WEIGHTIDX_KERNEL=numpy), median | "
        f"{results['index_numpy_path_median_gbps']} GB/s |\n"
        f"| index / sha256sum (best; median) | {results['index_over_sha256sum']}x; "
        f"{results['index_median_over_sha256sum']}x |\n"
        f"| compiled kernel / numpy path (medians) | {results['kernel_over_numpy_path']}x |\n"
        f"| marginal throughput (2x run minus 1x median) | {results['index_marginal_gbps']} GB/s = "
        f"{results['index_marginal_over_sha256sum']}x sha256sum |\n"
        f"| index / decode floor | {results['index_over_floor']}x |\n"
        f"| peak RSS, process tree, 1.66 GB checkpoint | {results['peak_rss_mib']} MiB |\n"
        f"| peak RSS, process tree, 3.3 GB checkpoint | {results['peak_rss_2x_mib']} MiB "
        f"({results['rss_growth_2x']}x) |"
    )


if __name__ == "__main__":
    main()
