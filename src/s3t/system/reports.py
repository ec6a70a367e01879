"""The typed results the facade returns, and how status and health are computed from one
read of the registry. Every result has ``to_dict()`` for JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from s3t.core.availability import RetrainSpeed, capacity
from s3t.core.selection import Served, serving_choice
from s3t.core.simulate import expected_requests_to_cover
from s3t.system.store.workspace import Workspace


class _Json:
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return cast(dict[str, Any], _plain(asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Rebuild from :meth:`to_dict` output (keys that are not fields are ignored)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class ShardStatus(_Json):
    """One shard: its sequences' depths and what it serves."""

    shard: int
    served_depth: int
    serving_sequence: int | None
    depths: list[int]
    sequences: list[list[int]]
    live_samples: int
    deleted_samples: int


@dataclass(frozen=True)
class Status(_Json):
    """The state of a whole system."""

    slices: int
    budget: int
    shards: list[ShardStatus]
    live_shards: int
    deletion_requests: int
    deleted_samples: int
    estimated_deletions_left: float
    sequences_below_full_depth: int
    degraded: bool
    failed: bool
    quarantined: list[str] = field(default_factory=list)
    erasures_pending: int = 0
    background: dict[str, Any] = field(default_factory=dict)
    subjects: int = 0
    deleted_subjects: int = 0
    #: measured retraining speed: stage_overhead_seconds, seconds_per_sample, stages_measured
    retrain_speed: dict[str, float] = field(default_factory=dict)
    #: deletions per second that retraining keeps up with: rebuilding the stages 1 that
    #: deletions destroy (the service then almost never fails), and everything (full depth)
    sustainable_deletion_rate: float | None = None
    full_depth_deletion_rate: float | None = None
    #: a scaled-out service's prediction replicas: epoch confirmed, lease left, last heard
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        """Rebuild a status from :meth:`to_dict` output."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["shards"] = [ShardStatus.from_dict(s) for s in data.get("shards", [])]
        return cls(**values)


@dataclass(frozen=True)
class Health(_Json):
    """A cheap liveness answer (never loads the model)."""

    ok: bool
    live_shards: int
    failed: bool
    quarantined: int
    erasures_pending: int
    read_only: bool


@dataclass(frozen=True)
class SampleInfo(_Json):
    """One training sample's place and fate."""

    id: str
    shard: int
    slice: int
    subject: str
    deleted_at: float | None


@dataclass(frozen=True)
class SequenceInfo(_Json):
    """One sequence: its slice order, valid depth and the artifacts of its stages."""

    shard: int
    seq: int
    perm: list[int]
    depth: int
    artifacts: list[str]


@dataclass(frozen=True)
class StageInfo(_Json):
    """One stage artifact: where it sits, what it was trained on and how it went."""

    artifact: str
    shard: int
    stage: int
    slices: list[int]
    samples: int
    trained_on: int
    bytes: int
    sequences: list[int]
    active: bool
    purged: bool
    quarantined: bool
    metrics: dict[str, Any]
    path: str


@dataclass(frozen=True)
class ExportInfo(_Json):
    """Where a served model was exported, and which one."""

    path: Path
    shard: int
    sequence: int
    depth: int
    artifacts: list[str]


@dataclass(frozen=True)
class Generation(_Json):
    """Generated responses, and for each the models that produced it."""

    outputs: list[str]
    served: list[list[Served]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Generation:
        """Rebuild a generation from :meth:`to_dict` output."""
        served = [
            [Served(s["shard"], s["seq"], s["depth"], tuple(s["artifacts"])) for s in one]
            for one in data.get("served", [])
        ]
        return cls(list(data["outputs"]), served)


def compute_status(workspace: Workspace, background: dict[str, Any]) -> Status:
    """Per-shard depths, live shards, deletions so far and the expected number of further
    deletions (uniform over live samples, no retraining) before service failure."""
    layout = workspace.config.layout
    view = workspace.registry().status_view()
    rows, untrained, unusable, counts = view.rows, view.untrained, view.unusable, view.slices
    chosen = serving_choice(rows, None, untrained, unusable)
    total_live = sum(live for live, _ in counts.values())
    shards = []
    cells: set[tuple[int, int]] = set()
    for k in range(layout.shards):
        mine = [r for r in rows if r.shard == k]
        cells |= {(k, r.perm[0]) for r in mine if r.depth >= 1}
        served = chosen.get(k)
        shards.append(
            ShardStatus(
                shard=k,
                served_depth=served.depth if served else 0,
                serving_sequence=served.seq if served else None,
                depths=[r.depth for r in mine],
                sequences=[list(r.perm) for r in mine],
                live_samples=sum(counts.get((k, s), (0, 0))[0] for s in range(layout.slices)),
                deleted_samples=sum(counts.get((k, s), (0, 0))[1] for s in range(layout.slices)),
            )
        )
    probs = [counts.get(c, (0, 0))[0] / total_live for c in sorted(cells)] if total_live else []
    live_shards = sum(1 for s in shards if s.served_depth > 0)
    speed = RetrainSpeed.measured(
        [n for n, _ in view.recent_stages],
        [float(m.get("seconds", 0.0)) for _, m in view.recent_stages],
        [m.get("wall_seconds") for _, m in view.recent_stages],
    )
    capacity_now = (
        capacity(
            [
                [live for live, _ in (counts.get((k, s), (0, 0)) for s in range(layout.slices))]
                for k in range(layout.shards)
            ],
            speed,
            sequences=[[tuple(p) for p in s.sequences] for s in shards],
        )
        if speed is not None
        else None
    )
    return Status(
        slices=layout.slices,
        budget=layout.budget,
        shards=shards,
        live_shards=live_shards,
        deletion_requests=view.deletion_requests,
        deleted_samples=sum(s.deleted_samples for s in shards),
        estimated_deletions_left=expected_requests_to_cover(probs) if cells else 0.0,
        sequences_below_full_depth=sum(r.depth < layout.slices for r in rows),
        degraded=any(s.served_depth < layout.slices for s in shards),
        failed=live_shards == 0,
        quarantined=view.quarantined,
        erasures_pending=len(view.erasures_pending),
        background=background,
        subjects=view.subjects,
        deleted_subjects=view.deleted_subjects,
        retrain_speed={}
        if speed is None
        else {
            "stage_overhead_seconds": speed.overhead,
            "seconds_per_sample": speed.seconds_per_sample,
            "stages_measured": len(view.recent_stages),
        },
        sustainable_deletion_rate=capacity_now.first_stages if capacity_now else None,
        full_depth_deletion_rate=capacity_now.full_depth if capacity_now else None,
    )


def compute_health(workspace: Workspace) -> Health:
    """Liveness from the registry alone."""
    view = workspace.registry().status_view()
    live = len(serving_choice(view.rows, None, view.untrained, view.unusable))
    return Health(
        True,
        live,
        live == 0,
        len(view.quarantined),
        len(view.erasures_pending),
        workspace.read_only,
    )


def stage_infos(workspace: Workspace) -> list[StageInfo]:
    """Every stage artifact with the sequences that hold it, by shard and slices."""
    with workspace.registry().copy() as copy:
        rows = copy.sequences()
        artifacts = copy.artifacts()
    users: dict[str, list[int]] = {}
    active: set[str] = set()
    for row in rows:
        for artifact in row.positions:
            users.setdefault(artifact, []).append(row.seq)
        active |= set(row.active())
    out = [
        StageInfo(
            artifact=a.id,
            shard=a.shard,
            stage=a.stage,
            slices=list(a.prefix),
            samples=a.n_samples,
            trained_on=a.n_train,
            bytes=a.bytes,
            sequences=sorted(users.get(a.id, [])),
            active=a.id in active,
            purged=a.purged is not None,
            quarantined=a.quarantined is not None,
            metrics=a.metrics,
            path=str(workspace.files.path(a.id)),
        )
        for a in artifacts
    ]
    return sorted(out, key=lambda s: (s.shard, s.slices, s.artifact))


def sample_infos(
    workspace: Workspace, shard: int | None, include_deleted: bool, subject: str | None
) -> list[SampleInfo]:
    """Sample ids with their shard, slice, subject and deletion time (of one shard, or of
    one data subject)."""
    with workspace.registry().copy() as copy:
        rows = copy.samples(shard, include_deleted, subject)
    return [SampleInfo(r.id, r.shard, r.slice, r.subject, r.deleted_at) for r in rows]


def sequence_infos(workspace: Workspace, shard: int | None) -> list[SequenceInfo]:
    """Every sequence (of one shard) with its valid depth and stage artifacts."""
    return [
        SequenceInfo(r.shard, r.seq, list(r.perm), r.depth, list(r.positions))
        for r in workspace.registry().sequences(shard)
    ]


def audit_events(workspace: Workspace, since: int) -> list[dict[str, Any]]:
    """The audit log after event ``since``, oldest first, as JSON-ready dicts."""
    return [
        {
            "seq": e.seq,
            "at": e.at,
            "event": e.event,
            "detail": json.loads(e.detail_text),  # the caller's own copy
            "hash": e.hash,
        }
        for e in _audit_log(workspace, since)
    ]


def _audit_log(workspace: Workspace, since: int) -> list[Any]:
    with workspace.registry().copy() as copy:
        return copy.audit_log(since)
