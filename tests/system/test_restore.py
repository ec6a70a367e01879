"""Service-first background retraining: a dead shard is brought back with one stage 1 on
its smallest slice before anything else is trained, a stage a deletion makes moot is
given up mid-training without disturbing what is trained next (bit for bit), and a plan
reads its samples and their content from one snapshot however deletions race it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import registry_of, workspace_of
from s3t.core.schedule import StageKey
from s3t.system.api import S3T
from s3t.system.store.workspace import Workspace
from s3t.system.training.background import RetrainPolicy
from s3t.system.training.trainer import Trainer


def _kill(system: S3T, shard: int, spare: int = 0) -> None:
    """Delete one sample of every slice of a shard (every sequence starts on one), and
    ``spare`` more from its first slice, so that the slices differ in size."""
    by_slice: dict[int, list[str]] = {}
    for s in system.samples(shard):
        by_slice.setdefault(s.slice, []).append(s.id)
    victims = [ids[0] for ids in by_slice.values()] + by_slice[0][1 : 1 + spare]
    receipt = system.forget(victims)
    assert receipt.served_depth_after[shard] == 0


@pytest.mark.slow
def test_a_dead_shard_comes_back_on_its_smallest_slice_before_anything_is_deepened(
    trained: Path,
) -> None:
    system = S3T.open(trained, retrain_policy=RetrainPolicy(min_depth=3, poll_seconds=0.05))
    try:
        system.load_model()
        one = next(s.id for s in system.samples(1) if s.slice == 2)
        system.forget([one])  # shard 1 is only cut short
        _kill(system, 0, spare=4)  # shard 0 dies; its slice 0 is now the smallest
        assert system.background is not None and system.background.wait_idle(120)
        trained_keys = [o.key for o in system.background.outcomes if o.status == "trained"]
        assert trained_keys[0] == StageKey(0, (0,))  # service first: the dead shard, smallest
        firsts = [k for k in trained_keys if k.shard == 0 and k.stage == 1]
        deeper = [i for i, k in enumerate(trained_keys) if k.stage > 1]
        assert len(firsts) == 3 and max(trained_keys.index(k) for k in firsts) < min(deeper)
        status = system.status()
        assert status.sequences_below_full_depth == 0 and status.live_shards == 2
        assert system.verify().ok
    finally:
        system.close()


def test_a_stage_given_up_midway_leaves_the_next_one_bit_identical(trained: Path) -> None:
    system = S3T.open(trained)
    _kill(system, 0)
    trainer = Trainer(workspace_of(system))
    given_up = trainer.restore_next([0], superseded=lambda key, restoring: "a deletion")
    assert [o.status for o in given_up] == ["discarded"]
    assert system.status().shards[0].served_depth == 0  # nothing was swapped in
    while trainer.restore_next([0]):
        pass
    trainer.close()
    assert system.status().sequences_below_full_depth == 0
    for row in system.sequences(0):
        assert system.reference(0, row.seq).identical
    assert system.verify().ok


def test_a_deletion_racing_a_plan_cannot_split_its_samples_from_their_content(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan reads the samples of its stages and their stored content; a deletion that
    commits between the two reads must not leave the plan naming a sample whose content
    is gone (that crashed planning), nor train on it: the stage is discarded at its swap
    and planned again."""
    system = S3T.open(trained)
    _kill(system, 0)
    victim = next(s.id for s in system.samples(0))
    examples = Workspace.examples
    raced: list[str] = []

    def racing(self: Workspace, *args: object, **kwargs: object) -> object:
        if not raced:
            raced.append(victim)
            S3T.open(self.root).forget([victim])  # another process deletes meanwhile
        return examples(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Workspace, "examples", racing)
    outcomes = system.retrain([0])
    assert raced and any(o.status == "discarded" for o in outcomes)
    assert system.status().sequences_below_full_depth == 0
    registry = registry_of(system)
    for row in registry.sequences(0):
        for artifact in row.active():
            assert victim not in registry.lineage(artifact)
    assert system.verify().ok


def test_deletions_through_the_service_wake_the_retrainer_at_once(trained: Path) -> None:
    system = S3T.open(trained, retrain_policy=RetrainPolicy(when_dead=True, poll_seconds=3600))
    try:
        assert system.background is not None
        system.background.wait_idle(30)
        began = time.monotonic()
        _kill(system, 1)
        while system.status().shards[1].served_depth == 0:
            assert time.monotonic() - began < 60, "the retrainer waited for its hourly poll"
            time.sleep(0.05)
    finally:
        system.close()
