"""Independent verification of exactness, recomputed from the registry and the files.

1. Lineage: no active component (a stage inside a sequence's valid prefix) was trained on
   a deleted sample; its recorded sample hash matches both its lineage rows and the
   manifest inside its file; and it only saw samples of its own shard and prefix slices.
2. Integrity: every artifact file on disk matches its recorded sha256; active ones exist;
   purged ones (trained on deleted samples) are gone from disk.
3. Replay: replaying the audit log from scratch (stage swaps and deletions, with Algorithm
   4 recomputed from the deleted samples' slices) gives every sequence's current depth and
   stage artifacts.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from s3t.core.schedule import samples_digest, truncated_depth
from s3t.engine.artifacts import read_manifest
from s3t.errors import ArtifactError
from s3t.system.workspace import Workspace


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    check: str
    detail: str


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: counts of what was checked, and every violation."""

    checked: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "violations": [asdict(v) for v in self.violations],
        }


def verify(workspace: Workspace) -> VerifyReport:
    """Check every invariant; see the module docstring."""
    report = VerifyReport()
    registry = workspace.registry()
    db = registry.db
    rows = registry.sequences()
    artifacts = {a.id: a for a in registry.artifacts()}
    sample_home = {sid: (k, s) for sid, k, s in db.execute("SELECT id, shard, slice FROM samples")}
    deleted = {r[0] for r in db.execute("SELECT id FROM samples WHERE deleted_at IS NOT NULL")}

    active = sorted({a for r in rows for a in r.active()})
    manifests: dict[str, dict[str, Any]] = {}
    for artifact in active:
        record = artifacts.get(artifact)
        if record is None:
            report.violations.append(
                Violation("lineage", f"active artifact {artifact} has no record")
            )
            continue
        lineage = registry.lineage(artifact)
        bad = sorted(set(lineage) & deleted)
        if bad:
            report.violations.append(
                Violation(
                    "lineage",
                    f"active artifact {artifact[:12]} was trained on deleted samples {bad[:5]}",
                )
            )
        if record.purged is not None:
            report.violations.append(
                Violation("lineage", f"active artifact {artifact[:12]} is marked purged")
            )
        if samples_digest(lineage) != record.samples_sha256:
            report.violations.append(
                Violation(
                    "lineage", f"artifact {artifact[:12]}: lineage rows do not hash to its record"
                )
            )
        outside = [
            sid
            for sid in lineage
            if sample_home.get(sid, (-1, -1))[0] != record.shard
            or sample_home[sid][1] not in record.prefix
        ]
        if outside:
            report.violations.append(
                Violation(
                    "lineage",
                    f"artifact {artifact[:12]} saw samples outside shard {record.shard} slices {list(record.prefix)}: {outside[:5]}",
                )
            )
        path = workspace.artifact_path(artifact)
        if path.exists():
            try:
                manifest = read_manifest(path)
            except ArtifactError as exc:
                report.violations.append(Violation("integrity", str(exc)))
            else:
                manifests[artifact] = manifest
                if manifest.get("samples_sha256") != record.samples_sha256:
                    report.violations.append(
                        Violation(
                            "lineage",
                            f"artifact {artifact[:12]}: manifest sample hash differs from the registry",
                        )
                    )
    report.checked["active_artifacts"] = len(active)
    for r in rows:  # every active stage was trained on top of exactly the stages before it
        for j, artifact in enumerate(r.active()):
            parents = manifests.get(artifact, {}).get("parents")
            if artifact in manifests and parents != list(r.active()[:j]):
                report.violations.append(
                    Violation(
                        "lineage",
                        f"shard {r.shard} sequence {r.seq} stage {j + 1}: artifact {artifact[:12]} "
                        "was trained on another parent chain than the one it is served with",
                    )
                )

    files = 0
    for artifact, record in artifacts.items():
        path = workspace.artifact_path(artifact)
        if record.purged is not None:
            if path.exists():
                report.violations.append(
                    Violation(
                        "integrity",
                        f"purged artifact {artifact[:12]} (trained on deleted data) is still on disk",
                    )
                )
            continue
        if not path.exists():
            if artifact in active:
                report.violations.append(
                    Violation("integrity", f"active artifact file missing: {path}")
                )
            continue
        files += 1
        if hashlib.sha256(path.read_bytes()).hexdigest() != artifact:
            report.violations.append(
                Violation("integrity", f"artifact file {path.name} does not match its sha256")
            )
    report.checked["artifact_files"] = files
    for path in workspace.orphan_files():
        report.violations.append(
            Violation(
                "integrity",
                f"unregistered stage file {path.name} (opening the workspace removes it)",
            )
        )

    expected_depth, expected_positions = replay(
        registry.audit_log(), {(r.shard, r.seq): r.perm for r in rows}
    )
    for r in rows:
        depth = expected_depth.get((r.shard, r.seq), 0)
        if depth != r.depth:
            report.violations.append(
                Violation(
                    "replay",
                    f"shard {r.shard} sequence {r.seq}: depth {r.depth}, replaying the log gives {depth}",
                )
            )
        chain = expected_positions.get((r.shard, r.seq), {})
        replayed = tuple(chain[i] for i in range(1, depth + 1) if i in chain)
        if replayed != r.active():
            report.violations.append(
                Violation(
                    "replay",
                    f"shard {r.shard} sequence {r.seq}: active stages differ from the replayed log",
                )
            )
    report.checked["sequences"] = len(rows)
    report.checked["deleted_samples"] = len(deleted)
    return report


def replay(
    events: list[tuple[int, float, str, dict[str, Any]]],
    perms: dict[tuple[int, int], tuple[int, ...]],
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], dict[int, str]]]:
    """Replay the audit log: return each sequence's depth and stage artifacts."""
    depth = {key: 0 for key in perms}
    positions: dict[tuple[int, int], dict[int, str]] = {key: {} for key in perms}
    for _, _, event, detail in events:
        if event == "stage-swapped":
            for seq in detail["sequences"]:
                key = (detail["shard"], seq)
                depth[key] = detail["depth"]
                positions[key][detail["depth"]] = detail["artifact"]
        elif event == "forget":
            hit: dict[int, set[int]] = {}
            for _, shard, slice_ in detail["deleted"]:
                hit.setdefault(shard, set()).add(slice_)
            for key, perm in perms.items():
                if key[0] in hit:
                    depth[key] = truncated_depth(perm, depth[key], hit[key[0]])
    return depth, positions
