"""Regression tests for defects found in review: Ray chains, cache history, orphan files,
answers racing deletions, half-created workspaces, empty stages, bad inputs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_state, toy_dataset
from s3t.core.partition import partition
from s3t.core.schedule import StageKey
from s3t.core.sequences import cyclic
from s3t.core.simulate import simulate
from s3t.engine.blocks import BlockModel
from s3t.engine.cache import ActivationCache
from s3t.engine.features import IGNORE_INDEX, FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.engine.train import train_stage
from s3t.errors import (
    ConfigError,
    InvalidRequestError,
    ServiceUnavailableError,
    WorkspaceError,
)
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig
from s3t.system.distributed import train_shard
from s3t.system.stage_worker import TrainedStage


def test_ray_jobs_report_the_chain_they_trained_on_and_stale_chains_are_discarded(
    trained: Path, toy_config: S3TConfig
) -> None:
    system = S3T.open(trained)
    registry = system.workspace.registry()
    row = registry.sequences(0)[0]
    system.forget([next(s["id"] for s in system.samples(0) if s["slice"] == row.perm[1])])
    prefix1, prefix2 = row.perm[:1], row.perm[:2]
    data = registry.live_ids(0, prefix2)
    blob1 = system.workspace.artifact_path(row.positions[0]).read_bytes()
    examples = system.workspace.examples()
    groups = {sid: (0, s) for sid, s in ((x["id"], x["slice"]) for x in system.samples(0))}
    out = train_shard(
        toy_config.to_dict(),
        examples.subset(list(groups)),
        0,
        [(prefix2, data)],
        {prefix1: blob1},
        groups,
    )
    ((prefix, blob, chain),) = out
    assert prefix == prefix2 and chain == (hashlib.sha256(blob1).hexdigest(),)
    trainer = system._get_trainer()
    from s3t.engine.artifacts import decode_stage

    block, head, manifest = decode_stage(blob)
    assert manifest["parents"] == list(chain)
    stage = TrainedStage(
        StageKey(0, prefix),
        blob,
        hashlib.sha256(blob).hexdigest(),
        manifest["metrics"],
        block,
        head,
    )
    stale = trainer.commit(registry, StageKey(0, prefix), ("0" * 64,), data, stage)
    assert stale.status == "discarded"
    fresh = trainer.commit(registry, StageKey(0, prefix), chain, data, stage)
    assert fresh.status == "trained" and system.verify().ok


def test_cached_training_does_not_depend_on_what_the_cache_already_holds(tiny_bert: Path) -> None:
    from tiny import sentiment_texts

    texts, labels = sentiment_texts(60, seed=2)
    ids = [f"s{i}" for i in range(60)]
    results = []
    for warm in (False, True):
        backbone = load_backbone(ModelSpec(str(tiny_bert), num_labels=2))
        engine = BlockModel(backbone, LoraSettings(rank=2), 3)
        store = FeatureStore(backbone, ids, text=texts, labels=labels)
        groups = {sid: i % 3 for i, sid in enumerate(ids)}  # e.g. slices
        cache = ActivationCache(engine, store, [engine.start_layer(i) for i in (1, 2, 3)], groups)
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


def test_orphaned_stage_files_are_reported_and_removed_on_open(trained: Path) -> None:
    orphan = trained / "artifacts" / "ab" / ("ab" + "0" * 62 + ".safetensors")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a killed process")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    from s3t.system.verify import verify
    from s3t.system.workspace import Workspace

    report = verify(Workspace(trained))
    assert not report.ok and "unregistered stage file" in report.violations[0].detail
    system = S3T.open(trained)
    assert not orphan.exists() and system.verify().ok


def test_an_answer_racing_a_deletion_is_recomputed_without_the_deleted_sample(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = S3T.open(trained)
    server = system.server
    real = type(server).logits_for
    fired: list[str] = []

    def racing(self, served, store, batch_size=64):  # type: ignore[no-untyped-def]
        out = real(self, served, store, batch_size)
        if not fired:  # a deletion commits while this answer is being computed
            victim = system.workspace.registry().lineage(served[0].artifacts[0])[0]
            fired.append(victim)
            system.forget([victim])
        return out

    monkeypatch.setattr(type(server), "logits_for", racing)
    prediction = system.predict(["good film"])
    registry = system.workspace.registry()
    for s in prediction.served:
        for artifact in s.artifacts:
            assert fired[0] not in registry.lineage(artifact)


def test_bad_layouts_fail_before_any_file_is_written(tmp_path: Path, toy_config: S3TConfig) -> None:
    with pytest.raises(ConfigError, match="budget 7 exceeds the 6 distinct"):
        LayoutSettings(slices=3, budget=7)
    with pytest.raises(ConfigError, match="method 'full' trains all 6"):
        LayoutSettings(slices=3, budget=3, method="full")
    with pytest.raises(ConfigError, match="bms_t must be > 0"):
        LayoutSettings(bms_t=0)
    too_few = replace(toy_config, layout=replace(toy_config.layout, shards=50))
    with pytest.raises(Exception, match="fewer than the 3 slices"):
        S3T.fit(tmp_path / "ws", toy_dataset(), too_few)
    assert not (tmp_path / "ws" / "registry.sqlite").exists()


def test_a_prior_that_never_hits_a_first_slice_is_an_error_not_a_hang() -> None:
    with pytest.raises(ConfigError, match="δ is infinite"):
        simulate(2, cyclic(4, 4), prior=[0.0, 1.0, 1.0, 1.0], trials=10)


def test_a_slice_emptied_by_deletions_still_retrains(trained: Path) -> None:
    system = S3T.open(trained)
    row = system.workspace.registry().sequences(0)[0]
    every = [s["id"] for s in system.samples(0) if s["slice"] == row.perm[0]]
    system.forget(every)
    outcomes = system.retrain()
    assert all(o.status in ("trained", "reused") for o in outcomes)
    assert all(r.depth == 3 for r in system.workspace.registry().sequences())
    assert system.verify().ok


def test_more_bad_inputs(trained: Path, tiny_llama: Path) -> None:
    system = S3T.open(trained)
    with pytest.raises(InvalidRequestError, match=r"shards must be in 0..1, got \[99\]"):
        system.retrain([99])
    layout = partition(range(12), 2, 2, labels=np.array([0, 1] * 6))
    assert len(layout) == 12
    backbone = load_backbone(ModelSpec(str(tiny_llama), max_length=16))
    store = FeatureStore(backbone, ["a"], prompt=["the film " * 40], response=["good"])
    labels = store.collate([0])["labels"]
    assert labels.shape[1] == 16 and int((labels != IGNORE_INDEX).sum()) >= 1


def test_a_shard_whose_every_sample_is_deleted_stays_dead(trained: Path) -> None:
    system = S3T.open(trained)
    system.forget([s["id"] for s in system.samples(0)])
    outcomes = system.retrain()
    assert all(o.key.shard == 1 for o in outcomes)  # nothing trained on no data
    status = system.status()
    assert status.shards[0].served_depth == 0 and status.live_shards == 1
    assert [s.shard for s in system.served()] == [1]  # the dead shard does not vote
    assert system.verify().ok


def test_a_stage_waits_for_the_encoded_samples_of_the_current_live_set(trained: Path) -> None:
    system = S3T.open(trained)
    victim = system.samples(0)[0]["id"]
    system.forget([victim])
    trainer = system._get_trainer(None)
    registry = system.workspace.registry()
    key = _next_key(registry, 0)
    assert key is not None
    stale = trainer._live_version(registry) - 1  # encoded before the deletion
    assert trainer._run_stage(registry, key, stale) is None  # nothing trained or swapped
    assert system.retrain() and system.verify().ok


def _next_key(registry, shard: int) -> StageKey | None:  # type: ignore[no-untyped-def]
    from s3t.core.schedule import next_stage

    rows = registry.sequences(shard)
    return next_stage(shard, [r.perm for r in rows], [r.depth for r in rows])


def test_workspace_creation_is_all_or_nothing_and_one_process_wins(
    tmp_path: Path, toy_config: S3TConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3t.system.registry import Registry
    from s3t.system.workspace import Workspace

    data = toy_dataset()
    root = tmp_path / "ws"

    def crash(self, event, detail):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # killed half-way through writing the registry

    with monkeypatch.context() as m:
        m.setattr(Registry, "audit", crash)
        with pytest.raises(KeyboardInterrupt):
            Workspace.create(root, toy_config, data)
    assert sorted(p.name for p in root.iterdir()) == []  # nothing half-created is left

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(Workspace.create(root, toy_config, data)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(isinstance(r, Workspace) for r in results)
    assert sorted(p.name for p in root.iterdir() if "creating" in p.name) == []
    assert len(Workspace(root).registry().sequences()) == 6

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        Workspace.create(not_a_folder, toy_config, data)


def test_an_export_racing_a_deletion_chooses_again(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = S3T.open(trained)
    answers = iter([False, True])
    monkeypatch.setattr(system.server, "still_valid", lambda served: next(answers))
    system.export(0, tmp_path / "adapter")
    assert next(answers, None) is None  # checked twice: the first choice went stale
    monkeypatch.setattr(system.server, "still_valid", lambda served: False)
    with pytest.raises(ServiceUnavailableError, match="retry"):
        system.export(0, tmp_path / "adapter2")


def test_stop_with_an_executor_is_refused(trained: Path) -> None:
    from s3t.system.distributed import RayExecutor

    with pytest.raises(InvalidRequestError, match="stop is not supported with an executor"):
        S3T.open(trained).retrain(executor=RayExecutor(), stop=threading.Event())
