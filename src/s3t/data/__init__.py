"""Data sources and the in-memory dataset form (imported lazily: pandas loads only when a
source is read)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Dataset": "s3t.data.examples",
    "Examples": "s3t.data.examples",
    "load_dataset": "s3t.data.sources",
    "list_builtin": "s3t.data.builtin",
    "TEMPLATES": "s3t.data.templates",
    "format_alpaca": "s3t.data.templates",
}

if TYPE_CHECKING:
    from s3t.data.builtin import list_builtin
    from s3t.data.examples import Dataset, Examples
    from s3t.data.sources import load_dataset
    from s3t.data.templates import TEMPLATES, format_alpaca

__all__ = ["TEMPLATES", "Dataset", "Examples", "format_alpaca", "list_builtin", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3t.data' has no attribute {name!r}")
