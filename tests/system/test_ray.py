"""Training on Ray gives the same artifacts, bit for bit, as training locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import assert_same_state, registry_of, tensors_of, toy_dataset
from s3t.errors import ConfigError
from s3t.system.api import S3T
from s3t.system.config import S3TConfig
from s3t.system.training.distributed import RayExecutor

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.exactness, pytest.mark.slow]


@pytest.fixture(scope="module")
def executor():  # type: ignore[no-untyped-def]
    from s3t.system.training.distributed import RayExecutor

    yield RayExecutor(num_cpus=2, num_gpus=1)  # one logical GPU: tasks that ask for it queue
    ray.shutdown()


def test_ray_training_equals_local_training(
    tmp_path: Path, trained_template: Path, toy_config: S3TConfig, executor: RayExecutor
) -> None:
    system = S3T.fit(tmp_path / "ray", toy_dataset(), toy_config, executor=executor)
    with S3T.open(trained_template, read_only=True) as local:
        ours = registry_of(system).sequences()
        theirs = registry_of(local).sequences()
        assert [r.depth for r in ours] == [3] * len(ours)
        for a, b in zip(ours, theirs, strict=True):
            for x, y in zip(a.positions, b.positions, strict=True):
                for part_a, part_b in zip(tensors_of(system, x), tensors_of(local, y), strict=True):
                    assert_same_state(part_a, part_b)
    assert system.verify().ok


def test_ray_retraining_after_deletions(
    tmp_path: Path, trained_template: Path, toy_config: S3TConfig, executor: RayExecutor
) -> None:
    import shutil

    shutil.copytree(trained_template, tmp_path / "ws")
    system = S3T.open(tmp_path / "ws")
    system.forget([system.samples(0)[0].id, system.samples(1)[3].id])
    outcomes = system.retrain(executor=executor)
    assert outcomes and {o.status for o in outcomes} <= {"trained", "reused"}
    assert all(r.depth == 3 for r in registry_of(system).sequences())
    assert system.verify().ok


def test_shard_tasks_that_ask_for_a_gpu_queue_for_the_only_one(
    tmp_path: Path, trained_template: Path, toy_config: S3TConfig, executor: RayExecutor
) -> None:
    """Two shards, each task asking for a whole GPU, on a cluster with one (a logical GPU:
    the tasks compute on the CPU here): Ray runs them one after the other, same bits."""
    executor._ray()
    assert ray.cluster_resources().get("GPU") == 1
    queued = RayExecutor(gpus_per_task=1, device="cpu")
    system = S3T.fit(tmp_path / "gpu", toy_dataset(), toy_config, executor=queued)
    with S3T.open(trained_template, read_only=True) as local:
        ours, theirs = registry_of(system).sequences(), registry_of(local).sequences()
        for a, b in zip(ours, theirs, strict=True):
            for x, y in zip(a.positions, b.positions, strict=True):
                for part_a, part_b in zip(tensors_of(system, x), tensors_of(local, y), strict=True):
                    assert_same_state(part_a, part_b)
    with pytest.raises(ConfigError, match="gpus_per_task must be >= 0"):
        RayExecutor(gpus_per_task=-1)
