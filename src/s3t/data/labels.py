"""Labels of a column turned into class indices or regression targets, and the task inferred
from them when the user does not name it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from s3t.data.columns import require_cells
from s3t.data.examples import Task
from s3t.errors import DataError

MAX_FLOAT_CLASSES = 20  # float labels with more distinct values than this mean regression


def encode_labels(
    values: list[Any],
    ids: Sequence[str],
    column: str,
    task: Task | None,
    class_names: tuple[str, ...] | None,
) -> tuple[Task, np.ndarray, tuple[str, ...] | None]:
    """Return (task, labels, label names): regression floats, or class indices in sorted
    class order (a saved dataset's declared class names win when they fit)."""
    require_cells(column, ids, values)
    numbers = [isinstance(v, (int, float, np.number)) for v in values]
    numeric = all(numbers) and not any(isinstance(v, (bool, np.bool_)) for v in values)
    if task is None:
        floats = [v for v in values if isinstance(v, (float, np.floating))]
        continuous = any(not float(v).is_integer() for v in floats) or (
            bool(floats) and len(set(values)) > MAX_FLOAT_CLASSES
        )
        task = "regression" if numeric and continuous else "classification"
    if task == "regression":
        if not numeric:
            bad = next(
                v for v, n in zip(values, numbers, strict=True) if not n or isinstance(v, bool)
            )
            raise DataError(
                f"regression needs numeric labels in column {column!r}, got {bad!r}; "
                "use task='classification' or fix the labels"
            )
        return task, np.asarray(values, dtype=np.float64), None
    if (
        class_names
        and all(numbers)
        and all(int(v) == v and 0 <= v < len(class_names) for v in values)
    ):
        return task, np.asarray(values, dtype=np.int64), class_names
    if all(numbers):
        classes: list[Any] = sorted(set(values))
        names = tuple(
            str(int(c)) if float(c).is_integer() and not isinstance(c, bool) else str(c)
            for c in classes
        )
    elif all(isinstance(v, str) for v in values):
        classes = sorted(set(values))
        names = tuple(classes)
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise DataError(
            f"class labels in column {column!r} must be all strings or all numbers, got "
            f"types {kinds!r}; make them one type"
        )
    index = {c: i for i, c in enumerate(classes)}
    return task, np.array([index[v] for v in values], dtype=np.int64), names
