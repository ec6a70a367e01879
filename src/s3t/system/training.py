"""Bringing sequences to full depth: first training and retraining are the same job.

For each shard, the stages still missing are planned from the registry (every sequence
from its valid depth up to L, shared prefixes once, parents first). A stage is trained on
the *current* live samples of its slices, starting from its parent's artifacts, then
swapped in with one transaction that re-checks, against the registry at that moment,
that none of its samples was deleted meanwhile and that its parent prefix is still what
it started from. A stage that fails the check is discarded and planned again.

Each swapped stage raises the depth of the sequences waiting for it at once, so a long
retrain serves deeper models as it goes; each swap is atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3t.core.schedule import StageKey, is_validation, plan_stages, samples_digest, stage_seed
from s3t.engine.artifacts import encode_stage, library_versions, read_stage, write_atomic
from s3t.engine.blocks import BlockModel, State
from s3t.engine.cache import ActivationCache
from s3t.engine.features import FeatureStore
from s3t.engine.loading import Backbone, fingerprint, load_backbone
from s3t.engine.train import StageResult, train_stage
from s3t.errors import RetrainConflictError
from s3t.system.registry import Registry
from s3t.system.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class StageEvent:
    """Progress of the trainer: ``kind`` is start, step, swapped, reused or discarded."""

    kind: str
    key: StageKey
    step: int = 0
    total: int = 0
    loss: float = float("nan")
    samples_per_second: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


EventCallback = Callable[[StageEvent], None]


@dataclass
class StageOutcome:
    """What happened to one planned stage."""

    key: StageKey
    artifact: str | None
    status: str  # trained | reused | discarded
    seconds: float
    samples: int
    metrics: dict[str, Any]


class Trainer:
    """Trains missing stages of a workspace's sequences with its own model instance."""

    def __init__(
        self,
        workspace: Workspace,
        on_event: EventCallback | None = None,
        backbone: Backbone | None = None,
    ) -> None:
        self.ws = workspace
        self.config = workspace.config
        self.on_event = on_event or (lambda event: None)
        if backbone is None:
            backbone = load_backbone(self.config.model, seed=self.config.layout.seed)
        self.engine = BlockModel(backbone, self.config.lora, self.config.layout.slices)
        self.base_fingerprint = fingerprint(backbone.model, skip=backbone.anatomy.head)
        self._tensors: dict[str, tuple[State, State]] = {}
        #: test hook: called with the stage key after training, before the swap
        self.before_swap: Callable[[StageKey], None] | None = None

    def complete(
        self,
        shards: Sequence[int] | None = None,
        stop: threading.Event | None = None,
        max_rounds: int = 1000,
    ) -> list[StageOutcome]:
        """Train and swap in every missing stage of the given shards (all by default) until
        every sequence is at full depth, or ``stop`` is set; returns what happened to each
        stage."""
        registry = self.ws.registry()
        targets = (
            sorted({s.shard for s in registry.sequences()}) if shards is None else list(shards)
        )
        outcomes: list[StageOutcome] = []
        store: FeatureStore | None = None
        cache: ActivationCache | None = None
        planned = 0
        for shard in targets:
            rows = registry.sequences(shard)
            planned += len(plan_stages(shard, [r.perm for r in rows], [r.depth for r in rows]))
        self.on_event(StageEvent("plan", StageKey(-1, ()), total=planned))
        for shard in targets:
            for _ in range(max_rounds):
                if stop is not None and stop.is_set():
                    return outcomes
                rows = registry.sequences(shard)
                plan = plan_stages(shard, [r.perm for r in rows], [r.depth for r in rows])
                if not plan:
                    break
                key = plan[0]
                if store is None:
                    store = FeatureStore.from_examples(self.engine.backbone, self.ws.examples())
                    if self.config.train.cache_activations:
                        cache = ActivationCache(self.engine, store)
                outcomes.append(self._run_stage(registry, key, store, cache))
            else:
                raise RetrainConflictError(
                    f"shard {shard} kept discarding stages; giving up after {max_rounds} rounds"
                )
        return outcomes

    # ----- one stage -------------------------------------------------------------------------
    def _run_stage(
        self, registry: Registry, key: StageKey, store: FeatureStore, cache: ActivationCache | None
    ) -> StageOutcome:
        parent = _parent_chain(registry, key)
        data = registry.live_ids(key.shard, key.prefix)
        digest = samples_digest(data)
        config_hash = self.config.config_hash()
        began = time.perf_counter()
        existing = registry.find_artifact(key.shard, key.prefix, digest, config_hash)
        if existing is not None:
            problem = self._swap(registry, key, parent, existing, data, new_file=False)
            status = "discarded" if problem else "reused"
            self.on_event(StageEvent(status, key, detail={"artifact": existing}))
            return StageOutcome(key, None if problem else existing, status, 0.0, len(data), {})
        fraction = self.config.train.validation_fraction
        seed = self.config.layout.seed
        val = [i for i in data if is_validation(i, fraction, seed)]
        train = [i for i in data if not is_validation(i, fraction, seed)]
        self._assemble(parent)
        self.on_event(StageEvent("start", key, total=0, detail={"samples": len(train)}))
        result = train_stage(
            self.engine,
            store,
            key.stage,
            train,
            self.config.train,
            stage_seed(seed, key),
            val_ids=val,
            cache=cache,
            on_step=lambda step, total, loss, sps: self.on_event(
                StageEvent("step", key, step, total, loss, sps)
            ),
        )
        manifest = self._manifest(key, data, digest, config_hash, result)
        blob = encode_stage(result.block, result.head, manifest)
        artifact = hashlib.sha256(blob).hexdigest()
        path = self.ws.artifact_path(artifact)
        new_file = not path.exists()
        if new_file:
            write_atomic(path, blob)
        if self.before_swap is not None:
            self.before_swap(key)
        metrics = manifest["metrics"]
        problem = self._swap(registry, key, parent, artifact, data, new_file, len(blob), metrics)
        if problem:
            log.info("discarded %s: %s", key.label(), problem)
            self.on_event(StageEvent("discarded", key, detail={"reason": problem}))
            return StageOutcome(
                key, None, "discarded", time.perf_counter() - began, len(data), metrics
            )
        self._tensors[artifact] = (result.block, result.head)
        self.on_event(StageEvent("swapped", key, detail={"artifact": artifact, **metrics}))
        return StageOutcome(
            key, artifact, "trained", time.perf_counter() - began, len(data), metrics
        )

    def _manifest(
        self, key: StageKey, data: list[str], digest: str, config_hash: str, result: StageResult
    ) -> dict[str, Any]:
        return {
            "shard": key.shard,
            "prefix": list(key.prefix),
            "stage": key.stage,
            "slices": list(key.prefix),
            "samples_sha256": digest,
            "n_samples": len(data),
            "config_hash": config_hash,
            "base_fingerprint": self.base_fingerprint,
            "layers": list(self.engine.blocks[key.stage - 1]),
            "versions": library_versions(),
            "metrics": {
                "train_loss": round(result.train_loss, 6),
                "val_score": result.val_score,
                "epochs_run": result.epochs_run,
                "steps": result.steps,
                "seconds": round(result.seconds, 3),
                "samples_per_second": round(result.samples_per_second, 2),
            },
        }

    def _assemble(self, parent: Sequence[str]) -> None:
        blocks, head = [], None
        for artifact in parent:
            block, head = self.tensors(artifact)
            blocks.append(block)
        self.engine.assemble(blocks, head)

    def tensors(self, artifact: str) -> tuple[State, State]:
        """Return (block, head) of an artifact, loaded once and checked against its sha256."""
        if artifact not in self._tensors:
            block, head, _ = read_stage(self.ws.artifact_path(artifact), expected_sha256=artifact)
            self._tensors[artifact] = (block, head)
        return self._tensors[artifact]

    def _swap(
        self,
        registry: Registry,
        key: StageKey,
        parent: Sequence[str],
        artifact: str,
        data: Sequence[str],
        new_file: bool,
        blob_size: int = 0,
        metrics: dict[str, Any] | None = None,
    ) -> str | None:
        """In one transaction: check the race rule, register the artifact and raise the
        depth of every sequence waiting for this stage. Returns why the stage was
        discarded instead (its data or parent went stale meanwhile), or ``None``."""
        with registry.transaction() as db:
            deleted = _deleted_among(db, data)
            waiting = [
                r
                for r in registry.sequences(key.shard)
                if r.perm[: key.stage] == key.prefix
                and r.depth == key.stage - 1
                and r.positions[: key.stage - 1] == tuple(parent)
            ]
            problem = None
            if deleted:
                problem = f"{len(deleted)} of its samples were deleted while it trained"
            elif not waiting:
                problem = "no sequence is waiting for it any more (its parent changed)"
            if problem:
                if new_file and not _referenced(db, artifact):
                    self.ws.artifact_path(artifact).unlink(missing_ok=True)
                registry.audit(
                    "stage-discarded",
                    {"shard": key.shard, "prefix": list(key.prefix), "reason": problem},
                )
                return problem
            if db.execute("SELECT 1 FROM artifacts WHERE id=?", (artifact,)).fetchone() is None:
                db.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        artifact,
                        key.shard,
                        json.dumps(list(key.prefix)),
                        key.stage,
                        samples_digest(data),
                        len(data),
                        self.config.config_hash(),
                        str(self.ws.artifact_path(artifact).relative_to(self.ws.root)),
                        blob_size,
                        time.time(),
                        json.dumps(metrics or {}),
                    ),
                )
                db.executemany(
                    "INSERT INTO lineage VALUES (?, ?)", ((artifact, sid) for sid in data)
                )
            for row in waiting:
                db.execute(
                    "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                    (row.shard, row.seq, key.stage, artifact),
                )
                db.execute(
                    "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
                    (key.stage, row.shard, row.seq),
                )
            registry.audit(
                "stage-swapped",
                {
                    "shard": key.shard,
                    "prefix": list(key.prefix),
                    "artifact": artifact,
                    "sequences": [r.seq for r in waiting],
                    "depth": key.stage,
                },
            )
        return None


def _parent_chain(registry: Registry, key: StageKey) -> tuple[str, ...]:
    if key.stage == 1:
        return ()
    for row in registry.sequences(key.shard):
        if row.perm[: key.stage - 1] == key.prefix[:-1] and row.depth >= key.stage - 1:
            return row.positions[: key.stage - 1]
    raise RetrainConflictError(f"no valid parent for {key.label()}")


def _deleted_among(db: Any, ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(ids), 500):
        chunk = list(ids[i : i + 500])
        marks = ",".join("?" * len(chunk))
        out += [
            r[0]
            for r in db.execute(
                f"SELECT id FROM samples WHERE id IN ({marks}) AND deleted_at IS NOT NULL", chunk
            )
        ]
    return out


def _referenced(db: Any, artifact: str) -> bool:
    return db.execute("SELECT 1 FROM artifacts WHERE id=?", (artifact,)).fetchone() is not None
