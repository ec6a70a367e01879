"""Availability under a deletion stream with retraining: what deletion rate a given
retraining speed can sustain.

:mod:`s3t.core.simulate` asks how many deletions a system serves before it fails when
nothing is retrained. A running service retrains in the background, so the question
becomes one of rates: deletions arrive at ``rate`` per second (a Poisson stream, each
taking a uniformly drawn live sample), one retrainer trains a stage in ``overhead +
seconds_per_sample × samples`` seconds, and the service is up while some shard serves a
model. This is an event-driven simulation of exactly that, with the retrainer choosing
stages as s3t's background retrainer does (:func:`~s3t.core.schedule.restore_order` for
``service-first``, each shard to full depth in turn for ``shard-by-shard``):

- a stage is trained on the samples its slices hold when it starts; a deletion in one of
  those slices before it is swapped in makes it moot (``service-first`` gives it up at
  once, ``shard-by-shard`` finds out when it is done), as does a deletion that cuts the
  prefix it extends;
- ``service-first`` also gives up a deepening stage the moment a shard dies.

:func:`sustainable_rate` finds the highest rate at which the service is up a given share
of the time (99% by default). :func:`capacity` gives two closed-form rates that need no
simulation: up to the first, retraining rebuilds the stages 1 that deletions destroy
faster than they are destroyed, on average (the service then almost never fails); up to
the second, it also rebuilds everything else, so every sequence stays near full depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s3t.core.schedule import ShardNeed, StageKey, order_stages, restore_order
from s3t.core.sequences import Perm, cyclic
from s3t.errors import ConfigError

ORDERS = ("service-first", "shard-by-shard")


@dataclass(frozen=True)
class RetrainSpeed:
    """How long one stage takes to retrain: ``overhead`` seconds (planning, loading,
    writing and swapping it in) plus ``seconds_per_sample`` per sample of its slices
    (all its epochs included)."""

    overhead: float
    seconds_per_sample: float

    def __post_init__(self) -> None:
        if self.overhead < 0 or self.seconds_per_sample < 0:
            raise ConfigError(
                f"retraining times must be >= 0, got overhead {self.overhead!r} and "
                f"{self.seconds_per_sample!r} seconds per sample"
            )
        if self.overhead == 0 and self.seconds_per_sample == 0:
            raise ConfigError("a stage cannot retrain in no time: give an overhead or a speed")

    def stage_seconds(self, samples: int) -> float:
        """Seconds to retrain a stage on ``samples`` samples."""
        return self.overhead + self.seconds_per_sample * samples

    @classmethod
    def measured(
        cls, samples: Sequence[int], training: Sequence[float], wall: Sequence[float | None]
    ) -> RetrainSpeed | None:
        """The speed of stages trained on ``samples`` samples in ``training`` seconds of
        training loop and ``wall`` seconds from planning to swap (``None`` where not
        recorded): the median training seconds per sample, and the mean of what the rest
        of a stage took (a mean: the stages that follow another in one plan share its
        planning). ``None`` without a stage trained on samples."""
        rows = [(n, t, w) for n, t, w in zip(samples, training, wall, strict=True) if n > 0]
        if not rows:
            return None
        per_sample = float(np.median([t / n for n, t, _ in rows]))
        rest = [w - t for _, t, w in rows if w is not None]
        overhead = max(0.0, float(np.mean(rest))) if rest else 0.0
        if overhead == 0 and per_sample == 0:
            return None
        return cls(round(overhead, 4), round(per_sample, 6))


@dataclass(frozen=True)
class Availability:
    """Outcome of :func:`simulate_availability`: the share of time some shard served (the
    service answered) with its 95% confidence half-width over trials, the mean number of
    live shards and served depth per shard, and the mean length of an outage."""

    rate: float
    order: str
    up: float
    up_ci95: float
    live_shards: float
    served_depth: float
    outage_seconds: float
    outages_per_hour: float
    trials: int

    def to_dict(self) -> dict[str, float | int | str]:
        """Return a JSON-ready dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def simulate_availability(
    sizes: Sequence[Sequence[int]],
    rate: float,
    speed: RetrainSpeed,
    budget: int | None = None,
    sequences: Sequence[Sequence[Perm]] | None = None,
    order: str = "service-first",
    seconds: float = 600.0,
    trials: int = 20,
    seed: int = 0,
    min_depth: int | None = None,
) -> Availability:
    """Simulate ``trials`` runs of ``seconds`` each from the state ``sizes`` (live samples
    of each shard's slices, every sequence at full depth): deletions at ``rate`` per
    second, one retrainer at ``speed`` in ``order``. A shard is retrained, back to full
    depth, once its served depth falls below ``min_depth`` (default L: at any cut), as
    ``s3t serve --retrain depth:N`` does. ``sequences`` per shard default to
    ``cyclic(L, budget)``. A run ends early if every sample is deleted."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {list(ORDERS)}, got {order!r}")
    if rate <= 0:
        raise ConfigError(f"the deletion rate must be > 0 per second, got {rate!r}")
    if seconds <= 0 or trials < 1:
        raise ConfigError(f"need seconds > 0 and trials >= 1, got {seconds!r}, {trials!r}")
    slices = len(sizes[0]) if sizes else 0
    if not sizes or any(len(row) != slices for row in sizes):
        raise ConfigError("sizes must give every shard the same number of slices")
    if sequences is None:
        sequences = [cyclic(slices, budget or slices)] * len(sizes)
    rng = np.random.default_rng(seed)
    runs = [
        _run(
            [list(row) for row in sizes],
            [list(seqs) for seqs in sequences],
            rate,
            speed,
            order,
            seconds,
            rng,
            slices if min_depth is None else min_depth,
        )
        for _ in range(trials)
    ]
    up = np.array([r[0] for r in runs])
    outages = [o for r in runs for o in r[3]]
    total_seconds = sum(r[4] for r in runs)
    return Availability(
        rate=rate,
        order=order,
        up=float(up.mean()),
        up_ci95=float(1.96 * up.std(ddof=1) / np.sqrt(trials)) if trials > 1 else float("nan"),
        live_shards=float(np.mean([r[1] for r in runs])),
        served_depth=float(np.mean([r[2] for r in runs])),
        outage_seconds=float(np.mean(outages)) if outages else 0.0,
        outages_per_hour=3600.0 * len(outages) / total_seconds if total_seconds else 0.0,
        trials=trials,
    )


@dataclass(frozen=True)
class Capacity:
    """What a retraining speed keeps up with, in deletions per second (see
    :func:`capacity`)."""

    first_stages: float
    full_depth: float

    def to_dict(self) -> dict[str, float]:
        """Return a JSON-ready dict."""
        return {"first_stages": self.first_stages, "full_depth": self.full_depth}


def capacity(
    sizes: Sequence[Sequence[int]],
    speed: RetrainSpeed,
    budget: int | None = None,
    sequences: Sequence[Sequence[Perm]] | None = None,
) -> Capacity:
    """Closed-form deletion rates a retrainer at ``speed`` keeps up with, for uniform
    deletions over the live samples ``sizes`` (per shard, per slice):

    - ``first_stages``: the highest rate λ at which rebuilding the stage 1 a deletion
      destroys (the one starting on the slice it hit, when one does) takes the retrainer
      no more than all of its time, λ·E[rebuild] ≤ 1. A rebuild of a stage on a slice of
      n samples takes T = overhead + seconds_per_sample·n and starts over whenever a
      deletion hits that slice meanwhile (rate λ·n/N), so it takes (e^{λnT/N} − 1)/(λn/N)
      on average;
    - ``full_depth``: the highest rate at which the retrainer also rebuilds every deeper
      stage a deletion cuts off (each sequence from the position of the slice it hit),
      ignoring restarts and the work successive deletions share — an optimistic bound.
    """
    slices = len(sizes[0]) if sizes else 0
    if sequences is None:
        sequences = [cyclic(slices, budget or slices)] * len(sizes)
    total = sum(sum(row) for row in sizes)
    if total == 0:
        return Capacity(float("inf"), float("inf"))
    cells = [
        (row[s], {seq[0] for seq in seqs}, s, k, seqs)
        for k, (row, seqs) in enumerate(zip(sizes, sequences, strict=True))
        for s in range(slices)
        if row[s] > 0
    ]

    def busy(rate: float) -> float:  # retraining seconds per second for stages 1
        work = 0.0
        for n, firsts, s, _, _ in cells:
            if s in firsts:
                hit = rate * n / total
                duration = speed.stage_seconds(n)
                work += hit * float(np.expm1(hit * duration)) / hit
        return work

    low, high = 0.0, 1.0
    while busy(high) < 1.0 and high < 1e9:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if busy(middle) < 1.0 else (low, middle)
    per_deletion = 0.0  # seconds of retraining a deletion causes, on average
    for n, _, s, k, seqs in cells:
        rebuilt: set[tuple[int, ...]] = set()
        for seq in seqs:
            position = list(seq).index(s)
            rebuilt |= {tuple(seq[: i + 1]) for i in range(position, slices)}
        seconds = sum(speed.stage_seconds(sum(sizes[k][x] for x in p)) for p in rebuilt)
        per_deletion += n / total * seconds
    return Capacity(float(f"{low:.3g}"), float(f"{1 / per_deletion:.3g}"))


def sustainable_rate(
    sizes: Sequence[Sequence[int]],
    speed: RetrainSpeed,
    budget: int | None = None,
    target: float = 0.99,
    order: str = "service-first",
    seconds: float = 300.0,
    trials: int = 8,
    seed: int = 0,
    min_depth: int | None = None,
) -> float:
    """The highest deletion rate (per second, to two significant digits) at which the
    simulated service is up at least ``target`` of the time, retraining at ``speed``
    (see :func:`simulate_availability`)."""
    if not 0 < target < 1:
        raise ConfigError(f"target must be in (0, 1), got {target!r}")

    def holds(rate: float) -> bool:
        result = simulate_availability(
            sizes, rate, speed, budget, None, order, seconds, trials, seed, min_depth
        )
        return result.up >= target

    low, high = 0.0, 1.0 / speed.stage_seconds(max(1, min(min(r) for r in sizes)))
    while holds(high):
        low, high = high, high * 2
        if high > 1e6:
            return float("inf")
    while high - low > 0.01 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return float(f"{low:.2g}")


def _run(
    sizes: list[list[int]],
    sequences: list[list[Perm]],
    rate: float,
    speed: RetrainSpeed,
    order: str,
    horizon: float,
    rng: np.random.Generator,
    min_depth: int,
) -> tuple[float, float, float, list[float], float]:
    """One run: (share of time up, mean live shards, mean served depth, outage lengths,
    seconds simulated)."""
    shards, slices = len(sizes), len(sizes[0])
    depths = [[slices] * len(seqs) for seqs in sequences]
    live = np.array(sizes, dtype=np.int64)
    now, up_time, live_time, depth_time = 0.0, 0.0, 0.0, 0.0
    down_since: float | None = None
    outages: list[float] = []
    next_deletion = rng.exponential(1.0 / rate)
    stage: StageKey | None = None  # in training
    stage_done, stage_moot, stage_restoring = 0.0, False, False
    current_shard: int | None = None  # shard-by-shard: the shard being brought back
    targets: set[int] = set()  # shards selected for retraining, until back at full depth

    def served(k: int) -> int:
        return max((d for d in depths[k]), default=0)

    def pick() -> tuple[StageKey | None, bool]:
        nonlocal current_shard
        targets.update(k for k in range(shards) if served(k) < min_depth and live[k].sum())
        targets.difference_update(
            [k for k in targets if not order_stages(k, sequences[k], depths[k])]
        )
        needs = [
            ShardNeed(
                k,
                served(k),
                sequences[k],
                depths[k],
                {s: int(live[k, s]) for s in range(slices)},
            )
            for k in sorted(targets)
            if live[k].sum() > 0
        ]
        if order == "service-first":
            ranked = restore_order(needs)
            if not ranked:
                return None, False
            return ranked[0], served(ranked[0].shard) == 0
        if current_shard is None or not order_stages(
            current_shard, sequences[current_shard], depths[current_shard]
        ):
            waiting = [n.shard for n in needs if order_stages(n.shard, n.sequences, n.depths)]
            current_shard = waiting[0] if waiting else None
        if current_shard is None:
            return None, False
        keys = order_stages(current_shard, sequences[current_shard], depths[current_shard])
        return keys[0], False

    while now < horizon:
        if stage is None:
            stage, stage_restoring = pick()
            if stage is not None:
                samples = int(sum(live[stage.shard, s] for s in stage.prefix))
                stage_done, stage_moot = now + speed.stage_seconds(samples), False
        until = min(next_deletion, stage_done if stage is not None else np.inf, horizon)
        span = until - now
        alive = sum(served(k) > 0 for k in range(shards))
        if alive:
            up_time += span
        live_time += span * alive
        depth_time += span * sum(served(k) for k in range(shards))
        now = until
        if alive and down_since is not None:
            outages.append(now - span - down_since)
            down_since = None
        if now >= horizon:
            break
        if stage is not None and now == stage_done:
            if not stage_moot:
                depth = len(stage.prefix)
                k = stage.shard
                for b, seq in enumerate(sequences[k]):
                    if tuple(seq[:depth]) == stage.prefix and depths[k][b] == depth - 1:
                        depths[k][b] = depth
            stage = None
            continue
        # a deletion
        total = int(live.sum())
        if total == 0:
            break
        cell = int(rng.choice(live.size, p=(live / total).ravel()))
        k, s = divmod(cell, slices)
        live[k, s] -= 1
        was_alive = [served(j) > 0 for j in range(shards)]
        for b, seq in enumerate(sequences[k]):
            j = seq.index(s) + 1
            if j <= depths[k][b]:
                depths[k][b] = j - 1
        if stage is not None and stage.shard == k:
            parent_cut = not any(
                tuple(seq[: len(stage.prefix)]) == stage.prefix
                and depths[k][b] >= len(stage.prefix) - 1
                for b, seq in enumerate(sequences[k])
            )
            stage_moot = stage_moot or s in stage.prefix or parent_cut
        died = any(w and served(j) == 0 for j, w in enumerate(was_alive))
        if (
            order == "service-first"
            and stage is not None
            and (stage_moot or (died and not stage_restoring))
        ):
            stage = None  # given up at once: pick again now
        if not any(served(j) > 0 for j in range(shards)) and down_since is None:
            down_since = now
        next_deletion = now + rng.exponential(1.0 / rate)
    if down_since is not None:
        outages.append(now - down_since)
    elapsed = max(now, 1e-12)
    return up_time / elapsed, live_time / elapsed, depth_time / elapsed / shards, outages, now
