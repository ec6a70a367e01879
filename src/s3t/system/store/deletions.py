"""The registry's deletions: the one transaction that forgets samples (marks them, erases
their content, truncates sequences, purges stages, logs the request), receipts, and the
erasures still pending."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from s3t.system.store.records import DeletionPlan, DeletionRecord
from s3t.system.store.stages import StageTables


class DeletionTables(StageTables):
    """Deletion requests (see the module docstring)."""

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
        purged = {
            r[0]
            for r in self.each_in(
                "SELECT DISTINCT l.artifact FROM lineage l JOIN artifacts a ON a.id = l.artifact "
                "WHERE l.sample IN ({ids}) AND a.purged IS NULL",
                fresh,
            )
        }
        stamp = (plan.at, plan.request_id)
        self.each_in(
            "UPDATE artifacts SET purged=?, purged_by=? WHERE id IN ({ids})", sorted(purged), *stamp
        )
        self.each_in(
            "UPDATE samples SET deleted_at=?, request_id=? WHERE id IN ({ids})", fresh, *stamp
        )
        self.each_in("DELETE FROM sample_data WHERE id IN ({ids})", fresh)
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
        counts = self.each_in(
            "SELECT COUNT(*) FROM samples WHERE deleted_at IS NULL AND id IN ({ids})", wanted
        )
        return sum(int(c) for (c,) in counts) != len(wanted)

    def deleted_groups(self, request_ids: Sequence[str]) -> set[tuple[int, int]]:
        """The (shard, slice) cells of the samples these deletion requests removed."""
        rows = self.each_in(
            "SELECT DISTINCT shard, slice FROM samples WHERE request_id IN ({ids})",
            list(request_ids),
        )
        return {(k, s) for k, s in rows}

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
                self.each_in("DELETE FROM erasures WHERE request_id IN ({ids})", done)
                self.audit("erasure-completed", {"requests": done})
        return done
