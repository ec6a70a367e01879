"""Monte Carlo deletion-rate simulator, and the closed-form theory it is checked against.

A trial is a stream of deletion requests, each hitting one (shard, slice) drawn uniformly
or from a prior. Only the first hit of a slice matters (later hits find the slice already
dirty), so a trial reduces to the first-hit time f[k, s] of every slice. From those, in
closed vectorised form:

- sequence π of shard k keeps depth d after r requests iff min_{j<d} f[k, π_j] > r;
- the shard serves depth ≥ d iff some sequence does: G[k, d] = max_π min_{j<d} f[k, π_j] > r;
- the service fails at the request δ = max_k G[k, 1] (every shard lost every model).

Served depth after r requests is #{d : G[k, d] > r}; averaging that over trials needs only
a histogram of G, so curves cost O(trials·m·L + horizon).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from s3t.core.sequences import Perm
from s3t.errors import ConfigError, SequenceError

MODES = ("s3t", "sisa-retrain")


def harmonic(n: int) -> float:
    """Return H(n) = Σ_{k≤n} 1/k."""
    return float(np.sum(1.0 / np.arange(1, n + 1))) if n > 0 else 0.0


def theoretical_delta(shards: int, slices: int, budget: int) -> float:
    """Expected deletions until service failure under a uniform prior:
    δ = m·L·H(m·min(B, L)) (coupon collector over the m·B' first slices)."""
    return shards * slices * harmonic(shards * min(budget, slices))


def theoretical_delta_sisa_retrain(shards: int) -> float:
    """Expected deletions until every shard is down when SISA retrains a shard on any hit:
    m·H(m)."""
    return shards * harmonic(shards)


class DeltaStatistics:
    """What simulation outcomes share: δ per trial (the request at which service failed)
    and the mean served depth per shard after r requests."""

    deltas: np.ndarray
    depth_curve: np.ndarray

    @property
    def mean(self) -> float:
        """Mean number of requests served up to and including the one that failed service."""
        return float(self.deltas.mean())

    @property
    def ci95(self) -> float:
        """Half-width of the normal-approximation 95% confidence interval of :attr:`mean`."""
        n = len(self.deltas)
        return float(1.96 * self.deltas.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    def depth_after(self, r: int) -> float:
        """Mean served depth per shard after r requests."""
        return float(self.depth_curve[min(r, len(self.depth_curve) - 1)])


@dataclass(frozen=True)
class SimulationResult(DeltaStatistics):
    """Outcome of :func:`simulate`. Curves are indexed by the number of requests r = 0..horizon."""

    deltas: np.ndarray  # (trials,) request index (1-based) at which service failed
    depth_curve: np.ndarray  # (horizon+1,) mean served depth per shard (dead shards count 0)
    live_curve: np.ndarray  # (horizon+1,) mean number of live shards
    shards: int
    slices: int
    budget: int
    theory: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def simulate(
    shards: int,
    sequences: Sequence[Sequence[Perm]] | Sequence[Perm],
    trials: int = 1000,
    prior: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    horizon: int | None = None,
    mode: str = "s3t",
) -> SimulationResult:
    """Simulate deletion streams against ``shards`` shards.

    ``sequences`` is one list of sequences shared by every shard, or one list per shard
    (sharing a budget B). ``prior`` is per slice (length L, the same for every shard) or per
    shard and slice ((m, L)); each request picks a shard uniformly in the first case.
    ``mode='sisa-retrain'`` models SISA that takes a shard down on any hit (to retrain it).
    ``horizon`` bounds the curves (default: about twice the mean δ).
    """
    per_shard = _per_shard_sequences(shards, sequences)
    slices = len(per_shard[0][0])
    budget = len(per_shard[0])
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials!r}")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    cells = _cell_probabilities(shards, slices, prior)
    rng = np.random.default_rng(seed)

    first = _first_hits(rng, cells, trials, per_shard, mode)  # (trials, m, L)
    levels = loss_times(first, per_shard, mode)  # (trials, m, L): G[:, k, d-1]
    deltas = levels[:, :, 0].max(axis=1)

    if horizon is None:
        horizon = int(np.ceil(2 * deltas.mean())) + 1
    counts = np.bincount(np.minimum(levels, horizon + 1).ravel(), minlength=horizon + 2)
    # depth(r) summed over trials and shards = #{entries with G > r}
    alive_entries = counts[::-1].cumsum()[::-1]  # alive_entries[r] = #{G >= r}
    depth_curve = alive_entries[1 : horizon + 2] / (trials * shards)
    live_counts = np.bincount(
        np.minimum(levels[:, :, 0], horizon + 1).ravel(), minlength=horizon + 2
    )
    live_curve = live_counts[::-1].cumsum()[::-1][1 : horizon + 2] / trials

    uniform = prior is None or np.allclose(cells, cells.flat[0])
    theory: float | None = None
    if uniform:
        if mode == "s3t":
            distinct_first = min(len({seq[0] for seq in shard}) for shard in per_shard)
            theory = theoretical_delta(shards, slices, distinct_first)
        else:
            theory = theoretical_delta_sisa_retrain(shards)
    return SimulationResult(
        deltas=deltas.astype(np.float64),
        depth_curve=depth_curve.astype(np.float64),
        live_curve=live_curve.astype(np.float64),
        shards=shards,
        slices=slices,
        budget=budget,
        theory=theory,
    )


def _per_shard_sequences(
    shards: int, sequences: Sequence[Sequence[Perm]] | Sequence[Perm]
) -> list[list[Perm]]:
    if not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"shards must be an integer >= 1, got {shards!r}")
    if not sequences:
        raise SequenceError("no sequences given")
    first = sequences[0]
    nested = len(first) > 0 and not isinstance(first[0], (int, np.integer))
    lists: list[list[Perm]]
    if nested:
        lists = [[_as_perm(seq) for seq in shard] for shard in sequences]
    else:
        lists = [[_as_perm(seq) for seq in sequences]] * shards
    if len(lists) != shards:
        raise SequenceError(f"got sequences for {len(lists)} shards, expected {shards}")
    slices = len(lists[0][0])
    for shard in lists:
        if len(shard) != len(lists[0]):
            raise SequenceError("every shard must have the same budget of sequences")
        for seq in shard:
            if sorted(seq) != list(range(slices)):
                raise SequenceError(
                    f"a sequence must be a permutation of 0..{slices - 1}, got {list(seq)!r}"
                )
    return lists


def _as_perm(seq: object) -> Perm:
    return tuple(int(x) for x in seq)  # type: ignore[attr-defined]


def _cell_probabilities(
    shards: int, slices: int, prior: Sequence[float] | np.ndarray | None
) -> np.ndarray:
    if prior is None:
        return np.full((shards, slices), 1.0 / (shards * slices))
    p = np.asarray(prior, dtype=np.float64)
    if p.shape == (slices,):
        p = np.tile(p, (shards, 1))
    if p.shape != (shards, slices):
        raise SequenceError(
            f"prior must have {slices} values (one per slice) or shape ({shards}, {slices}), "
            f"got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise SequenceError(f"prior must be finite, >= 0 and not all zero, got {p.tolist()!r}")
    if p.shape[0] == shards and np.asarray(prior).ndim == 1:
        p = p / p.sum(axis=1, keepdims=True) / shards
    return np.asarray(p / p.sum(), dtype=np.float64)


def _first_hits(
    rng: np.random.Generator,
    cells: np.ndarray,
    trials: int,
    per_shard: list[list[Perm]],
    mode: str,
) -> np.ndarray:
    """Return first-hit times (1-based request index; a large sentinel if never) of every
    cell, drawing request streams chunk by chunk until every trial has failed."""
    shards, slices = cells.shape
    n = shards * slices
    cdf = np.cumsum(cells.ravel())
    cdf[-1] = 1.0
    sentinel = np.iinfo(np.int64).max // 4
    first = np.full((trials, n), sentinel, dtype=np.int64)
    needed = np.zeros((shards, slices), dtype=bool)
    if mode == "s3t":
        for k, shard in enumerate(per_shard):
            for seq in shard:
                needed[k, seq[0]] = True
    else:
        needed[:] = True  # failure needs each shard hit once; checked below
    needed_flat = needed.ravel()
    reachable = cells.ravel() > 0
    if mode == "s3t" and not np.all(reachable[needed_flat]):
        never = [divmod(int(c), slices) for c in np.flatnonzero(needed_flat & ~reachable)]
        raise ConfigError(
            f"the prior never deletes from (shard, slice) {never[:5]}, the first slice of a "
            "sequence: that shard never fails and δ is infinite; give every first slice p > 0"
        )
    if mode == "sisa-retrain" and not np.all(reachable.reshape(shards, slices).any(axis=1)):
        raise ConfigError("the prior never deletes from some shard: δ is infinite")
    pending = np.arange(trials)
    offset = 0
    chunk = max(64, int(2 * n * (np.log(n) + 1)))
    while pending.size:
        draws = np.searchsorted(cdf, rng.random((pending.size, chunk)), side="right")
        draws = np.minimum(draws, n - 1)
        times = np.broadcast_to(np.arange(offset + 1, offset + chunk + 1), draws.shape)
        rows = np.broadcast_to(pending[:, None], draws.shape)
        np.minimum.at(first, (rows.ravel(), draws.ravel()), times.ravel())
        offset += chunk
        done_cells = first[pending] < sentinel
        if mode == "s3t":
            failed = np.all(done_cells | ~needed_flat, axis=1)
        else:
            failed = np.all(done_cells.reshape(-1, shards, slices).any(axis=2), axis=1)
        pending = pending[~failed]
    return first.reshape(trials, shards, slices)


def loss_times(first: np.ndarray, per_shard: list[list[Perm]], mode: str) -> np.ndarray:
    """Return G[t, k, d-1]: the request at which shard k stops serving depth ≥ d."""
    slices = first.shape[2]
    if mode == "sisa-retrain":
        dead = first.min(axis=2)  # any hit takes the whole shard down
        return np.repeat(dead[:, :, None], slices, axis=2)
    levels = np.empty_like(first)
    for k, shard in enumerate(per_shard):
        order = np.asarray(shard)  # (B, L)
        hits = first[:, k, :][:, order]  # (trials, B, L)
        prefix_min = np.minimum.accumulate(hits, axis=2)
        levels[:, k, :] = prefix_min.max(axis=1)
    return levels


@dataclass(frozen=True)
class BudgetRow:
    """One budget of :func:`budget_sweep`: simulated δ next to the closed form and SISA."""

    budget: int
    method: str
    delta_mean: float
    delta_ci95: float
    delta_theory: float | None
    ratio_over_sisa: float
    depth_curve: np.ndarray
    live_curve: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """Return the JSON-ready summary (curves omitted)."""
        return {
            "budget": self.budget,
            "method": self.method,
            "delta_mean": round(self.delta_mean, 4),
            "delta_ci95": round(self.delta_ci95, 4),
            "delta_theory": None if self.delta_theory is None else round(self.delta_theory, 4),
            "ratio_over_sisa": round(self.ratio_over_sisa, 4),
        }


@dataclass(frozen=True)
class Sweep:
    """Result of :func:`budget_sweep`: one row per budget plus the two SISA references."""

    shards: int
    slices: int
    trials: int
    rows: list[BudgetRow]
    sisa: SimulationResult
    sisa_retrain: SimulationResult


def budget_sweep(
    shards: int,
    slices: int,
    budgets: Sequence[int],
    method: str = "cyclic",
    prior: Sequence[float] | None = None,
    trials: int = 2000,
    seed: int = 0,
    horizon: int | None = None,
) -> Sweep:
    """Simulate δ for several budgets of one selection method, next to SISA (one sequence
    per shard) and SISA that retrains a shard on any hit. Curves share one horizon."""
    from s3t.core.sequences import select_sequences

    if not budgets:
        raise ConfigError("give at least one budget")
    if horizon is None:
        probe_seqs = select_sequences(method, slices, max(budgets), prior, seed)
        probe = simulate(shards, probe_seqs, min(trials, 500), prior, seed + 1)
        horizon = int(np.ceil(1.5 * probe.mean)) + 1
    sisa = simulate(shards, [tuple(range(slices))], trials, prior, seed, horizon)
    retrain = simulate(
        shards, [tuple(range(slices))], trials, prior, seed, horizon, mode="sisa-retrain"
    )
    rows = []
    for budget in budgets:
        seqs = select_sequences(method, slices, budget, prior, seed)
        result = simulate(shards, seqs, trials, prior, seed, horizon)
        rows.append(
            BudgetRow(
                budget=budget,
                method=method,
                delta_mean=result.mean,
                delta_ci95=result.ci95,
                delta_theory=result.theory,
                ratio_over_sisa=result.mean / sisa.mean,
                depth_curve=result.depth_curve,
                live_curve=result.live_curve,
            )
        )
    return Sweep(shards, slices, trials, rows, sisa, retrain)


def expected_requests_to_cover(probabilities: Sequence[float]) -> float:
    """Expected number of i.i.d. requests until every listed cell has been hit at least
    once, when each request hits cell c with probability p_c (cells not listed absorb the
    rest): ∫₀^∞ 1 − Π_c (1 − e^{−p_c t}) dt (Poissonisation). 0 for no cells."""
    from scipy.integrate import quad

    p = np.asarray([q for q in probabilities if q > 0], dtype=np.float64)
    if len(p) == 0:
        return 0.0 if len(probabilities) == 0 else float("inf")

    def survival(t: float) -> float:
        return float(1.0 - np.prod(-np.expm1(-p * t)))

    upper = float(np.log(len(p) * 1e12) / p.min())
    value, _ = quad(survival, 0.0, upper, limit=500)
    return float(value)
