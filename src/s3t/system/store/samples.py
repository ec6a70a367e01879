"""The registry's samples and sequences: creation-time inserts, the sample records (shard,
slice, subject, deletion), their stored content, and each sequence's permutation, depth and
stage chain."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from s3t.system.store.database import Database
from s3t.system.store.records import SampleRow, SequenceRow


class SampleTables(Database):
    """Samples and sequences (see the module docstring)."""

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
        rows = self.each_in(
            "SELECT id, shard, slice, subject, deleted_at, request_id FROM samples "
            "WHERE id IN ({ids})",
            ids,
        )
        return {row[0]: SampleRow(*row) for row in rows}

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
        for sid, subject in self.each_in(
            "SELECT id, subject FROM samples WHERE subject IN ({ids}) ORDER BY id",
            sorted(set(subjects)),
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
        wanted = sorted(set(slices))
        marks = ",".join("?" * len(wanted))
        (rows,) = self.rows_at_once(
            f"SELECT id FROM samples WHERE shard=? AND slice IN ({marks}) AND deleted_at IS NULL",
            args=[shard, *wanted],
        )
        return sorted(r[0] for r in rows)

    def live_homes(self, shard: int | None = None) -> dict[str, tuple[int, int]]:
        """(shard, slice) of every live sample (of one shard)."""
        where, args = (" AND shard=?", [shard]) if shard is not None else ("", [])
        (rows,) = self.rows_at_once(
            "SELECT id, shard, slice FROM samples WHERE deleted_at IS NULL" + where, args=args
        )
        return {sid: (k, s) for sid, k, s in rows}

    def has_live(self, shard: int) -> bool:
        """Whether any sample of this shard is not deleted."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM samples WHERE shard=? AND deleted_at IS NULL)", (shard,)
        ).fetchone()
        return bool(row[0])

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
        where, args = where_shard(shard)
        rows, positions = self.rows_at_once(
            SEQUENCES_QUERY + where, POSITIONS_QUERY + where, args=args * 2
        )
        return sequence_rows(rows, positions)


SEQUENCES_QUERY = "SELECT shard, seq, perm, depth FROM sequences"
POSITIONS_QUERY = "SELECT shard, seq, stage, artifact FROM positions"


def where_shard(shard: int | None) -> tuple[str, list[int]]:
    return (" WHERE shard=?", [shard]) if shard is not None else ("", [])


def sequence_rows(rows: list[list[Any]], positions: list[list[Any]]) -> list[SequenceRow]:
    """Sequence records from (shard, seq, perm, depth) and (shard, seq, stage, artifact)
    rows, by shard and sequence; a stage chain ends at its first missing stage."""
    stages: dict[tuple[int, int], dict[int, str]] = {}
    for k, b, stage, artifact in positions:
        stages.setdefault((k, b), {})[stage] = artifact
    out = []
    for k, b, perm_text, depth in sorted(rows, key=lambda r: (r[0], r[1])):
        perm = tuple(json.loads(perm_text))
        mine = stages.get((k, b), {})
        chain = []
        for stage in range(1, len(perm) + 1):
            if stage not in mine:
                break
            chain.append(mine[stage])
        out.append(SequenceRow(k, b, perm, depth, tuple(chain)))
    return out


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
