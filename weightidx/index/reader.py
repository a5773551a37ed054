"""Index files read back for comparison: rows with their sketches as numpy views, where the
checkpoint lives, whether it changed since, and the cache of indexes built on demand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from weightidx.errors import IndexFileError
from weightidx.index.schema import METADATA_KEY, SCHEMA_VERSION, IndexRow
from weightidx.io.gguf import QUANTISATION_KEY
from weightidx.io.safetensors import header_sha256


@dataclass(frozen=True)
class IndexedModel:
    """One side of a comparison: its index rows and where its checkpoint lives."""

    name: str
    index: Path
    root: Path
    source: str
    rows: dict[str, IndexRow]
    shards: tuple[dict, ...] = ()

    @cached_property
    def quantisation(self) -> dict[str, str]:
        """Tensor key -> quantisation type (``Q4_K``) for tensors stored quantised in the original
        file and dequantised for the index (GGUF: ``io/gguf.py``); empty for plain checkpoints."""
        found: dict[str, str] = {}
        for shard in self.shards:
            recorded = (shard.get("metadata") or {}).get(QUANTISATION_KEY)
            if recorded:
                found.update(json.loads(recorded))
        return found

    @property
    def parameters(self) -> int:
        return sum(int(r["numel"]) for r in self.rows.values())

    @property
    def bytes(self) -> int:
        return sum(int(r["nbytes"]) for r in self.rows.values())

    def stale_shards(self) -> list[Path]:
        """Shards on disk whose size, mtime or header hash differ from what the index recorded."""
        stale = []
        for shard in self.shards:
            path = self.root / shard["name"]
            if not path.is_file():
                continue
            stat = path.stat()
            moved = (stat.st_size, stat.st_mtime_ns) != (shard["size"], shard["mtime_ns"])
            if moved or header_sha256(path) != shard["header_sha256"]:
                stale.append(path)
        return stale

    def files_present(self) -> bool:
        """Whether every shard is on disk as it was indexed (False when one is missing).

        Raises:
            IndexFileError: a shard changed after indexing, so the recorded offsets are stale.
        """
        stale = self.stale_shards()
        if stale:
            raise IndexFileError(
                f"{stale[0]}: changed after {self.index} was built; re-index it with `weightidx index`, "
                "pass --reindex, or pass --index-only"
            )
        return all((self.root / shard["name"]).is_file() for shard in self.shards)


def is_index_file(path: Path) -> bool:
    """Whether ``path`` is a Parquet file (by its magic bytes), as opposed to a checkpoint."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def load_index(path: Path | str, name: str | None = None) -> IndexedModel:
    """Read an index written by ``weightidx index`` (all but its Gram sketches: ``load_grams``);
    raises ``IndexFileError`` when it is not one."""
    path = Path(path)
    try:
        # One thread, no pre-buffering, the pool's unused memory released after: an index of
        # 18,528 small tensors then adds 195 MB to the process instead of 413 MB, no slower.
        table = pq.read_table(path, columns=_columns_but_grams(path), use_threads=False, pre_buffer=False)
    except (OSError, ValueError) as exc:
        raise IndexFileError(
            f"{path}: not a readable Parquet index ({exc}); run `weightidx index` first"
        ) from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise IndexFileError(
            f"{path}: not a weightidx index (no 'weightidx' metadata); run `weightidx index`"
        )
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise IndexFileError(
            f"{path}: index schema {meta.get('schema_version')}, this weightidx reads "
            f"{SCHEMA_VERSION}; re-index the checkpoint"
        )
    model = IndexedModel(
        name=name or meta["model"],
        index=path.resolve(),  # reports record it: readable from any folder
        root=Path(meta["root"]),
        source=meta["checkpoint"],
        rows=_rows_with_arrays(table),
        shards=tuple(meta["shards"]),
    )
    del table
    pa.default_memory_pool().release_unused()  # the decoding's buffers, kept by the allocator otherwise
    return model


def _columns_but_grams(path: Path) -> list[str]:
    return [name for name in pq.read_schema(path).names if name not in GRAM_COLUMNS]


def load_grams(model: IndexedModel) -> None:
    """Add the Gram sketch columns (``GRAM_COLUMNS``) to the rows of a model ``load_index`` read
    without them; rows that have them already, or an index written before them, stay as they are.

    Raises:
        IndexFileError: the index file can no longer be read.
    """
    if any(GRAM_COLUMNS[-1] in row for row in model.rows.values()) or not model.index.is_file():
        return
    try:
        present = [c for c in GRAM_COLUMNS if c in pq.read_schema(model.index).names]
        if not present:
            return
        table = pq.read_table(model.index, columns=["key", *present])
    except (OSError, ValueError) as exc:
        raise IndexFileError(
            f"{model.index}: not readable any more ({exc}); run `weightidx index` again"
        ) from None
    for key, grams in _rows_with_arrays(table).items():
        if key in model.rows:
            model.rows[key].update((name, grams[name]) for name in present)


#: Read by ``load_grams`` only when the lineage analysis needs them: for small tensors they are
#: half of an index (the Qwen3-30B-A3B expert layout at width 64: 67 of 158 MB).
GRAM_COLUMNS = ("input_gram", "input_lanes", "output_gram")
_ARRAY_COLUMNS = ("row_sketch", "col_sketch", "sample", *GRAM_COLUMNS)


def _rows_with_arrays(table: pa.Table) -> dict[str, IndexRow]:
    """Index rows as dicts, the sketch and sample columns as numpy views (no Python floats);
    a null array (no Gram sketch, say) stays ``None``."""
    present = [name for name in _ARRAY_COLUMNS if name in table.column_names]
    rows = table.drop_columns(present).to_pylist()
    for name in present:
        column = table.column(name).combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False)
        offsets = column.offsets.to_numpy()
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        for i, row in enumerate(rows):
            row[name] = values[offsets[i] : offsets[i + 1]] if valid[i] else None
    return {row["key"]: row for row in rows}
