"""weightidx: where did these weights come from?

Stage 1 (``index_checkpoint``) streams a safetensors checkpoint into a Parquet
table of per-tensor fingerprints.

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
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # re-exports for type checkers; at run time __getattr__ loads them
    from .checkpoint import Checkpoint, TensorInfo, open_checkpoint  # noqa: F401
    from .errors import (  # noqa: F401
        CheckpointError,
        IndexFileError,
        InputError,
        OutputError,
        WeightidxError,
    )
    from .fingerprint import Fingerprint, fingerprint_array  # noqa: F401
    from .index import IndexProgress, IndexSummary, index_checkpoint  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightidx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
