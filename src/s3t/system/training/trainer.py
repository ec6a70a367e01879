"""Bringing sequences to full depth: first training and retraining are the same job, and
there is one plan-and-commit loop for every executor.

Each round plans, per shard, the missing stages in the order that brings served depth
back earliest (the next stage of the sequence closest to full depth; shared prefixes
once), with the samples each stage's slices hold *now* and the artifacts of the parents
it starts from. An executor trains them — in this process (:class:`LocalExecutor`) or
elsewhere (:class:`~s3t.system.training.distributed.RayExecutor`) — and hands back
trained stages; the trainer commits each through the registry's race-checked swap, which
discards a stage if a sample it saw was deleted meanwhile or its parent chain changed.
Discarded work is planned again in the next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from s3t.core.schedule import (
    ShardNeed,
    StageKey,
    order_stages,
    restore_order,
    samples_digest,
)
from s3t.core.selection import serving_choice
from s3t.engine.cache import SpillGuard
from s3t.engine.loading import Backbone
from s3t.engine.settings import Compute
from s3t.errors import ArtifactError, InvalidRequestError, RetrainConflictError
from s3t.system.config import S3TConfig
from s3t.system.store.records import SequenceRow, StageRecord
from s3t.system.store.registry import Registry
from s3t.system.store.workspace import Workspace
from s3t.system.training.stage_worker import ShardWork, StageJob, StageWorker, TrainedStage

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
    """Trains planned stages and yields them as they finish; never touches the registry."""

    def run(
        self,
        config: S3TConfig,
        work: Sequence[ShardWork],
        on_event: EventCallback,
        stop: threading.Event | None = None,
    ) -> Iterator[TrainedStage]: ...


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


class SupersededStageError(Exception):
    """A stage given up while it trained (see :attr:`LocalExecutor.superseded`)."""

    def __init__(self, key: StageKey, reason: str) -> None:
        super().__init__(f"{key.label()}: {reason}")
        self.key, self.reason = key, reason


class LocalExecutor:
    """Trains in this process with one model instance, a stage at a time (``stop`` ends
    it after the current stage). ``superseded``, when set, is asked at every step of a
    stage whether to give it up (a deletion just took a sample it trains on, or a more
    urgent stage is due): a reason ends it with :class:`SupersededStageError`."""

    def __init__(
        self,
        config: S3TConfig,
        backbone: Backbone | None = None,
        compute: Compute | None = None,
        spill_guard: SpillGuard | None = None,
    ) -> None:
        self._config = config
        self._backbone = backbone
        self._compute = compute
        self._spill_guard = spill_guard
        self._worker: StageWorker | None = None
        self.superseded: Callable[[StageKey], str | None] | None = None

    @property
    def worker(self) -> StageWorker:
        """The model instance (loaded on first use)."""
        if self._worker is None:
            self._worker = StageWorker(
                self._config, self._backbone, self._compute, self._spill_guard
            )
            self._backbone = None
        return self._worker

    def close(self) -> None:
        """Release the model instance's activation cache (spill files included)."""
        if self._worker is not None:
            self._worker.close()

    def drop_cached(self, groups: set[tuple[int, int]]) -> None:
        """Forget the cached activations of these (shard, slice) groups."""
        if self._worker is not None:
            self._worker.drop_cached(groups)

    def run(
        self,
        config: S3TConfig,
        work: Sequence[ShardWork],
        on_event: EventCallback,
        stop: threading.Event | None = None,
    ) -> Iterator[TrainedStage]:
        """Train every job of every shard in order, yielding each stage when done."""

        def start(job: StageJob) -> None:
            on_event(StageEvent("start", job.key, detail={"samples": len(job.samples)}))

        def progress(key: StageKey) -> Any:
            def step(done: int, total: int, loss: float, sps: float) -> None:
                on_event(StageEvent("step", key, done, total, loss, sps))
                reason = self.superseded(key) if self.superseded is not None else None
                if reason is not None:
                    raise SupersededStageError(key, reason)

            return step

        for shard in work:
            for trained in self.worker.run(shard, on_start=start, on_step=progress):
                yield trained
                if stop is not None and stop.is_set():
                    return


class Trainer:
    """Plans the missing stages of a workspace's sequences, has an executor train them and
    commits what comes back."""

    def __init__(
        self,
        workspace: Workspace,
        on_event: EventCallback | None = None,
        backbone: Backbone | None = None,
        before_swap: Callable[[StageKey], None] | None = None,
        compute: Compute | None = None,
    ) -> None:
        self.ws = workspace
        self.config = workspace.config
        self.on_event = on_event or (lambda event: None)
        compute = replace(compute or Compute(), cache_dir=workspace.files.cache_folder)
        self.local = LocalExecutor(self.config, backbone, compute, workspace.spill_guard)
        #: called with the stage key after its file is written, before the swap (tests use
        #: it to land a deletion in between)
        self.before_swap = before_swap

    def close(self) -> None:
        """Release what the local executor holds (the activation cache's spill files)."""
        self.local.close()

    def drop_cached(self, groups: set[tuple[int, int]]) -> None:
        """Forget the cached activations of these (shard, slice) groups (a deletion)."""
        self.local.drop_cached(groups)

    def complete(
        self,
        shards: Sequence[int] | None = None,
        stop: threading.Event | None = None,
        max_rounds: int = 100,
        executor: Executor | None = None,
        restoring: bool = False,
    ) -> list[StageOutcome]:
        """Train and swap in every missing stage of the given shards (all by default) until
        every sequence is at full depth, or ``stop`` is set; returns what happened to each
        stage. ``restoring`` trains each shard's stages in the order that brings service
        back soonest (see :func:`restore_order`)."""
        if executor is not None and stop is not None:
            raise InvalidRequestError(
                "stop is not supported with an executor: its shards train in parallel "
                "tasks until done; run without an executor to stop after a stage"
            )
        runner: Executor = executor or self.local
        registry = self.ws.registry()
        targets = (
            sorted({r.shard for r in registry.sequences()}) if shards is None else list(shards)
        )
        outcomes: list[StageOutcome] = []
        first = True
        for _ in range(max_rounds):
            if stop is not None and stop.is_set():
                return outcomes
            outcomes += self._reuse(registry, targets)
            began = time.perf_counter()
            try:
                with registry.copy() as snapshot:
                    work = self._plan(snapshot, targets, restoring=restoring)
            except ArtifactError as exc:  # a parent was corrupted (now quarantined): replan
                log.warning("%s", exc)
                continue
            if first:
                total = sum(len(w.jobs) for w in work)
                self.on_event(StageEvent("plan", StageKey(-1, ()), total=total))
                first = False
            if not work:
                return outcomes
            stream = runner.run(self.config, work, self.on_event, stop)
            try:
                for trained in stream:
                    # wall time per stage (planning, training, writing, swapping): only
                    # meaningful when stages train one after another here
                    wall = time.perf_counter() - began if executor is None else None
                    outcome = self.commit(registry, trained, wall)
                    began = time.perf_counter()
                    outcomes.append(outcome)
                    if outcome.status == "discarded" and executor is None:
                        break  # its children would be discarded too: plan again now
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        raise RetrainConflictError(
            f"stages kept being discarded (deletions racing every retrain); gave up after "
            f"{max_rounds} rounds"
        )

    def restore_next(
        self,
        shards: Sequence[int],
        superseded: Callable[[StageKey, bool], str | None] | None = None,
    ) -> list[StageOutcome]:
        """Train the one stage of these shards that does most for service now (see
        :func:`~s3t.core.schedule.restore_order`: a stage 1 for a dead shard first, then
        the shallowest shard deeper), after swapping in any existing artifact that fits.
        ``superseded(stage, restoring)`` is asked at every training step whether to give
        the stage up (``restoring``: it brings a dead shard back). Returns what happened
        (an empty list: nothing left to do)."""
        registry = self.ws.registry()
        outcomes = self._reuse(registry, shards)
        began = time.perf_counter()
        needs = self._needs(registry, shards)
        order = restore_order([n for n in needs if sum(n.live.values())])
        if not order:
            return outcomes
        try:
            with registry.copy() as snapshot:
                work = self._plan(snapshot, [order[0].shard], only=order[0])  # one stage
        except ArtifactError as exc:  # a parent was corrupted (now quarantined): replan
            log.warning("%s", exc)
            return outcomes
        if not work:
            return outcomes
        chosen = order[0]
        restoring = needs[list(shards).index(chosen.shard)].served_depth == 0
        if superseded is not None:
            self.local.superseded = lambda key: superseded(key, restoring)
        try:
            for trained in self.local.run(self.config, work, self.on_event):
                outcomes.append(self.commit(registry, trained, time.perf_counter() - began))
        except SupersededStageError as given_up:
            self.on_event(StageEvent("discarded", given_up.key, detail={"reason": given_up.reason}))
            outcomes.append(StageOutcome(given_up.key, None, "discarded", 0.0, 0, {}))
        finally:
            self.local.superseded = None
        return outcomes

    def _needs(self, registry: Registry, shards: Sequence[int]) -> list[ShardNeed]:
        """What :func:`restore_order` reads of these shards, from one read of the registry."""
        view = registry.status_view()
        served = serving_choice(view.rows, None, view.untrained, view.unusable)
        slices = self.config.layout.slices
        return [
            ShardNeed(
                shard=k,
                served_depth=served[k].depth if k in served else 0,
                sequences=[r.perm for r in view.rows if r.shard == k],
                depths=[r.depth for r in view.rows if r.shard == k],
                live={s: view.slices.get((k, s), (0, 0))[0] for s in range(slices)},
            )
            for k in shards
        ]

    def _plan(
        self,
        registry: Registry,
        targets: Sequence[int],
        only: StageKey | None = None,
        restoring: bool = False,
    ) -> list[ShardWork]:
        """Each target shard's missing stages (or just stage ``only``) with their samples
        as of now, read from one snapshot (``registry`` is a copy: the samples a stage is
        planned on and their stored content must agree). A shard's stages come in
        :func:`order_stages` order, or with ``restoring`` in :func:`restore_order` (a dead
        shard's quickest stage 1 first)."""
        work: list[ShardWork] = []
        examples = None
        needs = {n.shard: n for n in self._needs(registry, targets)} if restoring else {}
        for shard in targets:
            rows = registry.sequences(shard)
            if restoring:
                keys = restore_order([needs[shard]])
            else:
                keys = order_stages(shard, [r.perm for r in rows], [r.depth for r in rows])
            if only is not None:
                keys = [only] if only.shard == shard else []
            if not keys:
                continue
            homes = registry.live_homes(shard)
            if not homes:
                self.on_event(StageEvent("skipped", keys[0], detail={"reason": "no live samples"}))
                continue  # every sample of the shard is deleted: it stays dead, never random
            planned = {k.prefix for k in keys}
            parents: dict[tuple[int, ...], tuple[str, bytes]] = {}
            for key in keys:
                if key.parent is not None and key.parent.prefix not in planned:
                    for i, artifact in enumerate(parent_chain(rows, key), start=1):
                        parents[key.prefix[:i]] = (artifact, self.ws.read_artifact(artifact))
            jobs = [
                StageJob(key, sorted(s for s, (_, sl) in homes.items() if sl in key.prefix))
                for key in keys
            ]
            if examples is None:
                examples = self.ws.examples(source=registry)
            work.append(
                ShardWork(shard, jobs, parents, examples.subset(sorted(homes)), dict(homes))
            )
        return work

    def _reuse(self, registry: Registry, targets: Sequence[int]) -> list[StageOutcome]:
        """Swap in existing artifacts trained on exactly a needed stage's current samples."""
        outcomes = []
        for shard in targets:
            while True:
                rows = registry.sequences(shard)
                keys = order_stages(shard, [r.perm for r in rows], [r.depth for r in rows])
                found = None
                for key in keys:
                    data = registry.live_ids(shard, key.prefix)
                    existing = registry.find_artifact(
                        shard, key.prefix, samples_digest(data), self.config.config_hash()
                    )
                    if existing is not None and _has_parent(rows, key):
                        found = (key, data, existing)
                        break
                if found is None:
                    break
                key, data, existing = found
                record = registry.artifact(existing)
                stage = StageRecord(
                    existing,
                    shard,
                    key.prefix,
                    data,
                    record.n_train,
                    record.config_hash,
                    record.bytes,
                )
                problem = registry.swap_stage(stage, parent_chain(rows, key))
                status = "discarded" if problem else "reused"
                self.on_event(StageEvent(status, key, detail={"artifact": existing}))
                outcomes.append(
                    StageOutcome(key, None if problem else existing, status, 0.0, len(data), {})
                )
                if problem:
                    break
        return outcomes

    def commit(
        self, registry: Registry, stage: TrainedStage, wall: float | None = None
    ) -> StageOutcome:
        """Store a trained stage and swap it in, unless the race rule discards it; report
        what happened. ``wall``: seconds from planning the stage to now, kept with its run
        metrics (status estimates the retraining speed from them)."""
        key = stage.key
        if wall is not None:
            stage = replace(stage, metrics={**stage.metrics, "wall_seconds": round(wall, 3)})
        new_file = self.ws.files.write(stage.artifact, stage.blob)
        if self.before_swap is not None:
            self.before_swap(key)
        record = StageRecord(
            stage.artifact,
            key.shard,
            key.prefix,
            stage.samples,
            stage.n_train,
            self.config.config_hash(),
            len(stage.blob),
            stage.metrics,
        )
        problem = registry.swap_stage(record, stage.parents)
        seconds = float(stage.metrics.get("seconds", 0.0))
        if problem:
            if new_file and stage.artifact not in registry.artifact_ids():
                self.ws.files.remove(stage.artifact)
            log.info("discarded %s: %s", key.label(), problem)
            self.on_event(StageEvent("discarded", key, detail={"reason": problem}))
            return StageOutcome(key, None, "discarded", seconds, len(stage.samples), stage.metrics)
        self.on_event(
            StageEvent("swapped", key, detail={"artifact": stage.artifact, **stage.metrics})
        )
        return StageOutcome(
            key, stage.artifact, "trained", seconds, len(stage.samples), stage.metrics
        )


def _has_parent(rows: list[SequenceRow], key: StageKey) -> bool:
    try:
        parent_chain(rows, key)
    except RetrainConflictError:
        return False
    return True


def parent_chain(rows: Sequence[SequenceRow], key: StageKey) -> tuple[str, ...]:
    """Return the artifact ids of a stage's valid parent prefix (raises
    :class:`RetrainConflictError` when no sequence holds that prefix any more)."""
    if key.stage == 1:
        return ()
    for row in rows:
        if row.perm[: key.stage - 1] == key.prefix[:-1] and row.depth >= key.stage - 1:
            return row.positions[: key.stage - 1]
    raise RetrainConflictError(f"no valid parent for {key.label()}")
