"""A workspace: the registry database plus a folder of content-addressed artifacts.

Creating one partitions the data, picks every shard's sequences and stores the training
samples themselves (so retraining never needs the original source, and a deleted sample's
content is erased from the only copy s3t keeps). Opening one checks the schema version.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.partition import partition
from s3t.core.sequences import select_sequences
from s3t.data.examples import Dataset, Examples
from s3t.errors import ConfigError, WorkspaceError
from s3t.system.config import S3TConfig
from s3t.system.registry import DB_NAME, Registry

log = logging.getLogger(__name__)


class Workspace:
    """An open workspace. Thread-safe: each thread gets its own registry connection."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        registry = Registry(self.root)
        self._local = threading.local()
        self._local.registry = registry
        config = registry.get_meta("config")
        if config is None:
            raise WorkspaceError(
                f"workspace {self.root} was never fully created; delete it and train again"
            )
        self.config = S3TConfig.from_dict(config)
        self.task: str = registry.get_meta("task")
        self.modality: str = registry.get_meta("modality")
        names = registry.get_meta("label_names")
        self.label_names: tuple[str, ...] | None = tuple(names) if names else None
        self.dataset_name: str = registry.get_meta("dataset") or ""

    def registry(self) -> Registry:
        """Return this thread's registry connection."""
        registry = getattr(self._local, "registry", None)
        if registry is None:
            registry = Registry(self.root)
            self._local.registry = registry
        return registry

    def artifact_path(self, artifact_id: str) -> Path:
        """Return where an artifact's file lives (by content hash)."""
        return self.root / "artifacts" / artifact_id[:2] / f"{artifact_id}.safetensors"

    def orphan_files(self, min_age_seconds: float = 600.0) -> list[Path]:
        """Files under ``artifacts/`` that no registry row names (left by a process killed
        between writing a stage and swapping it in), older than ``min_age_seconds`` so that
        a stage being swapped in right now is never counted."""
        folder = self.root / "artifacts"
        if not folder.exists():
            return []
        known = {r[0] for r in self.registry().db.execute("SELECT id FROM artifacts")}
        cutoff = time.time() - min_age_seconds
        return sorted(
            path
            for path in folder.rglob("*")
            if path.name.split(".", 1)[0] not in known and _modified_before(path, cutoff)
        )

    def examples(self, table: str = "sample_data") -> Examples:
        """Return the stored training samples still present (or the test split)."""
        ids, records = [], []
        for sid, record in self.registry().payloads(table):
            ids.append(sid)
            records.append(record)
        if not records:
            raise WorkspaceError(
                "this workspace stores no test split: create it with --test-fraction, or pass "
                "labelled examples to evaluate"
                if table == "eval_data"
                else "every training sample of this workspace has been deleted: there is "
                "nothing left to train on or retrain"
            )
        return examples_from_records(ids, records, self.task, self.label_names)

    def has_test_split(self) -> bool:
        """Whether a held-out test split is stored."""
        row = self.registry().db.execute("SELECT count(*) FROM eval_data").fetchone()
        return bool(row[0])

    @classmethod
    def create(
        cls,
        root: str | Path,
        config: S3TConfig,
        dataset: Dataset,
        risk: dict[str, float] | None = None,
    ) -> Workspace:
        """Create a workspace for ``dataset`` (or reopen it if it already holds exactly
        this configuration and data, so that an interrupted training can resume)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(
                f"workspace path {root} is a file, not a folder; choose another --workspace"
            )
        if (root / DB_NAME).exists():
            existing = cls(root)
            if existing.config.to_dict() != config.to_dict():
                raise WorkspaceError(
                    f"workspace {root} already holds a system with another configuration; "
                    "choose another --workspace or delete this one"
                )
            held = {r[0] for r in existing.registry().db.execute("SELECT id FROM samples")}
            if held != set(dataset.train.ids):
                raise WorkspaceError(
                    f"workspace {root} holds {len(held)} samples but the data given has "
                    f"{len(dataset.train)} (or other ids); resume with the same data, or "
                    "choose another --workspace. Deleted samples stay deleted."
                )
            return existing
        train = dataset.train
        _check_labels(config, train)
        layout = partition(
            train.ids,
            config.layout.shards,
            config.layout.slices,
            seed=config.layout.seed,
            labels=_strata(config, train),
            risk=[risk.get(i, 0.0) for i in train.ids] if risk else None,
        )
        priors = layout.priors()
        sequences = [
            select_sequences(
                config.layout.method,
                config.layout.slices,
                config.layout.budget,
                prior=priors[shard].tolist(),
                seed=config.layout.seed + shard,
                t=config.layout.bms_t,
            )
            for shard in range(config.layout.shards)
        ]
        # Written whole under a private name, then linked into place: a crash leaves no
        # half-created registry, and of two processes creating at once exactly one wins.
        scratch = f"{DB_NAME}.creating-{os.getpid()}-{threading.get_ident()}"
        try:
            cls._write(root, config, dataset, priors, layout.assignment, sequences, scratch)
            _fsync(root / scratch)
            os.link(root / scratch, root / DB_NAME)
            _fsync(root)
        except FileExistsError:  # another process created it meanwhile: resume that one
            return cls.create(root, config, dataset, risk)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (root / (scratch + suffix)).unlink(missing_ok=True)
        return cls(root)

    @staticmethod
    def _write(
        root: Path,
        config: S3TConfig,
        dataset: Dataset,
        priors: np.ndarray,
        assignment: Any,
        sequences: list[list[tuple[int, ...]]],
        name: str,
    ) -> None:
        train = dataset.train
        registry = Registry(root, create=True, name=name)
        try:
            with registry.transaction() as db:
                registry.set_meta("config", config.to_dict())
                registry.set_meta("task", train.task)
                registry.set_meta("modality", train.modality)
                registry.set_meta(
                    "label_names", list(train.label_names) if train.label_names else None
                )
                registry.set_meta("dataset", dataset.name)
                db.executemany(
                    "INSERT INTO samples (id, shard, slice, content_sha256) VALUES (?, ?, ?, ?)",
                    (
                        (sid, *assignment[sid], train.content_hash(row))
                        for row, sid in enumerate(train.ids)
                    ),
                )
                db.executemany(
                    "INSERT INTO sample_data VALUES (?, ?)",
                    (
                        (sid, json.dumps(encode_record(train, row)))
                        for row, sid in enumerate(train.ids)
                    ),
                )
                if dataset.test is not None:
                    test = dataset.test
                    db.executemany(
                        "INSERT INTO eval_data VALUES (?, ?)",
                        (
                            (sid, json.dumps(encode_record(test, row)))
                            for row, sid in enumerate(test.ids)
                        ),
                    )
                for shard, seqs in enumerate(sequences):
                    db.executemany(
                        "INSERT INTO sequences VALUES (?, ?, ?, 0)",
                        ((shard, b, json.dumps(list(seq))) for b, seq in enumerate(seqs)),
                    )
                registry.audit(
                    "created",
                    {
                        "samples": len(train),
                        "test_samples": len(dataset.test) if dataset.test is not None else 0,
                        "dataset": dataset.name,
                        "config_hash": config.config_hash(),
                        "slice_priors": priors.round(6).tolist(),
                    },
                )
            registry.db.execute("PRAGMA journal_mode=DELETE")  # the file alone holds it all
        finally:
            registry.close()


def _modified_before(path: Path, cutoff: float) -> bool:
    """Whether ``path`` is a file last modified before ``cutoff`` (False once it is gone)."""
    try:
        return path.is_file() and path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _strata(config: S3TConfig, train: Examples) -> list[int] | None:
    if not config.layout.stratify or train.task != "classification" or train.labels is None:
        return None
    return [int(x) for x in train.labels]


def _check_labels(config: S3TConfig, train: Examples) -> None:
    expected = train.num_labels
    if train.task == "instruction":
        return
    if config.model.num_labels != expected:
        raise ConfigError(
            f"the data has {expected} {'output' if expected == 1 else 'classes'} "
            f"({train.task}) but the model is set up for num_labels={config.model.num_labels}; "
            f"use --num-labels {expected}"
        )


def encode_record(examples: Examples, row: int) -> dict[str, Any]:
    """Return one sample as a compact JSON-ready record (images as base64 bytes)."""
    record: dict[str, Any] = {}
    for name in ("text", "text_pair", "prompt", "response"):
        column = getattr(examples, name)
        if column is not None:
            record[name] = column[row]
    if examples.image is not None:
        pixels = np.ascontiguousarray(examples.image[row])
        record["image"] = {
            "b64": base64.b64encode(pixels.tobytes()).decode(),
            "shape": list(pixels.shape),
            "dtype": str(pixels.dtype),
        }
    if examples.labels is not None:
        value = examples.labels[row]
        record["label"] = float(value) if examples.task == "regression" else int(value)
    return record


def examples_from_records(
    ids: list[str], records: list[dict[str, Any]], task: str, label_names: tuple[str, ...] | None
) -> Examples:
    """Rebuild an :class:`Examples` from stored records (the inverse of :func:`encode_record`)."""

    def column(name: str) -> tuple[Any, ...] | None:
        return tuple(r[name] for r in records) if records and name in records[0] else None

    image = None
    if records and "image" in records[0]:
        image = np.stack(
            [
                np.frombuffer(
                    base64.b64decode(r["image"]["b64"]), dtype=r["image"]["dtype"]
                ).reshape(r["image"]["shape"])
                for r in records
            ]
        )
    labels = None
    if records and "label" in records[0]:
        labels = np.array(
            [r["label"] for r in records], dtype=np.float32 if task == "regression" else np.int64
        )
    if not records:
        raise WorkspaceError("the workspace holds no samples in this split")
    return Examples(
        ids=tuple(ids),
        task=task,  # type: ignore[arg-type]
        text=column("text"),
        text_pair=column("text_pair"),
        image=image,
        prompt=column("prompt"),
        response=column("response"),
        labels=labels,
        label_names=label_names,
    )
