"""Stage 1 end to end: checkpoint -> Parquet, through the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers.sketch_slices import row_slice
from tests.helpers.tensors import trained_like
from weightidx import index_checkpoint, open_checkpoint
from weightidx.compare.estimate import Sketches, same_layout, transposed
from weightidx.index import writer as index_module
from weightidx.index.schema import INDEX_SCHEMA, METADATA_KEY
from weightidx.io.safetensors import decode

FINGERPRINT_COLUMNS = [
    "crc32",
    "sum_x",
    "sum_x2",
    "sum_x3",
    "sum_x4",
    "min",
    "max",
    "zeros",
    "row_sketch",
    "col_sketch",
    "sample",
]


def read_rows(path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in pq.read_table(path).to_pylist()}


def test_index_has_one_row_per_tensor_with_exact_statistics(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    summary = index_checkpoint(demo_pair["a"], out)
    checkpoint = open_checkpoint(demo_pair["a"])
    rows = read_rows(out)
    assert summary.tensors == len(rows) == len(checkpoint.tensors)
    assert pq.read_schema(out).remove_metadata() == INDEX_SCHEMA
    raw = demo_pair["a"].read_bytes()
    for tensor in checkpoint.tensors:
        row = rows[tensor.key]
        data = raw[tensor.begin : tensor.end]
        values = decode(data, tensor.dtype).astype(np.float64)
        assert row["crc32"] == f"{zlib.crc32(data):08x}"
        assert (row["shape"], row["numel"], row["nbytes"], row["dtype"]) == (
            list(tensor.shape),
            values.size,
            len(data),
            "BF16",
        )
        assert row["sum_x2"] == pytest.approx(float((values**2).sum()), rel=1e-5)
        assert row["mean"] == pytest.approx(float(values.mean()), rel=1e-3, abs=1e-7)
        assert row["std"] == pytest.approx(float(values.std()), rel=1e-4)
        assert (row["min"], row["max"]) == (values.min(), values.max())
        assert row["absmax"] == np.abs(values).max()


def test_file_metadata_records_versions_and_shard_identity(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    index_checkpoint(demo_pair["a"], out, name="wan")
    meta = json.loads(pq.read_schema(out).metadata[METADATA_KEY])
    assert (meta["schema_version"], meta["sketch_version"], meta["model"]) == (1, 1, "wan")
    (shard,) = meta["shards"]
    stat = demo_pair["a"].stat()
    assert (shard["name"], shard["size"], shard["mtime_ns"]) == (
        "wan_a.safetensors",
        stat.st_size,
        stat.st_mtime_ns,
    )
    assert len(shard["header_sha256"]) == 64
    assert shard["metadata"]["generator"] == "weightidx.demo"
    assert meta["sketch"] == {**meta["sketch"], "block": 16, "projections": 8}


def test_index_is_plain_parquet_for_duckdb_and_pyarrow(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    index_checkpoint(demo_pair["a"], out)
    count, params = duckdb.execute("SELECT count(*), sum(numel) FROM read_parquet(?)", [str(out)]).fetchone()
    assert count == len(open_checkpoint(demo_pair["a"]).tensors)
    assert params == sum(t.numel for t in open_checkpoint(demo_pair["a"]).tensors)
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(out)
    assert list(frame.columns) == INDEX_SCHEMA.names


def test_transforms_are_recognised_from_the_index_alone(demo_pair, tmp_path: Path) -> None:
    index_checkpoint(demo_pair["a"], tmp_path / "a.parquet")
    index_checkpoint(demo_pair["b"], tmp_path / "b.parquet")
    a, b = read_rows(tmp_path / "a.parquet"), read_rows(tmp_path / "b.parquet")
    sk = {key: Sketches.from_row(row) for key, row in [*a.items(), *(("B:" + k, v) for k, v in b.items())]}
    qkv = sk["B:blocks.1.attn.qkv.weight"]
    for index, part in enumerate("qkv"):
        assert row_slice(sk[f"blocks.1.self_attn.{part}.weight"], qkv, 128 * index) > 0.999
    assert row_slice(sk["blocks.1.self_attn.k.weight"], qkv, 0) < 0.5
    assert transposed(sk["text_embedding.2.weight"], sk["B:y_embedder.y_proj.2.weight"]) > 0.999
    assert same_layout(sk["patch_embedding.weight"], sk["B:x_embedder.proj.weight"]) > 0.999
    assert same_layout(sk["time_embedding.2.weight"], sk["B:t_embedder.mlp.2.weight"]) > 0.999  # bf16 -> f32
    reinit = same_layout(sk["head.head.weight"], sk["B:final_layer.linear.weight"])
    assert abs(reinit) < 0.3


def test_unsupported_dtype_becomes_a_row_with_a_reason(tmp_path: Path) -> None:
    from tests.helpers.tensors import raw_file

    path = raw_file(
        tmp_path / "m.safetensors",
        {
            "odd": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]},
            "w": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
        },
        bytes(24),
    )
    summary = index_checkpoint(path, tmp_path / "m.parquet")
    row = read_rows(tmp_path / "m.parquet")["odd"]
    assert (summary.unsupported, row["supported"], row["sum_x"], row["crc32"]) == (1, False, None, None)
    assert summary.warnings == ()  # C64 is a safetensors dtype: counted, not warned about
    assert row["unsupported_reason"].startswith("dtype C64 is not decoded by weightidx")


def test_interrupted_index_leaves_no_file(demo_pair, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    calls = []

    def interrupt(progress) -> None:
        calls.append(progress)
        if progress.tensors_done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_checkpoint(demo_pair["a"], out, progress=interrupt)
    assert calls and list(tmp_path.iterdir()) == []


def test_sharded_checkpoint_gives_the_same_fingerprints_as_one_file(tmp_path: Path, write) -> None:
    rng = np.random.default_rng(1)
    tensors = {f"layers.{i}.w": ("BF16", trained_like(rng, 96, 80)) for i in range(4)}
    single = write("single.safetensors", tensors)
    shards = tmp_path / "sharded"
    shards.mkdir()
    keys = list(tensors)
    from tests.helpers.tensors import write_tensors

    write_tensors(shards / "model-00001-of-00002.safetensors", {k: tensors[k] for k in keys[2:]})
    write_tensors(shards / "model-00002-of-00002.safetensors", {k: tensors[k] for k in keys[:2]})
    index_checkpoint(single, tmp_path / "single.parquet")
    index_checkpoint(shards, tmp_path / "sharded.parquet")
    one, many = read_rows(tmp_path / "single.parquet"), read_rows(tmp_path / "sharded.parquet")
    assert list(many) == keys[2:] + keys[:2]  # file order
    for key in keys:
        for column in FINGERPRINT_COLUMNS:
            assert one[key][column] == many[key][column], (key, column)


def test_fingerprints_do_not_depend_on_tensor_order_or_worker_count(
    tmp_path: Path, write, monkeypatch
) -> None:
    rng = np.random.default_rng(2)
    tensors = {
        "wide": ("F32", trained_like(rng, 40, 20_000)),  # rows split into column pieces
        "tall": ("BF16", trained_like(rng, 3000, 96)),
        "vector": ("F16", rng.standard_normal(5000).astype(np.float32)),
        "conv": ("BF16", trained_like(rng, 64, 16, 1, 2, 2)),
    }
    forward = write("forward.safetensors", tensors)
    backward = write("backward.safetensors", dict(reversed(tensors.items())))
    index_checkpoint(forward, tmp_path / "inline.parquet", workers=1)
    monkeypatch.setattr(index_module, "PROCESS_POOL_MIN_BYTES", 0)
    index_checkpoint(backward, tmp_path / "pool.parquet", workers=2)
    inline, pool = read_rows(tmp_path / "inline.parquet"), read_rows(tmp_path / "pool.parquet")
    for key in tensors:
        for column in FINGERPRINT_COLUMNS:
            assert inline[key][column] == pool[key][column], (key, column)


def test_fingerprints_do_not_depend_on_blas_threads(tmp_path: Path, write) -> None:
    path = write("m.safetensors", {"w": ("F32", trained_like(np.random.default_rng(3), 1024, 512))})
    outputs = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.parquet"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
        code = (
            "import sys; from weightidx import index_checkpoint; index_checkpoint(sys.argv[1], sys.argv[2])"
        )
        subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True, env=env)
        outputs.append(read_rows(out)["w"])
    for column in FINGERPRINT_COLUMNS:
        assert outputs[0][column] == outputs[1][column], column


def test_output_folder_must_exist(demo_pair, tmp_path: Path) -> None:
    from weightidx.errors import OutputError

    with pytest.raises(
        OutputError, match=r"folder .* does not exist; create it or choose another output path"
    ):
        index_checkpoint(demo_pair["a"], tmp_path / "missing" / "a.parquet")


def test_record_batch_matches_pyarrow_from_pylist() -> None:
    import pyarrow as pa

    from weightidx.index.arrow import record_batch

    rows = [
        {"key": "blocks.0.ß", "shape": [4, 2], "numel": 8, "supported": True, "mean": 0.5,
         "row_sketch": np.arange(3, dtype=np.float32), "sample_rows": 2},
        {"key": "b", "shape": [], "numel": None, "supported": False, "unsupported_reason": "F4",
         "row_sketch": None},
        {"key": "", "shape": [7], "numel": 7, "supported": True, "mean": None,
         "row_sketch": np.zeros(0, dtype=np.float32), "sample_rows": None},
    ]  # fmt: skip
    expected = pa.RecordBatch.from_pylist(
        [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in rows],
        schema=INDEX_SCHEMA,
    )
    built = record_batch(rows, INDEX_SCHEMA)
    built.validate(full=True)
    assert built.equals(expected)
    assert record_batch([], INDEX_SCHEMA).equals(pa.RecordBatch.from_pylist([], schema=INDEX_SCHEMA))


def test_index_stage_does_not_import_pandas(demo_pair, tmp_path: Path) -> None:
    # pyarrow imports pandas at its first conversion from Python objects: 0.2 s of the run.
    code = (
        "import sys; from weightidx import index_checkpoint; "
        f"index_checkpoint({str(demo_pair['a'])!r}, {str(tmp_path / 'a.parquet')!r}); "
        "print('pandas' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout == "False\n"


def test_cli_starts_workers_only_for_checkpoints_worth_them(tmp_path: Path) -> None:
    from weightidx.index.spawn import PROCESS_POOL_MIN_BYTES, planned_workers

    small, large = tmp_path / "small.safetensors", tmp_path / "shards" / "a.safetensors"
    small.write_bytes(b"x" * 1000)
    large.parent.mkdir()
    with large.open("wb") as handle:  # sparse: the size is what counts
        handle.truncate(PROCESS_POOL_MIN_BYTES)
    assert planned_workers(small, 2) == 0
    assert planned_workers(large, 1) == 0
    assert planned_workers(large, 2) == 2
    assert planned_workers(large.parent, 3) == 3  # a folder of shards
    assert planned_workers(tmp_path / "missing.safetensors", 2) == 0  # the index stage reports it


def test_prestarted_workers_are_used_or_stopped(demo_pair, tmp_path: Path, monkeypatch) -> None:
    from weightidx.index import spawn as _spawn

    with _spawn.prestarted(1):
        (unused,) = _spawn._prestarted
    assert unused.poll() is not None and not _spawn._prestarted  # not taken: stopped on exit
    monkeypatch.setattr(index_module, "PROCESS_POOL_MIN_BYTES", 0)
    with _spawn.prestarted(2):
        ready = list(_spawn._prestarted)
        index_checkpoint(demo_pair["a"], tmp_path / "a.parquet", workers=2)
        assert not _spawn._prestarted  # both taken by the index stage
    assert all(proc.poll() == 0 for proc in ready)
    index_checkpoint(demo_pair["a"], tmp_path / "inline.parquet", workers=1)
    assert (
        pq.read_table(tmp_path / "a.parquet")
        .drop(["model"])
        .equals(pq.read_table(tmp_path / "inline.parquet").drop(["model"]))
    )


def test_cached_index_from_an_older_weightidx_is_rebuilt(demo_pair, tmp_path: Path) -> None:
    from weightidx.index.cache import cached_index

    first = cached_index(demo_pair["a"], tmp_path)
    table = pq.read_table(first)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    del meta["gram"]  # as written before the Gram sketch existed
    pq.write_table(
        table.drop(["input_gram", "input_lanes"]).replace_schema_metadata({METADATA_KEY: json.dumps(meta)}),
        first,
    )
    again = cached_index(demo_pair["a"], tmp_path)
    assert again == first and "input_gram" in pq.read_schema(again).names
