"""Data subjects: the people samples belong to. Deletion requests come from people, and a
person's request covers every sample they contributed.

Placement (:func:`place_subjects`) keeps a subject's samples together: one shard, and one
slice whenever the subject fits, so that a subject's deletion truncates sequences at one
position of one shard. Subjects are packed largest first into the emptiest shard, then
into the emptiest slice of it (longest-processing-time packing), which bounds imbalance:
shard sizes differ by at most the largest subject piece, and slice sizes within a shard
too. A subject larger than a shard's share (n/m) is split across shards, one larger than
a slice's share across slices (the layout reports them). With risk scores, each shard's
subjects are laid out in order of increasing risk instead (risky subjects in late slices,
which BMS then puts late in the sequences). Everything is a pure function of the ids, the
subjects, the seed and the scores.

Deletion streams made of subject requests are simulated in :mod:`s3t.core.subject_streams`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from s3t.errors import ConfigError

SIZE_DISTRIBUTIONS = ("zipf", "lognormal")


def _key(seed: int, name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{seed}\x1e{name}".encode(), digest_size=8).digest(), "big"
    )


def place_subjects(
    ids: Sequence[str],
    subject_of: Mapping[str, str],
    shards: int,
    slices: int,
    seed: int = 0,
    risk: Mapping[str, float] | None = None,
) -> dict[str, tuple[int, int]]:
    """Assign every id to one (shard, slice), keeping subjects together (module docstring)."""
    groups: dict[str, list[str]] = {}
    for sid in ids:
        groups.setdefault(subject_of.get(sid, sid), []).append(sid)
    for members in groups.values():
        members.sort(key=lambda s: _key(seed, s))
    subject_risk = {
        g: sum((risk or {}).get(s, 0.0) for s in members) / len(members)
        for g, members in groups.items()
    }
    shard_cap = math.ceil(len(ids) / shards)
    pieces = [
        (g, members[i : i + shard_cap])
        for g, members in groups.items()
        for i in range(0, len(members), shard_cap)
    ]
    pieces.sort(key=lambda p: (-len(p[1]), _key(seed, p[0]), p[1][0]))
    load = [0] * shards
    per_shard: list[list[tuple[str, list[str]]]] = [[] for _ in range(shards)]
    for piece in pieces:
        k = min(range(shards), key=lambda i: (load[i], i))
        per_shard[k].append(piece)
        load[k] += len(piece[1])
    assignment: dict[str, tuple[int, int]] = {}
    for k, mine in enumerate(per_shard):
        slice_cap = max(1, math.ceil(load[k] / slices))
        parts = [
            (g, members[i : i + slice_cap])
            for g, members in mine
            for i in range(0, len(members), slice_cap)
        ]
        if risk:
            _by_risk(parts, subject_risk, slices, load[k], seed, k, assignment)
        else:
            _balanced(parts, slices, seed, k, assignment)
    return assignment


def _balanced(
    parts: list[tuple[str, list[str]]],
    slices: int,
    seed: int,
    shard: int,
    assignment: dict[str, tuple[int, int]],
) -> None:
    load = [0] * slices
    for _, members in sorted(parts, key=lambda p: (-len(p[1]), _key(seed, p[0]), p[1][0])):
        s = min(range(slices), key=lambda i: (load[i], i))
        load[s] += len(members)
        for sid in members:
            assignment[sid] = (shard, s)


def _by_risk(
    parts: list[tuple[str, list[str]]],
    risk: Mapping[str, float],
    slices: int,
    total: int,
    seed: int,
    shard: int,
    assignment: dict[str, tuple[int, int]],
) -> None:
    """Contiguous runs of increasing risk: each part goes to the slice holding its midpoint."""
    done = 0
    for _, members in sorted(parts, key=lambda p: (risk[p[0]], _key(seed, p[0]), p[1][0])):
        middle = done + len(members) / 2
        s = min(slices - 1, int(middle * slices / max(total, 1)))
        done += len(members)
        for sid in members:
            assignment[sid] = (shard, s)


def subject_sizes(
    samples: int, mean: float = 5.0, distribution: str = "zipf", seed: int = 0
) -> np.ndarray:
    """Sizes of data subjects that together hold ``samples`` samples, with the given mean
    (``samples / round(samples / mean)`` exactly), drawn (seeded) from a heavy-tailed
    distribution: ``zipf`` (a discrete power law on 1..50·mean, its exponent fitted to the
    mean) or ``lognormal`` (sigma 1). ``round(samples / mean)`` sizes are drawn and scaled
    to add up to ``samples`` (each at least 1): the draws of a heavy tail fall short of their
    distribution's mean more often than not, and a run asked for mean 5 should have it."""
    if distribution not in SIZE_DISTRIBUTIONS:
        raise ConfigError(f"distribution must be one of {SIZE_DISTRIBUTIONS}, got {distribution!r}")
    if mean < 1 or samples < 1:
        raise ConfigError(f"mean must be >= 1 and samples >= 1, got {mean!r}, {samples!r}")
    rng = np.random.default_rng(seed)
    values = np.arange(1, min(samples, int(50 * mean)) + 1, dtype=np.float64)
    p = np.full(len(values), 1.0 / len(values))
    if distribution == "zipf":
        low, high = 1.01, 6.0  # the exponent whose truncated mean is ``mean``
        for _ in range(60):
            a = (low + high) / 2
            p = values**-a
            if (values * p).sum() / p.sum() > mean:
                low = a
            else:
                high = a
        p = values**-a
        p /= p.sum()
    count = min(samples, max(1, round(samples / mean)))
    if distribution == "zipf":
        drawn = rng.choice(values, size=count, p=p)
    else:  # lognormal with sigma 1 and this mean
        drawn = np.maximum(1, np.rint(rng.lognormal(math.log(mean) - 0.5, 1.0, count)))
    scaled = np.asarray(drawn, dtype=np.float64) * (samples / float(np.sum(drawn)))
    sizes: np.ndarray = np.maximum(1, np.floor(scaled)).astype(np.int64)
    short = samples - int(sizes.sum())
    if short > 0:  # the largest fractional parts get the samples rounding left over
        sizes[np.argsort(np.floor(scaled) - scaled, kind="stable")[:short]] += 1
    while short < 0:  # sizes raised to 1 took samples from the largest subjects
        largest = np.argsort(-sizes, kind="stable")[: min(-short, count)]
        largest = largest[sizes[largest] > 1]
        sizes[largest] -= 1
        short += len(largest)
    return sizes


def subject_ids(sizes: Sequence[int] | np.ndarray) -> list[str]:
    """One subject name per sample, for subjects of the given sizes (subject ``p<i>``)."""
    return [f"p{i}" for i, size in enumerate(sizes) for _ in range(int(size))]
