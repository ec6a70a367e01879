"""The registry's database: one SQLite file (WAL mode, synchronous=FULL, secure_delete)
opened per thread, its schema and migrations, transactions, the erasure checkpoint, online
backups, settings (``meta``) and the hash-chained, append-only audit log that every change
appends to.

A state change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a crash leaves either
all of it or none of it, and a committed change survives power loss. SQLite connections are
not shared across threads. A database opened read-only (a read-only folder or medium)
answers every read and refuses every write.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self, TypeVar

from s3t.errors import RegistryDamagedError, SchemaVersionError, WorkspaceError
from s3t.system.store.records import GENESIS, AuditEvent
from s3t.system.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, chain_hash, statements

T = TypeVar("T")
DB_NAME = "registry.sqlite"
_BUSY_MS = 30_000
_WIDTHS: dict[str, int] = {}  # columns of each query read by rows_at_once


class Database:
    """The connection, transactions, checkpoint, backup, settings and audit log (the base
    of :class:`~s3t.system.store.registry.Registry`)."""

    def __init__(
        self, root: Path, create: bool = False, name: str = DB_NAME, read_only: bool = False
    ) -> None:
        self.root = Path(root)
        self.path = self.root / name
        self.read_only = read_only
        self.closed = False
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
        side_files = [self.path.with_name(self.path.name + end) for end in ("-wal", "-shm")]
        self._found_side_files = any(p.exists() for p in side_files)
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
                db = sqlite3.connect(  # used by one thread; closed by the workspace's owner
                    target,
                    timeout=_BUSY_MS / 1000,
                    isolation_level=None,
                    uri=read_only,
                    check_same_thread=False,
                    factory=_Connection,
                )
                db.registry_path = self.path
                if not read_only:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                    db.execute("PRAGMA secure_delete=ON")  # erased content is overwritten
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                last = exc
                if _damaged(exc):
                    raise damaged(self.path, exc) from None
                continue
            self.read_only = read_only
            return db
        raise WorkspaceError(f"workspace registry {self.path} is not readable: {last}")

    def close(self) -> None:
        """Close the connection. A reader that brought SQLite's side files (-wal, -shm) into
        being removes them again when no other connection holds the database, so read-only
        use (verify, status) leaves the folder as it found it."""
        if self.closed:
            return
        self.closed = True
        self.db.close()
        if not self.read_only or self._found_side_files:
            return
        if os.access(self.root, os.W_OK) and os.access(self.path, os.W_OK):
            with suppress(sqlite3.Error):  # another connection holds it: its files stay
                last = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                try:  # closing the last read-write connection removes the side files
                    last.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    last.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    def transaction(self) -> Iterator[Self]:
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
    def reading(self) -> Iterator[Self]:
        """Run a block of reads on one consistent snapshot (one read transaction). Keep
        such blocks to a few small queries: a snapshot held open delays the erasure
        checkpoint, and every row fetched is a wait for the interpreter lock (see
        :meth:`rows_at_once` and :meth:`copy` for large reads)."""
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            with suppress(sqlite3.Error):
                self.db.execute("COMMIT")

    def rows_at_once(self, *queries: str, args: Sequence[Any] = ()) -> list[list[list[Any]]]:
        """The rows of some SELECTs of integer and text columns (in each one's order), all
        read from one snapshot in one SQLite step; ``args`` bind the queries' ``?`` in
        order of appearance.

        SQLite aggregates each query's rows to JSON in C, so the read transaction lasts as
        long as the queries themselves: fetching rows one by one would hold the snapshot
        open across a wait for the interpreter lock per row, which under load (a busy
        service) keeps the erasure checkpoint from ever finding a moment without an old
        reader. Never for REAL columns: JSON rounds them (use :meth:`copy`)."""
        parts = []
        for sql in queries:
            width = _WIDTHS.get(sql)
            if width is None:
                count = sql.count("?")
                probe = self.db.execute(f"SELECT * FROM ({sql}) LIMIT 0", [None] * count)
                width = _WIDTHS[sql] = len(probe.description)
            names = ",".join(f"c{i}" for i in range(width))
            parts.append(
                f"(WITH q({names}) AS ({sql}) SELECT json_group_array(json_array({names})) FROM q)"
            )
        row = self.db.execute(f"SELECT {', '.join(parts)}", args).fetchone()
        return [list(json.loads(text)) for text in row]

    def damage(self) -> list[str]:
        """What SQLite's page check finds wrong with this database (empty: nothing)."""
        try:
            rows = self.db.execute("PRAGMA quick_check(20)").fetchall()
        except RegistryDamagedError as exc:
            return exc.problems
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

    def copy(self) -> Self:
        """A read-only copy of the whole database in memory, taken in one step (one
        short read transaction in C), to answer large reads — verify, every sample, the
        audit log — without holding the workspace's snapshot while Python walks the rows.
        It holds no deleted content: secure_delete zeroes what deletions erased. Close it
        (``with registry.copy() as copy:``) when done."""
        data = bytearray(_checked(self.path, self.db.serialize))
        data[18] = data[19] = 1  # the copy is no write-ahead-log database: read it directly
        memory = sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False, factory=_Connection
        )
        memory.registry_path = self.path
        memory.deserialize(bytes(data))
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.db, twin.read_only, twin._found_side_files = memory, True, True
        return twin

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

    # ----- audit -------------------------------------------------------------------------------
    def each_in(self, sql: str, ids: Sequence[str], *leading: Any) -> list[Any]:
        """Run ``sql`` once per chunk of ``ids`` (SQLite bounds the parameters of one
        statement), with ``{ids}`` in it standing for the chunk's placeholders and
        ``leading`` bound before them; return the rows of every run, in order."""
        rows: list[Any] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(sql.replace("{ids}", marks), (*leading, *chunk)).fetchall()
        return rows

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
        return [AuditEvent(s, at, ev, parsed(d), d, h) for s, at, ev, d, h in rows]


@functools.lru_cache(maxsize=1 << 16)
def parsed(text: str) -> Any:
    """``json.loads(text)``, remembered: verify reads the same audit details and receipts
    again and again. The value is shared between callers: read it, never change it."""
    return json.loads(text)


def page_problems(path: Path) -> list[str]:
    """What SQLite's page check finds wrong with the database file at ``path``, read-only
    and without reading any table of it (so it works on a registry too damaged to open)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return [str(exc)]
    try:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    finally:
        db.close()
    return [] if problems == ["ok"] else problems


def _damaged(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text
    )


def damaged(
    path: Path, exc: BaseException | str, problems: list[str] | None = None
) -> RegistryDamagedError:
    """The error for a registry SQLite cannot read: which file, and what to do."""
    return RegistryDamagedError(
        f"the workspace registry {path} is damaged ({exc}): restore the workspace from a "
        f"backup (`S3T.backup`, or a copy made while it was closed); `s3t verify -w "
        f"{path.parent}` lists the damage",
        problems or [str(exc)],
    )


def _checked(path: Path, call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except sqlite3.DatabaseError as exc:
        if _damaged(exc):
            raise damaged(path, exc) from None
        raise


class _Cursor(sqlite3.Cursor):
    """A cursor whose SQLite errors for a damaged file become :class:`RegistryDamagedError`
    (naming the file), wherever the read fails: executing, stepping or fetching."""

    connection: _Connection

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return _checked(self.connection.registry_path, super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        return _checked(self.connection.registry_path, super().executemany, sql, parameters)

    def fetchone(self) -> Any:
        return _checked(self.connection.registry_path, super().fetchone)

    def fetchall(self) -> list[Any]:
        return _checked(self.connection.registry_path, super().fetchall)

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        return _checked(self.connection.registry_path, super().fetchmany, size)

    def __next__(self) -> Any:
        return _checked(self.connection.registry_path, super().__next__)


class _Connection(sqlite3.Connection):
    """A registry connection (see :class:`_Cursor`)."""

    registry_path = Path(DB_NAME)

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        return self.cursor(_Cursor).executemany(sql, parameters)


def _explain(exc: sqlite3.Error, root: Path) -> str:
    text = str(exc)
    if "full" in text:
        return f"the disk holding workspace {root} is full ({text}); nothing was changed — free space and retry"
    if "readonly" in text or "read-only" in text:
        return f"workspace {root} is read-only ({text}); nothing was changed"
    return f"workspace {root}: the registry refused the change ({text}); nothing was changed"


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[list[str]]:
    """Split ``items`` into lists of at most ``size`` (SQLite limits bound parameters)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
