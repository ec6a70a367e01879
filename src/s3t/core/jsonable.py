"""Turning results into plain JSON values, the same way for the CLI, the HTTP service and
experiment files: dataclasses become dicts, numpy values plain numbers and lists, paths
strings, and NaN or infinite floats ``null`` (JSON has no NaN)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import PurePath
from typing import Any


def jsonable(value: Any) -> Any:
    """Return ``value`` as nested dicts, lists, strings, numbers, booleans and ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    raise TypeError(f"cannot turn a {type(value).__name__} into JSON")
