"""Exactness: every served model equals, bit for bit, a model trained from scratch on its
retained prefix; before and after deletions, and after retraining."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import assert_same_state, logits_of, scratch_stages, toy_dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig

PROBE = ["good film", "awful boring plot", "the actor was superb", "dull"]


@pytest.fixture(scope="module")
def config(tiny_bert) -> S3TConfig:  # type: ignore[no-untyped-def]
    return S3TConfig(
        model=ModelSpec(str(tiny_bert), num_labels=2),
        layout=LayoutSettings(shards=2, slices=3, budget=2, seed=5),
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=16, validation_fraction=0.1, patience=1),
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, config):  # type: ignore[no-untyped-def]
    return S3T.fit(tmp_path_factory.mktemp("ws") / "ws", toy_dataset(), config)


def test_every_depth_equals_a_model_trained_from_scratch_on_its_prefix(fitted, config) -> None:  # type: ignore[no-untyped-def]
    data = toy_dataset()
    row = fitted.workspace.registry().sequences(1)[1]
    engine, blocks, head = scratch_stages(config, data.train, 1, row.perm, config.layout.slices)
    for d in range(1, config.layout.slices + 1):
        block, head_d = fitted.server.tensors(row.positions[d - 1])
        assert_same_state(block, blocks[d - 1])
    assert_same_state(head_d, head)
    for name, p in engine.block_params[0].items():
        if "lora_B" in name:
            assert p.abs().sum() > 0


def test_served_logits_equal_the_scratch_model(fitted, config) -> None:  # type: ignore[no-untyped-def]
    # one input per call: batch composition changes float rounding in the last bits
    served = fitted.served()
    engines = []
    for s in served:
        row = fitted.workspace.registry().sequences(s.shard)[s.seq]
        engines.append(scratch_stages(config, toy_dataset().train, s.shard, row.perm, s.depth)[0])
    for text in PROBE:
        prediction = fitted.predict([text])
        per_shard = torch.stack([torch.tensor(logits_of(e, [text])) for e in engines])
        expected = torch.softmax(per_shard.mean(0), -1).numpy()
        assert np.array_equal(np.asarray(prediction.scores, dtype=np.float32), expected)


def test_forget_serves_the_retained_prefix_and_retrain_equals_scratch(tmp_path, config) -> None:  # type: ignore[no-untyped-def]
    data = toy_dataset()
    system = S3T.fit(tmp_path / "ws", data, config)
    registry = system.workspace.registry()
    shard = 0
    rows = registry.sequences(shard)
    # a sample in the middle slice of sequence 0: it stays served at depth 1 by seq 0 or deeper by seq 1
    target_slice = rows[0].perm[1]
    victim = next(s["id"] for s in system.samples(shard) if s["slice"] == target_slice)
    receipt = system.forget([victim])
    assert victim in receipt.deleted
    after = {(r.seq): r.depth for r in registry.sequences(shard)}
    for r in rows:
        assert after[r.seq] == r.perm.index(target_slice)  # cut just before the slice
    assert system.verify().ok

    served = next(s for s in system.served() if s.shard == shard)
    row = registry.sequences(shard)[served.seq]
    engine, _, _ = scratch_stages(config, data.train, shard, row.perm, served.depth)
    assert set(row.perm[: served.depth]).isdisjoint({target_slice})
    for text in PROBE:
        got = system.server.shard_logits(_store(system, [text]))[1][shard].numpy()
        assert np.array_equal(got, logits_of(engine, [text]))

    outcomes = system.retrain()
    assert {o.status for o in outcomes} <= {"trained", "reused"}
    assert all(r.depth == config.layout.slices for r in registry.sequences())
    assert system.verify().ok
    for r in registry.sequences(shard):
        engine, blocks, head = scratch_stages(
            config, data.train, shard, r.perm, config.layout.slices, excluded=[victim]
        )
        for d, artifact in enumerate(r.positions):
            block, head_d = system.server.tensors(artifact)
            assert_same_state(block, blocks[d])
            assert victim not in system.workspace.registry().lineage(artifact)
        assert_same_state(head_d, head)


def test_activation_cache_on_and_off_train_identical_weights(tmp_path, config) -> None:  # type: ignore[no-untyped-def]
    small = replace(config, layout=replace(config.layout, shards=1, budget=1))
    on = S3T.fit(tmp_path / "on", toy_dataset(60, 10), small)
    off = S3T.fit(
        tmp_path / "off",
        toy_dataset(60, 10),
        replace(small, train=replace(small.train, cache_activations=False)),
    )
    # The cache is filled from batches of another composition than the training batches,
    # and float32 matmul rounding can depend on batch shape (reordering rows moves logits by
    # ~2e-9 here), so the weights may differ in the last bits on some CPUs. A relative 1e-4
    # bounds that with a wide margin, while a real defect (wrong layer fed, mask lost,
    # dropout left on below the block) changes trained weights by O(1). On this machine the
    # two trainings come out bit-identical.
    a = on.workspace.registry().sequences(0)[0].positions
    b = off.workspace.registry().sequences(0)[0].positions
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for state_on, state_off in zip(on.server.tensors(x), off.server.tensors(y), strict=True):
            for name, tensor in state_on.items():
                scale = float(state_off[name].abs().max()) or 1.0
                worst = max(worst, float((tensor - state_off[name]).abs().max()) / scale)
    assert worst < 1e-4


def _store(system, texts):  # type: ignore[no-untyped-def]
    from s3t.engine.features import FeatureStore

    return FeatureStore(
        system.server.engine.backbone, [str(i) for i in range(len(texts))], text=texts
    )
