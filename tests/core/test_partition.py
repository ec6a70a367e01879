"""Partitioning: determinism, balance, stability, stratification, risk grouping, bad input."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3t.core.partition import Layout, partition, sample_id
from s3t.errors import PartitionError, UnknownSampleError

IDS = [f"u{i}" for i in range(103)]


def test_every_id_lands_in_exactly_one_slice() -> None:
    layout = partition(IDS, shards=3, slices=4, seed=7)
    assert sorted(layout.assignment) == sorted(IDS)
    members = [sid for k in range(3) for s in range(4) for sid in layout.members(k, s)]
    assert sorted(members) == sorted(IDS)


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31), st.integers(0, 60))
@settings(max_examples=60, deadline=None)
def test_sizes_balanced(shards: int, slices: int, seed: int, extra: int) -> None:
    n = shards * slices + extra
    layout = partition(range(n), shards, slices, seed=seed)
    sizes = layout.slice_sizes()
    assert np.ptp(sizes.sum(axis=1)) <= 1
    assert all(np.ptp(row) <= 1 for row in sizes)


def test_deterministic_whatever_the_input_order() -> None:
    shuffled = IDS[:]
    random.Random(3).shuffle(shuffled)
    a = partition(IDS, 4, 3, seed=11)
    b = partition(shuffled, 4, 3, seed=11)
    assert dict(a.assignment) == dict(b.assignment)
    assert dict(a.assignment) != dict(partition(IDS, 4, 3, seed=12).assignment)


def test_deterministic_with_labels_and_risk_in_any_order() -> None:
    labels = [i % 3 for i in range(len(IDS))]
    risk = [float(i % 7) for i in range(len(IDS))]
    order = list(range(len(IDS)))
    random.Random(5).shuffle(order)
    a = partition(IDS, 2, 3, seed=1, labels=labels, risk=risk)
    b = partition(
        [IDS[i] for i in order],
        2,
        3,
        seed=1,
        labels=[labels[i] for i in order],
        risk=[risk[i] for i in order],
    )
    assert dict(a.assignment) == dict(b.assignment)


def test_deleting_and_adding_never_moves_other_samples() -> None:
    layout = partition(IDS, 3, 4, seed=2)
    removed = layout.remove(IDS[:10])
    for sid in IDS[10:]:
        assert removed.assignment[sid] == layout.assignment[sid]
    grown = removed.add(["new-1", "new-2", "new-3"])
    for sid in IDS[10:]:
        assert grown.assignment[sid] == layout.assignment[sid]
    assert {"new-1", "new-2", "new-3"} <= set(grown.assignment)
    # new samples go where there is room: the shards that lost the most
    before = removed.shard_sizes()
    targets = {grown.assignment[s][0] for s in ("new-1", "new-2", "new-3")}
    assert all(before[k] <= before.min() + 1 for k in targets)


def test_add_rejects_existing_ids_and_remove_unknown_ids() -> None:
    layout = partition(IDS, 2, 2)
    with pytest.raises(PartitionError, match="already in the layout"):
        layout.add([IDS[0]])
    with pytest.raises(UnknownSampleError, match="nope"):
        layout.remove(["nope"])


def test_labels_stratify_every_shard_and_slice() -> None:
    ids = list(range(600))
    labels = ["pos" if i % 4 else "neg" for i in ids]  # 450 pos / 150 neg
    layout = partition(ids, shards=3, slices=5, seed=0, labels=labels)
    label_of = dict(zip(map(str, ids), labels, strict=True))
    for k in range(3):
        neg = sum(label_of[s] == "neg" for s in layout.members(k))
        assert neg == 50
        for s in range(5):
            neg_slice = sum(label_of[x] == "neg" for x in layout.members(k, s))
            assert neg_slice == 10


def test_risk_groups_risky_samples_into_late_slices_and_sets_priors() -> None:
    ids = list(range(120))
    risk = [5.0 if i < 20 else 0.1 for i in ids]  # 20 risky samples
    layout = partition(ids, shards=2, slices=6, seed=4, risk=risk)
    for k in range(2):
        risky_slices = {
            layout.assignment[str(i)][1] for i in range(20) if layout.assignment[str(i)][0] == k
        }
        assert risky_slices == {5}  # 10 risky per shard fill exactly the last slice
    priors = layout.priors()
    np.testing.assert_allclose(priors.sum(axis=1), 1.0)
    assert np.all(priors[:, 5] > 0.8)
    assert np.all(priors[:, :5] < 0.05)


def test_priors_without_risk_are_proportional_to_slice_sizes() -> None:
    layout = partition(range(13), 1, 2)
    np.testing.assert_allclose(layout.priors(), [[7 / 13, 6 / 13]])


def test_roundtrip_through_dict() -> None:
    layout = partition(IDS, 2, 3, seed=9, risk=[1.0] * len(IDS))
    assert Layout.from_dict(layout.to_dict()) == layout


def test_int_and_str_ids_are_the_same_sample() -> None:
    assert sample_id(7) == sample_id("7") == "7"
    with pytest.raises(PartitionError, match="duplicate sample ids: \\['7'\\]"):
        partition([7, "7", 8, 9], 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ids": ["a", "b", "a", "c"]}, "duplicate sample ids: \\['a'\\]"),
        ({"shards": 0}, "shards must be an integer >= 1, got 0"),
        ({"slices": 0}, "slices must be an integer >= 1, got 0"),
        ({"shards": 3, "slices": 4}, "fewer than the 4 slices"),
        ({"risk": [1.0, float("nan"), 1.0, 1.0]}, "finite and >= 0.*positions \\[1\\]"),
        ({"risk": [1.0, -2.0, 1.0, 1.0]}, "positions \\[1\\]: \\[-2.0\\]"),
        ({"risk": [1.0, 1.0]}, "one score per id"),
        ({"labels": ["x"]}, "got 1 labels for 4 ids"),
        ({"ids": []}, "no sample ids"),
        ({"ids": [1.5, 2, 3, 4]}, "must be str or int, got 1.5"),
    ],
)
def test_bad_input_raises_a_clear_partition_error(kwargs: dict, message: str) -> None:
    args = {"ids": ["a", "b", "c", "d"], "shards": 1, "slices": 2, **kwargs}
    with pytest.raises(PartitionError, match=message):
        partition(args.pop("ids"), **args)
