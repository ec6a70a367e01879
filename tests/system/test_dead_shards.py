"""Emptied slices and shards: a shard whose samples are all deleted stays dead, a slice
emptied by deletions still lets later stages retrain, and a stage trained on no sample is
never the top of a served model."""

from __future__ import annotations

from pathlib import Path

from s3t.system.api import S3T


def test_a_slice_emptied_by_deletions_still_retrains(trained: Path) -> None:
    system = S3T.open(trained)
    perm = system.sequences(0)[0].perm
    every = [s.id for s in system.samples(0) if s.slice == perm[0]]
    system.forget(every)
    outcomes = system.retrain()
    assert outcomes and all(o.status in ("trained", "reused") for o in outcomes)
    assert all(r.depth == 3 for r in system.sequences())
    assert system.verify().ok


def test_a_stage_trained_on_no_sample_is_never_served(trained: Path) -> None:
    system = S3T.open(trained)
    perm = system.sequences(0)[0].perm
    # empty sequence 0's first slice: its stage 1 is retrained on nothing
    system.forget([s.id for s in system.samples(0) if s.slice == perm[0]])
    system.retrain()
    empty = next(s for s in system.stages() if s.shard == 0 and s.slices == [perm[0]] and s.active)
    assert empty.trained_on == 0
    # now cut sequence 0 back to exactly that empty stage, and every other sequence below it
    second = [s.id for s in system.samples(0) if s.slice == perm[1]][:1]
    others = [s.id for s in system.samples(0) if s.slice != perm[0]]
    system.forget(second)
    depths = {r.seq: r.depth for r in system.sequences(0)}
    assert depths[0] == 1
    system.forget(others)  # every remaining sample of shard 0: its sequences go to 0 or 1
    assert all(s.shard != 0 for s in system.served())  # depth 1 is the empty stage: not served
    assert system.status().shards[0].served_depth == 0
    assert system.verify().ok


def test_a_shard_whose_every_sample_is_deleted_stays_dead(trained: Path) -> None:
    system = S3T.open(trained)
    system.forget([s.id for s in system.samples(0)])
    outcomes = system.retrain()
    assert all(o.key.shard == 1 for o in outcomes)  # nothing trained on no data
    status = system.status()
    assert status.shards[0].served_depth == 0 and status.live_shards == 1
    assert [s.shard for s in system.served()] == [1]  # the dead shard does not vote
    assert system.verify().ok
