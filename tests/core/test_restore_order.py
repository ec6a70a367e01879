"""restore_order: which stage the background retrainer trains next so that service comes
back soonest and stays up (pure function over sequences, depths and slice sizes)."""

from __future__ import annotations

from s3t.core.schedule import ShardNeed, StageKey, order_stages, restore_order
from s3t.core.sequences import cyclic

SEQS = cyclic(3, 3)  # (0,1,2) (2,0,1) (1,2,0): every slice starts one sequence


def _need(
    shard: int, depths: list[int], live: dict[int, int], served: int | None = None
) -> ShardNeed:
    return ShardNeed(shard, max(depths) if served is None else served, SEQS, depths, live)


def test_a_dead_shard_gets_one_stage_1_first_on_its_smallest_slice() -> None:
    order = restore_order(
        [
            _need(0, [3, 2, 1], {0: 30, 1: 30, 2: 30}),  # live, deep
            _need(1, [0, 0, 0], {0: 50, 1: 20, 2: 60}),  # dead
            _need(2, [0, 0, 0], {0: 10, 1: 40, 2: 45}),  # dead, with a smaller slice
        ]
    )
    assert order[:2] == [StageKey(2, (0,)), StageKey(1, (1,))]  # the smallest slice first


def test_the_other_first_stages_come_before_any_deeper_stage() -> None:
    order = restore_order(
        [_need(0, [0, 0, 0], {0: 5, 1: 7, 2: 6}), _need(1, [1, 0, 0], {0: 5, 1: 5, 2: 5})]
    )
    firsts = [k for k in order if k.stage == 1]
    assert order[: len(firsts)] == firsts  # breadth: each first slice covered before depth
    assert firsts[0] == StageKey(0, (0,)) and len(firsts) == 5
    assert set(order) == set(order_stages(0, SEQS, [0, 0, 0]) + order_stages(1, SEQS, [1, 0, 0]))


def test_deeper_stages_go_to_the_shallowest_shard_first_and_parents_precede_children() -> None:
    order = restore_order(
        [_need(0, [3, 3, 2], {0: 9, 1: 9, 2: 9}), _need(1, [1, 1, 1], {0: 9, 1: 9, 2: 9})]
    )
    assert order[0].shard == 1
    position = {k: i for i, k in enumerate(order)}
    for key in order:
        if key.parent is not None and key.parent in position:
            assert position[key.parent] < position[key]


def test_empty_first_slices_are_never_chosen_to_restore_a_shard() -> None:
    order = restore_order([_need(0, [0, 0, 0], {0: 0, 1: 4, 2: 0})])
    assert order[0] == StageKey(0, (1,))  # the only first slice with samples
    assert restore_order([_need(0, [3, 3, 3], {0: 1, 1: 1, 2: 1})]) == []  # nothing missing
