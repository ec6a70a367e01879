"""The workspace registry: one SQLite database (WAL mode, synchronous=FULL, secure_delete)
that records every sample, the layout and sequences, every stage artifact with its lineage,
the depth of every sequence, every deletion request and a hash-chained, append-only audit
log. This module alone reads and writes the schema; everything else asks it by name.

A state change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a crash leaves either
all of it or none of it, and a committed change survives power loss. Each thread uses its
own :class:`Registry` (SQLite connections are not shared across threads). A registry opened
read-only (a read-only folder or medium) answers every read and refuses every write.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from s3t.core.schedule import samples_digest
from s3t.errors import SchemaVersionError, WorkspaceError
from s3t.system.store.records import (
    GENESIS,
    ArtifactRow,
    AuditEvent,
    DeletionPlan,
    DeletionRecord,
    SampleRow,
    SequenceRow,
    Snapshot,
    StageRecord,
    TokenRow,
    Truncation,
)
from s3t.system.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, chain_hash, statements

DB_NAME = "registry.sqlite"
_BUSY_MS = 30_000


class Registry:
    """A connection to a workspace's registry database."""

    def __init__(
        self, root: Path, create: bool = False, name: str = DB_NAME, read_only: bool = False
    ) -> None:
        self.root = Path(root)
        self.path = self.root / name
        self.read_only = read_only
        if not create and not self.path.exists():
            raise WorkspaceError(
                f"no s3t workspace at {self.root} (missing {DB_NAME}); create one with `s3t train`"
            )
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise WorkspaceError(
                    f"workspace path {self.root} is a file, not a folder; choose another --workspace"
                ) from None
        self.db = self._connect()
        if create and not self._has_schema():
            with self.transaction():
                for statement in statements(SCHEMA):
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        self._check_version()

    def _connect(self) -> sqlite3.Connection:
        """Open read-write; fall back to read-only (then immutable) where the folder or
        the file cannot be written."""
        writable = os.access(self.root, os.W_OK) and (
            not self.path.exists() or os.access(self.path, os.W_OK)
        )
        attempts = [] if self.read_only or not writable else [(str(self.path), False)]
        attempts += [(f"file:{self.path}?mode=ro", True), (f"file:{self.path}?immutable=1", True)]
        last: Exception | None = None
        for target, read_only in attempts:
            try:
                db = sqlite3.connect(
                    target, timeout=_BUSY_MS / 1000, isolation_level=None, uri=read_only
                )
                if not read_only:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                    db.execute("PRAGMA secure_delete=ON")  # erased content is overwritten
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                last = exc
                if "not a database" in str(exc) or "malformed" in str(exc):
                    break
                continue
            self.read_only = read_only
            return db
        raise WorkspaceError(f"workspace registry {self.path} is not readable: {last}")

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
        version = int(row[0])
        if version < SCHEMA_VERSION and version in MIGRATIONS and not self.read_only:
            self._migrate(version)
        elif version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"workspace {self.root} has registry schema version {version}, this s3t reads "
                f"version {SCHEMA_VERSION}"
                + (
                    " (it can be upgraded once the workspace is writable)"
                    if version < SCHEMA_VERSION
                    else "; use the s3t release that wrote it"
                )
            )

    def _migrate(self, version: int) -> None:
        with self.transaction():
            current = int(
                self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
            )
            while current < SCHEMA_VERSION:
                MIGRATIONS[current](self.db)
                current += 1
            self.db.execute(
                "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
            )
            self.audit("migrated", {"from": version, "to": SCHEMA_VERSION})
        self.checkpoint()

    # ----- transactions ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Registry]:
        """Run a block as one write transaction (taken at once, so writers never deadlock);
        anything that fails, the commit included, rolls the whole block back. SQLite errors
        (a full disk, a locked file) become :class:`WorkspaceError` naming the problem."""
        self._writable()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise WorkspaceError(f"workspace {self.root} is busy or unwritable: {exc}") from exc
        try:
            yield self
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                with suppress(sqlite3.Error):  # keep the original error
                    self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise WorkspaceError(_explain(exc, self.root)) from exc
            raise

    @contextmanager
    def reading(self) -> Iterator[Registry]:
        """Run a block of reads on one consistent snapshot (one read transaction)."""
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            with suppress(sqlite3.Error):
                self.db.execute("COMMIT")

    def _writable(self) -> None:
        if self.read_only:
            raise WorkspaceError(
                f"workspace {self.root} is read-only here: it can be read (status, verify, "
                "predict) but not changed; open it from a writable location"
            )

    def checkpoint(self, busy_ms: int = 2_000) -> bool:
        """Copy every committed page into the database file and truncate the write-ahead log
        to zero bytes, so that content a deletion erased is overwritten in the one file and
        gone from the other. Waits up to ``busy_ms`` for readers of older snapshots; returns
        whether it completed."""
        if self.read_only:
            return False
        # poll every millisecond rather than through SQLite's busy handler, whose sleeps
        # grow to 25-100 ms: a reader that finishes a moment later costs a moment, and no
        # lock is held between tries
        deadline = time.monotonic() + busy_ms / 1000
        busy, log_frames = 1, -1
        try:
            self.db.execute("PRAGMA busy_timeout=0")
            while True:
                try:
                    busy, log_frames, _ = self.db.execute(
                        "PRAGMA wal_checkpoint(TRUNCATE)"
                    ).fetchone()
                except sqlite3.OperationalError:  # locked by a writer right now
                    busy = 1
                if busy == 0 or time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        except sqlite3.Error:
            return False
        finally:
            with suppress(sqlite3.Error):
                self.db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        wal = self.path.with_name(self.path.name + "-wal")
        return busy == 0 and log_frames in (0, -1) and (not wal.exists() or wal.stat().st_size == 0)

    def finish_creation(self) -> None:
        """Leave a freshly written registry as one self-contained file (no write-ahead log),
        ready to be linked into place."""
        self.db.execute("PRAGMA journal_mode=DELETE")

    def backup(self, dest: Path) -> None:
        """Copy the registry to ``dest`` with SQLite's online backup (consistent even while
        other processes write)."""
        target = sqlite3.connect(dest)
        try:
            self.db.backup(target)
        finally:
            target.close()

    # ----- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """Return a JSON value stored under ``key`` (``None`` if absent)."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value (inside a transaction)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # ----- creation ----------------------------------------------------------------------------
    def insert_samples(
        self, rows: Iterable[tuple[str, int, int, str, str]], table: str = "sample_data"
    ) -> None:
        """Store (id, shard, slice, subject, payload) training rows (inside a transaction);
        with ``table="eval_data"`` the shard, slice and subject are ignored."""
        if table == "eval_data":
            self.db.executemany("INSERT INTO eval_data VALUES (?, ?)", ((r[0], r[4]) for r in rows))
            return
        for chunk in _batches(rows, 1000):
            self.db.executemany(
                "INSERT INTO samples (id, shard, slice, subject) VALUES (?, ?, ?, ?)",
                (r[:4] for r in chunk),
            )
            self.db.executemany(
                "INSERT INTO sample_data VALUES (?, ?)", ((r[0], r[4]) for r in chunk)
            )

    def insert_sequences(self, shard: int, perms: Sequence[Sequence[int]]) -> None:
        """Register a shard's sequences at depth 0 (inside a transaction)."""
        self.db.executemany(
            "INSERT INTO sequences VALUES (?, ?, ?, 0)",
            ((shard, b, json.dumps(list(p))) for b, p in enumerate(perms)),
        )

    # ----- samples ---------------------------------------------------------------------------
    def sample_rows(self, ids: Sequence[str]) -> dict[str, SampleRow]:
        """Return the records of the ids that exist."""
        out: dict[str, SampleRow] = {}
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT id, shard, slice, subject, deleted_at, request_id FROM samples "
                f"WHERE id IN ({marks})",
                chunk,
            ):
                out[row[0]] = SampleRow(*row)
        return out

    def samples(
        self, shard: int | None = None, include_deleted: bool = False, subject: str | None = None
    ) -> list[SampleRow]:
        """Every sample (of one shard, or one subject), deleted ones only when asked, by
        shard, slice, id."""
        where: list[str] = []
        args: list[Any] = []
        if shard is not None:
            where.append("shard=?")
            args.append(shard)
        if subject is not None:
            where.append("subject=?")
            args.append(subject)
        if not include_deleted:
            where.append("deleted_at IS NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT id, shard, slice, subject, deleted_at, request_id FROM samples {clause} "
            "ORDER BY shard, slice, id",
            args,
        )
        return [SampleRow(*r) for r in rows]

    def subject_samples(self, subjects: Sequence[str]) -> dict[str, list[str]]:
        """Every sample (deleted ones included) of each of these subjects that exists."""
        out: dict[str, list[str]] = {}
        for chunk in chunks(sorted(set(subjects))):
            marks = ",".join("?" * len(chunk))
            for sid, subject in self.db.execute(
                f"SELECT id, subject FROM samples WHERE subject IN ({marks}) ORDER BY id", chunk
            ):
                out.setdefault(subject, []).append(sid)
        return out

    def subject_counts(self) -> tuple[int, int]:
        """(subjects with a live sample, subjects whose every sample is deleted)."""
        row = self.db.execute(
            "SELECT sum(live > 0), sum(live = 0) FROM (SELECT subject, "
            "sum(deleted_at IS NULL) AS live FROM samples GROUP BY subject)"
        ).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def sample_ids(self) -> set[str]:
        """Every sample id ever held, deleted ones included."""
        return {r[0] for r in self.db.execute("SELECT id FROM samples")}

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

    def live_homes(self, shard: int | None = None) -> dict[str, tuple[int, int]]:
        """(shard, slice) of every live sample (of one shard)."""
        where, args = ("AND shard=?", (shard,)) if shard is not None else ("", ())
        rows = self.db.execute(
            f"SELECT id, shard, slice FROM samples WHERE deleted_at IS NULL {where}", args
        )
        return {sid: (k, s) for sid, k, s in rows}

    def deleted_count(self) -> int:
        """How many samples have been deleted (changes with every deletion)."""
        return int(
            self.db.execute("SELECT count(*) FROM samples WHERE deleted_at IS NOT NULL").fetchone()[
                0
            ]
        )

    def slice_counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(shard, slice) -> (live, deleted) sample counts."""
        rows = self.db.execute(
            "SELECT shard, slice, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) "
            "FROM samples GROUP BY shard, slice"
        )
        return {(k, s): (int(live), int(dead)) for k, s, live, dead in rows}

    def payloads(self, table: str = "sample_data") -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (id, record) of every stored training (or ``eval_data``) sample."""
        if table not in ("sample_data", "eval_data"):
            raise ValueError(f"no such sample table {table!r}")
        rows = self.db.execute(f"SELECT id, payload FROM {table} ORDER BY id").fetchall()
        for sid, payload in rows:
            yield sid, json.loads(payload)

    def has_test_split(self) -> bool:
        """Whether a held-out test split is stored."""
        return bool(self.db.execute("SELECT count(*) FROM eval_data").fetchone()[0])

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
        ).fetchall():
            positions.setdefault((k, b), {})[stage] = artifact
        out = []
        for k, b, perm_text, depth in rows:
            perm = tuple(json.loads(perm_text))
            stages = positions.get((k, b), {})
            chain = []
            for stage in range(1, len(perm) + 1):
                if stage not in stages:
                    break
                chain.append(stages[stage])
            out.append(SequenceRow(k, b, perm, depth, tuple(chain)))
        return out

    # ----- artifacts --------------------------------------------------------------------------
    def artifact(self, artifact_id: str) -> ArtifactRow:
        """Return one artifact's record."""
        row = self.db.execute(
            f"SELECT {_ARTIFACT} FROM artifacts WHERE id=?", (artifact_id,)
        ).fetchone()
        if row is None:
            raise WorkspaceError(f"artifact {artifact_id} is not in the registry")
        return _artifact(row)

    def artifacts(self) -> list[ArtifactRow]:
        """Return every artifact record, oldest first."""
        rows = self.db.execute(f"SELECT {_ARTIFACT} FROM artifacts ORDER BY created, id")
        return [_artifact(r) for r in rows]

    def artifact_ids(self) -> set[str]:
        """Every registered artifact id."""
        return {r[0] for r in self.db.execute("SELECT id FROM artifacts")}

    def unservable(self) -> tuple[set[str], set[str]]:
        """(trained on no sample, purged or quarantined): artifacts that must never be the
        top of a served model, and artifacts that must not be used at all."""
        untrained: set[str] = set()
        unusable: set[str] = set()
        for aid, n_train, purged, quarantined in self.db.execute(
            "SELECT id, n_train, purged, quarantined FROM artifacts "
            "WHERE n_train = 0 OR purged IS NOT NULL OR quarantined IS NOT NULL"
        ):
            if purged is not None or quarantined is not None:
                unusable.add(aid)
            if n_train == 0:
                untrained.add(aid)
        return untrained, unusable

    def find_artifact(
        self, shard: int, prefix: Sequence[int], samples_sha256: str, config_hash: str
    ) -> str | None:
        """Return the id of a usable artifact trained on exactly these samples, if any."""
        row = self.db.execute(
            "SELECT id FROM artifacts WHERE shard=? AND prefix=? AND samples_sha256=? "
            "AND config_hash=? AND purged IS NULL AND quarantined IS NULL LIMIT 1",
            (shard, json.dumps(list(prefix)), samples_sha256, config_hash),
        ).fetchone()
        return None if row is None else str(row[0])

    def lineage(self, artifact_id: str) -> list[str]:
        """Return the sorted sample ids an artifact was trained (and validated) on."""
        rows = self.db.execute(
            "SELECT sample FROM lineage WHERE artifact=? ORDER BY sample", (artifact_id,)
        )
        return [r[0] for r in rows]

    def purged_among(self, ids: Iterable[str]) -> set[str]:
        """Which of these artifacts are purged or quarantined now."""
        wanted = sorted(set(ids))
        out: set[str] = set()
        for chunk in chunks(wanted):
            marks = ",".join("?" * len(chunk))
            out |= {
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM artifacts WHERE id IN ({marks}) "
                    "AND (purged IS NOT NULL OR quarantined IS NOT NULL)",
                    chunk,
                )
            }
        return out

    def purged_ids(self) -> list[str]:
        """Every purged artifact (trained on a deleted sample: its file must be gone)."""
        return [r[0] for r in self.db.execute("SELECT id FROM artifacts WHERE purged IS NOT NULL")]

    # ----- stage swaps -------------------------------------------------------------------------
    def swap_stage(self, stage: StageRecord, parent: Sequence[str]) -> str | None:
        """In one transaction: apply the race rule, register the artifact and raise the
        depth of every sequence waiting for it (same shard, same prefix, valid up to the
        stage before, on exactly ``parent``). Returns why the stage was discarded instead
        (a sample it was trained on was deleted meanwhile, or its parent changed), or
        ``None``."""
        depth = len(stage.prefix)
        with self.transaction():
            deleted = [s for s, row in self.sample_rows(stage.samples).items() if row.deleted_at]
            waiting = [
                r
                for r in self.sequences(stage.shard)
                if r.perm[:depth] == stage.prefix
                and r.depth == depth - 1
                and r.positions[: depth - 1] == tuple(parent)
            ]
            problem = None
            if deleted:
                problem = f"{len(deleted)} of its samples were deleted while it trained"
            elif not waiting:
                problem = "no sequence is waiting for it any more (its parent changed)"
            if problem:
                self.audit(
                    "stage-discarded",
                    {"shard": stage.shard, "prefix": list(stage.prefix), "reason": problem},
                )
                return problem
            self._register(stage)
            for row in waiting:
                self.db.execute(
                    "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                    (row.shard, row.seq, depth, stage.artifact),
                )
                self.db.execute(
                    "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
                    (depth, row.shard, row.seq),
                )
            self.audit(
                "stage-swapped",
                {
                    "shard": stage.shard,
                    "prefix": list(stage.prefix),
                    "artifact": stage.artifact,
                    "sequences": [r.seq for r in waiting],
                    "depth": depth,
                },
            )
        return None

    def _register(self, stage: StageRecord) -> None:
        row = self.db.execute(
            "SELECT quarantined, purged FROM artifacts WHERE id=?", (stage.artifact,)
        ).fetchone()
        if row is not None and row[1] is not None:
            raise WorkspaceError(
                f"refusing to serve artifact {stage.artifact[:12]}: a deletion purged these exact "
                "tensors, so they were trained on a forgotten sample again — the registry was "
                "edited (a forgotten sample made live); run `s3t verify`"
            )
        if row is not None:  # the same bytes again (content addressing): usable once more
            if row[0] is not None:
                self.db.execute(
                    "UPDATE artifacts SET quarantined=NULL, quarantine_reason=NULL WHERE id=?",
                    (stage.artifact,),
                )
            return
        self.db.execute(
            f"INSERT INTO artifacts ({_ARTIFACT}) VALUES ({','.join('?' * 15)})",
            (
                stage.artifact,
                stage.shard,
                json.dumps(list(stage.prefix)),
                len(stage.prefix),
                samples_digest(stage.samples),
                len(stage.samples),
                stage.n_train,
                stage.config_hash,
                stage.bytes,
                time.time(),
                json.dumps(stage.metrics, sort_keys=True),
                None,
                None,
                None,
                None,
            ),
        )
        self.db.executemany(
            "INSERT INTO lineage VALUES (?, ?)", ((stage.artifact, sid) for sid in stage.samples)
        )

    def quarantine(self, artifact: str, reason: str) -> bool:
        """Take a corrupted or missing artifact out of service: mark it, cut every sequence
        that uses it to just before it (retraining rebuilds it) and log why. False when
        it is unknown, purged or already quarantined."""
        with self.transaction():
            row = self.db.execute(
                "SELECT quarantined, purged FROM artifacts WHERE id=?", (artifact,)
            ).fetchone()
            if row is None or row[0] is not None or row[1] is not None:
                return False
            cuts = []
            for r in self.sequences():
                if artifact in r.active():
                    after = r.active().index(artifact)
                    cuts.append(
                        Truncation(r.shard, r.seq, r.depth, after, list(r.active()[after:]))
                    )
                    self.db.execute(
                        "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
                        (after, r.shard, r.seq),
                    )
            self.db.execute(
                "UPDATE artifacts SET quarantined=?, quarantine_reason=? WHERE id=?",
                (time.time(), reason, artifact),
            )
            self.audit(
                "quarantined",
                {
                    "artifact": artifact,
                    "reason": reason,
                    "truncated": [[t.shard, t.seq, t.depth_before, t.depth_after] for t in cuts],
                },
            )
        return True

    # ----- deletions ---------------------------------------------------------------------------
    def record_deletion(self, plan: DeletionPlan) -> DeletionRecord:
        """Write a deletion (inside the transaction that computed ``plan``): cut the
        sequences, purge every artifact trained on a deleted sample, mark the samples
        deleted, erase their stored content, queue the erasure of their files and log it."""
        for t in plan.truncations:
            self.db.execute(
                "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
                (t.depth_after, t.shard, t.seq),
            )
        fresh = [sid for sid, _, _ in plan.deleted]
        purged: set[str] = set()
        for chunk in chunks(fresh):
            marks = ",".join("?" * len(chunk))
            purged |= {
                r[0]
                for r in self.db.execute(
                    f"SELECT DISTINCT l.artifact FROM lineage l JOIN artifacts a ON a.id = l.artifact "
                    f"WHERE l.sample IN ({marks}) AND a.purged IS NULL",
                    chunk,
                )
            }
        for chunk in chunks(sorted(purged)):
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                f"UPDATE artifacts SET purged=?, purged_by=? WHERE id IN ({marks})",
                (plan.at, plan.request_id, *chunk),
            )
        for chunk in chunks(fresh):
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                f"UPDATE samples SET deleted_at=?, request_id=? WHERE id IN ({marks})",
                (plan.at, plan.request_id, *chunk),
            )
            self.db.execute(f"DELETE FROM sample_data WHERE id IN ({marks})", chunk)
        if fresh:
            self.db.execute("INSERT INTO erasures VALUES (?, ?)", (plan.request_id, plan.at))
        seq, head = self.audit(
            "forget",
            {
                "request_id": plan.request_id,
                "subjects": plan.subjects,
                "deleted": [list(d) for d in plan.deleted],
                "already_deleted": plan.already_deleted,
                "truncated": [
                    [t.shard, t.seq, t.depth_before, t.depth_after] for t in plan.truncations
                ],
                "purged": sorted(purged),
            },
            at=plan.at,
        )
        return DeletionRecord(sorted(purged), seq, head)

    def save_receipt(self, plan: DeletionPlan, receipt: dict[str, Any], chain_seq: int) -> None:
        """Store a deletion's receipt (inside its transaction)."""
        self.db.execute(
            "INSERT INTO deletions VALUES (?, ?, ?, ?, ?)",
            (
                plan.request_id,
                plan.at,
                json.dumps(plan.requested),
                json.dumps(receipt, sort_keys=True),
                chain_seq,
            ),
        )

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        """The stored receipt of a deletion request (``None`` if there is none)."""
        row = self.db.execute(
            "SELECT receipt FROM deletions WHERE request_id=?", (request_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def deletion_count(self) -> int:
        """How many deletion requests were recorded."""
        return int(self.db.execute("SELECT count(*) FROM deletions").fetchone()[0])

    def any_deleted(self, ids: Sequence[str]) -> bool:
        """Whether any of these samples is deleted (or unknown: forgotten and gone)."""
        wanted = list(dict.fromkeys(ids))
        live = 0
        for chunk in chunks(wanted):
            marks = ",".join("?" * len(chunk))
            (count,) = self.db.execute(
                f"SELECT COUNT(*) FROM samples WHERE deleted_at IS NULL AND id IN ({marks})",
                chunk,
            ).fetchone()
            live += int(count)
        return live != len(wanted)

    def deleted_groups(self, request_ids: Sequence[str]) -> set[tuple[int, int]]:
        """The (shard, slice) cells of the samples these deletion requests removed."""
        out: set[tuple[int, int]] = set()
        for chunk in chunks(list(request_ids)):
            marks = ",".join("?" * len(chunk))
            out |= {
                (k, s)
                for k, s in self.db.execute(
                    f"SELECT DISTINCT shard, slice FROM samples WHERE request_id IN ({marks})",
                    chunk,
                )
            }
        return out

    def pending_erasures(self) -> dict[str, float]:
        """Deletion requests whose files and old database pages are not yet erased."""
        return {r: since for r, since in self.db.execute("SELECT request_id, since FROM erasures")}

    def complete_erasures(self, request_ids: Iterable[str]) -> list[str]:
        """Mark erasures done and log when; returns the requests this call completed."""
        wanted = sorted(set(request_ids))
        if not wanted:
            return []
        with self.transaction():
            done = sorted(set(self.pending_erasures()) & set(wanted))
            if done:
                for chunk in chunks(done):
                    marks = ",".join("?" * len(chunk))
                    self.db.execute(f"DELETE FROM erasures WHERE request_id IN ({marks})", chunk)
                self.audit("erasure-completed", {"requests": done})
        return done

    # ----- tokens ------------------------------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        """Store a new access token (hashed) and log it (never the secret)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                (
                    token.id,
                    token.name,
                    json.dumps(list(token.scopes)),
                    token.secret_sha256,
                    token.created,
                ),
            )
            self.audit(
                "token-created", {"id": token.id, "name": token.name, "scopes": list(token.scopes)}
            )

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token now; False if there is no such active token."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE tokens SET revoked=? WHERE id=? AND revoked IS NULL",
                (time.time(), token_id),
            )
            if cursor.rowcount:
                self.audit("token-revoked", {"id": token_id})
            return bool(cursor.rowcount)

    def tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""
        rows = self.db.execute(
            "SELECT id, name, scopes, secret_sha256, created, revoked FROM tokens ORDER BY created, id"
        )
        return [TokenRow(i, n, tuple(json.loads(s)), h, c, r) for i, n, s, h, c, r in rows]

    def token(self, token_id: str) -> TokenRow | None:
        """One token by id (``None`` if unknown)."""
        row = self.db.execute(
            "SELECT id, name, scopes, secret_sha256, created, revoked FROM tokens WHERE id=?",
            (token_id,),
        ).fetchone()
        if row is None:
            return None
        return TokenRow(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5])

    # ----- audit -------------------------------------------------------------------------------
    def audit(self, event: str, detail: dict[str, Any], at: float | None = None) -> tuple[int, str]:
        """Append an event to the hash-chained log (inside a transaction); return its
        sequence number and hash (the chain head)."""
        last = self.db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        when = time.time() if at is None else at
        text = json.dumps(detail, sort_keys=True)
        digest = chain_hash(prev, seq, when, event, text)
        self.db.execute(
            "INSERT INTO audit (seq, at, event, detail, hash) VALUES (?, ?, ?, ?, ?)",
            (seq, when, event, text, digest),
        )
        return seq, digest

    def audit_log(self, since: int = 0, until: int | None = None) -> list[AuditEvent]:
        """Return audit events numbered ``since < seq <= until``, oldest first."""
        rows = self.db.execute(
            "SELECT seq, at, event, detail, hash FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq",
            (since, 2**63 - 1 if until is None else until),
        )
        return [AuditEvent(s, at, ev, json.loads(d), d, h) for s, at, ev, d, h in rows]

    # ----- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Everything verify checks, read in one read transaction."""
        with self.reading():
            sequences = self.sequences()
            artifacts = {a.id: a for a in self.artifacts()}
            samples = {r.id: r for r in self.samples(include_deleted=True)}
            stored = {r[0] for r in self.db.execute("SELECT id FROM sample_data")}
            lineage: dict[str, list[str]] = {}
            for aid, sample in self.db.execute(
                "SELECT l.artifact, l.sample FROM lineage l JOIN artifacts a ON a.id = l.artifact "
                "WHERE a.purged IS NULL ORDER BY l.artifact, l.sample"
            ):
                lineage.setdefault(aid, []).append(sample)
            deleted_lineage = [
                (a, s)
                for a, s in self.db.execute(
                    "SELECT l.artifact, l.sample FROM lineage l JOIN samples s ON s.id = l.sample "
                    "WHERE s.deleted_at IS NOT NULL"
                )
            ]
            events = self.audit_log()
            deletions = {
                r: dict(json.loads(text))
                for r, text in self.db.execute("SELECT request_id, receipt FROM deletions")
            }
            pending = self.pending_erasures()
        return Snapshot(
            sequences,
            artifacts,
            samples,
            stored,
            lineage,
            deleted_lineage,
            events,
            deletions,
            pending,
        )


_ARTIFACT = (
    "id, shard, prefix, stage, samples_sha256, n_samples, n_train, config_hash, bytes, created, "
    "metrics, purged, purged_by, quarantined, quarantine_reason"
)


def _artifact(row: Sequence[Any]) -> ArtifactRow:
    return ArtifactRow(
        id=row[0],
        shard=row[1],
        prefix=tuple(json.loads(row[2])),
        stage=row[3],
        samples_sha256=row[4],
        n_samples=row[5],
        n_train=row[6],
        config_hash=row[7],
        bytes=row[8],
        created=row[9],
        metrics=json.loads(row[10]),
        purged=row[11],
        purged_by=row[12],
        quarantined=row[13],
        quarantine_reason=row[14],
    )


def _explain(exc: sqlite3.Error, root: Path) -> str:
    text = str(exc)
    if "full" in text:
        return f"the disk holding workspace {root} is full ({text}); nothing was changed — free space and retry"
    if "readonly" in text or "read-only" in text:
        return f"workspace {root} is read-only ({text}); nothing was changed"
    return f"workspace {root}: the registry refused the change ({text}); nothing was changed"


def chunks(items: Sequence[str], size: int = 500) -> Iterator[list[str]]:
    """Split ``items`` into lists of at most ``size`` (SQLite limits bound parameters)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
