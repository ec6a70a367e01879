"""A system whose activation cache does not fit its memory budget spills it to the
workspace's ``cache/`` folder: it trains the same bits, and a deletion erases the spill
files that held the deleted samples' features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import assert_same_state, registry_of, tensors_of, toy_dataset
from s3t.engine.settings import Compute
from s3t.system.api import S3T
from s3t.system.config import S3TConfig


def _groups(folder: Path) -> set[tuple[int, int]]:
    return {
        (int(p.name.split("-")[0]), int(p.name.split("-")[1])) for p in folder.glob("*.activations")
    }


@pytest.mark.exactness
def test_a_spilled_cache_trains_the_same_models_and_is_erased_with_its_samples(
    tmp_path: Path, toy_config: S3TConfig
) -> None:
    data = toy_dataset()
    roomy = S3T.fit(tmp_path / "roomy", data, toy_config)
    tight = S3T.fit(tmp_path / "tight", data, toy_config, compute=Compute(cache_memory=0))
    folder = tmp_path / "tight" / "cache"
    held = _groups(folder)
    assert held, "nothing was spilled with a zero memory budget"
    assert all(str(os.getpid()) in p.name for p in folder.glob("*.activations"))
    for a, b in zip(registry_of(roomy).sequences(), registry_of(tight).sequences(), strict=True):
        assert (a.shard, a.perm) == (b.shard, b.perm)
        for x, y in zip(a.positions, b.positions, strict=True):
            (block_x, head_x), (block_y, head_y) = tensors_of(roomy, x), tensors_of(tight, y)
            assert_same_state(block_x, block_y)
            assert_same_state(head_x, head_y)

    victim = next(s for s in tight.samples() if (s.shard, s.slice) in held)
    tight.forget([victim.id])
    assert (victim.shard, victim.slice) not in _groups(folder), "its features stayed on disk"
    assert _groups(folder) == held - {(victim.shard, victim.slice)}
    tight.close()
    assert not list(folder.glob("*.activations")), "closing the system leaves spill files"
    roomy.close()


def test_no_spill_file_is_written_for_a_sample_deleted_since_the_snapshot(
    tmp_path: Path, trained_template: Path
) -> None:
    """A trainer working from a snapshot taken before a deletion asks the workspace before it
    writes a spill file: the erasure holds the cache lock, so the file is either refused or
    written whole and then deleted by the erasure."""
    import shutil

    from helpers import workspace_of

    shutil.copytree(trained_template, tmp_path / "ws")
    system = S3T.open(tmp_path / "ws")
    ws = workspace_of(system)
    victim, other = [s.id for s in system.samples()][:2]
    with ws.spill_guard([victim, other]) as allowed:
        assert allowed
    system.forget([victim])
    with ws.spill_guard([victim, other]) as allowed:
        assert not allowed
    with (
        ws.files.cache_lock(exclusive=False),  # a trainer writing: the erasure waits
        ws.files.cache_lock(exclusive=True, timeout=0.2) as locked,
    ):
        assert not locked
    system.close()


def test_a_forget_makes_this_process_let_go_of_the_deleted_groups(
    tmp_path: Path, toy_config: S3TConfig
) -> None:
    system = S3T.fit(tmp_path / "ws", toy_dataset(), toy_config, compute=Compute(cache_memory=0))
    cache = system._get_trainer().local.worker.cache
    assert cache is not None and cache.spilled_bytes > 0
    victim = system.samples()[0]
    system.forget([victim.id])
    assert (victim.shard, victim.slice) not in cache._computed
    assert cache.spilled_bytes > 0  # the other groups stay
    system.close()
