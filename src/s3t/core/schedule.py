"""The training schedule: which stages a shard needs, in which order, with which seed and
which samples. Pure functions, shared by first training and retraining.

A stage is identified by its shard and its *prefix*: stage i of sequence π trains block i
on slices π[:i], so sequences that share a prefix share the stage. Seeds are derived from
(seed, shard, prefix) only, never from the data, so retraining a stage on fewer samples
runs exactly the computation a from-scratch training on those samples would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from s3t.core.sequences import Perm


@dataclass(frozen=True, order=True)
class StageKey:
    """One stage: block ``len(prefix)`` of shard ``shard`` trained on slices ``prefix``."""

    shard: int
    prefix: tuple[int, ...]

    @property
    def stage(self) -> int:
        """1-based stage number (= block number)."""
        return len(self.prefix)

    @property
    def parent(self) -> StageKey | None:
        """The stage this one starts from (``None`` for stage 1)."""
        return StageKey(self.shard, self.prefix[:-1]) if len(self.prefix) > 1 else None

    def label(self) -> str:
        """Human-readable form, e.g. ``shard 0 · 2>0>1``."""
        return f"shard {self.shard} · {'>'.join(map(str, self.prefix))}"


def plan_stages(shard: int, sequences: Sequence[Perm], depths: Sequence[int]) -> list[StageKey]:
    """Return the stages needed to bring every sequence from its valid ``depth`` to full
    depth, each shared prefix once, in depth-first order (a parent before its children)."""
    needed: set[tuple[int, ...]] = set()
    for seq, depth in zip(sequences, depths, strict=True):
        for i in range(depth + 1, len(seq) + 1):
            needed.add(tuple(seq[:i]))
    # lexicographic order of prefixes is a depth-first walk of the prefix trie
    return [StageKey(shard, prefix) for prefix in sorted(needed)]


def next_stage(shard: int, sequences: Sequence[Perm], depths: Sequence[int]) -> StageKey | None:
    """Return the stage to train next for a shard: the next stage of the sequence closest to
    full depth (the lowest-numbered one among equals), so that the shard's served depth is
    restored as early as possible; ``None`` when every sequence is at full depth."""
    best: tuple[int, int] | None = None
    for b, (seq, depth) in enumerate(zip(sequences, depths, strict=True)):
        if depth < len(seq) and (best is None or depth > best[0]):
            best = (depth, b)
    if best is None:
        return None
    depth, b = best
    return StageKey(shard, tuple(sequences[b][: depth + 1]))


def order_stages(shard: int, sequences: Sequence[Perm], depths: Sequence[int]) -> list[StageKey]:
    """Every stage a shard still needs, in the order :func:`next_stage` would pick them
    one after another (each swapped stage raising every sequence that shares its prefix):
    served depth comes back as early as possible, and a parent always precedes its
    children."""
    current = list(depths)
    order: list[StageKey] = []
    while (key := next_stage(shard, sequences, current)) is not None:
        order.append(key)
        for b, seq in enumerate(sequences):
            if current[b] == key.stage - 1 and tuple(seq[: key.stage]) == key.prefix:
                current[b] = key.stage
    return order


@dataclass(frozen=True)
class ShardNeed:
    """What :func:`restore_order` reads of a shard: its served depth (0 = dead), its
    sequences with their valid depths, and the live samples of each of its slices."""

    shard: int
    served_depth: int
    sequences: Sequence[Perm]
    depths: Sequence[int]
    live: Mapping[int, int]


def restore_order(needs: Sequence[ShardNeed]) -> list[StageKey]:
    """Every stage these shards still need, in the order that gets service back soonest
    and keeps it up:

    1. one stage 1 for each dead shard, on the smallest live slice that starts one of its
       sequences — the quickest to train and the least likely to lose a sample to a
       deletion while it trains (the dead shard with the smallest such slice first);
    2. the other missing stages 1 of every shard, smallest slice first: a shard dies only
       once every slice that starts a valid sequence of it was hit, so each one is worth
       more to availability than any deeper stage;
    3. then the deeper stages, the shallowest served shard first, each shard in
       :func:`order_stages` order (its deepest sequence completed first).
    """
    restoring: list[tuple[int, int, StageKey]] = []  # (slice size, shard, stage 1)
    widening: list[tuple[int, int, StageKey]] = []
    deepening: list[tuple[int, int, list[StageKey]]] = []  # (served depth, shard, stages)
    for need in needs:
        firsts = sorted(
            {
                (need.live.get(seq[0], 0), seq[0])
                for seq, depth in zip(need.sequences, need.depths, strict=True)
                if depth == 0 and need.live.get(seq[0], 0) > 0
            }
        )
        for i, (size, first) in enumerate(firsts):
            bucket = restoring if i == 0 and need.served_depth == 0 else widening
            bucket.append((size, need.shard, StageKey(need.shard, (first,))))
        covered = {first for _, first in firsts}
        depths = [  # once those are trained, every sequence they start has depth 1
            max(d, 1) if seq[0] in covered else d
            for seq, d in zip(need.sequences, need.depths, strict=True)
        ]
        keys = order_stages(need.shard, need.sequences, depths)
        deepening.append((max(need.served_depth, 1), need.shard, keys))
    ordered = [key for _, _, key in sorted(restoring)] + [key for _, _, key in sorted(widening)]
    for _, _, keys in sorted(deepening, key=lambda r: (r[0], r[1])):
        ordered += keys
    return ordered


def stage_seed(seed: int, key: StageKey) -> int:
    """Return the training seed of a stage (63 bits), from (seed, shard, prefix) only."""
    text = f"{seed}|{key.shard}|{','.join(map(str, key.prefix))}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def samples_digest(ids: Iterable[str]) -> str:
    """Return the sha256 of a set of sample ids (sorted, newline-joined): the lineage hash."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def is_validation(sample_id: str, fraction: float, seed: int) -> bool:
    """Whether a sample is held out for validation: a keyed hash of its id, so the choice
    never changes when other samples come or go."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"val|{seed}|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def truncated_depth(sequence: Perm, depth: int, deleted_slices: Iterable[int]) -> int:
    """Algorithm 4: the depth of ``sequence`` after deletions in ``deleted_slices``. A hit
    in the slice at position j <= depth (1-based) cuts the sequence to depth j - 1."""
    for s in deleted_slices:
        j = sequence.index(s) + 1
        if j <= depth:
            depth = j - 1
    return depth
