"""Bringing sequences to full depth: first training and retraining are the same job.

For each shard, the next stage is chosen from the registry each time: the next stage of the
sequence closest to full depth, so the shard's served depth comes back as early as
possible (shared prefixes are trained once: a stage another sequence already holds, on the
same samples, is reused). A stage is trained on
the *current* live samples of its slices, starting from its parent's artifacts, then
swapped in with one transaction that re-checks, against the registry at that moment,
that none of its samples was deleted meanwhile and that its parent prefix is still what
it started from. A stage that fails the check is discarded and planned again.

Each swapped stage raises the depth of the sequences waiting for it at once, so a long
retrain serves deeper models as it goes; each swap is atomic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from s3t.core.schedule import StageKey, next_stage, plan_stages, samples_digest
from s3t.engine.artifacts import read_stage, write_atomic
from s3t.engine.blocks import State
from s3t.engine.loading import Backbone
from s3t.errors import ArtifactError, InvalidRequestError, RetrainConflictError
from s3t.system.registry import Registry
from s3t.system.stage_worker import StageWorker, TrainedStage
from s3t.system.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class StageEvent:
    """Progress of the trainer: ``kind`` is plan, start, step, swapped, reused, discarded or
    skipped (a shard whose every sample is deleted stays dead)."""

    kind: str
    key: StageKey
    step: int = 0
    total: int = 0
    loss: float = float("nan")
    samples_per_second: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


EventCallback = Callable[[StageEvent], None]


class Executor(Protocol):
    """Trains a trainer's missing stages somewhere else and commits them through it."""

    def complete(
        self, trainer: Trainer, shards: Sequence[int] | None = None, max_rounds: int = 100
    ) -> list[StageOutcome]: ...


@dataclass
class StageOutcome:
    """What happened to one planned stage."""

    key: StageKey
    artifact: str | None
    status: str  # trained | reused | discarded
    seconds: float
    samples: int
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "shard": self.key.shard,
            "slices": list(self.key.prefix),
            "stage": self.key.stage,
            "status": self.status,
            "artifact": self.artifact,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "metrics": self.metrics,
        }


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
        self._backbone = backbone
        self._worker: StageWorker | None = None
        self._tensors: dict[str, tuple[State, State]] = {}
        #: test hook: called with the stage key after training, before the swap
        self.before_swap: Callable[[StageKey], None] | None = None

    @property
    def worker(self) -> StageWorker:
        """The local model instance (loaded on first use)."""
        if self._worker is None:
            self._worker = StageWorker(self.config, self._backbone)
        return self._worker

    def complete(
        self,
        shards: Sequence[int] | None = None,
        stop: threading.Event | None = None,
        max_rounds: int = 100,
        executor: Executor | None = None,
    ) -> list[StageOutcome]:
        """Train and swap in every missing stage of the given shards (all by default) until
        every sequence is at full depth, or ``stop`` is set; returns what happened to each
        stage. An ``executor`` (e.g. :class:`~s3t.system.distributed.RayExecutor`) trains
        elsewhere; committing stays here."""
        if executor is not None:
            if stop is not None:
                raise InvalidRequestError(
                    "stop is not supported with an executor: its shards train in parallel "
                    "tasks until done; run without an executor to stop after a stage"
                )
            return executor.complete(self, shards, max_rounds=max_rounds)
        registry = self.ws.registry()
        targets = (
            sorted({s.shard for s in registry.sequences()}) if shards is None else list(shards)
        )
        outcomes: list[StageOutcome] = []
        seen: int | None = None
        planned = 0
        for shard in targets:
            rows = registry.sequences(shard)
            planned += len(plan_stages(shard, [r.perm for r in rows], [r.depth for r in rows]))
        self.on_event(StageEvent("plan", StageKey(-1, ()), total=planned))
        for shard in targets:
            discarded = 0
            while True:
                if stop is not None and stop.is_set():
                    return outcomes
                rows = registry.sequences(shard)
                key = next_stage(shard, [r.perm for r in rows], [r.depth for r in rows])
                if key is None:
                    break
                if not registry.live_ids(shard, range(self.config.layout.slices)):
                    self.on_event(StageEvent("skipped", key, detail={"reason": "no live samples"}))
                    break  # every sample of the shard is deleted: it stays dead, never random
                live = self._live_version(registry)
                if live != seen:  # the live samples as they are now; deleted ones are gone
                    self.worker.use_examples(self.ws.examples(), live_slices(registry))
                    seen = live
                outcome = self._run_stage(registry, key, live)
                if outcome is None:
                    continue  # a deletion landed meanwhile: rebuild the encoded samples first
                outcomes.append(outcome)
                discarded += outcomes[-1].status == "discarded"
                if discarded > max_rounds:
                    raise RetrainConflictError(
                        f"shard {shard} kept discarding stages (deletions racing every "
                        f"retrain); gave up after {max_rounds} discards"
                    )
        return outcomes

    @staticmethod
    def _live_version(registry: Registry) -> int:
        """Changes whenever a sample is deleted (the encoded samples must then be rebuilt)."""
        return int(
            registry.db.execute(
                "SELECT count(*) FROM samples WHERE deleted_at IS NOT NULL"
            ).fetchone()[0]
        )

    # ----- one stage -------------------------------------------------------------------------
    def _run_stage(self, registry: Registry, key: StageKey, live: int) -> StageOutcome | None:
        """Train (or reuse) one stage and swap it in. Returns ``None`` when a deletion
        landed after the encoded samples of version ``live`` were built, so that the
        stage's data and its cached activations come from the same set of live samples."""
        try:
            parent = parent_chain(registry, key)
            parent_tensors = [self.tensors(a) for a in parent]
        except (RetrainConflictError, ArtifactError) as gone:  # a deletion cut the parent
            self.on_event(StageEvent("discarded", key, detail={"reason": str(gone)}))
            return StageOutcome(key, None, "discarded", 0.0, 0, {})
        data = registry.live_ids(key.shard, key.prefix)
        if self._live_version(registry) != live:
            return None
        existing = registry.find_artifact(
            key.shard, key.prefix, samples_digest(data), self.config.config_hash()
        )
        if existing is not None:
            return self.commit(registry, key, parent, data, existing)
        self.on_event(StageEvent("start", key, detail={"samples": len(data)}))
        trained = self.worker.train(
            key,
            parent_tensors,
            data,
            parent_ids=parent,
            on_step=lambda step, total, loss, sps: self.on_event(
                StageEvent("step", key, step, total, loss, sps)
            ),
        )
        return self.commit(registry, key, parent, data, trained)

    def commit(
        self,
        registry: Registry,
        key: StageKey,
        parent: Sequence[str],
        data: Sequence[str],
        stage: TrainedStage | str,
    ) -> StageOutcome:
        """Store a trained stage (or reuse an existing artifact id) and swap it in, unless
        the race rule discards it; report what happened."""
        began = time.perf_counter()
        if isinstance(stage, str):
            problem = self._swap(registry, key, parent, stage, data, new_file=False)
            status = "discarded" if problem else "reused"
            self.on_event(StageEvent(status, key, detail={"artifact": stage}))
            return StageOutcome(key, None if problem else stage, status, 0.0, len(data), {})
        path = self.ws.artifact_path(stage.artifact)
        new_file = not path.exists()
        if new_file:
            write_atomic(path, stage.blob)
        if self.before_swap is not None:
            self.before_swap(key)
        problem = self._swap(
            registry, key, parent, stage.artifact, data, new_file, len(stage.blob), stage.metrics
        )
        seconds = float(stage.metrics.get("seconds", 0.0)) + time.perf_counter() - began
        if problem:
            log.info("discarded %s: %s", key.label(), problem)
            self.on_event(StageEvent("discarded", key, detail={"reason": problem}))
            return StageOutcome(key, None, "discarded", seconds, len(data), stage.metrics)
        self._tensors[stage.artifact] = (stage.block, stage.head)
        self.on_event(
            StageEvent("swapped", key, detail={"artifact": stage.artifact, **stage.metrics})
        )
        return StageOutcome(key, stage.artifact, "trained", seconds, len(data), stage.metrics)

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
            deleted = [s for s, row in registry.sample_rows(data).items() if row[2] is not None]
            registered = (
                db.execute("SELECT 1 FROM artifacts WHERE id=?", (artifact,)).fetchone() is not None
            )
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
                if new_file and not registered:
                    self.ws.artifact_path(artifact).unlink(missing_ok=True)
                registry.audit(
                    "stage-discarded",
                    {"shard": key.shard, "prefix": list(key.prefix), "reason": problem},
                )
                return problem
            if not registered:
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


def live_slices(registry: Registry) -> dict[str, tuple[int, int]]:
    """(shard, slice) of every live sample: the activation cache's computation groups."""
    rows = registry.db.execute("SELECT id, shard, slice FROM samples WHERE deleted_at IS NULL")
    return {sid: (shard, slice_) for sid, shard, slice_ in rows}


def parent_chain(registry: Registry, key: StageKey) -> tuple[str, ...]:
    """Return the artifact ids of a stage's valid parent prefix (raises
    :class:`RetrainConflictError` when no sequence holds that prefix any more)."""
    if key.stage == 1:
        return ()
    for row in registry.sequences(key.shard):
        if row.perm[: key.stage - 1] == key.prefix[:-1] and row.depth >= key.stage - 1:
            return row.positions[: key.stage - 1]
    raise RetrainConflictError(f"no valid parent for {key.label()}")
