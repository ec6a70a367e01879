"""Image cells (arrays, nested lists, PIL or encoded images) stacked into one array."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from s3t.data.columns import require_cells
from s3t.errors import DataError


def stack_images(values: list[Any], ids: Sequence[str], column: str) -> np.ndarray:
    """Stack image cells into (n, H, W) or (n, H, W, C): uint8 when every pixel is an integer
    in 0..255, float32 otherwise."""
    require_cells(column, ids, values)
    arrays = [_to_array(value, column) for value in values]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(
            f"images in column {column!r} must share one shape, got shapes {shapes[:5]!r}; "
            "resize them to one size first"
        )
    stacked = np.stack(arrays)
    if stacked.ndim not in (3, 4):
        raise DataError(
            f"images in column {column!r} must be (H, W) or (H, W, C) arrays, got shape "
            f"{stacked.shape[1:]!r}; reshape flat pixel rows first"
        )
    if stacked.dtype == np.uint8:
        return stacked
    if stacked.dtype.kind in "biu" and stacked.min() >= 0 and stacked.max() <= 255:
        return stacked.astype(np.uint8)
    if stacked.dtype.kind in "biuf":
        return stacked.astype(np.float32)
    raise DataError(f"image pixels in column {column!r} must be numbers, got {stacked.dtype}")


def _to_array(value: Any, column: str) -> np.ndarray:
    """Return one image cell (array, nested list, PIL image or encoded image) as an array."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        try:
            from PIL import Image
        except ImportError as exc:
            raise DataError(f"column {column!r} holds encoded images; pip install pillow") from exc
        encoded = value.get("bytes")
        with Image.open(io.BytesIO(encoded) if encoded else value["path"]) as image:
            return np.asarray(image)
    if isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "__array_interface__"):
        try:
            return _unnest(value)
        except ValueError as exc:
            raise DataError(f"image in column {column!r} is ragged, got {exc}") from exc
    raise DataError(
        f"image cells in column {column!r} must be arrays, nested lists or images, got "
        f"{type(value).__name__} {str(value)[:40]!r}"
    )


def _unnest(value: Any) -> np.ndarray:
    """Return nested lists, or arrays of arrays (how pandas reads nested lists), as one array."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.stack([_unnest(item) for item in value])
    return np.asarray(value)
