"""Subject-aware partitioning and deletion streams by subject."""

from __future__ import annotations

import numpy as np
import pytest

from s3t.core.partition import partition
from s3t.core.subject_streams import compare_partitioning
from s3t.core.subjects import subject_ids, subject_sizes
from s3t.errors import ConfigError, PartitionError

SIZES = [1] * 150 + [2] * 60 + [5] * 20 + [12] * 6 + [40, 90]  # heavy-tailed: 2 big subjects


def _layout(sizes: list[int], shards: int = 3, slices: int = 4, seed: int = 0, **kw: object):  # type: ignore[no-untyped-def]
    owners = subject_ids(sizes)
    ids = [f"s{i}" for i in range(len(owners))]
    return ids, owners, partition(ids, shards, slices, seed=seed, subjects=owners, **kw)  # type: ignore[arg-type]


def test_a_subject_lives_in_one_shard_and_one_slice_when_it_fits() -> None:
    ids, owners, layout = _layout(SIZES)
    cells: dict[str, set[tuple[int, int]]] = {}
    for sid, owner in zip(ids, owners, strict=True):
        cells.setdefault(owner, set()).add(layout.assignment[sid])
    slice_share = len(ids) / (3 * 4)
    for owner, where in cells.items():
        assert len({k for k, _ in where}) == 1, owner  # one shard
        size = owners.count(owner)
        if size <= slice_share:
            assert len(where) == 1, owner  # one slice
    assert set(layout.split_subjects()) == {o for o in cells if owners.count(o) > slice_share}


def test_balance_stays_within_the_largest_piece_with_heavy_tails() -> None:
    ids, _, layout = _layout(SIZES)
    sizes = layout.slice_sizes()
    shard_cap = int(np.ceil(len(ids) / 3))
    assert sizes.sum(axis=1).max() - sizes.sum(axis=1).min() <= shard_cap  # documented bound
    assert sizes.sum(axis=1).max() - sizes.sum(axis=1).min() <= 90  # ... the largest subject
    for k in range(3):
        row = sizes[k]
        assert row.max() - row.min() <= int(np.ceil(row.sum() / 4))


def test_subject_layouts_are_deterministic_and_stable() -> None:
    ids, owners, layout = _layout(SIZES, seed=4)
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = partition([ids[i] for i in order], 3, 4, seed=4, subjects=[owners[i] for i in order])
    assert dict(shuffled.assignment) == dict(layout.assignment)
    removed = layout.remove(ids[:20])
    grown = removed.add(["late-1", "late-2"], subjects=[owners[-1], "newcomer"])
    for sid in ids[20:]:
        assert grown.assignment[sid] == layout.assignment[sid]
    big = {layout.assignment[s] for s, o in zip(ids, owners, strict=True) if o == owners[-1]}
    assert grown.assignment["late-1"] in big  # joins its subject
    assert grown.subject_of("late-1") == owners[-1] and grown.subject_of("late-2") == "newcomer"


def test_risky_subjects_go_to_late_slices() -> None:
    owners = subject_ids([3] * 40)
    ids = [f"s{i}" for i in range(len(owners))]
    risk = [1.0 if int(o[1:]) % 4 == 0 else 0.0 for o in owners]
    layout = partition(ids, 2, 4, subjects=owners, risk=risk)
    risky = [layout.assignment[s][1] for s, r in zip(ids, risk, strict=True) if r]
    safe = [layout.assignment[s][1] for s, r in zip(ids, risk, strict=True) if not r]
    assert min(risky) >= max(safe) - 1 and np.mean(risky) > np.mean(safe) + 1
    assert layout.priors()[:, -1].min() > 0.5  # slice priors tell BMS where the risk is


def test_without_subjects_nothing_changes() -> None:
    ids = [f"s{i}" for i in range(60)]
    assert dict(partition(ids, 2, 3, seed=1).assignment) == dict(
        partition(ids, 2, 3, seed=1, subjects=ids).assignment
    )
    with pytest.raises(PartitionError, match="got 3 subjects for 60 ids"):
        partition(ids, 2, 3, subjects=["a", "b", "c"])


def test_subject_sizes() -> None:
    zipf = subject_sizes(12_000, 5.0, "zipf", seed=0)
    # the asked-for mean exactly (12,000 samples, 2,400 subjects), a heavy tail, no empty one
    assert zipf.sum() == 12_000 and len(zipf) == 2_400 and zipf.min() >= 1 and zipf.max() > 50
    assert np.median(zipf) <= 2  # a typical person holds one or two samples
    lognormal = subject_sizes(5_000, 5.0, "lognormal", seed=0)
    assert lognormal.sum() == 5_000 and len(lognormal) == 1_000 and lognormal.min() >= 1
    assert subject_sizes(7, 5.0, "zipf").tolist() == [7]  # fewer samples than the mean
    assert subject_sizes(3, 1.0, "zipf").tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="distribution must be one of"):
        subject_sizes(10, 5.0, "pareto")


def test_subject_aware_partitioning_serves_three_times_more_person_requests() -> None:
    sizes = subject_sizes(11_504, 5.5, "zipf", seed=0)
    assert sizes.mean() >= 5.0  # Zipf-sized subjects of mean >= 5
    result = compare_partitioning(sizes, shards=5, slices=6, budget=6, trials=300, seed=0)
    assert result.aware.mean >= 3 * result.oblivious.mean
    assert result.aware.depth_after(20) > result.oblivious.depth_after(20)
    # one cell per subject request: δ in subject requests is close to the sample-level law
    assert abs(result.aware.mean - result.sample_theory) < 0.15 * result.sample_theory
