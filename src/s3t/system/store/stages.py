"""The registry's stage artifacts: their records and lineage, which are unservable, the
atomic swap of a newly trained stage into its sequence, and quarantine of a corrupted one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from s3t.core.schedule import samples_digest
from s3t.errors import WorkspaceError
from s3t.system.store.records import ArtifactRow, SequenceRow, StageRecord, Truncation
from s3t.system.store.samples import (
    POSITIONS_QUERY,
    SEQUENCES_QUERY,
    SampleTables,
    sequence_rows,
    where_shard,
)


class StageTables(SampleTables):
    """Stage artifacts (see the module docstring)."""

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
        return {r[0] for r in self.rows_at_once("SELECT id FROM artifacts")[0]}

    def serving_view(
        self, shard: int | None = None
    ) -> tuple[list[SequenceRow], set[str], set[str]]:
        """Every sequence (of one shard) and, among the artifacts they hold, those trained
        on no sample (never the top of a served model) and those purged or quarantined
        (never used): what serving, status and deletions read, from one snapshot in one
        step."""
        where, args = where_shard(shard)
        rows, positions, bad = self.rows_at_once(
            SEQUENCES_QUERY + where,
            POSITIONS_QUERY + where,
            UNSERVABLE_QUERY + where + ")",
            args=args * 3,
        )
        untrained = {aid for aid, empty, _ in bad if empty}
        unusable = {aid for aid, _, gone in bad if gone}
        return sequence_rows(rows, positions), untrained, unusable

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
        rows = self.each_in(
            "SELECT id FROM artifacts WHERE id IN ({ids}) "
            "AND (purged IS NOT NULL OR quarantined IS NOT NULL)",
            sorted(set(ids)),
        )
        return {r[0] for r in rows}

    def purged_ids(self) -> list[str]:
        """Every purged artifact (trained on a deleted sample: its file must be gone)."""
        return [
            r[0] for r in self.rows_at_once("SELECT id FROM artifacts WHERE purged IS NOT NULL")[0]
        ]

    def purged_by(self, request_ids: Sequence[str]) -> list[str]:
        """The artifacts these deletion requests purged."""
        rows = self.each_in("SELECT id FROM artifacts WHERE purged_by IN ({ids})", request_ids)
        return sorted(r[0] for r in rows)

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


UNSERVABLE_QUERY = (
    "SELECT id, n_train = 0, purged IS NOT NULL OR quarantined IS NOT NULL FROM artifacts "
    "WHERE (n_train = 0 OR purged IS NOT NULL OR quarantined IS NOT NULL) "
    "AND id IN (SELECT artifact FROM positions"
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
