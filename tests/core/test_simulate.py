"""Deletion-rate simulator: agreement with the closed form and with Algorithm 4 replayed."""

import numpy as np
import pytest

from s3t.core.sequences import cyclic, random_sequences
from s3t.core.simulate import harmonic, simulate, theoretical_delta
from s3t.errors import ConfigError, SequenceError


def test_closed_form_matches_the_paper_figures() -> None:
    figures = [round(theoretical_delta(5, 4, b), 2) for b in (1, 2, 3, 4)]
    assert figures == [
        45.67,
        58.58,
        66.36,
        71.95,
    ]
    assert round(theoretical_delta(5, 6, 1), 2) == 68.5
    assert round(theoretical_delta(5, 6, 6), 2) == 119.85
    assert round(theoretical_delta(5, 6, 9), 2) == 119.85  # saturates at B = L
    assert round(5 * harmonic(5), 2) == 11.42


@pytest.mark.parametrize("budget", [1, 3, 6])
def test_simulated_delta_is_within_three_percent_of_theory(budget: int) -> None:
    result = simulate(5, cyclic(6, budget), trials=5000, seed=budget)
    assert result.theory == pytest.approx(theoretical_delta(5, 6, budget))
    assert result.theory is not None
    assert abs(result.mean - result.theory) / result.theory < 0.03
    assert abs(result.mean - result.theory) < 4 * result.ci95


def test_retrain_on_any_hit_sisa() -> None:
    result = simulate(5, cyclic(4, 1), trials=5000, mode="sisa-retrain", seed=3)
    assert result.theory == pytest.approx(11.4167, abs=1e-3)
    assert result.theory is not None
    assert abs(result.mean - result.theory) / result.theory < 0.03


def test_served_depth_grows_with_budget_as_in_the_paper() -> None:
    depths = [simulate(5, cyclic(4, b), trials=8000, seed=b).depth_after(10) for b in (1, 2, 4)]
    assert depths == pytest.approx([1.26, 1.75, 2.28], abs=0.06)


def _replay(shards: int, seqs: list, stream: list[tuple[int, int]]) -> tuple[int, list[list[int]]]:
    """Algorithm 4 applied request by request: returns δ and the served depth per shard."""
    slices = len(seqs[0])
    depth = [[slices] * len(seqs) for _ in range(shards)]
    served = []
    for r, (k, s) in enumerate(stream, start=1):
        for b, seq in enumerate(seqs):
            j = seq.index(s) + 1
            if j <= depth[k][b]:
                depth[k][b] = j - 1
        served.append([max(d) for d in depth])
        if all(max(d) == 0 for d in depth):
            return r, served
    raise AssertionError("stream too short")


def test_vectorised_simulation_equals_a_request_by_request_replay() -> None:
    shards, slices = 3, 4
    seqs = random_sequences(slices, 3, seed=5)
    one = simulate(shards, seqs, trials=1, seed=42, horizon=200)
    # replay the same stream: regenerate it with the simulator's own generator
    rng = np.random.default_rng(42)
    cdf = np.cumsum(np.full(shards * slices, 1 / (shards * slices)))
    cdf[-1] = 1.0
    chunk = max(64, int(2 * shards * slices * (np.log(shards * slices) + 1)))
    draws: list[int] = []
    while len(draws) < 2000:
        draws += np.minimum(np.searchsorted(cdf, rng.random((1, chunk)), side="right"), 11)[
            0
        ].tolist()
    stream = [divmod(c, slices) for c in draws]
    delta, served = _replay(shards, seqs, stream)
    assert one.deltas[0] == delta
    for r in (1, 5, 10, delta - 1):
        assert one.depth_curve[r] == pytest.approx(np.mean(served[r - 1]))


def test_prior_shapes_and_errors() -> None:
    seqs = cyclic(3, 2)
    skew = simulate(2, seqs, trials=500, prior=[0.8, 0.1, 0.1], seed=0)
    assert skew.theory is None
    per_shard = simulate(2, seqs, trials=500, prior=np.ones((2, 3)), seed=0)
    assert per_shard.theory is not None
    with pytest.raises(SequenceError, match="one per slice"):
        simulate(2, seqs, prior=[1, 2])
    with pytest.raises(ConfigError, match="trials must be >= 1"):
        simulate(2, seqs, trials=0)
    with pytest.raises(SequenceError, match="permutation"):
        simulate(2, [(0, 0, 1)])
