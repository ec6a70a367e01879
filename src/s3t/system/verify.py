"""Independent verification of exactness, recomputed from one consistent snapshot of the
registry and from the files; it never changes the workspace.

The hash-chained audit log is the root of trust:

1. Chain: every event's hash recomputes from its content and the previous event's hash,
   and events are numbered without gaps (a deleted, inserted or edited event breaks it).
2. Forgotten: every sample a logged deletion forgot is still marked deleted, has no
   stored content, is in the lineage of no usable artifact, and its request has a stored
   receipt that agrees with the log.
3. Lineage: no active stage (inside a sequence's valid prefix) is purged, quarantined or
   trained on a deleted sample; its lineage hashes to its record and to the manifest inside
   its file, holds only samples of its shard and prefix slices, and all of the live ones;
   it was trained on exactly the parent chain it is served with.
4. Files: active artifact files exist and match their sha256; purged artifacts' files are
   gone (or their erasure is still pending); leftovers of crashes are reported.
5. Replay: replaying the log from scratch (stage swaps, deletions with Algorithm 4
   recomputed from the deleted samples' slices, quarantines) gives every sequence's
   current depth and stage artifacts.

Findings that a running erasure or sweep will clear are reported as ``pending``, not as
violations. :func:`verify_receipt` checks one deletion against a receipt its requester
kept: the log up to it recomputes to the receipt's chain head, and the deletion is still
in force.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from s3t.core.schedule import samples_digest, truncated_depth
from s3t.engine.artifacts import read_manifest
from s3t.errors import ArtifactError, RegistryDamagedError, WorkspaceError
from s3t.system.forget import Receipt
from s3t.system.store.database import page_problems
from s3t.system.store.records import GENESIS, AuditEvent, Snapshot
from s3t.system.store.schema import chain_hash
from s3t.system.store.workspace import Workspace


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    check: str
    detail: str


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: counts of what was checked, every violation, and
    clean-up still under way (not a violation)."""

    checked: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    chain_head: str = GENESIS
    chain_seq: int = 0

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations

    def flag(self, check: str, detail: str) -> None:
        """Record a violation."""
        self.violations.append(Violation(check, detail))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        """Rebuild a report from :meth:`to_dict` output."""
        return cls(
            checked=dict(data.get("checked", {})),
            violations=[Violation(v["check"], v["detail"]) for v in data.get("violations", [])],
            pending=list(data.get("pending", [])),
            chain_head=data.get("chain_head", GENESIS),
            chain_seq=int(data.get("chain_seq", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "violations": [asdict(v) for v in self.violations],
            "pending": self.pending,
            "chain_seq": self.chain_seq,
            "chain_head": self.chain_head,
        }


def verify(workspace: Workspace) -> VerifyReport:
    """Check every invariant; see the module docstring."""
    report = VerifyReport()
    snap = _snapshot(workspace, report)
    if snap is None:
        return report
    _check_chain(snap.events, report)
    forgotten = forgotten_samples(snap.events)
    _check_forgotten(snap, forgotten, report)
    manifests = _check_active(workspace, snap, report)
    _check_parents(snap, manifests, report)
    _check_files(workspace, snap, report)
    _check_replay(snap, report)
    report.checked["sequences"] = len(snap.sequences)
    report.checked["deleted_samples"] = len(forgotten)
    return report


def verify_receipt(workspace: Workspace, receipt: Receipt) -> VerifyReport:
    """Prove that one deletion is still in force and that the log up to it was not
    rewritten since its receipt was issued."""
    report = VerifyReport()
    snap = _snapshot(workspace, report)
    if snap is None:
        return report
    events = {e.seq: e for e in snap.events}
    event = events.get(receipt.chain_seq)
    if event is None:
        report.flag(
            "receipt",
            f"the audit log has no event #{receipt.chain_seq}: history was rewritten or truncated",
        )
        return report
    head = GENESIS
    for e in snap.events:
        if e.seq > receipt.chain_seq:
            break
        head = chain_hash(head, e.seq, e.at, e.event, e.detail_text)
    report.chain_seq, report.chain_head = receipt.chain_seq, head
    if head != receipt.chain_head:
        report.flag(
            "receipt",
            f"the audit log up to event #{receipt.chain_seq} recomputes to {head[:16]}…, not the "
            f"receipt's {receipt.chain_head[:16]}…: history before this deletion was rewritten",
        )
    if event.event != "forget" or event.detail.get("request_id") != receipt.request_id:
        report.flag(
            "receipt",
            f"event #{receipt.chain_seq} is not the deletion {receipt.request_id} "
            f"(it is {event.event!r})",
        )
    elif sorted(d[0] for d in event.detail.get("deleted", [])) != sorted(receipt.deleted):
        report.flag("receipt", "the logged deletion names other samples than the receipt")
    forgotten = {
        sid: home for sid, home in forgotten_samples(snap.events).items() if sid in receipt.deleted
    }
    missing = sorted(set(receipt.deleted) - set(forgotten))
    for sid in missing:
        report.flag("receipt", f"sample {sid!r} of the receipt is not forgotten in the log")
    _check_forgotten(snap, forgotten, report, requests={receipt.request_id})
    _check_purged_files(workspace, snap, set(receipt.purged_artifacts), report)
    report.checked["receipt_samples"] = len(receipt.deleted)
    return report


def forgotten_samples(events: list[AuditEvent]) -> dict[str, tuple[int, int, str]]:
    """Every sample a logged deletion forgot: id -> (shard, slice, request id)."""
    out: dict[str, tuple[int, int, str]] = {}
    for e in events:
        if e.event == "forget":
            for sid, shard, slice_ in e.detail.get("deleted", []):
                out[sid] = (shard, slice_, e.detail.get("request_id", ""))
    return out


def forgotten_subjects(events: list[AuditEvent]) -> dict[str, str]:
    """Every data subject a logged deletion forgot: subject -> request id."""
    out: dict[str, str] = {}
    for e in events:
        if e.event == "forget":
            for subject in e.detail.get("subjects", []):
                out[subject] = e.detail.get("request_id", "")
    return out


def damaged_registry_report(error: RegistryDamagedError, path: Path) -> VerifyReport:
    """The report for a registry too damaged to open: the damage SQLite's page check finds,
    and that nothing else could be checked."""
    report = VerifyReport()
    _flag_damage(report, path, page_problems(path) or error.problems)
    return report


def _flag_damage(report: VerifyReport, path: Path, problems: list[str]) -> None:
    report.flag(
        "registry",
        f"{path} is damaged: restore the workspace from a backup (nothing else can be "
        "checked until then)",
    )
    for problem in problems:
        report.flag("registry", f"SQLite: {problem}")


def _snapshot(workspace: Workspace, report: VerifyReport) -> Snapshot | None:
    """The registry's snapshot, or ``None`` with the damage flagged when SQLite cannot
    read every page of it (nothing else can be checked then)."""
    try:
        return workspace.registry().snapshot()
    except RegistryDamagedError as exc:
        _flag_damage(report, workspace.registry().path, exc.problems)
        return None


# ----- the checks ----------------------------------------------------------------------------
def _check_chain(events: list[AuditEvent], report: VerifyReport) -> None:
    prev, expected = GENESIS, 1
    broken = 0
    for e in events:
        if e.seq != expected:
            report.flag("chain", f"audit events #{expected}..#{e.seq - 1} are missing")
            broken += 1
        if chain_hash(prev, e.seq, e.at, e.event, e.detail_text) != e.hash:
            report.flag("chain", f"audit event #{e.seq} ({e.event}) does not match its hash")
            broken += 1
        prev, expected = e.hash, e.seq + 1
        if broken >= 5:
            report.flag("chain", "further chain checks skipped")
            break
    report.chain_seq, report.chain_head = (expected - 1, prev)
    report.checked["audit_events"] = len(events)


def _check_forgotten(
    snap: Snapshot,
    forgotten: dict[str, tuple[int, int, str]],
    report: VerifyReport,
    requests: set[str] | None = None,
) -> None:
    usable = {a for a, r in snap.artifacts.items() if r.purged is None}
    trained_on: dict[str, list[str]] = defaultdict(list)
    for artifact, samples in snap.lineage.items():
        for sid in samples:
            if sid in forgotten:
                trained_on[sid].append(artifact)
    for sid, (shard, slice_, _) in sorted(forgotten.items()):
        row = snap.samples.get(sid)
        if row is None:
            report.flag("forgotten", f"forgotten sample {sid!r} has no sample record any more")
        elif row.deleted_at is None:
            report.flag(
                "forgotten", f"forgotten sample {sid!r} is marked live again (un-forgotten)"
            )
        elif (row.shard, row.slice) != (shard, slice_):
            report.flag("forgotten", f"forgotten sample {sid!r} was moved to another slice")
        if sid in snap.stored_content:
            report.flag("forgotten", f"the content of forgotten sample {sid!r} is stored again")
        for artifact in trained_on.get(sid, []):
            if artifact in usable:
                report.flag(
                    "forgotten",
                    f"artifact {artifact[:12]} (not purged) was trained on forgotten sample {sid!r}",
                )
    logged = {r for _, _, r in forgotten.values()}
    for request in sorted(logged if requests is None else logged & requests):
        receipt = snap.deletions.get(request)
        if receipt is None:
            report.flag("forgotten", f"deletion {request} is logged but has no stored receipt")
            continue
        mine = sorted(s for s, (_, _, r) in forgotten.items() if r == request)
        if sorted(receipt.get("deleted", [])) != mine:
            report.flag(
                "forgotten", f"the stored receipt of deletion {request} disagrees with the log"
            )
    for subject, request in sorted(forgotten_subjects(snap.events).items()):
        if requests is not None and request not in requests:
            continue
        live = sorted(
            s.id for s in snap.samples.values() if s.subject == subject and s.deleted_at is None
        )
        for sid in live[:5]:
            report.flag("forgotten", f"sample {sid!r} of forgotten subject {subject!r} is live")
    if requests is None:
        unlogged = sorted(
            sid for sid, row in snap.samples.items() if row.deleted_at and sid not in forgotten
        )
        for sid in unlogged[:10]:
            report.flag(
                "forgotten", f"sample {sid!r} is marked deleted but no logged request did it"
            )


def _check_active(
    workspace: Workspace, snap: Snapshot, report: VerifyReport
) -> dict[str, dict[str, Any]]:
    live: dict[tuple[int, int], set[str]] = defaultdict(set)
    for row in snap.samples.values():
        if row.deleted_at is None:
            live[(row.shard, row.slice)].add(row.id)
    active = sorted({a for r in snap.sequences for a in r.active()})
    manifests: dict[str, dict[str, Any]] = {}
    for artifact in active:
        record = snap.artifacts.get(artifact)
        if record is None:
            report.flag("lineage", f"active artifact {artifact[:12]} has no record")
            continue
        if record.purged is not None:
            report.flag(
                "lineage", f"active artifact {artifact[:12]} is purged (trained on deleted data)"
            )
            continue
        if record.quarantined is not None:
            report.flag("lineage", f"active artifact {artifact[:12]} is quarantined")
        lineage = snap.lineage.get(artifact, [])
        dead = [s for s in lineage if snap.samples.get(s) is None or snap.samples[s].deleted_at]
        if dead:
            report.flag(
                "lineage",
                f"active artifact {artifact[:12]} was trained on deleted samples {dead[:5]}",
            )
        if samples_digest(lineage) != record.samples_sha256:
            report.flag(
                "lineage", f"artifact {artifact[:12]}: lineage rows do not hash to its record"
            )
        outside = [
            s
            for s in lineage
            if s not in snap.samples
            or snap.samples[s].shard != record.shard
            or snap.samples[s].slice not in record.prefix
        ]
        if outside:
            report.flag(
                "lineage",
                f"artifact {artifact[:12]} saw samples outside shard {record.shard} slices "
                f"{list(record.prefix)}: {outside[:5]}",
            )
        expected = set().union(*(live[(record.shard, s)] for s in record.prefix))
        if not dead and set(lineage) != expected:
            report.flag(
                "lineage",
                f"artifact {artifact[:12]}: its lineage is not the live samples of its slices "
                f"({len(lineage)} recorded, {len(expected)} live)",
            )
        try:
            manifest = read_manifest(workspace.files.path(artifact))
        except (ArtifactError, WorkspaceError):
            continue  # missing or unreadable: the file checks report it
        manifests[artifact] = manifest
        if manifest.get("samples_sha256") != record.samples_sha256:
            report.flag(
                "lineage",
                f"artifact {artifact[:12]}: manifest sample hash differs from the registry",
            )
        if manifest.get("shard") != record.shard or manifest.get("prefix") != list(record.prefix):
            report.flag(
                "lineage",
                f"artifact {artifact[:12]}: manifest shard or slices differ from the registry",
            )
    report.checked["active_artifacts"] = len(active)
    return manifests


def _check_parents(
    snap: Snapshot, manifests: dict[str, dict[str, Any]], report: VerifyReport
) -> None:
    for r in snap.sequences:
        for j, artifact in enumerate(r.active()):
            if artifact in manifests and manifests[artifact].get("parents") != list(r.active()[:j]):
                report.flag(
                    "lineage",
                    f"shard {r.shard} sequence {r.seq} stage {j + 1}: artifact {artifact[:12]} was "
                    "trained on another parent chain than the one it is served with",
                )


def _check_files(workspace: Workspace, snap: Snapshot, report: VerifyReport) -> None:
    registry = workspace.registry()
    active = {a for r in snap.sequences for a in r.active()}
    files = 0
    changed: set[str] | None = None  # artifacts purged or quarantined since the snapshot
    for artifact, record in snap.artifacts.items():
        if record.purged is not None or record.quarantined is not None:
            continue
        try:
            path = workspace.files.path(artifact)
        except WorkspaceError as exc:
            report.flag("integrity", str(exc))
            continue
        try:
            content: bytes | None = path.read_bytes()
        except FileNotFoundError:  # also when a deletion unlinks it during the check
            content = None
        if content is None:
            if artifact in active:
                changed = changed if changed is not None else registry.purged_among(active)
                if artifact in changed:
                    report.pending.append(
                        f"artifact {artifact[:12]} was taken out of service during the check"
                    )
                else:
                    report.flag("integrity", f"active artifact file missing: {path}")
            continue
        files += 1
        if hashlib.sha256(content).hexdigest() != artifact:
            report.flag(
                "integrity", f"artifact file {path.name} does not match its sha256 (corrupted)"
            )
    _check_purged_files(workspace, snap, {a for a, r in snap.artifacts.items() if r.purged}, report)
    known = set(snap.artifacts)
    for path in workspace.files.leftovers(known, min_age_seconds=0.0):
        report.pending.append(f"leftover file {path.name} (removed by the next sweep)")
    quarantined = [a for a, r in snap.artifacts.items() if r.quarantined is not None]
    if quarantined:
        report.pending.append(f"{len(quarantined)} quarantined artifact(s) await retraining")
    report.checked["artifact_files"] = files


def _check_purged_files(
    workspace: Workspace, snap: Snapshot, purged: set[str], report: VerifyReport
) -> None:
    pending_now: dict[str, float] | None = None
    for artifact in sorted(purged):
        record = snap.artifacts.get(artifact)
        try:
            on_disk = [
                p
                for p in (workspace.files.path(artifact), workspace.files.quarantine_path(artifact))
                if p.exists()
            ]
        except WorkspaceError as exc:
            report.flag("integrity", str(exc))
            continue
        if not on_disk:
            continue
        request = record.purged_by if record is not None else None
        if pending_now is None:
            pending_now = workspace.registry().pending_erasures()
        if request is not None and (request in snap.pending_erasures or request in pending_now):
            report.pending.append(
                f"purged artifact {artifact[:12]}: erasure of {request} under way"
            )
        else:
            report.flag(
                "integrity",
                f"purged artifact {artifact[:12]} (trained on deleted data) is on disk: {on_disk[0]}",
            )
    for request, since in sorted(snap.pending_erasures.items()):
        report.pending.append(f"erasure of deletion {request} pending since {since:.3f}")


def _check_replay(snap: Snapshot, report: VerifyReport) -> None:
    depth, positions = replay(snap.events, {(r.shard, r.seq): r.perm for r in snap.sequences})
    for r in snap.sequences:
        expected = depth.get((r.shard, r.seq), 0)
        if expected != r.depth:
            report.flag(
                "replay",
                f"shard {r.shard} sequence {r.seq}: depth {r.depth}, replaying the log gives {expected}",
            )
        chain = positions.get((r.shard, r.seq), {})
        replayed = tuple(chain[i] for i in range(1, expected + 1) if i in chain)
        if replayed != r.active()[:expected]:
            report.flag(
                "replay",
                f"shard {r.shard} sequence {r.seq}: active stages differ from the replayed log",
            )


def replay(
    events: list[AuditEvent], perms: dict[tuple[int, int], tuple[int, ...]]
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], dict[int, str]]]:
    """Replay the audit log: return each sequence's depth and stage artifacts."""
    depth = {key: 0 for key in perms}
    positions: dict[tuple[int, int], dict[int, str]] = {key: {} for key in perms}
    for e in events:
        detail = e.detail
        if e.event == "stage-swapped":
            for seq in detail["sequences"]:
                key = (detail["shard"], seq)
                depth[key] = detail["depth"]
                positions.setdefault(key, {})[detail["depth"]] = detail["artifact"]
        elif e.event == "forget":
            hit: dict[int, set[int]] = {}
            for _, shard, slice_ in detail["deleted"]:
                hit.setdefault(shard, set()).add(slice_)
            for key, perm in perms.items():
                if key[0] in hit:
                    depth[key] = truncated_depth(perm, depth[key], hit[key[0]])
        elif e.event == "quarantined":
            for key in perms:
                chain = [positions[key].get(i) for i in range(1, depth[key] + 1)]
                if detail["artifact"] in chain:
                    depth[key] = chain.index(detail["artifact"])
    return depth, positions
