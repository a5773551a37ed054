"""`make bench` (part 3): `weightidx search` and a catalog-wide query over 1,000 indexes.

Writes 1,000 synthetic indexes straight to Parquet (cached in build/bench/catalog): 100
families of a base model and 9 fine-tunes (sketches = base + noise, same keys), widths
256 to 1,024, 400 to 1,100 tensors each, with the real schema and metadata. Then times,
whole process, best of 2: `weightidx search` for one base model, and `weightidx sql`
running `queries/shared_tensors.sql` over the whole catalog; and checks the search puts
the 9 fine-tunes of the query's family first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_index import CACHE, run_command
from weightidx.fingerprint.sketch import BLOCK, K
from weightidx.index.schema import INDEX_SCHEMA, METADATA_KEY, SCHEMA_VERSION
from weightidx.sql.runner import queries_folder

FAMILIES, MEMBERS = 100, 10
FOLDER = CACHE / "catalog"
QUERY = CACHE / "catalog-query.parquet"  # family 7's base, kept outside the catalog it searches


def family_layout(rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """(key, rows, cols) of one architecture with 400 to 1,100 tensors."""
    width = int(rng.choice([256, 384, 512, 768, 1024]))
    per_layer = [
        ("attn.q.weight", width, width),
        ("attn.k.weight", width, width),
        ("attn.v.weight", width, width),
        ("attn.o.weight", width, width),
        ("mlp.up.weight", 4 * width, width),
        ("mlp.down.weight", width, 4 * width),
        ("norm1.weight", width, 1),
        ("norm2.weight", width, 1),
        ("attn.q.bias", width, 1),
        ("attn.k.bias", width, 1),
        ("attn.v.bias", width, 1),
    ]
    layers = int(rng.integers(400, 1100)) // len(per_layer)
    return [(f"layers.{i}.{name}", r, c) for i in range(layers) for name, r, c in per_layer]


def write_index(path: Path, name: str, layout, sketches, crcs) -> None:
    rows = len(layout)
    numel = np.array([r * c for _, r, c in layout], dtype=np.int64)
    columns = {field.name: None for field in INDEX_SCHEMA}
    columns.update(
        model=[name] * rows,
        key=[k for k, _, _ in layout],
        shard=["model.safetensors"] * rows,
        dtype=["BF16"] * rows,
        unsupported_reason=[None] * rows,
        shape=[[r, c] if c > 1 else [r] for _, r, c in layout],
        ndim=[2 if c > 1 else 1 for _, _, c in layout],
        numel=numel,
        nbytes=2 * numel,
        data_begin=np.zeros(rows, np.int64),
        data_end=2 * numel,
        supported=[True] * rows,
        rows=[r for _, r, _ in layout],
        cols=[c for _, _, c in layout],
        finite=numel,
        sum_x=np.zeros(rows),
        sum_x2=numel * 1e-3,
        sum_x3=np.zeros(rows),
        sum_x4=numel * 3e-6,
        mean=np.zeros(rows),
        std=np.full(rows, 0.03),
        kurtosis=np.zeros(rows),
        l2_norm=np.sqrt(numel * 1e-3),
        min=np.full(rows, -0.2),
        max=np.full(rows, 0.2),
        absmax=np.full(rows, 0.2),
        zeros=np.zeros(rows, np.int64),
        nans=np.zeros(rows, np.int64),
        posinf=np.zeros(rows, np.int64),
        neginf=np.zeros(rows, np.int64),
        crc32=crcs,
        row_sketch=[s[0] for s in sketches],
        col_sketch=[s[1] for s in sketches],
        sample=[np.zeros(16, np.float32)] * rows,
        sample_stride_rows=[1] * rows,
        sample_stride_cols=[1] * rows,
        sample_rows=[4] * rows,
        sample_cols=[4] * rows,
    )
    # Gram sketches (lineage) play no part in search: left null, as for tensors too narrow to have them.
    arrays = [
        pa.array([None] * rows if columns[f.name] is None else columns[f.name], type=f.type)
        for f in INDEX_SCHEMA
    ]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "sketch_version": 1,
        "model": name,
        "checkpoint": f"/synthetic/{name}",
        "root": "/synthetic",
        "shards": [],
    }
    table = pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA.with_metadata({METADATA_KEY: json.dumps(meta)}))
    pq.write_table(table, path, compression="zstd")


def build_catalog() -> None:
    if len(list(FOLDER.glob("*.parquet"))) == FAMILIES * MEMBERS - 1 and QUERY.exists():
        return
    FOLDER.mkdir(parents=True, exist_ok=True)
    print(f"writing {FAMILIES * MEMBERS} synthetic indexes into {FOLDER} ...", flush=True)
    for family in range(FAMILIES):
        rng = np.random.default_rng(family)
        layout = family_layout(rng)
        base = [
            (
                rng.standard_normal(-(-r // BLOCK) * K).astype(np.float32),
                rng.standard_normal(-(-c // BLOCK) * K).astype(np.float32),
            )
            for _, r, c in layout
        ]
        for member in range(MEMBERS):
            noise = 0.0 if member == 0 else 0.05 * member
            sketches = [
                (
                    rs + noise * rng.standard_normal(rs.size).astype(np.float32),
                    cs + noise * rng.standard_normal(cs.size).astype(np.float32),
                )
                for rs, cs in base
            ]
            crcs = [
                f"{rng.integers(0, 2**32):08x}" if member else f"{family:04x}{i:04x}"
                for i in range(len(layout))
            ]
            name = f"family{family:03d}-{'base' if member == 0 else f'tune{member}'}"
            target = QUERY if (family, member) == (7, 0) else FOLDER / f"{name}.parquet"
            write_index(target, name, layout, sketches, crcs)


def main() -> None:
    build_catalog()
    query = QUERY
    sizes = sum(p.stat().st_size for p in FOLDER.glob("*.parquet"))
    search = [run_command(["search", str(query), "--catalog", str(FOLDER), "--top", "9"]) for _ in range(2)]
    files = sorted(str(p) for p in FOLDER.glob("*.parquet"))
    shared = [
        run_command(
            [
                "sql",
                "-f",
                str(queries_folder() / "shared_tensors.sql"),
                "-o",
                str(CACHE / "shared.csv"),
                "--format",
                "csv",
                *files,
            ]
        )
        for _ in range(2)
    ]
    import subprocess

    listing = subprocess.run(
        [
            str(Path(sys.executable).with_name("weightidx")),
            "search",
            str(query),
            "--catalog",
            str(FOLDER),
            "--top",
            "9",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[1:]
    family_first = all(line.startswith("family007-tune") for line in listing)
    results = {
        "indexes": len(files) + 1,  # the catalog and the query
        "catalog_mb": round(sizes / 1e6, 1),
        "search_seconds": round(min(t for t, _ in search), 2),
        "search_peak_rss_mib": round(max(r for _, r in search) / 1024, 1),
        "shared_tensors_seconds": round(min(t for t, _ in shared), 2),
        "shared_tensors_peak_rss_mib": round(max(r for _, r in shared) / 1024, 1),
        "fine_tunes_ranked_first": family_first,
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
