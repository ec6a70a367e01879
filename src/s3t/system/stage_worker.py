"""The unit of training work: one model instance that trains stages and packs each into an
immutable artifact. The local trainer drives one; the Ray executor runs one per worker
process, fed with the samples of a shard. A worker never touches the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from s3t.core.schedule import StageKey, is_validation, samples_digest, stage_seed
from s3t.data.examples import Examples
from s3t.engine.artifacts import encode_stage, library_versions
from s3t.engine.blocks import BlockModel, State
from s3t.engine.cache import ActivationCache
from s3t.engine.features import FeatureStore
from s3t.engine.loading import Backbone, fingerprint, load_backbone
from s3t.engine.train import StepCallback, train_stage
from s3t.system.config import S3TConfig


@dataclass
class TrainedStage:
    """A trained stage, packed: the artifact bytes, its id (sha256) and tensors."""

    key: StageKey
    blob: bytes
    artifact: str
    metrics: dict[str, Any]
    block: State
    head: State


class StageWorker:
    """Trains stages of one configuration on a given set of samples."""

    def __init__(self, config: S3TConfig, backbone: Backbone | None = None) -> None:
        self.config = config
        if backbone is None:
            backbone = load_backbone(config.model, seed=config.layout.seed)
        self.engine = BlockModel(backbone, config.lora, config.layout.slices)
        self.base_fingerprint = fingerprint(backbone.model, skip=backbone.anatomy.head)
        self.store: FeatureStore | None = None
        self.cache: ActivationCache | None = None

    def use_examples(
        self, examples: Examples, groups: Mapping[str, Hashable] | None = None
    ) -> None:
        """Encode the samples stages will be trained on (the cache starts empty; it is
        computed a group at a time — pass each sample's (shard, slice))."""
        self.store = FeatureStore.from_examples(self.engine.backbone, examples)
        self.cache = (
            ActivationCache(
                self.engine,
                self.store,
                [self.engine.start_layer(i) for i in range(1, self.engine.slices + 1)],
                groups,
            )
            if self.config.train.cache_activations
            else None
        )

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
        metrics = {
            "train_loss": round(result.train_loss, 6),
            "val_score": result.val_score,
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "samples_per_second": round(result.samples_per_second, 2),
        }
        manifest = {
            "shard": key.shard,
            "prefix": list(key.prefix),
            "stage": key.stage,
            "slices": list(key.prefix),
            "parents": list(parent_ids),
            "samples_sha256": samples_digest(data),
            "n_samples": len(data),
            "config_hash": self.config.config_hash(),
            "base_fingerprint": self.base_fingerprint,
            "layers": list(self.engine.blocks[key.stage - 1]),
            "versions": library_versions(),
            "metrics": metrics,
        }
        blob = encode_stage(result.block, result.head, manifest)
        return TrainedStage(
            key, blob, hashlib.sha256(blob).hexdigest(), metrics, result.block, result.head
        )
