"""The availability simulator: deletions at a rate against one retrainer of a given speed,
in either retraining order, and the deletion rate a retraining speed sustains."""

from __future__ import annotations

import pytest

from s3t.core.availability import RetrainSpeed, simulate_availability, sustainable_rate
from s3t.errors import ConfigError

SIZES = [[67, 67, 66]] * 3  # the pressure benchmark's workspace: m=3, L=B=3, 600 samples


def test_instant_retraining_keeps_the_service_up_and_none_lets_it_fail() -> None:
    fast = simulate_availability(SIZES, 1.0, RetrainSpeed(0.0, 1e-6), 3, seconds=60, trials=5)
    assert fast.up == pytest.approx(1.0) and fast.served_depth > 2.9
    slow = simulate_availability(SIZES, 1.0, RetrainSpeed(1e6, 0.0), 3, seconds=200, trials=5)
    assert slow.up < 0.5 and slow.outages_per_hour > 0  # δ ≈ 25 deletions, then nothing


def test_service_first_keeps_the_service_up_longer_than_shard_by_shard() -> None:
    speed = RetrainSpeed(0.5, 0.004)
    runs = {
        order: simulate_availability(SIZES, 5.0, speed, 3, order=order, seconds=120, trials=8)
        for order in ("service-first", "shard-by-shard")
    }
    assert runs["service-first"].up > runs["shard-by-shard"].up + 0.1
    assert runs["service-first"].live_shards > runs["shard-by-shard"].live_shards


def test_a_faster_retrainer_sustains_a_higher_deletion_rate() -> None:
    slow = sustainable_rate(SIZES, RetrainSpeed(0.5, 0.004), 3, seconds=120, trials=4)
    fast = sustainable_rate(SIZES, RetrainSpeed(0.1, 0.001), 3, seconds=120, trials=4)
    assert 0 < slow < fast
    check = simulate_availability(SIZES, slow, RetrainSpeed(0.5, 0.004), 3, seconds=120, trials=4)
    assert check.up >= 0.99


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="rate"):
        simulate_availability(SIZES, 0.0, RetrainSpeed(1, 0), 3)
    with pytest.raises(ConfigError, match="order"):
        simulate_availability(SIZES, 1.0, RetrainSpeed(1, 0), 3, order="random")
    with pytest.raises(ConfigError, match="no time"):
        RetrainSpeed(0, 0)
