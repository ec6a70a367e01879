"""Partitioning: every sample id goes to exactly one (shard, slice).

The layout is a pure function of the ids, a seed, and optionally labels and deletion-risk
scores; the order in which ids arrive never matters, because samples are ranked by a
keyed hash of their id. Shards are dealt round-robin over that ranking (so shard sizes
differ by at most one, and with labels every class is spread evenly over shards); slices
are dealt the same way within each shard. With risk scores, each shard's samples are cut
into contiguous runs of increasing risk instead, so risky samples share slices (SISA's
distribution-aware sharding) and every slice gets a deletion prior that sequence selection
can use to put risky slices late.

With data subjects (the people samples belong to), a subject's samples are kept together:
all in one shard, and in one slice whenever the subject fits (see
:func:`s3t.core.subjects.place_subjects`), so that one person's deletion request cuts one
sequence position of one shard instead of many.

A layout never moves a sample once placed: :meth:`Layout.add` puts new samples next to
their subject's, or into the smallest shard and slice; :meth:`Layout.remove` only takes
samples out.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from s3t.core.subjects import place_subjects
from s3t.errors import PartitionError, UnknownSampleError

SampleId = str


def sample_id(value: object) -> SampleId:
    """Return the canonical string form of a user's sample id (``str`` or ``int``).

    Ints become their decimal string, so ``7`` and ``"7"`` name the same sample.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise PartitionError(
            f"sample ids must be str or int, got {value!r} of type {type(value).__name__}"
        )
    text = str(int(value)) if isinstance(value, (int, np.integer)) else value
    if text == "":
        raise PartitionError("sample ids must not be empty strings")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PartitionError(
            f"sample ids must be valid Unicode text; {text!r} holds an unpaired surrogate at "
            f"position {exc.start}"
        ) from None
    return text


def _rank_key(seed: int, sid: SampleId) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{sid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Layout:
    """Where every sample lives, and each slice's deletion prior.

    ``assignment`` maps sample id → (shard, slice). ``risk`` holds the per-sample deletion
    risk scores when they were given (empty otherwise); ``subjects`` each sample's data
    subject when they were given (empty: every sample is its own subject).
    """

    shards: int
    slices: int
    seed: int
    assignment: Mapping[SampleId, tuple[int, int]]
    risk: Mapping[SampleId, float] = field(default_factory=dict)
    subjects: Mapping[SampleId, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignment", MappingProxyType(dict(self.assignment)))
        object.__setattr__(self, "risk", MappingProxyType(dict(self.risk)))
        object.__setattr__(self, "subjects", MappingProxyType(dict(self.subjects)))

    def subject_of(self, sid: SampleId) -> str:
        """The data subject of a sample (the sample itself when none was given)."""
        return self.subjects.get(sid, sid)

    def subject_cells(self) -> dict[str, set[tuple[int, int]]]:
        """Every subject's (shard, slice) cells."""
        out: dict[str, set[tuple[int, int]]] = {}
        for sid, cell in self.assignment.items():
            out.setdefault(self.subject_of(sid), set()).add(cell)
        return out

    def split_subjects(self) -> dict[str, int]:
        """Subjects too large to keep in one slice: subject -> how many cells hold them."""
        return {s: len(c) for s, c in self.subject_cells().items() if len(c) > 1}

    def __len__(self) -> int:
        return len(self.assignment)

    def __contains__(self, sid: object) -> bool:
        return sid in self.assignment

    def locate(self, sid: object) -> tuple[int, int]:
        """Return (shard, slice) of one sample; :class:`UnknownSampleError` if absent."""
        key = sample_id(sid)
        if key not in self.assignment:
            raise UnknownSampleError([key])
        return self.assignment[key]

    def members(self, shard: int, slice_: int | None = None) -> list[SampleId]:
        """Return the sorted ids of one shard, or of one slice of it."""
        return sorted(
            sid
            for sid, (k, s) in self.assignment.items()
            if k == shard and (slice_ is None or s == slice_)
        )

    def slice_sizes(self) -> np.ndarray:
        """Return an (shards, slices) array of sample counts."""
        sizes = np.zeros((self.shards, self.slices), dtype=np.int64)
        for k, s in self.assignment.values():
            sizes[k, s] += 1
        return sizes

    def shard_sizes(self) -> np.ndarray:
        """Return the number of samples in every shard."""
        return np.asarray(self.slice_sizes().sum(axis=1))

    def priors(self) -> np.ndarray:
        """Return an (shards, slices) array: the probability that a deletion request aimed at
        a shard hits each of its slices. Proportional to the summed risk scores when given,
        to slice sizes otherwise (a uniform per-sample prior); every row sums to 1."""
        sizes = self.slice_sizes().astype(np.float64)
        weights = np.zeros_like(sizes)
        if self.risk:
            for sid, (k, s) in self.assignment.items():
                weights[k, s] += self.risk.get(sid, 0.0)
        out = np.empty_like(sizes)
        for k in range(self.shards):
            row = weights[k] if weights[k].sum() > 0 else sizes[k]
            total = row.sum()
            out[k] = row / total if total > 0 else np.full(self.slices, 1.0 / self.slices)
        return out

    def add(
        self,
        ids: Iterable[object],
        labels: Sequence[Hashable] | np.ndarray | None = None,
        risk: Sequence[float] | np.ndarray | None = None,
        subjects: Sequence[object] | None = None,
    ) -> Layout:
        """Return a layout with new samples placed: next to their subject's samples (the
        cell holding most of them) when the subject is known, else into the currently
        smallest shard (lowest index on ties) and its smallest slice; no sample moves."""
        new = _validated_ids(ids)
        clash = sorted(set(new) & set(self.assignment))
        if clash:
            raise PartitionError(f"sample ids already in the layout: {clash[:10]!r}")
        scores = _validated_risk(risk, len(new))
        if labels is not None and len(labels) != len(new):
            raise PartitionError(f"got {len(labels)} labels for {len(new)} ids")
        owners = _validated_subjects(subjects, new)
        homes: dict[str, Counter[tuple[int, int]]] = {}
        for sid, cell in self.assignment.items():
            homes.setdefault(self.subject_of(sid), Counter())[cell] += 1
        sizes = self.slice_sizes()
        assignment = dict(self.assignment)
        for sid in sorted(new, key=lambda x: _rank_key(self.seed, x)):
            owner = owners.get(sid, sid)
            if owner in homes:
                k, s = min(homes[owner], key=lambda c: (-homes[owner][c], c))
            else:
                k = int(np.argmin(sizes.sum(axis=1)))
                s = int(np.argmin(sizes[k]))
            assignment[sid] = (k, s)
            homes.setdefault(owner, Counter())[(k, s)] += 1
            sizes[k, s] += 1
        new_risk = dict(self.risk)
        if scores is not None:
            new_risk.update(zip(new, scores.tolist(), strict=True))
        new_subjects = dict(self.subjects) | {s: o for s, o in owners.items() if o != s}
        return Layout(self.shards, self.slices, self.seed, assignment, new_risk, new_subjects)

    def remove(self, ids: Iterable[object]) -> Layout:
        """Return a layout without the given samples; every other sample stays put."""
        gone = {sample_id(i) for i in ids}
        unknown = gone - set(self.assignment)
        if unknown:
            raise UnknownSampleError(unknown)
        assignment = {k: v for k, v in self.assignment.items() if k not in gone}
        risk = {k: v for k, v in self.risk.items() if k not in gone}
        subjects = {k: v for k, v in self.subjects.items() if k not in gone}
        return Layout(self.shards, self.slices, self.seed, assignment, risk, subjects)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form of the layout."""
        return {
            "shards": self.shards,
            "slices": self.slices,
            "seed": self.seed,
            "assignment": {k: list(v) for k, v in sorted(self.assignment.items())},
            "risk": dict(sorted(self.risk.items())),
            "subjects": dict(sorted(self.subjects.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild a layout written by :meth:`to_dict`."""
        return cls(
            shards=int(data["shards"]),
            slices=int(data["slices"]),
            seed=int(data["seed"]),
            assignment={k: (int(v[0]), int(v[1])) for k, v in data["assignment"].items()},
            risk={k: float(v) for k, v in data.get("risk", {}).items()},
            subjects={k: str(v) for k, v in data.get("subjects", {}).items()},
        )


def partition(
    ids: Iterable[object],
    shards: int,
    slices: int,
    seed: int = 0,
    labels: Sequence[Hashable] | np.ndarray | None = None,
    risk: Sequence[float] | np.ndarray | None = None,
    subjects: Sequence[object] | None = None,
) -> Layout:
    """Assign every id to one (shard, slice).

    ``labels`` (one per id) stratify by class; ``risk`` (one non-negative score per id)
    groups high-risk samples into the same slices; ``subjects`` (one data subject per id)
    keeps each subject's samples in one shard and as few slices as balance allows (labels
    are then not used). Raises :class:`PartitionError` for duplicate ids, counts below 1,
    or fewer samples in a shard than slices.
    """
    if not isinstance(shards, int) or shards < 1:
        raise PartitionError(f"shards must be an integer >= 1, got {shards!r}")
    if not isinstance(slices, int) or slices < 1:
        raise PartitionError(f"slices must be an integer >= 1, got {slices!r}")
    keys = _validated_ids(ids)
    if labels is not None and len(labels) != len(keys):
        raise PartitionError(f"got {len(labels)} labels for {len(keys)} ids")
    scores = _validated_risk(risk, len(keys))
    smallest = len(keys) // shards
    if smallest < slices:
        raise PartitionError(
            f"{len(keys)} samples over {shards} shards leaves {smallest} samples in the "
            f"smallest shard, fewer than the {slices} slices requested; use fewer shards or "
            "slices, or more data"
        )
    label_of = (
        {k: str(lab) for k, lab in zip(keys, labels, strict=True)} if labels is not None else {}
    )
    risk_of = dict(zip(keys, scores.tolist(), strict=True)) if scores is not None else {}
    owners = _validated_subjects(subjects, keys)
    if owners and len(set(owners.values())) < len(keys):  # a subject holds several samples
        placed = place_subjects(keys, owners, shards, slices, seed, risk_of)
        named = {s: o for s, o in owners.items() if o != s}
        return Layout(shards, slices, seed, placed, risk_of, named)

    def order(group: Iterable[SampleId], by_risk: bool) -> list[SampleId]:
        return sorted(
            group,
            key=lambda k: (
                label_of.get(k, ""),
                -risk_of.get(k, 0.0) if by_risk else 0.0,
                _rank_key(seed, k),
            ),
        )

    assignment: dict[SampleId, tuple[int, int]] = {}
    shard_members: list[list[SampleId]] = [[] for _ in range(shards)]
    for position, sid in enumerate(order(keys, by_risk=bool(risk_of))):
        shard_members[position % shards].append(sid)
    for k, members in enumerate(shard_members):
        if risk_of:
            # Contiguous runs of increasing risk: slice 0 is the safest, slice L-1 the riskiest.
            ranked = sorted(members, key=lambda x: (risk_of[x], _rank_key(seed, x)))
            bounds = np.linspace(0, len(ranked), slices + 1)
            cut = [math.floor(b + 0.5) for b in bounds]
            for s in range(slices):
                for sid in ranked[cut[s] : cut[s + 1]]:
                    assignment[sid] = (k, s)
        else:
            for position, sid in enumerate(order(members, by_risk=False)):
                assignment[sid] = (k, position % slices)
    return Layout(shards, slices, seed, assignment, risk_of)


def _validated_ids(ids: Iterable[object]) -> list[SampleId]:
    keys = [sample_id(i) for i in ids]
    if not keys:
        raise PartitionError("no sample ids given")
    if len(set(keys)) != len(keys):
        dupes = sorted(k for k, count in Counter(keys).items() if count > 1)
        raise PartitionError(f"duplicate sample ids: {dupes[:10]!r} ({len(dupes)} in all)")
    return keys


def _validated_subjects(
    subjects: Sequence[object] | None, keys: list[SampleId]
) -> dict[SampleId, str]:
    if subjects is None:
        return {}
    if len(subjects) != len(keys):
        raise PartitionError(f"got {len(subjects)} subjects for {len(keys)} ids")
    out = {}
    for sid, subject in zip(keys, subjects, strict=True):
        if subject is None or subject == "":
            out[sid] = sid  # a sample without a subject is its own subject
        elif isinstance(subject, (str, int, np.integer)) and not isinstance(subject, bool):
            out[sid] = str(subject)
        else:
            raise PartitionError(f"subjects must be str or int, got {subject!r} for sample {sid!r}")
    return out


def _validated_risk(risk: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray | None:
    if risk is None:
        return None
    scores = np.asarray(risk, dtype=np.float64)
    if scores.shape != (n,):
        raise PartitionError(f"risk must hold one score per id ({n}), got shape {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
    if bad.size:
        raise PartitionError(
            "risk scores must be finite and >= 0; bad values at positions "
            f"{bad[:10].tolist()}: {scores[bad[:10]].tolist()!r}"
        )
    return scores
