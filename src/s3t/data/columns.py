"""Which column of a table feeds which field of :class:`Examples`, and reading its cells.

Options the user leaves as ``None`` fall back to common column names, so a file with
``id,text,label`` columns loads without any option. Every error lists the columns there are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from s3t.data.examples import Task
from s3t.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "category", "score")
ID_COLUMNS = ("id", "idx", "sample_id")
IMAGE_COLUMNS = ("image", "pixels")


@dataclass(frozen=True)
class ColumnPlan:
    """Which column feeds each field, and how the inputs are built."""

    kind: Literal["text", "template", "image", "prompt", "alpaca"]
    id: str | None
    label: str | None = None
    text: str | None = None
    text_pair: str | None = None
    image: str | None = None
    prompt: str | None = None  # the prompt column, or Alpaca's instruction column
    response: str | None = None  # the response column, or Alpaca's output column
    input: str | None = None  # Alpaca's optional input column

    def used(self) -> dict[str, str]:
        """Return field → column for every column the inputs read."""
        fields = ("id", "label", "text", "text_pair", "image", "prompt", "response", "input")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


def check_columns(frames: dict[str, pd.DataFrame], named: dict[str, str], source: str) -> None:
    """Fail on the first named column that a split lacks, listing the available ones."""
    for split, frame in frames.items():
        for option, column in named.items():
            if column not in frame.columns:
                raise DataError(
                    f"column {column!r} ({option}) is not in the {split} split of {source!r}, "
                    f"got columns {list(frame.columns)!r}; pass one of them"
                )


def plan_columns(
    columns: list[str], options: dict[str, str | None], task: Task | None, template: str | None
) -> ColumnPlan:
    """Pick every column from the options, falling back to the common names."""

    def first(candidates: Sequence[str]) -> str | None:
        return next((c for c in candidates if c in columns), None)

    id_ = options["id_column"] or first(ID_COLUMNS)
    plan = _plan_instruction(columns, options, task, template, id_)
    if plan is not None:
        return plan
    if task == "instruction":
        raise DataError(
            f"task 'instruction' needs prompt/response or instruction/output columns, got "
            f"columns {columns!r}; name them with prompt_column/response_column or "
            "instruction_column/output_column"
        )
    label = options["label_column"] or first(LABEL_COLUMNS)
    if label is None:
        raise DataError(
            f"no label column found, got columns {columns!r}; set label_column "
            f"(looked for {LABEL_COLUMNS})"
        )
    if template is not None:
        if options["text_column"] or options["text_pair_column"] or options["image_column"]:
            raise DataError(
                f"template {template!r} builds the text itself; drop text/image columns"
            )
        return ColumnPlan("template", id_, label=label)
    text = options["text_column"] or (None if options["image_column"] else first(TEXT_COLUMNS))
    if text is not None:
        return ColumnPlan(
            "text", id_, label=label, text=text, text_pair=options["text_pair_column"]
        )
    image = options["image_column"] or first(IMAGE_COLUMNS)
    if image is None:
        raise DataError(
            f"no input column found, got columns {columns!r}; set text_column, image_column, "
            "a template, or prompt/response or instruction/output columns"
        )
    return ColumnPlan("image", id_, label=label, image=image)


def _plan_instruction(
    columns: list[str],
    options: dict[str, str | None],
    task: Task | None,
    template: str | None,
    id_: str | None,
) -> ColumnPlan | None:
    """Return the plan for instruction tuning: prompt/response columns or Alpaca's
    instruction/input/output, named or found by their usual names."""
    prompt_mode = bool(options["prompt_column"] or options["response_column"])
    alpaca_mode = any(options[o] for o in ("instruction_column", "input_column", "output_column"))
    if prompt_mode and alpaca_mode:
        raise DataError("give prompt/response or instruction/input/output columns, not both")
    other_inputs = template or options["text_column"] or options["image_column"]
    # Found by name when nothing else fits: no usual input or no label column (Alpaca dumps
    # often carry a "text" column holding the whole formatted example).
    no_usual_inputs = not set(TEXT_COLUMNS + IMAGE_COLUMNS) & set(columns)
    no_label = not (options["label_column"] or set(LABEL_COLUMNS) & set(columns))
    if not (prompt_mode or alpaca_mode or other_inputs) and (
        task == "instruction" or no_usual_inputs or no_label
    ):
        prompt_mode = {"prompt", "response"} <= set(columns)
        alpaca_mode = not prompt_mode and {"instruction", "output"} <= set(columns)
    if not (prompt_mode or alpaca_mode):
        return None
    if task not in (None, "instruction"):
        raise DataError(f"instruction columns mean task 'instruction', got task={task!r}")
    if prompt_mode:
        response = options["response_column"] or "response"
        return ColumnPlan(
            "prompt", id_, prompt=options["prompt_column"] or "prompt", response=response
        )
    return ColumnPlan(
        "alpaca",
        id_,
        prompt=options["instruction_column"] or "instruction",
        response=options["output_column"] or "output",
        input=options["input_column"] or ("input" if "input" in columns else None),
    )


def is_missing(value: Any) -> bool:
    """Return whether a cell is empty (None, NaN or pandas' NA)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def require_cells(column: str, ids: Sequence[str], values: Sequence[Any]) -> None:
    """Fail if any cell of a column is empty, naming the ids of those rows."""
    missing = [sid for sid, value in zip(ids, values, strict=True) if is_missing(value)]
    if missing:
        raise DataError(
            f"column {column!r} is empty in {len(missing)} row(s), got no value for ids "
            f"{missing[:10]!r}; fill or drop those rows"
        )


def read_ids(frame: pd.DataFrame, column: str | None, prefix: str) -> list[str]:
    """Return the sample ids of a split as text, each after ``prefix``; row numbers when
    there is no id column."""
    if column is None:
        return [f"{prefix}{row}" for row in range(len(frame))]
    values = frame[column].tolist()
    ids: list[str] = []
    for row, value in enumerate(values):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)) or value == "":
            raise DataError(
                f"sample ids in column {column!r} must be non-empty str or int, got {value!r} "
                f"in row {row}; fix the ids or pick another id_column"
            )
        ids.append(f"{prefix}{value}")
    return ids


def read_subjects(frame: pd.DataFrame, column: str, ids: Sequence[str]) -> tuple[str, ...]:
    """Return each row's data subject as text; an empty cell makes the sample its own."""
    out = []
    for sid, value in zip(ids, frame[column].tolist(), strict=True):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        missing = value is None or value == "" or (isinstance(value, float) and np.isnan(value))
        out.append(sid if missing else str(value))
    return tuple(out)


def read_texts(frame: pd.DataFrame, column: str, ids: Sequence[str]) -> tuple[str, ...]:
    """Return a text column as strings; an empty cell is an error naming its row ids."""
    values = frame[column].tolist()
    require_cells(column, ids, values)
    return tuple(str(value) for value in values)
