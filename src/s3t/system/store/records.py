"""What the registry hands out and takes in: plain, frozen records with no SQL in them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64  # the hash the first audit event chains from


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


@dataclass(frozen=True)
class ArtifactRow:
    """One stage artifact's record. ``n_train`` counts the samples it was trained on (its
    lineage minus the validation hold-out); 0 means it must never be served."""

    id: str
    shard: int
    prefix: tuple[int, ...]
    stage: int
    samples_sha256: str
    n_samples: int
    n_train: int
    config_hash: str
    bytes: int
    created: float
    metrics: dict[str, Any]
    purged: float | None
    purged_by: str | None
    quarantined: float | None
    quarantine_reason: str | None


@dataclass(frozen=True)
class StatusView:
    """What status and health read of the registry: the sequences, which of their stages
    must not top (``untrained``) or be in (``unusable``) a served model, (shard, slice) ->
    (live, deleted) sample counts, counts of requests, subjects, quarantined stages and
    pending erasures, and the run metrics of the latest stages."""

    rows: list[SequenceRow]
    untrained: set[str]
    unusable: set[str]
    slices: dict[tuple[int, int], tuple[int, int]]
    deletion_requests: int
    subjects: int
    deleted_subjects: int
    quarantined: list[str]
    erasures_pending: list[str]
    recent_stages: list[tuple[int, dict[str, Any]]]  # (samples, run metrics), newest first


@dataclass(frozen=True)
class SampleRow:
    """Where a sample lives, whose it is, and whether (and by which request) it was deleted."""

    id: str
    shard: int
    slice: int
    subject: str
    deleted_at: float | None
    request_id: str | None


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the hash-chained audit log: ``hash`` commits to the previous event's
    hash and to this event's number, time, kind and detail (exactly as stored)."""

    seq: int
    at: float
    event: str
    detail: dict[str, Any]
    detail_text: str
    hash: str


@dataclass(frozen=True)
class Truncation:
    """One sequence cut short by a deletion (or by a quarantined stage)."""

    shard: int
    seq: int
    depth_before: int
    depth_after: int
    deactivated: list[str]  # artifact ids of stages depth_after+1..depth_before


@dataclass(frozen=True)
class DeletionPlan:
    """Everything one deletion request changes, computed before it is written."""

    request_id: str
    at: float
    requested: list[str]
    deleted: list[tuple[str, int, int]]  # (id, shard, slice) of samples deleted now
    already_deleted: list[str]
    truncations: list[Truncation]
    subjects: list[str] = field(default_factory=list)  # data subjects named by the request


@dataclass(frozen=True)
class DeletionRecord:
    """What the registry wrote for a deletion: the artifacts it purged and the audit-chain
    position and hash of its event."""

    purged: list[str]
    chain_seq: int
    chain_head: str


@dataclass(frozen=True)
class StageRecord:
    """A trained stage to register: its artifact, what it was trained on and how it went."""

    artifact: str
    shard: int
    prefix: tuple[int, ...]
    samples: list[str]
    n_train: int
    config_hash: str
    bytes: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of everything verify checks (a single read transaction)."""

    sequences: list[SequenceRow]
    artifacts: dict[str, ArtifactRow]
    samples: dict[str, SampleRow]
    stored_content: set[str]  # ids with a row in sample_data
    lineage: dict[str, list[str]]  # artifact -> sorted sample ids, for every unpurged artifact
    deleted_lineage: list[tuple[str, str]]  # (artifact, sample) pairs naming a deleted sample
    events: list[AuditEvent]
    deletions: dict[str, dict[str, Any]]  # request id -> stored receipt
    pending_erasures: dict[str, float]  # request id -> since


@dataclass(frozen=True)
class TokenRow:
    """An access token of the HTTP service (its secret is stored only as a sha256)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    secret_sha256: str
    created: float
    revoked: float | None
