"""Which model each shard serves: the sequence with the longest *servable* prefix.

A sequence's valid depth is what Algorithm 4 leaves of it. Its servable depth can be lower:
a stage trained on no sample at all (every sample of its cumulative slices was deleted)
is a fine parent for the next stage but must never be the top of a served model, and a
quarantined (corrupted) stage ends the usable prefix. Pure functions over sequence rows,
shared by serving, status, health, export and the background retrainer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class SequenceLike(Protocol):
    """What selection reads of a sequence row."""

    @property
    def shard(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def positions(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Served:
    """The model one shard serves: its sequence, depth and stage artifacts (1..depth)."""

    shard: int
    seq: int
    depth: int
    artifacts: tuple[str, ...]


def servable_depth(
    row: SequenceLike, untrained: Collection[str] = (), unusable: Collection[str] = ()
) -> int:
    """The deepest d <= the row's valid depth whose stages 1..d are all usable and whose
    stage d was trained on at least one sample (0: the sequence serves nothing)."""
    chain = row.positions[: row.depth]
    usable = len(chain)
    for i, artifact in enumerate(chain):
        if artifact in unusable:
            usable = i
            break
    for d in range(usable, 0, -1):
        if chain[d - 1] not in untrained:
            return d
    return 0


def serving_choice(
    rows: Iterable[SequenceLike],
    budget: int | None = None,
    untrained: Collection[str] = (),
    unusable: Collection[str] = (),
) -> dict[int, Served]:
    """Each live shard's served model: the longest servable prefix, the lowest sequence
    number among equals. ``budget`` limits the choice to each shard's first B sequences
    (selectors nest, so that is exactly the system trained with budget B). Dead shards are
    absent."""
    best: dict[int, Served] = {}
    for row in sorted(rows, key=lambda r: (r.shard, r.seq)):
        if budget is not None and row.seq >= budget:
            continue
        depth = servable_depth(row, untrained, unusable)
        if depth == 0:
            continue
        current = best.get(row.shard)
        if current is None or depth > current.depth:
            best[row.shard] = Served(row.shard, row.seq, depth, row.positions[:depth])
    return best


def served_depths(
    rows: Iterable[SequenceLike],
    untrained: Collection[str] = (),
    unusable: Collection[str] = (),
    overrides: Mapping[tuple[int, int], int] | None = None,
) -> dict[int, int]:
    """Each shard's served depth (0 = dead), for every shard that has a sequence.
    ``overrides`` replaces some sequences' valid depths, keyed by (shard, seq)."""
    out: dict[int, int] = {}
    for row in rows:
        if overrides and (row.shard, row.seq) in overrides:
            row = _Row(row.shard, row.seq, overrides[(row.shard, row.seq)], row.positions)
        out[row.shard] = max(out.get(row.shard, 0), servable_depth(row, untrained, unusable))
    return out


@dataclass(frozen=True)
class _Row:
    shard: int
    seq: int
    depth: int
    positions: tuple[str, ...]
