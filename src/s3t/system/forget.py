"""Deletion (Algorithm 4): forget samples at once, exactly and durably.

Every id is validated before anything changes. Then one transaction marks the samples
deleted, erases their stored content, truncates every sequence of their shards just before
the first slice that held one, purges every artifact trained on them, appends the request
to the hash-chained audit log and stores the receipt. When :func:`forget` returns the
deletion is on disk and fenced from serving: no model chosen after it uses a purged stage.
The erasure follows in the background (``Workspace.erase_pending``, run by the facade's
janitor within milliseconds): the purged artifacts' files are removed, and the database's
old pages are overwritten and its write-ahead log emptied, so that no byte of a forgotten
sample is left in any file. The receipt says ``erasure: pending`` until then, and an
audit event records when it completed."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Literal

from s3t.core.partition import sample_id
from s3t.core.schedule import truncated_depth
from s3t.core.selection import served_depths
from s3t.errors import InvalidRequestError, UnknownSampleError, UnknownSubjectError
from s3t.system.store.records import DeletionPlan, Truncation
from s3t.system.store.workspace import Workspace

log = logging.getLogger(__name__)

Erasure = Literal["complete", "pending"]


@dataclass(frozen=True)
class Receipt:
    """What a deletion request did; stored in the registry under ``request_id``.

    ``chain_seq`` and ``chain_head`` are the request's position in the audit log and the
    log's hash there: keep the receipt, and ``s3t verify --receipt`` proves later that
    the deletion is still in force and that the log up to it was not rewritten.
    ``erasure`` says whether every byte of the deleted samples is gone from the files yet.
    """

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
    chain_seq: int = 0
    chain_head: str = ""
    erasure: Erasure = "complete"
    subjects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Receipt:
        """Rebuild a receipt from :meth:`to_dict` output (e.g. a file a user kept; keys
        that are not receipt fields, such as the CLI's timing, are ignored)."""
        missing = [k for k in ("request_id", "deleted", "chain_seq", "chain_head") if k not in data]
        if missing:
            raise InvalidRequestError(f"not an s3t deletion receipt: it lacks {missing}")
        try:
            known = {f.name for f in dataclass_fields(cls)}
            fields = {k: v for k, v in data.items() if k in known}
            fields["truncated"] = [Truncation(**t) for t in fields.get("truncated", [])]
            for key in ("served_depth_before", "served_depth_after"):
                fields[key] = {int(k): int(v) for k, v in fields.get(key, {}).items()}
            return cls(**fields)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequestError(f"not an s3t deletion receipt: {exc}") from None


def forget(
    workspace: Workspace, ids: Iterable[object] = (), subjects: Iterable[object] = ()
) -> Receipt:
    """Delete samples, and every sample of some data subjects; see the module docstring.
    Raises :class:`UnknownSampleError` or :class:`UnknownSubjectError` (and changes
    nothing) if any id or subject was never in the workspace. Returns once the deletion
    is committed; the erasure of its bytes is then pending (``Workspace.erase_pending``
    finishes it)."""
    named = sorted({sample_id(i) for i in _as_list(ids, allow_empty=True)})
    people = sorted({sample_id(s) for s in _as_list(subjects, allow_empty=True, what="subject")})
    if not named and not people:
        raise InvalidRequestError("forget needs at least one sample id or subject, got none")
    registry = workspace.registry()
    slices = workspace.config.layout.slices
    with registry.transaction():
        owned = registry.subject_samples(people)
        missing = [s for s in people if s not in owned]
        if missing:
            raise UnknownSubjectError(missing)
        wanted = sorted(set(named) | {sid for ids_ in owned.values() for sid in ids_})
        known = registry.sample_rows(wanted)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise UnknownSampleError(unknown)
        fresh = [i for i in wanted if known[i].deleted_at is None]
        already = [i for i in wanted if known[i].deleted_at is not None]
        hit: dict[int, set[int]] = {}
        for sid in fresh:
            hit.setdefault(known[sid].shard, set()).add(known[sid].slice)
        rows, untrained, unusable = registry.serving_view()
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
        plan = DeletionPlan(
            request_id=uuid.uuid4().hex,
            at=time.time(),
            requested=wanted,
            deleted=[(sid, known[sid].shard, known[sid].slice) for sid in fresh],
            already_deleted=already,
            truncations=truncations,
            subjects=people,
        )
        record = registry.record_deletion(plan)
        after = served_depths(
            rows,
            untrained,
            unusable | set(record.purged),
            {(t.shard, t.seq): t.depth_after for t in truncations},
        )
        receipt = Receipt(
            request_id=plan.request_id,
            at=plan.at,
            deleted=fresh,
            already_deleted=already,
            served_depth_before=served_depths(rows, untrained, unusable),
            served_depth_after=after,
            truncated=truncations,
            purged_artifacts=record.purged,
            degraded=any(d < slices for d in after.values()),
            failed=all(d == 0 for d in after.values()),
            chain_seq=record.chain_seq,
            chain_head=record.chain_head,
            erasure="pending" if fresh else "complete",
            subjects=people,
        )
        stored = receipt.to_dict()
        stored.pop("erasure")  # the erasure's state is read live (see stored_receipt)
        registry.save_receipt(plan, stored, record.chain_seq)
    return receipt


def stored_receipt(workspace: Workspace, request_id: str) -> Receipt | None:
    """The receipt of an earlier deletion request with its erasure state as of now."""
    registry = workspace.registry()
    data = registry.receipt(request_id)
    if data is None:
        return None
    pending = request_id in registry.pending_erasures()
    return Receipt.from_dict({**data, "erasure": "pending" if pending else "complete"})


def _as_list(
    ids: Iterable[object], allow_empty: bool = False, what: str = "sample id"
) -> list[object]:
    if isinstance(ids, (str, bytes)):
        raise InvalidRequestError(f"forget takes a list of {what}s, got a single string {ids!r}")
    try:
        items = list(ids)
    except TypeError:
        raise InvalidRequestError(
            f"forget takes a list of {what}s, got {type(ids).__name__}"
        ) from None
    if not items and not allow_empty:
        raise InvalidRequestError(f"forget needs at least one {what}, got an empty list")
    return items
