"""Independent references for exactness tests: train a model from scratch with the engine
alone (no registry, no trainer), on slices recomputed from the partition."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from s3t.core.partition import partition
from s3t.core.schedule import StageKey, is_validation, stage_seed
from s3t.data.examples import Dataset, Examples
from s3t.engine.blocks import BlockModel, State
from s3t.engine.features import FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.train import train_stage
from s3t.system.config import S3TConfig
from tiny import sentiment_texts


def toy_dataset(n: int = 120, test: int = 30, seed: int = 0) -> Dataset:
    texts, labels = sentiment_texts(n + test, seed)
    ids = tuple(f"r{i:04d}" for i in range(n + test))
    names = ("neg", "pos")
    return Dataset(
        "toy",
        Examples(
            ids=ids[:n],
            task="classification",
            text=tuple(texts[:n]),
            labels=labels[:n],
            label_names=names,
        ),
        Examples(
            ids=ids[n:],
            task="classification",
            text=tuple(texts[n:]),
            labels=labels[n:],
            label_names=names,
        ),
    )


def scratch_stages(
    config: S3TConfig,
    train: Examples,
    shard: int,
    perm: tuple[int, ...],
    depth: int,
    excluded: Iterable[str] = (),
) -> tuple[BlockModel, list[State], State]:
    """Train stages 1..depth of ``perm`` from a freshly loaded model on the samples of those
    slices (minus ``excluded``); return the engine holding that model, blocks and head."""
    gone = set(excluded)
    layout = partition(
        train.ids,
        config.layout.shards,
        config.layout.slices,
        seed=config.layout.seed,
        labels=list(train.labels) if config.layout.stratify else None,
    )
    backbone = load_backbone(config.model, seed=config.layout.seed)
    engine = BlockModel(backbone, config.lora, config.layout.slices)
    store = FeatureStore.from_examples(backbone, train)
    blocks: list[State] = []
    head: State = {}
    for stage in range(1, depth + 1):
        prefix = perm[:stage]
        data = sorted(
            sid
            for sid, (k, s) in layout.assignment.items()
            if k == shard and s in prefix and sid not in gone
        )
        frac, seed = config.train.validation_fraction, config.layout.seed
        result = train_stage(
            engine,
            store,
            stage,
            [i for i in data if not is_validation(i, frac, seed)],
            config.train,
            stage_seed(seed, StageKey(shard, prefix)),
            val_ids=[i for i in data if is_validation(i, frac, seed)],
        )
        blocks.append(result.block)
        head = result.head
        engine.assemble(blocks, head)
    return engine, blocks, head


def assert_same_state(a: State, b: State) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max()}"


def logits_of(engine: BlockModel, texts: list[str]) -> np.ndarray:
    store = FeatureStore(engine.backbone, [str(i) for i in range(len(texts))], text=texts)
    engine.set_eval()
    with torch.no_grad():
        return engine.forward(store.collate(list(range(len(texts))))).numpy()


def workspace_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "artifacts").rglob("*.safetensors"))
