"""`make bench` (part 4): indexing GGUF files against the ``gguf`` package's own dequantisation.

Two GGUF files are written once (cached in build/bench/gguf) from the index benchmark's
checkpoint, its first tensors up to ``PARAMETERS`` parameters: one with every matrix in Q4_0
(gguf's own quantiser), one in Q6_K (``tests/helpers/kquants.py``: gguf does not quantise
K-quants). Measured in one run, best of 3 each, interleaved:

  (a) the floor: ``gguf.GGUFReader`` and ``gguf.quants.dequantize`` of every tensor, one
      process, nothing written;
  (b) `weightidx index FILE.gguf` as a whole process with an empty cache: the conversion to
      the cache (dequantise, write F32) and the index of the converted file;

and prints (b) / (a) for each file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_index import CACHE, ensure_checkpoint, weightidx_command
from tests.helpers.kquants import quantize_q6_k
from weightidx.fingerprint.sketch import view_2d
from weightidx.io.safetensors import ShardReader, decode, open_checkpoint

FOLDER = CACHE / "gguf"
PARAMETERS = 256_000_000
RUNS = 3


def write_gguf(source: Path, out: Path, kind: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(out, "wan")
    with ShardReader() as reader:
        total = 0
        for tensor in open_checkpoint(source).tensors:
            if total >= PARAMETERS:
                break
            values = decode(reader.read(tensor.path, tensor.begin, tensor.nbytes), tensor.dtype)
            values = values.astype(np.float32).reshape(view_2d(tensor.shape))
            total += values.size
            if values.ndim == 2 and values.shape[0] > 1 and values.shape[1] % 256 == 0:
                quant = gguf.GGMLQuantizationType[kind]
                stored = quantize_q6_k(values) if kind == "Q6_K" else gguf.quants.quantize(values, quant)
                writer.add_tensor(tensor.key, stored, raw_dtype=quant)
            else:
                writer.add_tensor(tensor.key, values.reshape(-1) if values.shape[0] == 1 else values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def ensure_gguf(kind: str) -> Path:
    path = FOLDER / f"wan-{kind}.gguf"
    if not path.exists():
        FOLDER.mkdir(parents=True, exist_ok=True)
        print(f"writing {path.name} ...", flush=True)
        write_gguf(ensure_checkpoint("x1", blocks=14), path, kind)
    return path


def floor(path: Path) -> float:
    """gguf's own read and dequantisation of every tensor (the values are discarded)."""
    code = (
        "import sys, gguf\n"
        "r = gguf.GGUFReader(sys.argv[1])\n"
        "for t in r.tensors: gguf.quants.dequantize(t.data, t.tensor_type)\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return time.perf_counter() - start


def weightidx_index(path: Path) -> float:
    """`weightidx index` with an empty cache: conversion included."""
    cache = Path(tempfile.mkdtemp(dir=FOLDER))
    try:
        env = {**os.environ, "WEIGHTIDX_CACHE": str(cache)}
        command = weightidx_command(["index", str(path), "-o", str(cache / "x.parquet"), "-q"])
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(cache)


def main() -> None:
    results = {}
    for kind in ("Q4_0", "Q6_K"):
        path = ensure_gguf(kind)
        floors, ours = [], []
        for _ in range(RUNS):
            floors.append(floor(path))
            ours.append(weightidx_index(path))
        results[kind] = {
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "gguf_dequantise_seconds": round(min(floors), 2),
            "weightidx_index_seconds": round(min(ours), 2),
            "ratio": round(min(ours) / min(floors), 2),
        }
    print(json.dumps(results, indent=1))
    print("\n| file | size | gguf dequantise (floor) | `weightidx index`, empty cache | ratio |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        print(
            f"| {kind} | {r['file_mb']} MB | {r['gguf_dequantise_seconds']} s | "
            f"{r['weightidx_index_seconds']} s | {r['ratio']}× |"
        )


if __name__ == "__main__":
    main()
