"""weightidx: where did these weights come from?

Stage 1 (``index_checkpoint``) streams a safetensors checkpoint into a Parquet
table of per-tensor fingerprints; stage 2 (``compare_paths``) maps the tensors of one
model onto another's and returns a JSON-ready report; ``run_sql`` and
``search_catalog`` query the fingerprint tables.

Names are imported on first use, so worker processes that need only the
fingerprint maths do not pay for pyarrow and duckdb at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "TensorInfo": "checkpoint",
    "open_checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "IndexFileError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
    "WeightidxError": "errors",
    "Fingerprint": "fingerprint",
    "fingerprint_array": "fingerprint",
    "IndexProgress": "index",
    "IndexSummary": "index",
    "index_checkpoint": "index",
    "compare_indexes": "compare",
    "compare_paths": "compare",
    "load_index": "indexes",
    "write_report": "report",
    "run_query": "sql",
    "run_sql": "sql",
    "search_catalog": "catalog",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # re-exports for type checkers; at run time __getattr__ loads them
    from .catalog import search_catalog  # noqa: F401
    from .checkpoint import Checkpoint, TensorInfo, open_checkpoint  # noqa: F401
    from .compare import compare_indexes, compare_paths  # noqa: F401
    from .errors import (  # noqa: F401
        CheckpointError,
        IndexFileError,
        InputError,
        OutputError,
        WeightidxError,
    )
    from .fingerprint import Fingerprint, fingerprint_array  # noqa: F401
    from .index import IndexProgress, IndexSummary, index_checkpoint  # noqa: F401
    from .indexes import load_index  # noqa: F401
    from .report import write_report  # noqa: F401
    from .sql import run_query, run_sql  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightidx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
