"""Load a dataset from a file, a saved ``datasets`` directory or a packaged real dataset.

A source becomes a :class:`Dataset`: sample ids (always ``str``), the input columns its task
needs, labels mapped to class indices, and an optional held-out test split. Every choice that
depends on randomness (the carved test split, the ``limit`` sample) ranks samples by a keyed
hash of their id, so it never depends on the order of rows in the file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s3t.data.builtin import load_builtin
from s3t.data.columns import (
    ID_COLUMNS,
    ColumnPlan,
    check_columns,
    plan_columns,
    read_ids,
    read_subjects,
    read_texts,
)
from s3t.data.examples import TASKS, Dataset, Examples, Task
from s3t.data.images import stack_images
from s3t.data.labels import encode_labels
from s3t.data.splits import sample_rows, split_held_out
from s3t.data.templates import format_alpaca, get_template
from s3t.errors import DataError

log = logging.getLogger(__name__)

FILE_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def load_dataset(
    source: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    instruction_column: str | None = None,
    input_column: str | None = None,
    output_column: str | None = None,
    subject_column: str | None = None,
    task: Task | None = None,
    template: str | None = None,
    test_fraction: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load ``source``: a CSV, JSONL (``.jsonl``/``.json`` lines) or parquet file, a directory
    written by ``datasets``' ``save_to_disk``, or ``builtin:NAME`` (see :func:`list_builtin`).

    Columns left as ``None`` are inferred from common names (text: text/sentence/review/
    content; label: label/labels/category/score; id: id/idx/sample_id; image: image/pixels).
    Without an id column, ids are row numbers ("0", "1", ...), stable only as long as the
    file is not reordered. A saved DatasetDict's test split gets ids prefixed "test-", as
    ``datasets`` numbers each split on its own. ``task`` is inferred when None:
    instruction columns mean instruction tuning, non-integer numeric labels mean regression,
    anything else classification (classes sorted, numbers numerically). ``template`` formats
    GLUE/SuperGLUE rows (see :data:`TEMPLATES`). ``test_fraction`` carves a test split by a
    keyed hash of the id unless the source has one; ``limit`` keeps a seeded sample of that
    many training rows. Both depend only on ids and ``seed``, never on row order.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive number of training rows, got {limit!r}")
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {TASKS} or None to infer it, got {task!r}")
    options = {
        "id_column": id_column,
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "label_column": label_column,
        "image_column": image_column,
        "prompt_column": prompt_column,
        "response_column": response_column,
        "instruction_column": instruction_column,
        "input_column": input_column,
        "output_column": output_column,
    }
    named = {option: column for option, column in options.items() if column is not None}
    source = os.fspath(source)
    if source.startswith("builtin:"):
        dataset = _load_builtin(
            source.removeprefix("builtin:"), named, task, template, subject_column
        )
        if test_fraction > 0:
            log.info("%s has a fixed test split; test_fraction is ignored", source)
    else:
        frames, class_names = _read_source(source, id_column)
        check_columns(frames, named, source)
        columns = plan_columns(list(frames["train"].columns), options, task, template)
        check_columns(frames, columns.used(), source)
        if subject_column is not None:
            check_columns(frames, {"subject_column": subject_column}, source)
        dataset = _build(
            Path(source).stem, frames, class_names, columns, task, template, subject_column
        )
        if dataset.test is None and test_fraction > 0:
            train, test = split_held_out(dataset.train, test_fraction, seed)
            dataset = Dataset(dataset.name, train, test)
    if limit is not None:
        dataset = Dataset(dataset.name, sample_rows(dataset.train, limit, seed), dataset.test)
    log.info(
        "loaded %s: %d train, %d test rows (%s)",
        source,
        len(dataset.train),
        len(dataset.test) if dataset.test is not None else 0,
        dataset.train.task,
    )
    return dataset


def _load_builtin(
    name: str,
    named: dict[str, str],
    task: Task | None,
    template: str | None,
    subject_column: str | None = None,
) -> Dataset:
    """Load a packaged dataset, refusing options that would change its fixed columns."""

    if named or template is not None:
        raise DataError(
            f"builtin datasets have fixed columns, got {dict(named, template=template)!r}; "
            "drop the column and template options"
        )
    dataset = load_builtin(name, subject_column)
    if task is not None and task != dataset.train.task:
        raise DataError(
            f"builtin:{name} is a {dataset.train.task} dataset, got task={task!r}; leave task unset"
        )
    return dataset


def _read_source(
    source: str, id_column: str | None
) -> tuple[dict[str, pd.DataFrame], dict[str, tuple[str, ...]]]:
    """Read a file or saved directory into frames by split, plus class names that a saved
    dataset declares (``ClassLabel`` features)."""
    path = Path(source)
    if path.is_dir():
        return _read_saved(path)
    kind = FILE_KINDS.get(path.suffix.lower())
    if not path.is_file() or kind is None:
        problem = "does not exist" if not path.exists() else "has an unsupported type"
        raise DataError(
            f"data source {problem}, got {source!r}; give a CSV, JSONL (.jsonl/.json lines) "
            "or parquet file, a directory written by save_to_disk, or builtin:NAME"
        )
    # Id-like columns are read as text so "007" stays "007"; only empty CSV cells are NaN.
    as_text = {column: str for column in (id_column, *ID_COLUMNS) if column}
    try:
        if kind == "csv":
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=as_text)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"could not read {kind} file {source!r}: {exc}") from exc
    return {"train": frame}, {}


def _read_saved(path: Path) -> tuple[dict[str, pd.DataFrame], dict[str, tuple[str, ...]]]:
    """Read a ``save_to_disk`` directory: a Dataset, or a DatasetDict's train and test split
    (its validation split when there is no test split)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(
            f"directory is not a saved dataset, got {str(path)!r}; write it with "
            "datasets' save_to_disk or give a CSV/JSONL/parquet file"
        ) from exc
    splits = {"train": loaded}
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                f"saved DatasetDict needs a 'train' split, got splits {list(loaded)!r} "
                f"in {str(path)!r}"
            )
        test = next((loaded[s] for s in ("test", "validation") if s in loaded), None)
        test = test if test is not None and len(test) > 0 else None
        splits = {"train": loaded["train"]} | ({"test": test} if test is not None else {})
    features = splits["train"].features
    class_names = {
        column: tuple(feature.names)
        for column, feature in features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    return {split: ds.to_pandas() for split, ds in splits.items()}, class_names


def _build(
    name: str,
    frames: dict[str, pd.DataFrame],
    class_names: dict[str, tuple[str, ...]],
    columns: ColumnPlan,
    task: Task | None,
    template: str | None,
    subject_column: str | None = None,
) -> Dataset:
    """Turn the frames of each split into :class:`Examples`, labels encoded over all splits
    (an empty subject cell: the sample is its own subject)."""
    if len(frames["train"]) == 0:
        raise DataError(f"dataset {name!r} has no training rows, got an empty train split")
    ids = {s: read_ids(f, columns.id, "" if s == "train" else f"{s}-") for s, f in frames.items()}
    counts = Counter(chain.from_iterable(ids.values()))
    duplicated = [sid for sid, count in counts.items() if count > 1]
    if duplicated:
        raise DataError(
            f"sample ids must be unique across splits, got {len(duplicated)} repeated id(s) "
            f"in column {columns.id!r}, e.g. {duplicated[:10]!r}; fix the ids or pick another "
            "id_column"
        )
    inputs = {s: _inputs(f, ids[s], columns, template) for s, f in frames.items()}
    labels: dict[str, np.ndarray | None] = dict.fromkeys(frames)
    names = None
    if columns.kind in ("prompt", "alpaca"):
        task = "instruction"
    else:
        assert columns.label is not None
        values = [v for f in frames.values() for v in f[columns.label].tolist()]
        all_ids = list(chain.from_iterable(ids.values()))
        task, encoded, names = encode_labels(
            values, all_ids, columns.label, task, class_names.get(columns.label)
        )
        labels = {"train": encoded[: len(ids["train"])], "test": encoded[len(ids["train"]) :]}
    subjects = {
        s: (read_subjects(f, subject_column, ids[s]) if subject_column else None)
        for s, f in frames.items()
    }
    splits = {
        s: Examples(
            ids=tuple(ids[s]),
            task=task,
            labels=labels.get(s),
            label_names=names,
            subjects=subjects[s],
            **inputs[s],
        )
        for s in frames
    }
    return Dataset(name, splits["train"], splits.get("test"))


def _inputs(
    frame: pd.DataFrame, ids: Sequence[str], columns: ColumnPlan, template: str | None
) -> dict[str, Any]:
    """Return the input fields of :class:`Examples` for one split."""
    if columns.kind == "template":
        assert template is not None
        formatter = get_template(template)
        pairs = [formatter(row) for row in frame.to_dict("records")]
        pair = tuple(p for _, p in pairs)
        text_pair = None if any(p is None for p in pair) else pair
        return {"text": tuple(t for t, _ in pairs), "text_pair": text_pair}
    if columns.kind == "text":
        assert columns.text is not None
        pair_column = columns.text_pair
        return {
            "text": read_texts(frame, columns.text, ids),
            "text_pair": read_texts(frame, pair_column, ids) if pair_column else None,
        }
    if columns.kind == "image":
        assert columns.image is not None
        return {"image": stack_images(frame[columns.image].tolist(), ids, columns.image)}
    assert columns.prompt is not None and columns.response is not None
    prompt, response = (
        read_texts(frame, columns.prompt, ids),
        read_texts(frame, columns.response, ids),
    )
    if columns.kind == "prompt":
        return {"prompt": prompt, "response": response}
    extra = frame[columns.input].tolist() if columns.input else [None] * len(frame)
    formatted = [format_alpaca(i, x, o) for i, x, o in zip(prompt, extra, response, strict=True)]
    return {"prompt": tuple(p for p, _ in formatted), "response": tuple(r for _, r in formatted)}
