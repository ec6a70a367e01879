"""Deletion streams made of data-subject requests: each request is one subject, drawn
uniformly without replacement, and hits every (shard, slice) cell that holds one of its
samples. :func:`compare_partitioning` runs them for subject-aware and subject-oblivious
partitioning of the same samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s3t.core.partition import partition
from s3t.core.sequences import Perm, select_sequences
from s3t.core.simulate import DeltaStatistics, loss_times, theoretical_delta
from s3t.core.subjects import subject_ids
from s3t.errors import ConfigError


@dataclass(frozen=True)
class SubjectStreams(DeltaStatistics):
    """Deletion streams in subject requests for one layout: δ per trial (requests until
    every shard lost every model) and mean served depth after r requests."""

    deltas: np.ndarray
    depth_curve: np.ndarray
    live_curve: np.ndarray


def simulate_subjects(
    cells: Sequence[Sequence[tuple[int, int]]],
    sequences: Sequence[Sequence[Perm]],
    trials: int = 1000,
    seed: int = 0,
    horizon: int | None = None,
) -> SubjectStreams:
    """Simulate deletion streams in which each request is one subject, drawn uniformly
    without replacement; ``cells[i]`` are the (shard, slice) cells of subject i's samples,
    ``sequences[k]`` shard k's sequences."""
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials!r}")
    shards, slices = len(sequences), len(sequences[0][0])
    subjects = len(cells)
    rows = np.asarray([i for i, c in enumerate(cells) for _ in c], dtype=np.int64)
    flat = np.asarray([k * slices + s for c in cells for k, s in c], dtype=np.int64)
    rng = np.random.default_rng(seed)
    never = subjects + 1
    first = np.empty((trials, shards, slices), dtype=np.int64)
    for t in range(trials):
        order = rng.permutation(subjects) + 1  # request number of each subject, 1-based
        hit = np.full(shards * slices, never, dtype=np.int64)
        np.minimum.at(hit, flat, order[rows])
        first[t] = hit.reshape(shards, slices)
    levels = loss_times(first, [list(map(tuple, s)) for s in sequences], "s3t")
    deltas = levels[:, :, 0].max(axis=1)
    if horizon is None:
        horizon = int(np.ceil(2 * deltas.mean())) + 1
    counts = np.bincount(np.minimum(levels, horizon + 1).ravel(), minlength=horizon + 2)
    alive = counts[::-1].cumsum()[::-1]
    live = np.bincount(np.minimum(levels[:, :, 0], horizon + 1).ravel(), minlength=horizon + 2)
    return SubjectStreams(
        deltas=deltas.astype(np.float64),
        depth_curve=(alive[1 : horizon + 2] / (trials * shards)).astype(np.float64),
        live_curve=(live[::-1].cumsum()[::-1][1 : horizon + 2] / trials).astype(np.float64),
    )


@dataclass(frozen=True)
class PartitioningComparison:
    """Subject-aware vs subject-oblivious partitioning of the same samples and subjects."""

    aware: SubjectStreams
    oblivious: SubjectStreams
    subjects: int
    samples: int
    mean_subject_size: float
    largest_subject: int
    split_subjects: int
    sample_theory: float  # δ in *sample* requests under a uniform prior (closed form)


def compare_partitioning(
    sizes: Sequence[int] | np.ndarray,
    shards: int,
    slices: int,
    budget: int,
    trials: int = 1000,
    seed: int = 0,
    method: str = "cyclic",
) -> PartitioningComparison:
    """Place subjects of the given sizes both ways and simulate subject deletion streams."""
    owners = subject_ids(sizes)
    ids = [f"s{i}" for i in range(len(owners))]
    sequences = [select_sequences(method, slices, budget, seed=seed + k) for k in range(shards)]
    results = {}
    split = 0
    for name, subjects in (("aware", owners), ("oblivious", None)):
        layout = partition(ids, shards, slices, seed=seed, subjects=subjects)
        cells: dict[str, set[tuple[int, int]]] = {}
        for sid, owner in zip(ids, owners, strict=True):
            cells.setdefault(owner, set()).add(layout.assignment[sid])
        if subjects is not None:
            split = len(layout.split_subjects())
        results[name] = simulate_subjects(
            [sorted(c) for c in cells.values()], sequences, trials, seed
        )
    return PartitioningComparison(
        aware=results["aware"],
        oblivious=results["oblivious"],
        subjects=len(sizes),
        samples=int(sum(sizes)),
        mean_subject_size=float(np.mean(sizes)),
        largest_subject=int(max(sizes)),
        split_subjects=split,
        sample_theory=theoretical_delta(shards, slices, budget),
    )
