"""The registry's schema, and the migrations that bring older workspaces up to it.

Version 2 (this one) keeps no fingerprint of any sample's content (version 1 kept an
unsalted sha256 of every sample, a membership oracle once the sample was forgotten),
chains the audit log by hash, records pending erasures, quarantined stages, data subjects
and the service's access tokens (hashed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable

from s3t.system.store.records import GENESIS

SCHEMA_VERSION = 2

_TRIGGERS = """
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    id TEXT PRIMARY KEY, shard INTEGER NOT NULL, slice INTEGER NOT NULL, subject TEXT NOT NULL,
    deleted_at REAL, request_id TEXT
) WITHOUT ROWID;
CREATE INDEX samples_by_slice ON samples (shard, slice);
CREATE INDEX samples_by_subject ON samples (subject);
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
    samples_sha256 TEXT NOT NULL, n_samples INTEGER NOT NULL, n_train INTEGER NOT NULL,
    config_hash TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL,
    metrics TEXT NOT NULL, purged REAL, purged_by TEXT, quarantined REAL, quarantine_reason TEXT
);
CREATE INDEX artifacts_by_prefix ON artifacts (shard, prefix, samples_sha256, config_hash);
CREATE TABLE lineage (
    artifact TEXT NOT NULL, sample TEXT NOT NULL, PRIMARY KEY (artifact, sample)
) WITHOUT ROWID;
CREATE INDEX lineage_by_sample ON lineage (sample, artifact);
CREATE TABLE deletions (
    request_id TEXT PRIMARY KEY, created REAL NOT NULL, sample_ids TEXT NOT NULL,
    receipt TEXT NOT NULL, chain_seq INTEGER NOT NULL
);
CREATE TABLE erasures (request_id TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
    created REAL NOT NULL, revoked REAL
) WITHOUT ROWID;
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event TEXT NOT NULL,
    detail TEXT NOT NULL, hash TEXT NOT NULL
);
"""
    + _TRIGGERS
)


def statements(script: str) -> list[str]:
    """Split a script into complete SQL statements (a trigger's body stays whole)."""
    parts, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            parts.append(current.strip())
            current = ""
    return parts


@functools.lru_cache(maxsize=1 << 16)
def chain_hash(prev: str, seq: int, at: float, event: str, detail_text: str) -> str:
    """The hash of one audit event, committing to the previous event's hash (a pure
    function of its arguments, remembered for the events verify checks again and again)."""
    body = json.dumps([prev, seq, repr(float(at)), event, detail_text], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def _v1_to_v2(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE samples2 (id TEXT PRIMARY KEY, shard INTEGER NOT NULL, slice INTEGER "
        "NOT NULL, subject TEXT NOT NULL, deleted_at REAL, request_id TEXT) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO samples2 SELECT id, shard, slice, id, deleted_at, request_id FROM samples"
    )
    db.execute("DROP TABLE samples")  # with it, every content fingerprint (secure_delete)
    db.execute("ALTER TABLE samples2 RENAME TO samples")
    db.execute("CREATE INDEX samples_by_slice ON samples (shard, slice)")
    db.execute("CREATE INDEX samples_by_subject ON samples (subject)")
    db.execute("ALTER TABLE artifacts DROP COLUMN path")
    db.execute("ALTER TABLE artifacts ADD COLUMN n_train INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE artifacts SET n_train = n_samples")
    for column in ("purged_by TEXT", "quarantined REAL", "quarantine_reason TEXT"):
        db.execute(f"ALTER TABLE artifacts ADD COLUMN {column}")
    db.execute("ALTER TABLE deletions ADD COLUMN chain_seq INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE TABLE erasures (request_id TEXT PRIMARY KEY, since REAL NOT NULL)")
    db.execute(
        "CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, "
        "secret_sha256 TEXT NOT NULL, created REAL NOT NULL, revoked REAL) WITHOUT ROWID"
    )
    db.execute("DROP TRIGGER audit_append_only_update")
    db.execute("DROP TRIGGER audit_append_only_delete")
    db.execute("ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
    prev = GENESIS
    rows = db.execute("SELECT seq, at, event, detail FROM audit ORDER BY seq").fetchall()
    for seq, at, event, detail in rows:
        prev = chain_hash(prev, seq, at, event, detail)
        db.execute("UPDATE audit SET hash=? WHERE seq=?", (prev, seq))
        if event == "forget":
            request = json.loads(detail).get("request_id")
            db.execute("UPDATE deletions SET chain_seq=? WHERE request_id=?", (seq, request))
    for statement in statements(_TRIGGERS):
        db.execute(statement)


#: from-version -> the step to the next version (run inside one transaction)
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2}
