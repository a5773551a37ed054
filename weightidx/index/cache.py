"""Indexes built on demand for checkpoints given directly to ``compare`` (and reused)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from weightidx.config import CACHE_FIX, cache_folder
from weightidx.fingerprint.sketch import GRAM_VERSION, SKETCH_VERSION
from weightidx.index.schema import METADATA_KEY, SCHEMA_VERSION
from weightidx.index.writer import IndexProgress, index_checkpoint
from weightidx.io.atomic import ensure_folder
from weightidx.io.locate import prepare
from weightidx.io.safetensors import open_checkpoint


def cached_index(
    checkpoint: Path, cache: Path | None = None, progress: Callable[[IndexProgress], None] | None = None
) -> Path:
    """The index of a checkpoint, built on first use and reused while its shards are unchanged.

    Cached under ``cache`` (default ``$WEIGHTIDX_CACHE`` or ``~/.cache/weightidx``), keyed by the
    checkpoint's absolute path; a stale entry (size, mtime or header hash differ), or one an
    older weightidx wrote without sketches this one reads, is rebuilt. ``checkpoint`` may be
    anything ``io.locate.prepare`` takes (a GGUF file, a Hugging Face cache entry); ``progress`` is
    ``index_checkpoint``'s, called only when it builds one.
    """
    folder = cache or cache_folder()
    located = prepare(checkpoint, cache=cache)
    checkpoint = located.path
    opened = open_checkpoint(checkpoint)
    digest = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
    target = folder / f"{(located.name or opened.default_name()).replace('/', '--')}-{digest}.parquet"
    if target.exists():
        meta = json.loads(pq.read_schema(target).metadata[METADATA_KEY])
        recorded = [(s["name"], s["size"], s["mtime_ns"], s["header_sha256"]) for s in meta["shards"]]
        current = [(s.name, s.size, s.mtime_ns, s.header_sha256) for s in opened.shards]
        versions = (
            meta.get("schema_version"),
            meta.get("sketch_version"),
            meta.get("gram", {}).get("version"),
        )
        if recorded == current and versions == (SCHEMA_VERSION, SKETCH_VERSION, GRAM_VERSION):
            return target
    ensure_folder(folder, "indexes built on demand", CACHE_FIX)
    index_checkpoint(checkpoint, target, name=located.name, progress=progress)
    return target
