"""Deletion (Algorithm 4): forget samples at once, exactly and durably.

Every id is validated before anything changes. Then one transaction marks the samples
deleted, erases their stored content, truncates every sequence of their shards just
before the first slice that held one, marks every artifact trained on them as purged and
writes the receipt and audit entry. When :func:`forget` returns the deletion is on disk.
The purged artifacts' files are removed right after the commit (and by ``S3T.open`` if the
process died in between); they are never served again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from s3t.core.partition import sample_id
from s3t.core.schedule import truncated_depth
from s3t.errors import InvalidRequestError, UnknownSampleError
from s3t.system.registry import Registry, chunks, served_depths
from s3t.system.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Truncation:
    """One sequence cut short by a deletion."""

    shard: int
    seq: int
    depth_before: int
    depth_after: int
    deactivated: list[str]  # artifact ids of stages depth_after+1..depth_before


@dataclass(frozen=True)
class Receipt:
    """What a deletion request did; also stored in the registry under ``request_id``."""

    request_id: str
    at: float
    deleted: list[str]
    already_deleted: list[str]
    served_depth_before: dict[int, int]
    served_depth_after: dict[int, int]
    truncated: list[Truncation] = field(default_factory=list)
    purged_artifacts: list[str] = field(default_factory=list)
    degraded: bool = False
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def forget(workspace: Workspace, ids: Iterable[object]) -> Receipt:
    """Delete samples; see the module docstring. Raises :class:`UnknownSampleError` (and
    changes nothing) if any id was never in the workspace."""
    wanted = sorted({sample_id(i) for i in _as_list(ids)})
    registry = workspace.registry()
    slices = workspace.config.layout.slices
    with registry.transaction() as db:
        known = registry.sample_rows(wanted)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise UnknownSampleError(unknown)
        fresh = [i for i in wanted if known[i][2] is None]
        already = [i for i in wanted if known[i][2] is not None]
        request_id = uuid.uuid4().hex
        now = time.time()
        hit: dict[int, set[int]] = {}
        for sid in fresh:
            shard, slice_, _ = known[sid]
            hit.setdefault(shard, set()).add(slice_)
        rows = registry.sequences()
        before = served_depths(rows)
        truncations: list[Truncation] = []
        for row in rows:
            if row.shard not in hit:
                continue
            depth = truncated_depth(row.perm, row.depth, hit[row.shard])
            if depth != row.depth:
                truncations.append(
                    Truncation(
                        row.shard, row.seq, row.depth, depth, list(row.positions[depth : row.depth])
                    )
                )
                db.execute(
                    "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
                    (depth, row.shard, row.seq),
                )
        after = served_depths(rows, {(t.shard, t.seq): t.depth_after for t in truncations})
        purged = _purge_marks(db, fresh, now)
        for chunk in chunks(fresh):
            marks = ",".join("?" * len(chunk))
            db.execute(
                f"UPDATE samples SET deleted_at=?, request_id=? WHERE id IN ({marks})",
                (now, request_id, *chunk),
            )
            db.execute(f"DELETE FROM sample_data WHERE id IN ({marks})", chunk)
        receipt = Receipt(
            request_id=request_id,
            at=now,
            deleted=fresh,
            already_deleted=already,
            served_depth_before=before,
            served_depth_after=after,
            truncated=truncations,
            purged_artifacts=purged,
            degraded=any(d < slices for d in after.values()),
            failed=all(d == 0 for d in after.values()),
        )
        db.execute(
            "INSERT INTO deletions VALUES (?, ?, ?, ?)",
            (request_id, now, json.dumps(wanted), json.dumps(receipt.to_dict())),
        )
        registry.audit(
            "forget",
            {
                "request_id": request_id,
                "deleted": [[sid, *known[sid][:2]] for sid in fresh],
                "already_deleted": already,
                "truncated": [[t.shard, t.seq, t.depth_before, t.depth_after] for t in truncations],
            },
        )
    registry.checkpoint()
    for artifact in purged:  # erase what the deleted samples trained; open() sweeps leftovers
        try:
            workspace.artifact_path(artifact).unlink(missing_ok=True)
        except OSError:  # the deletion is committed; S3T.open removes the file later
            log.warning("could not remove purged artifact %s now", artifact)
    return receipt


def remove_stale_files(workspace: Workspace, registry: Registry | None = None) -> int:
    """Delete the files of purged artifacts still on disk and orphaned stage files (see
    :meth:`Workspace.orphan_files`); return how many were removed."""
    registry = registry or workspace.registry()
    stale = [
        workspace.artifact_path(artifact)
        for (artifact,) in registry.db.execute("SELECT id FROM artifacts WHERE purged IS NOT NULL")
    ]
    removed = 0
    for path in [*stale, *workspace.orphan_files()]:
        try:
            path.unlink()  # another process may remove it first
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _purge_marks(db: Any, deleted: list[str], now: float) -> list[str]:
    ids: set[str] = set()
    for chunk in chunks(deleted):
        marks = ",".join("?" * len(chunk))
        ids |= {
            r[0]
            for r in db.execute(f"SELECT artifact FROM lineage WHERE sample IN ({marks})", chunk)
        }
    for chunk in chunks(sorted(ids)):
        marks = ",".join("?" * len(chunk))
        db.execute(
            f"UPDATE artifacts SET purged=? WHERE id IN ({marks}) AND purged IS NULL", (now, *chunk)
        )
    return sorted(ids)


def _as_list(ids: Iterable[object]) -> list[object]:
    if isinstance(ids, (str, bytes)):
        raise InvalidRequestError(f"forget takes a list of sample ids, got a single string {ids!r}")
    items = list(ids)
    if not items:
        raise InvalidRequestError("forget needs at least one sample id, got an empty list")
    return items
