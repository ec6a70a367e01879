"""Exactness. On the machine that trained it, every stage is bit-identical to a from-scratch
reference (S3T.reference: a fresh model instance, the samples its slices hold now, the
same canonical computation); before and after deletions, and after retraining. Across
code paths that batch and pad differently (an independent trainer without the activation
cache), stages agree within the stated tolerance. `make test` runs this file again under
ATEN_CPU_CAPABILITY=avx2 and =default."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import registry_of, scratch_stages, split_logits, tensors_of, toy_dataset
from s3t.engine.blocks import BlockModel
from s3t.engine.loading import load_backbone
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig
from s3t.system.training.reference import ATOL, RTOL

PROBE = ["good film", "awful boring plot", "the actor was superb", "dull"]

pytestmark = pytest.mark.exactness


@pytest.fixture(scope="module")
def config(tiny_bert) -> S3TConfig:  # type: ignore[no-untyped-def]
    return S3TConfig(
        model=ModelSpec(str(tiny_bert), num_labels=2),
        layout=LayoutSettings(shards=2, slices=3, budget=2, seed=5),
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=16, validation_fraction=0.1, patience=1),
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, config) -> S3T:  # type: ignore[no-untyped-def]
    return S3T.fit(tmp_path_factory.mktemp("ws") / "ws", toy_dataset(), config)


def test_every_stage_is_bit_identical_to_its_from_scratch_reference(fitted: S3T) -> None:
    for shard in range(2):
        for seq in range(2):
            report = fitted.reference(shard, seq)
            assert report.depth == 3 and len(report.stages) == 3
            for stage in report.stages:
                assert stage.identical and stage.same_artifact, stage  # same bytes, same id
                assert stage.max_abs_diff == 0.0
    block, _ = tensors_of(fitted, registry_of(fitted).sequences(0)[0].positions[0])
    assert any(t.abs().sum() > 0 for name, t in block.items() if "lora_B" in name)


def test_served_logits_equal_the_reference_models(fitted: S3T, config: S3TConfig) -> None:
    references = {}
    for served in fitted.served():
        report = fitted.reference(served.shard, served.seq)
        backbone = load_backbone(config.model, seed=config.layout.seed)
        engine = BlockModel(backbone, config.lora, config.layout.slices)
        engine.assemble(report.blocks, report.head)
        references[served.shard] = split_logits(engine, PROBE, served.depth)
    for i, text in enumerate(PROBE):
        per_shard = torch.stack([torch.tensor(r[i : i + 1]) for r in references.values()])
        expected = torch.softmax(per_shard.mean(0), -1).numpy()
        got = np.asarray(fitted.predict([text]).scores, dtype=np.float32)
        assert np.array_equal(got, expected)


def test_forget_serves_the_retained_prefix_and_retrain_equals_the_reference(
    tmp_path: Path, config: S3TConfig
) -> None:
    system = S3T.fit(tmp_path / "ws", toy_dataset(), config)
    rows = system.sequences(0)
    # a sample in the middle slice of sequence 0: seq 0 keeps depth 1, seq 1 keeps more
    target_slice = rows[0].perm[1]
    victim = next(s.id for s in system.samples(0) if s.slice == target_slice)
    receipt = system.forget([victim])
    assert receipt.deleted == [victim]
    for before, after in zip(rows, system.sequences(0), strict=True):
        assert after.depth == before.perm.index(target_slice)  # cut just before the slice
    assert system.verify().ok

    served = next(s for s in system.served() if s.shard == 0)
    assert target_slice not in rows[served.seq].perm[: served.depth]
    assert system.reference(0).identical  # what is served is what the retained data gives

    outcomes = system.retrain()
    assert {o.status for o in outcomes} <= {"trained", "reused"}
    assert all(r.depth == 3 for r in system.sequences())
    assert system.verify().ok
    for row in system.sequences(0):
        report = system.reference(0, row.seq)
        assert report.identical
        for artifact in row.artifacts:
            assert victim not in registry_of(system).lineage(artifact)


def test_an_independent_trainer_agrees_within_the_stated_tolerance(
    fitted: S3T, config: S3TConfig
) -> None:
    # no activation cache, its own featurisation and partition: other batching and padding,
    # so last-bit differences may appear on some CPUs; a real defect moves weights by O(1)
    for shard in range(2):
        row = fitted.sequences(shard)[1]
        _, blocks, head = scratch_stages(config, toy_dataset().train, shard, tuple(row.perm), 3)
        for d, artifact in enumerate(row.artifacts):
            block, recorded_head = tensors_of(fitted, artifact)
            _assert_close(block, blocks[d])
        _assert_close(recorded_head, head)


def test_activation_cache_on_and_off_agree_within_the_stated_tolerance(tmp_path, config) -> None:  # type: ignore[no-untyped-def]
    small = replace(config, layout=replace(config.layout, shards=1, budget=1))
    on = S3T.fit(tmp_path / "on", toy_dataset(60, 10), small)
    off = S3T.fit(
        tmp_path / "off",
        toy_dataset(60, 10),
        replace(small, train=replace(small.train, cache_activations=False)),
    )
    for x, y in zip(on.sequences(0)[0].artifacts, off.sequences(0)[0].artifacts, strict=True):
        for mine, theirs in zip(tensors_of(on, x), tensors_of(off, y), strict=True):
            _assert_close(mine, theirs)


def test_identical_training_writes_identical_artifacts(tmp_path, config) -> None:  # type: ignore[no-untyped-def]
    small = replace(config, layout=replace(config.layout, shards=1, budget=2))
    a = S3T.fit(tmp_path / "a", toy_dataset(60, 10), small)
    b = S3T.fit(tmp_path / "b", toy_dataset(60, 10), small)
    assert [s.artifact for s in a.stages()] == [s.artifact for s in b.stages()]
    assert all(s.metrics["seconds"] > 0 for s in a.stages())  # run metrics live in the registry


def _assert_close(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(mine) == set(theirs)
    for name, tensor in mine.items():
        scale = float(theirs[name].abs().max())
        gap = float((tensor - theirs[name]).abs().max())
        assert gap <= ATOL + RTOL * scale, f"{name}: {gap} > {ATOL} + {RTOL} * {scale}"
