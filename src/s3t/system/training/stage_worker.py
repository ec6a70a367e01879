"""The unit of training work: one model instance that trains stages and packs each into an
immutable artifact. The local executor drives one; the Ray executor runs one per worker
process; a from-scratch reference builds a fresh one. All three go through this one
computation, so a stage and its reference agree bit for bit on the same machine. A worker
never touches the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3t.core.schedule import StageKey, is_validation, samples_digest, stage_seed
from s3t.data.examples import Examples
from s3t.engine.artifacts import decode_stage, encode_stage, library_versions
from s3t.engine.blocks import BlockModel, State
from s3t.engine.cache import ActivationCache, SpillGuard
from s3t.engine.compute import resolve_device
from s3t.engine.features import FeatureStore
from s3t.engine.loading import Backbone, fingerprint, load_backbone
from s3t.engine.settings import Compute
from s3t.engine.train import StepCallback, train_stage
from s3t.system.config import S3TConfig


@dataclass
class TrainedStage:
    """A trained stage, packed: the artifact bytes and id (sha256), the tensors, the parent
    chain it was trained on, its samples, and run metrics (kept outside the artifact, so
    that identical training writes identical bytes)."""

    key: StageKey
    blob: bytes
    artifact: str
    block: State
    head: State
    parents: tuple[str, ...]
    samples: list[str]
    n_train: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageJob:
    """One stage to train, on the samples its slices held when it was planned."""

    key: StageKey
    samples: list[str]


@dataclass
class ShardWork:
    """A shard's missing stages for an executor: the jobs in training order (a parent
    before its children), the artifacts (id and bytes) of the parents they start from,
    and the shard's live samples with their (shard, slice) groups."""

    shard: int
    jobs: list[StageJob]
    parents: dict[tuple[int, ...], tuple[str, bytes]]
    examples: Examples
    groups: dict[str, tuple[int, int]]


class StageWorker:
    """Trains stages of one configuration on a given set of samples."""

    def __init__(
        self,
        config: S3TConfig,
        backbone: Backbone | None = None,
        compute: Compute | None = None,
        spill_guard: SpillGuard | None = None,
    ) -> None:
        self.config = config
        compute = compute or Compute()
        self.device = resolve_device(compute.device)
        precision = config.train.precision
        if backbone is None:
            backbone = load_backbone(
                config.model, seed=config.layout.seed, device=self.device, precision=precision
            )
        self.base_fingerprint = fingerprint(backbone.model, skip=backbone.anatomy.head)
        self.engine = BlockModel(
            backbone, config.lora, config.layout.slices, self.device, precision
        )
        self.store: FeatureStore | None = None
        self.cache = (
            ActivationCache(
                self.engine,
                [self.engine.start_layer(i) for i in range(1, self.engine.slices + 1)],
                max_bytes=compute.cache_memory,
                spill_dir=compute.cache_dir,
                spill_guard=spill_guard,
            )
            if config.train.cache_activations
            else None
        )

    def close(self) -> None:
        """Drop the activation cache (its spill files are deleted)."""
        if self.cache is not None:
            self.cache.close()

    def drop_cached(self, groups: set[tuple[int, int]]) -> None:
        """Drop these (shard, slice) groups from the activation cache (their samples changed)."""
        if self.cache is not None:
            self.cache.drop(groups)

    def use_examples(
        self, examples: Examples, groups: Mapping[str, Hashable] | None = None
    ) -> None:
        """Encode the samples stages will be trained on; ``groups`` (each sample's
        (shard, slice)) are the activation cache's canonical computation units."""
        self.store = FeatureStore.from_examples(self.engine.backbone, examples)
        if self.cache is not None:
            self.cache.bind(self.store, groups)

    def run(
        self,
        work: ShardWork,
        on_start: Callable[[StageJob], None] | None = None,
        on_step: Callable[[StageKey], StepCallback] | None = None,
    ) -> Iterator[TrainedStage]:
        """Train a shard's jobs in order, yielding each :class:`TrainedStage`."""
        self.use_examples(work.examples, work.groups)
        tensors: dict[tuple[int, ...], tuple[State, State]] = {}
        ids: dict[tuple[int, ...], str] = {}
        for prefix, (artifact, blob) in work.parents.items():
            block, head, _ = decode_stage(blob)
            tensors[prefix], ids[prefix] = (block, head), artifact
        for job in work.jobs:
            prefix = job.key.prefix
            chain = tuple(ids[prefix[:i]] for i in range(1, len(prefix)))
            if on_start is not None:
                on_start(job)
            trained = self.train(
                job.key,
                [tensors[prefix[:i]] for i in range(1, len(prefix))],
                job.samples,
                chain,
                on_step=on_step(job.key) if on_step is not None else None,
            )
            tensors[prefix], ids[prefix] = (trained.block, trained.head), trained.artifact
            yield trained

    def train(
        self,
        key: StageKey,
        parent: Sequence[tuple[State, State]],
        data: Sequence[str],
        parent_ids: Sequence[str] = (),
        on_step: StepCallback | None = None,
    ) -> TrainedStage:
        """Train stage ``key`` on ``data`` (train and validation ids), starting from the
        parent stages' (block, head) tensors, whose artifact ids the manifest records."""
        assert self.store is not None, "call use_examples() first"
        fraction, seed = self.config.train.validation_fraction, self.config.layout.seed
        val = [i for i in data if is_validation(i, fraction, seed)]
        train = [i for i in data if not is_validation(i, fraction, seed)]
        self.engine.assemble([b for b, _ in parent], parent[-1][1] if parent else None)
        result = train_stage(
            self.engine,
            self.store,
            key.stage,
            train,
            self.config.train,
            stage_seed(seed, key),
            val_ids=val,
            cache=self.cache,
            on_step=on_step,
        )
        manifest = {
            "shard": key.shard,
            "prefix": list(key.prefix),
            "stage": key.stage,
            "parents": list(parent_ids),
            "samples_sha256": samples_digest(data),
            "n_samples": len(data),
            "n_train": len(train),
            "config_hash": self.config.config_hash(),
            "base_fingerprint": self.base_fingerprint,
            "device": self.device.type,
            "layers": list(self.engine.blocks[key.stage - 1]),
            "versions": library_versions(),
            "outcome": {
                "val_score": result.val_score,
                "epochs_run": result.epochs_run,
                "steps": result.steps,
            },
        }
        blob = encode_stage(result.block, result.head, manifest)
        metrics = {
            "train_loss": round(result.train_loss, 6),
            "val_score": result.val_score,
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "samples_per_second": round(result.samples_per_second, 2),
        }
        return TrainedStage(
            key=key,
            blob=blob,
            artifact=hashlib.sha256(blob).hexdigest(),
            block=result.block,
            head=result.head,
            parents=tuple(parent_ids),
            samples=list(data),
            n_train=len(train),
            metrics=metrics,
        )
