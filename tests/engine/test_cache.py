"""The activation cache computes one canonical way: results never depend on what it held
before, and a group whose members changed is recomputed."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import assert_same_state
from s3t.engine.blocks import BlockModel
from s3t.engine.cache import ActivationCache
from s3t.engine.features import FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.engine.train import train_stage
from tiny import sentiment_texts


def _engine(tiny_bert: Path) -> BlockModel:
    return BlockModel(
        load_backbone(ModelSpec(str(tiny_bert), num_labels=2)), LoraSettings(rank=2), 3
    )


def test_cached_training_does_not_depend_on_what_the_cache_already_holds(tiny_bert: Path) -> None:
    texts, labels = sentiment_texts(60, seed=2)
    ids = [f"s{i}" for i in range(60)]
    groups = {sid: i % 3 for i, sid in enumerate(ids)}  # e.g. slices
    results = []
    for warm in (False, True):
        engine = _engine(tiny_bert)
        store = FeatureStore(engine.backbone, ids, text=texts, labels=labels)
        cache = ActivationCache(engine, [engine.start_layer(i) for i in (1, 2, 3)])
        cache.bind(store, groups)
        if warm:  # another stage ran first and cached other groups
            cache.ensure([1, 2])
        engine.assemble([], None)
        results.append(
            train_stage(
                engine, store, 1, ids[:40], TrainSettings(lr=1e-2, batch_size=8), 7, cache=cache
            )
        )
    assert_same_state(results[0].block, results[1].block)
    assert_same_state(results[0].head, results[1].head)


def test_a_group_that_lost_a_member_is_recomputed_as_if_fresh(tiny_bert: Path) -> None:
    texts, labels = sentiment_texts(30, seed=3)
    ids = [f"s{i}" for i in range(30)]
    engine = _engine(tiny_bert)
    layer = engine.start_layer(2)  # block 2's lowest layer: the cache feeds it
    assert layer > 0
    warm = ActivationCache(engine, [layer], batch_size=4)
    warm.bind(FeatureStore(engine.backbone, ids, text=texts, labels=labels), {s: 0 for s in ids})
    warm.ensure(list(range(30)))
    kept = ids[1:]
    store = FeatureStore(engine.backbone, kept, text=texts[1:], labels=labels[1:])
    warm.bind(store, {s: 0 for s in kept})  # the group lost s0: its batches shift
    fresh = ActivationCache(engine, [layer], batch_size=4)
    fresh.bind(store, {s: 0 for s in kept})
    rows = list(range(len(kept)))
    warm.ensure(rows)
    fresh.ensure(rows)
    assert torch.equal(warm.batch(layer, rows), fresh.batch(layer, rows))
