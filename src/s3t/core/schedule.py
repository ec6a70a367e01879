"""The training schedule: which stages a shard needs, in which order, with which seed and
which samples. Pure functions, shared by first training and retraining.

A stage is identified by its shard and its *prefix*: stage i of sequence π trains block i
on slices π[:i], so sequences that share a prefix share the stage. Seeds are derived from
(seed, shard, prefix) only, never from the data, so retraining a stage on fewer samples
runs exactly the computation a from-scratch training on those samples would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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
