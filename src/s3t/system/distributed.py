"""Training on Ray: shards are independent, so each shard's missing stages are trained by
one Ray task (its own process and model instance, fed with that shard's live samples and
the parent stages it starts from). The driver stays the only writer: it commits every
returned stage through the same race-checked swap as local training, in depth-first
order, so a stage whose data saw a deletion meanwhile is discarded and planned again.

Install the extra (``pip install 's3t[ray]'``); ``RayExecutor(address="auto")`` joins a
running cluster, the default starts a local one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from s3t.core.schedule import StageKey, plan_stages
from s3t.data.examples import Examples
from s3t.engine.artifacts import decode_stage
from s3t.errors import ConfigError, RetrainConflictError
from s3t.system.stage_worker import StageWorker, TrainedStage
from s3t.system.training import StageEvent, StageOutcome, Trainer, live_slices, parent_chain

log = logging.getLogger(__name__)

Job = tuple[tuple[int, ...], list[str]]  # (prefix, sample ids)


def train_shard(
    config: dict[str, Any],
    examples: Examples,
    shard: int,
    jobs: list[Job],
    parents: dict[tuple[int, ...], bytes],
    groups: dict[str, tuple[int, int]],
) -> list[tuple[tuple[int, ...], bytes, tuple[str, ...]]]:
    """Run in a Ray worker: train ``jobs`` (parents before children) and return each
    stage's artifact bytes with the artifact ids of the parent chain it was trained on."""
    from s3t.system.config import S3TConfig

    worker = StageWorker(S3TConfig.from_dict(config))
    worker.use_examples(examples, groups)
    tensors = {prefix: decode_stage(blob)[:2] for prefix, blob in parents.items()}
    ids = {prefix: hashlib.sha256(blob).hexdigest() for prefix, blob in parents.items()}
    out = []
    for prefix, data in jobs:
        chain = tuple(ids[prefix[:i]] for i in range(1, len(prefix)))
        trained = worker.train(
            StageKey(shard, prefix),
            [tensors[prefix[:i]] for i in range(1, len(prefix))],
            data,
            chain,
        )
        tensors[prefix] = (trained.block, trained.head)
        ids[prefix] = trained.artifact
        out.append((prefix, trained.blob, chain))
    return out


def _parent_blobs(
    trainer: Trainer, registry: Any, plan: list[StageKey]
) -> dict[tuple[int, ...], bytes]:
    """The artifact bytes of every planned root's parent chain (prefix → bytes)."""
    planned = {key.prefix for key in plan}
    parents: dict[tuple[int, ...], bytes] = {}
    for key in plan:
        if key.parent is not None and key.parent.prefix not in planned:
            for i, artifact in enumerate(parent_chain(registry, key), start=1):
                parents[key.prefix[:i]] = trainer.ws.artifact_path(artifact).read_bytes()
    return parents


class RayExecutor:
    """Trains shards in parallel Ray tasks; ``cpus_per_task`` sizes each task."""

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1
    ) -> None:
        if cpus_per_task < 1:
            raise ConfigError(f"cpus_per_task must be >= 1, got {cpus_per_task!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ConfigError("distributed training needs Ray: pip install 's3t[ray]'") from None
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=None if self.address else self.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        return ray

    def complete(
        self, trainer: Trainer, shards: Sequence[int] | None = None, max_rounds: int = 100
    ) -> list[StageOutcome]:
        """Bring every sequence of the given shards to full depth; see the module docstring."""
        ray = self._ray()
        task = ray.remote(num_cpus=self.cpus_per_task)(train_shard)
        registry = trainer.ws.registry()
        targets = (
            sorted({r.shard for r in registry.sequences()}) if shards is None else list(shards)
        )
        examples = trainer.ws.examples()
        slices_of = live_slices(registry)
        config = trainer.config.to_dict()
        outcomes: list[StageOutcome] = []
        for _ in range(max_rounds):
            pending: dict[Any, tuple[int, list[Job]]] = {}
            skipped = False
            for shard in targets:
                rows = registry.sequences(shard)
                plan = plan_stages(shard, [r.perm for r in rows], [r.depth for r in rows])
                alive = registry.live_ids(shard, range(trainer.config.layout.slices))
                if not plan or not alive:  # nothing missing, or every sample deleted: dead
                    continue
                jobs: list[Job] = [
                    (key.prefix, registry.live_ids(shard, key.prefix)) for key in plan
                ]
                try:
                    parents = _parent_blobs(trainer, registry, plan)
                except (RetrainConflictError, OSError):  # a deletion cut the parent: replan
                    skipped = True
                    continue
                mine = examples.subset(alive)
                groups = {sid: slices_of[sid] for sid in mine.ids}
                pending[task.remote(config, mine, shard, jobs, parents, groups)] = (shard, jobs)
                for key in plan:
                    trainer.on_event(
                        StageEvent("start", key, detail={"samples": len(dict(jobs)[key.prefix])})
                    )
            if not pending and not skipped:
                return outcomes
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                shard, jobs = pending.pop(done[0])
                data_of = dict(jobs)
                for prefix, blob, chain in ray.get(done[0]):
                    key = StageKey(shard, prefix)
                    block, head, manifest = decode_stage(blob)
                    artifact = hashlib.sha256(blob).hexdigest()
                    stage = TrainedStage(key, blob, artifact, manifest["metrics"], block, head)
                    # swapped in only onto the very chain it was trained from (race rule)
                    outcomes.append(trainer.commit(registry, key, chain, data_of[prefix], stage))
        raise RetrainConflictError(
            f"stages kept being discarded; giving up after {max_rounds} rounds"
        )
