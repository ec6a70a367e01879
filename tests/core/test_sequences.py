"""Sequence selection: cyclic rotation properties, BMS, baselines, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3t.core.sequences import (
    all_sequences,
    bms,
    cyclic,
    diversity,
    random_sequences,
    score,
    select_sequences,
)
from s3t.core.simulate import simulate
from s3t.errors import SequenceError


def test_cyclic_small_budget_is_the_first_right_rotations_in_order() -> None:
    assert cyclic(4, 4) == [(0, 1, 2, 3), (3, 0, 1, 2), (2, 3, 0, 1), (1, 2, 3, 0)]
    assert cyclic(4, 2) == [(0, 1, 2, 3), (3, 0, 1, 2)]
    assert cyclic(1, 1) == [(0,)]


def test_cyclic_matches_the_paper_example_for_b_above_l() -> None:
    expected = {(0, 1, 2, 3), (0, 3, 1, 2), (1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2), (3, 2, 0, 1)}
    assert set(cyclic(4, 6)) == expected


@st.composite
def slices_and_budget(draw: st.DrawFn) -> tuple[int, int]:
    slices = draw(st.integers(1, 7))
    budget = draw(st.integers(1, min(math.factorial(slices), 60)))
    return slices, budget


@given(slices_and_budget())
@settings(max_examples=300, deadline=None)
def test_cyclic_properties(case: tuple[int, int]) -> None:
    slices, budget = case
    seqs = cyclic(slices, budget)
    assert len(seqs) == budget
    assert len(set(seqs)) == budget
    assert all(sorted(s) == list(range(slices)) for s in seqs)
    for k in range(1, slices + 1):
        distinct = len({s[:k] for s in seqs})
        assert distinct == min(budget, math.perm(slices, k)), (k, seqs)
    firsts = np.bincount([s[0] for s in seqs], minlength=slices)
    assert firsts.max() - firsts.min() <= 1


@given(slices_and_budget())
@settings(max_examples=100, deadline=None)
def test_every_selector_nests_when_the_budget_grows(case: tuple[int, int]) -> None:
    slices, budget = case
    prior = np.linspace(1, 3, slices)
    if budget > 1:
        assert cyclic(slices, budget)[: budget - 1] == cyclic(slices, budget - 1)
        assert bms(prior, budget)[: budget - 1] == bms(prior, budget - 1)


def test_cyclic_full_budget_is_every_permutation() -> None:
    assert sorted(cyclic(5, 120)) == all_sequences(5)


@pytest.mark.parametrize("slices", [2, 3, 4, 5, 6, 7])
def test_bms_with_budget_l_is_a_latin_square(slices: int) -> None:
    prior = np.random.default_rng(slices).dirichlet(np.ones(slices))
    square = np.asarray(bms(prior, slices))
    for axis in (0, 1):
        assert all(sorted(line) == list(range(slices)) for line in np.moveaxis(square, axis, 0))


def test_bms_small_budget_keeps_low_risk_slices_first() -> None:
    prior = [0.02, 0.05, 0.08, 0.15, 0.3, 0.4]
    seqs = bms(prior, 3)
    assert seqs[0][0] == 0
    assert {s[0] for s in seqs} == {0, 1, 2}
    scores = [score(s, prior) for s in bms(prior, 6)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("slices", "budget"), [(3, 6), (4, 13), (4, 24), (5, 37)])
def test_bms_beyond_l_gives_distinct_permutations(slices: int, budget: int) -> None:
    prior = np.arange(1, slices + 1, dtype=float)
    seqs = bms(prior, budget)
    assert len(seqs) == budget == len(set(seqs))
    assert all(sorted(s) == list(range(slices)) for s in seqs)


def test_bms_default_t_separates_candidates_for_a_normalised_prior() -> None:
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    values = {round(score(s, prior), 6) for s in all_sequences(4)}
    assert len(values) > 12  # t=100 would collapse these to ~0
    assert max(score(s, prior, t=100) for s in all_sequences(4)) < 1e-4
    # t = 1 makes every Latin square tie; the default must not
    squares = [bms(prior, 4, t=1), bms(prior, 4)]
    assert len({round(sum(score(s, prior, 1) for s in sq), 9) for sq in squares}) == 1


def test_bms_beats_cyclic_and_random_under_a_skewed_prior() -> None:
    slices, shards, budget, deletions = 6, 3, 3, 10
    prior = 1.0 / np.arange(1, slices + 1)
    prior = prior / prior.sum()  # Zipf: slice 0 is 6x as likely to be hit as slice 5

    def depth(seqs: list) -> float:
        return simulate(shards, seqs, trials=3000, prior=prior, seed=1).depth_after(deletions)

    by_bms = depth(bms(prior, budget))
    by_cyclic = depth(cyclic(slices, budget))
    by_random = float(np.mean([depth(random_sequences(slices, budget, seed=s)) for s in range(8)]))
    # measured: bms 2.83, cyclic 1.96, random 2.31 (mean of 8 seeds)
    assert by_bms > by_cyclic + 0.5
    assert by_bms > by_random + 0.3


def test_random_sequences_are_distinct_and_seeded() -> None:
    a = random_sequences(5, 30, seed=3)
    assert len(set(a)) == 30
    assert a == random_sequences(5, 30, seed=3)
    assert a != random_sequences(5, 30, seed=4)
    assert len(set(random_sequences(4, 24, seed=0))) == 24


def test_diversity_is_mean_pairwise_hamming() -> None:
    assert diversity([(0, 1, 2)]) == 0.0
    assert diversity([(0, 1, 2), (1, 2, 0)]) == 3.0
    assert diversity([(0, 1, 2), (0, 2, 1), (0, 1, 2)]) == pytest.approx(4 / 3)
    assert diversity(cyclic(6, 6)) > diversity(random_sequences(6, 6, seed=0)) - 1e-9


def test_score_matches_its_definition() -> None:
    prior = [0.1, 0.2, 0.3, 0.4]
    cumulative = np.cumsum([0.3, 0.1, 0.4, 0.2])
    expected = sum(n * (1 - c) ** 2 for n, c in zip(range(1, 5), cumulative, strict=True))
    assert score((2, 0, 3, 1), prior, t=2) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cyclic(3, 7), "budget 7 exceeds the 6 distinct sequences"),
        (lambda: cyclic(0, 1), "slices must be an integer >= 1, got 0"),
        (lambda: cyclic(3, 0), "budget must be an integer >= 1, got 0"),
        (lambda: bms([0.5, 0.5], 3), "budget 3 exceeds the 2 distinct"),
        (lambda: bms([0.5, -0.1, 0.6], 2), "finite and >= 0"),
        (lambda: bms([0.0, 0.0], 1), "must not be all zero"),
        (lambda: bms([0.5, 0.5], 1, t=0), "t must be a finite number > 0"),
        (lambda: score((0, 0, 1), [0.3, 0.3, 0.4]), "permutation of 0..2"),
        (lambda: score((0, 1, 2), [1.0, 1.0]), "prior must hold 3 values"),
        (lambda: select_sequences("zigzag", 3, 2), "unknown sequence method 'zigzag'"),
        (lambda: select_sequences("full", 3, 2), "all 6 sequences"),
        (lambda: random_sequences(3, 7), "exceeds"),
        (lambda: all_sequences(10), "1 <= slices <= 9"),
    ],
)
def test_bad_input_raises_sequence_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SequenceError, match=message):
        call()
