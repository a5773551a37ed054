"""weightidx: where did these weights come from?

Stage 1 (``index_checkpoint``) streams a safetensors checkpoint into a Parquet table of
per-tensor fingerprints; stage 2 (``compare_paths``) maps the tensors of one model onto
another's and returns a JSON-ready report; ``convert_lora`` ports a LoRA through such a
report; ``run_sql`` and ``search_catalog`` query the fingerprint tables.

Example:
    >>> import weightidx
    >>> summary = weightidx.index_checkpoint("a.safetensors", "a.parquet")  # doctest: +SKIP
    >>> report = weightidx.compare_paths("a.parquet", "b.parquet")  # doctest: +SKIP
    >>> report["summary"]["scenario"]  # doctest: +SKIP
    'fine_tuned'

The package is laid out by stage: ``io`` (checkpoint formats), ``fingerprint`` (the maths),
``index`` (stage 1), ``compare`` (stage 2 and its report), ``lora``, ``sql``, ``render`` and
``cli``, over ``errors``, ``config`` and ``policy``. Names are imported on first use, so
worker processes that need only the fingerprint maths do not pay for pyarrow and duckdb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weightidx._version import __version__

_EXPORTS = {
    "Checkpoint": "weightidx.io.safetensors",
    "TensorInfo": "weightidx.io.safetensors",
    "open_checkpoint": "weightidx.io.safetensors",
    "CheckpointError": "weightidx.errors",
    "IndexFileError": "weightidx.errors",
    "InputError": "weightidx.errors",
    "LoraError": "weightidx.errors",
    "OutputError": "weightidx.errors",
    "SqlError": "weightidx.errors",
    "WeightidxError": "weightidx.errors",
    "Fingerprint": "weightidx.fingerprint.sketch",
    "fingerprint_array": "weightidx.fingerprint.sketch",
    "IndexProgress": "weightidx.index.writer",
    "IndexSummary": "weightidx.index.writer",
    "index_checkpoint": "weightidx.index.writer",
    "load_index": "weightidx.index.reader",
    "compare_indexes": "weightidx.compare.engine",
    "compare_paths": "weightidx.compare.engine",
    "read_report": "weightidx.compare.report",
    "write_report": "weightidx.compare.report",
    "convert_lora": "weightidx.lora.convert",
    "run_query": "weightidx.sql.runner",
    "run_sql": "weightidx.sql.runner",
    "search_catalog": "weightidx.sql.catalog",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # re-exports for type checkers; at run time __getattr__ loads them
    from weightidx.compare.engine import compare_indexes, compare_paths  # noqa: F401
    from weightidx.compare.report import read_report, write_report  # noqa: F401
    from weightidx.errors import (  # noqa: F401
        CheckpointError,
        IndexFileError,
        InputError,
        LoraError,
        OutputError,
        SqlError,
        WeightidxError,
    )
    from weightidx.fingerprint.sketch import Fingerprint, fingerprint_array  # noqa: F401
    from weightidx.index.reader import load_index  # noqa: F401
    from weightidx.index.writer import IndexProgress, IndexSummary, index_checkpoint  # noqa: F401
    from weightidx.io.safetensors import Checkpoint, TensorInfo, open_checkpoint  # noqa: F401
    from weightidx.lora.convert import convert_lora  # noqa: F401
    from weightidx.sql.catalog import search_catalog  # noqa: F401
    from weightidx.sql.runner import run_query, run_sql  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightidx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
