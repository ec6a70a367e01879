"""The workspace registry: one SQLite database (WAL mode, synchronous=FULL, secure_delete)
that records every sample, the layout and sequences, every stage artifact with its lineage,
the depth of every sequence, every deletion request and a hash-chained, append-only audit
log. This module alone reads and writes the schema; everything else asks it by name.

A state change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a crash leaves either
all of it or none of it, and a committed change survives power loss. Each thread uses its
own :class:`Registry` (SQLite connections are not shared across threads). A registry opened
read-only (a read-only folder or medium) answers every read and refuses every write.

The registry is built in layers, one concept per module, each extending the one below:
:mod:`~s3t.system.store.database` (connection, transactions, checkpoint, audit log) →
:mod:`~s3t.system.store.samples` → :mod:`~s3t.system.store.stages` →
:mod:`~s3t.system.store.deletions` → here (access tokens and verify's snapshot).
"""

from __future__ import annotations

import json
import time

from s3t.system.store.database import DB_NAME, damaged, parsed
from s3t.system.store.deletions import DeletionTables
from s3t.system.store.records import Snapshot, StatusView, TokenRow
from s3t.system.store.samples import POSITIONS_QUERY, SEQUENCES_QUERY, sequence_rows
from s3t.system.store.stages import UNSERVABLE_QUERY

__all__ = ["DB_NAME", "RECENT_STAGES", "Registry"]

#: stages whose run metrics status reads to estimate the retraining speed
RECENT_STAGES = 50


class Registry(DeletionTables):
    """A connection to a workspace's registry database."""

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

    # ----- snapshots ---------------------------------------------------------------------------
    def status_view(self) -> StatusView:
        """What status and health report, from one snapshot read in one step (see
        :meth:`rows_at_once`)."""
        rows, positions, bad, slices, totals, quarantined, pending, recent = self.rows_at_once(
            SEQUENCES_QUERY,
            POSITIONS_QUERY,
            UNSERVABLE_QUERY + ")",
            "SELECT shard, slice, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) "
            "FROM samples GROUP BY shard, slice",
            "SELECT (SELECT count(*) FROM deletions), sum(live > 0), sum(live = 0) FROM "
            "(SELECT sum(deleted_at IS NULL) AS live FROM samples GROUP BY subject)",
            "SELECT id FROM artifacts WHERE quarantined IS NOT NULL ORDER BY id",
            "SELECT request_id FROM erasures ORDER BY request_id",
            f"SELECT n_samples, metrics FROM artifacts ORDER BY created DESC LIMIT {RECENT_STAGES}",
        )
        requests, subjects, gone = totals[0]
        return StatusView(
            rows=sequence_rows(rows, positions),
            untrained={aid for aid, empty, _ in bad if empty},
            unusable={aid for aid, _, unusable in bad if unusable},
            slices={(k, s): (int(live), int(dead)) for k, s, live, dead in slices},
            deletion_requests=int(requests),
            subjects=int(subjects or 0),
            deleted_subjects=int(gone or 0),
            quarantined=[q for (q,) in quarantined],
            erasures_pending=[p for (p,) in pending],
            recent_stages=[(int(n), parsed(m)) for n, m in recent],
        )

    def snapshot(self) -> Snapshot:
        """Everything verify checks, from one consistent copy (see :meth:`copy`)."""
        with self.copy() as copy:
            problems = copy.damage()
            if problems:
                raise damaged(self.path, problems[0], problems)
            return copy._snapshot()

    def _snapshot(self) -> Snapshot:
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
                r: parsed(text)
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
