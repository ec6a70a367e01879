"""A workspace: the registry database plus a folder of content-addressed artifacts.

Creating one partitions the data, picks every shard's sequences and stores the training
samples themselves (so retraining never needs the original source, and a deleted sample's
content is erased from the only copy s3t keeps). Opening one checks the schema version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.partition import partition
from s3t.core.selection import Served, served_depths, serving_choice
from s3t.core.sequences import select_sequences
from s3t.data.examples import Dataset, Examples
from s3t.errors import ArtifactError, ConfigError, WorkspaceError
from s3t.system.config import S3TConfig
from s3t.system.store.files import ArtifactFiles, unlink_all
from s3t.system.store.registry import DB_NAME, Registry

log = logging.getLogger(__name__)


class Workspace:
    """An open workspace. Thread-safe: each thread gets its own registry connection. A
    workspace that cannot be written (a read-only folder or medium, or ``read_only``)
    serves every read and refuses every change."""

    def __init__(self, root: str | Path, read_only: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(
                f"workspace path {self.root} is a file, not a folder; choose another --workspace"
            )
        registry = Registry(self.root, read_only=read_only)
        self.read_only = registry.read_only
        self._local = threading.local()
        self._local.registry = registry
        self._opened = [registry]  # every thread's connection, so close() reaches them all
        self._opened_lock = threading.Lock()
        self.files = ArtifactFiles(self.root, DB_NAME)
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
        """Return this thread's registry connection (opened on first use, and again after
        :meth:`close`)."""
        registry: Registry | None = getattr(self._local, "registry", None)
        if registry is None or registry.closed:
            registry = Registry(self.root, read_only=self.read_only)
            self._local.registry = registry
            with self._opened_lock:
                self._opened.append(registry)
        return registry

    def close(self) -> None:
        """Close every thread's registry connection (the last one closed checkpoints and
        removes SQLite's side files); call it once the threads using the workspace are
        done. A later use opens a fresh connection."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for registry in opened:
            registry.close()

    def examples(self, table: str = "sample_data", source: Registry | None = None) -> Examples:
        """Return the stored training samples still present (or the test split), from a
        copy of the registry taken now, or from ``source`` (a copy the caller holds)."""
        ids, records = [], []
        with self.registry().copy() if source is None else nullcontext(source) as copy:
            for sid, record in copy.payloads(table):
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

    # ----- what is served -------------------------------------------------------------------
    def serving(self, budget: int | None = None) -> dict[int, Served]:
        """Each live shard's served model now (see :func:`s3t.core.selection.serving_choice`)."""
        registry = self.registry()
        rows, untrained, unusable = registry.serving_view()
        return serving_choice(rows, budget, untrained, unusable)

    def served_depths(self) -> dict[int, int]:
        """Each shard's served depth now (0 = dead)."""
        registry = self.registry()
        rows, untrained, unusable = registry.serving_view()
        return served_depths(rows, untrained, unusable)

    # ----- artifacts ------------------------------------------------------------------------
    def read_artifact(self, artifact: str) -> bytes:
        """An artifact's bytes, checked against its sha256. A missing or corrupted file
        (not one a deletion purged) is quarantined — its sequences are cut to just before
        it, retraining rebuilds it — and reported as :class:`ArtifactError`."""
        try:
            data = self.files.read(artifact)
        except ArtifactError:
            reason = "its file is missing"
        else:
            if hashlib.sha256(data).hexdigest() == artifact:
                return data
            reason = "its file does not match its sha256 (corrupted)"
        if not self.read_only:
            self.quarantine(artifact, reason)
        raise ArtifactError(
            f"artifact {artifact[:12]}: {reason}; it is quarantined and its sequences serve "
            "a shorter prefix until `s3t retrain` rebuilds it"
        )

    def quarantine(self, artifact: str, reason: str) -> None:
        """Take an artifact out of service (unless a deletion already purged it)."""
        if self.registry().quarantine(artifact, reason):
            log.warning("quarantined artifact %s: %s", artifact, reason)
            self.files.quarantine(artifact)

    # ----- clean-up and erasure ----------------------------------------------------------------
    def sweep(self) -> int:
        """Remove what must not be on disk: files of purged artifacts, and leftovers of
        crashed processes (unregistered stage files, temp files, half-created registries);
        then finish pending erasures. Returns how many files were removed. Changes nothing
        in a read-only workspace."""
        if self.read_only:
            return 0
        registry = self.registry()
        removed = sum(self._remove_artifact(a) for a in registry.purged_ids())
        removed += unlink_all(self.files.leftovers(registry.artifact_ids()))
        removed += unlink_all(self.files.stale_cache_files())
        self.erase_pending()
        return removed

    def erase_pending(self, busy_ms: int = 2_000) -> list[str]:
        """Finish the erasure of every deletion still pending: remove the files of purged
        artifacts (and stage files a crashed trainer left from before the deletion), then
        overwrite the database's old pages and empty its write-ahead log. Logs each
        completion in the audit log; returns the requests still pending (a reader of an old
        snapshot, or a trainer about to swap a stage written before the deletion)."""
        registry = self.registry()
        pending = registry.pending_erasures()
        if not pending or self.read_only:
            return sorted(pending)
        blocked = False
        for artifact in registry.purged_by(list(pending)):
            try:
                self.files.remove(artifact)
            except WorkspaceError as exc:  # a crafted id: never used as a path
                log.warning("%s", exc)
            except OSError as exc:
                log.warning("could not remove purged artifact %s: %s", artifact, exc)
                blocked = True
        groups = registry.deleted_groups(list(pending))
        # cached features of the deleted samples: under the cache lock, so that no trainer
        # is half-way through writing one from a snapshot taken before the deletion
        with self.files.cache_lock(exclusive=True, timeout=busy_ms / 1000) as locked:
            spilled = self.files.cache_files(groups) if locked else []
            blocked |= not locked or unlink_all(spilled) < sum(p.exists() for p in spilled)
        latest = max(pending.values())
        for path in self.files.unregistered(registry.artifact_ids(), written_before=latest):
            if time.time() - _mtime(path) > ORPHAN_GRACE_SECONDS:
                blocked |= unlink_all([path]) == 0 and path.exists()
            else:
                blocked = True  # a trainer may swap it in (or discard it) any moment now
        if blocked or not registry.checkpoint(busy_ms):
            return sorted(pending)
        registry.complete_erasures(pending)
        return sorted(set(registry.pending_erasures()))

    @contextmanager
    def spill_guard(self, members: Sequence[str]) -> Iterator[bool]:
        """Around writing an activation-cache spill file of these samples: yields whether
        it may be written (none of them deleted meanwhile), holding the cache lock shared
        so that an erasure waits for the file and then deletes it."""
        with self.files.cache_lock(exclusive=False) as locked:
            yield locked and not self.registry().any_deleted(members)

    def _remove_artifact(self, artifact: str) -> int:
        try:
            return int(self.files.remove(artifact))
        except WorkspaceError as exc:  # a crafted id: never used as a path; verify reports it
            log.warning("%s", exc)
            return 0
        except OSError as exc:
            log.warning("could not remove purged artifact %s: %s", artifact, exc)
            return 0

    def backup(self, dest: Path) -> Path:
        """Copy this workspace to the new folder ``dest``: the registry through SQLite's
        online backup (one consistent snapshot, whatever else runs), then the files of
        the artifacts that snapshot keeps. A backup is a snapshot: later deletions do not
        reach it."""
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise WorkspaceError(f"backup destination {dest} exists and is not an empty folder")
        dest.mkdir(parents=True, exist_ok=True)
        self.registry().backup(dest / DB_NAME)
        copy = Registry(dest)
        try:
            keep = [a.id for a in copy.artifacts() if a.purged is None and a.quarantined is None]
        finally:
            copy.close()
        target = ArtifactFiles(dest, DB_NAME)
        for artifact in keep:
            try:
                target.write(artifact, self.files.read(artifact))
            except ArtifactError:
                log.warning("artifact %s vanished during the backup (purged meanwhile)", artifact)
        return dest

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
            held = existing.registry().sample_ids()
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
            subjects=list(train.subjects) if train.subjects is not None else None,
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
        # half-created registry (and any process that opens the workspace removes the
        # scratch file of a dead creator), and of two processes creating at once one wins.
        scratch = f"{DB_NAME}.creating-{os.getpid()}-{threading.get_ident()}"
        try:
            cls._write(root, config, dataset, priors, layout.assignment, sequences, scratch)
            _fsync(root / scratch)
            os.link(root / scratch, root / DB_NAME)
            _fsync(root)
        except (FileExistsError, FileNotFoundError):  # another process created it meanwhile
            if not (root / DB_NAME).exists():
                raise
            return cls.create(root, config, dataset, risk)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create workspace {root}: {exc.strerror or exc}; nothing was created"
            ) from exc
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
            with registry.transaction():
                registry.set_meta("config", config.to_dict())
                registry.set_meta("task", train.task)
                registry.set_meta("modality", train.modality)
                registry.set_meta(
                    "label_names", list(train.label_names) if train.label_names else None
                )
                registry.set_meta("dataset", dataset.name)
                owners = train.subjects or train.ids
                registry.insert_samples(
                    (sid, *assignment[sid], owners[row], json.dumps(encode_record(train, row)))
                    for row, sid in enumerate(train.ids)
                )
                if dataset.test is not None:
                    test = dataset.test
                    registry.insert_samples(
                        (
                            (sid, 0, 0, sid, json.dumps(encode_record(test, row)))
                            for row, sid in enumerate(test.ids)
                        ),
                        table="eval_data",
                    )
                for shard, seqs in enumerate(sequences):
                    registry.insert_sequences(shard, seqs)
                registry.audit(
                    "created",
                    {
                        "samples": len(train),
                        "test_samples": len(dataset.test) if dataset.test is not None else 0,
                        "dataset": dataset.name,
                        "config_hash": config.config_hash(),
                        "slice_priors": priors.round(6).tolist(),
                        "subjects": len(set(train.subjects or train.ids)),
                    },
                )
            registry.finish_creation()
        finally:
            registry.close()


ORPHAN_GRACE_SECONDS = 60.0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


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
