"""The workspace registry: one SQLite database (WAL mode, synchronous=FULL) that records
every sample, the layout and sequences, every stage artifact with its lineage, the depth
of every sequence, every deletion request and an append-only audit log.

A state change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a crash leaves either
all of it or none of it, and a committed change survives power loss. Each thread uses its
own :class:`Registry` (SQLite connections are not shared across threads).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3t.errors import SchemaVersionError, WorkspaceError

SCHEMA_VERSION = 1
DB_NAME = "registry.sqlite"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    id TEXT PRIMARY KEY, shard INTEGER NOT NULL, slice INTEGER NOT NULL,
    content_sha256 TEXT NOT NULL, deleted_at REAL, request_id TEXT
) WITHOUT ROWID;
CREATE INDEX samples_by_slice ON samples (shard, slice);
CREATE TABLE sample_data (id TEXT PRIMARY KEY, payload TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE eval_data (id TEXT PRIMARY KEY, payload TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE sequences (
    shard INTEGER NOT NULL, seq INTEGER NOT NULL, perm TEXT NOT NULL, depth INTEGER NOT NULL,
    PRIMARY KEY (shard, seq)
);
CREATE TABLE positions (
    shard INTEGER NOT NULL, seq INTEGER NOT NULL, stage INTEGER NOT NULL, artifact TEXT NOT NULL,
    PRIMARY KEY (shard, seq, stage)
);
CREATE TABLE artifacts (
    id TEXT PRIMARY KEY, shard INTEGER NOT NULL, prefix TEXT NOT NULL, stage INTEGER NOT NULL,
    samples_sha256 TEXT NOT NULL, n_samples INTEGER NOT NULL, config_hash TEXT NOT NULL,
    path TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL, metrics TEXT NOT NULL,
    purged REAL
);
CREATE INDEX artifacts_by_prefix ON artifacts (shard, prefix, samples_sha256, config_hash);
CREATE TABLE lineage (
    artifact TEXT NOT NULL, sample TEXT NOT NULL, PRIMARY KEY (artifact, sample)
) WITHOUT ROWID;
CREATE INDEX lineage_by_sample ON lineage (sample, artifact);
CREATE TABLE deletions (
    request_id TEXT PRIMARY KEY, created REAL NOT NULL, sample_ids TEXT NOT NULL,
    receipt TEXT NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class SequenceRow:
    """One sequence's state: its slice order, valid depth and the artifact at each stage."""

    shard: int
    seq: int
    perm: tuple[int, ...]
    depth: int
    positions: tuple[str, ...]  # artifact id of stage 1, 2, … (may run past depth: stale)

    def active(self) -> tuple[str, ...]:
        """Artifact ids of the valid prefix (stages 1..depth)."""
        return self.positions[: self.depth]


def served_depths(
    rows: Iterable[SequenceRow], depths: dict[tuple[int, int], int] | None = None
) -> dict[int, int]:
    """Each shard's served depth: the longest valid prefix among its sequences (0 = dead).
    ``depths`` overrides some sequences' depths, keyed by (shard, seq)."""
    out: dict[int, int] = {}
    for r in rows:
        depth = depths.get((r.shard, r.seq), r.depth) if depths else r.depth
        out[r.shard] = max(out.get(r.shard, 0), depth)
    return out


@dataclass(frozen=True)
class ArtifactRow:
    """One stage artifact's record."""

    id: str
    shard: int
    prefix: tuple[int, ...]
    stage: int
    samples_sha256: str
    n_samples: int
    config_hash: str
    path: str
    bytes: int
    created: float
    metrics: dict[str, Any]
    purged: float | None


class Registry:
    """A connection to a workspace's registry database."""

    def __init__(self, root: Path, create: bool = False, name: str = DB_NAME) -> None:
        self.root = Path(root)
        path = self.root / name
        if not create and not path.exists():
            raise WorkspaceError(
                f"no s3t workspace at {self.root} (missing {DB_NAME}); create one with `s3t train`"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise WorkspaceError(
                f"workspace path {self.root} is a file, not a folder; choose another --workspace"
            ) from None
        try:
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA secure_delete=ON")  # erased content is overwritten on disk
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"workspace registry {path} is not readable: {exc}") from exc
        if create and not self._has_schema():
            with self.transaction():
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        self._check_version()

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def _has_schema(self) -> bool:
        row = self.db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        return bool(row[0])

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"workspace registry in {self.root} is corrupted: {exc}") from exc
        if row is None:
            raise WorkspaceError(f"workspace registry in {self.root} has no schema version")
        if int(row[0]) != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"workspace {self.root} has registry schema version {row[0]}, this s3t reads "
                f"version {SCHEMA_VERSION}; use the s3t release that wrote it"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block as one write transaction (taken at once, so writers never deadlock);
        anything that fails, the commit included, rolls the whole block back."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise WorkspaceError(f"workspace {self.root} is busy or unwritable: {exc}") from exc
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                with suppress(sqlite3.Error):  # keep the original error
                    self.db.execute("ROLLBACK")
            raise

    def checkpoint(self) -> None:
        """Copy committed pages into the main database file now (best effort), so that
        content erased by a deletion is overwritten there without waiting for SQLite."""
        with suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ----- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """Return a JSON value stored under ``key`` (``None`` if absent)."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value (call inside a transaction)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # ----- samples -----------------------------------------------------------------------------
    def sample_rows(self, ids: Sequence[str]) -> dict[str, tuple[int, int, float | None]]:
        """Return {id: (shard, slice, deleted_at)} for the ids that exist."""
        out: dict[str, tuple[int, int, float | None]] = {}
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            for sid, shard, slice_, deleted in self.db.execute(
                f"SELECT id, shard, slice, deleted_at FROM samples WHERE id IN ({marks})", chunk
            ):
                out[sid] = (shard, slice_, deleted)
        return out

    def live_ids(self, shard: int, slices: Iterable[int]) -> list[str]:
        """Return the sorted ids of not-deleted samples in some slices of a shard."""
        wanted = list(slices)
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            f"SELECT id FROM samples WHERE shard=? AND slice IN ({marks}) AND deleted_at IS NULL "
            "ORDER BY id",
            (shard, *wanted),
        )
        return [r[0] for r in rows]

    def payloads(self, table: str = "sample_data") -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (id, record) of every stored training (or ``eval_data``) sample."""
        assert table in ("sample_data", "eval_data")
        for sid, payload in self.db.execute(f"SELECT id, payload FROM {table} ORDER BY id"):
            yield sid, json.loads(payload)

    # ----- sequences -------------------------------------------------------------------------
    def sequences(self, shard: int | None = None) -> list[SequenceRow]:
        """Return every sequence (of one shard) with its depth and stage artifacts."""
        where, args = ("WHERE shard=?", (shard,)) if shard is not None else ("", ())
        rows = self.db.execute(
            f"SELECT shard, seq, perm, depth FROM sequences {where} ORDER BY shard, seq", args
        ).fetchall()
        positions: dict[tuple[int, int], dict[int, str]] = {}
        for k, b, stage, artifact in self.db.execute(
            f"SELECT shard, seq, stage, artifact FROM positions {where}", args
        ):
            positions.setdefault((k, b), {})[stage] = artifact
        out = []
        for k, b, perm, depth in rows:
            stages = positions.get((k, b), {})
            chain = []
            for stage in range(1, len(json.loads(perm)) + 1):
                if stage not in stages:
                    break
                chain.append(stages[stage])
            out.append(SequenceRow(k, b, tuple(json.loads(perm)), depth, tuple(chain)))
        return out

    # ----- artifacts --------------------------------------------------------------------------
    def served_depths(self) -> dict[int, int]:
        """Each shard's served depth now (see :func:`served_depths`)."""
        return served_depths(self.sequences())

    def artifact(self, artifact_id: str) -> ArtifactRow:
        """Return one artifact's record."""
        row = self.db.execute("SELECT * FROM artifacts WHERE id=?", (artifact_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"artifact {artifact_id} is not in the registry")
        return _artifact(row)

    def artifacts(self) -> list[ArtifactRow]:
        """Return every artifact record."""
        return [_artifact(r) for r in self.db.execute("SELECT * FROM artifacts ORDER BY created")]

    def find_artifact(
        self, shard: int, prefix: Sequence[int], samples_sha256: str, config_hash: str
    ) -> str | None:
        """Return the id of an unpurged artifact trained on exactly these samples, if any."""
        row = self.db.execute(
            "SELECT id FROM artifacts WHERE shard=? AND prefix=? AND samples_sha256=? "
            "AND config_hash=? AND purged IS NULL LIMIT 1",
            (shard, json.dumps(list(prefix)), samples_sha256, config_hash),
        ).fetchone()
        return None if row is None else str(row[0])

    def lineage(self, artifact_id: str) -> list[str]:
        """Return the sorted sample ids an artifact was trained (and validated) on."""
        rows = self.db.execute(
            "SELECT sample FROM lineage WHERE artifact=? ORDER BY sample", (artifact_id,)
        )
        return [r[0] for r in rows]

    # ----- audit -------------------------------------------------------------------------------
    def audit(self, event: str, detail: dict[str, Any]) -> None:
        """Append an event to the audit log (call inside a transaction)."""
        self.db.execute(
            "INSERT INTO audit (at, event, detail) VALUES (?, ?, ?)",
            (time.time(), event, json.dumps(detail, sort_keys=True)),
        )

    def audit_log(self, since: int = 0) -> list[tuple[int, float, str, dict[str, Any]]]:
        """Return audit events with sequence number > ``since``, oldest first."""
        rows = self.db.execute(
            "SELECT seq, at, event, detail FROM audit WHERE seq > ? ORDER BY seq", (since,)
        )
        return [(s, at, ev, json.loads(d)) for s, at, ev, d in rows]


def _artifact(row: Sequence[Any]) -> ArtifactRow:
    return ArtifactRow(
        id=row[0],
        shard=row[1],
        prefix=tuple(json.loads(row[2])),
        stage=row[3],
        samples_sha256=row[4],
        n_samples=row[5],
        config_hash=row[6],
        path=row[7],
        bytes=row[8],
        created=row[9],
        metrics=json.loads(row[10]),
        purged=row[11],
    )


def chunks(items: Sequence[str], size: int = 500) -> Iterator[list[str]]:
    """Split ``items`` into lists of at most ``size`` (SQLite limits bound parameters)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
