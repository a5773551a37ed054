"""Where a file converted to safetensors (a pickle, a GGUF or ONNX file) is kept in the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from weightidx.config import cache_folder


def converted_path(source: Path, cache: Path | None = None) -> Path:
    """``<cache>/converted/<stem>-<digest>.safetensors``, the digest of the source's absolute
    path, size and mtime: a changed source gets a new conversion, an unchanged one reuses it."""
    stat = source.stat()
    identity = f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return (cache or cache_folder()) / "converted" / f"{source.stem}-{digest}.safetensors"
