"""Sequence selection (S3T, Section 3.3): which orders of a shard's L slices to train.

A *sequence* is a tuple holding a permutation of ``range(L)``. Training sequence π stage by
stage makes the model at depth d depend only on slices π[:d], so a deletion in slice s
truncates π just before s. Good sequence sets keep some model deep whatever is deleted:

- :func:`cyclic` — iterative cyclic rotation, for a uniform deletion prior;
- :func:`bms` — bipartite-matching selection (Hungarian algorithm), for a known prior;
- :func:`random_sequences`, :func:`all_sequences` — the baselines.

Every selector returns sequences in a nested order: the first B' of a budget-B selection
are the selection for budget B', so raising the budget only adds sequences.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from s3t.errors import SequenceError

Perm = tuple[int, ...]

METHODS = ("cyclic", "bms", "random", "full")

#: Default exponent of the BMS score. See :func:`score` for why 3.
DEFAULT_T = 3.0


def check_budget(slices: int, budget: int) -> None:
    """Raise :class:`SequenceError` unless 1 <= slices and 1 <= budget <= slices!."""
    if not isinstance(slices, (int, np.integer)) or slices < 1:
        raise SequenceError(f"slices must be an integer >= 1, got {slices!r}")
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise SequenceError(f"budget must be an integer >= 1, got {budget!r}")
    if slices <= 20 and budget > math.factorial(slices):
        raise SequenceError(
            f"budget {budget} exceeds the {math.factorial(slices)} distinct sequences of "
            f"{slices} slices (L!); use a budget <= {math.factorial(slices)}"
        )


def cyclic(slices: int, budget: int) -> list[Perm]:
    """Return ``budget`` sequences of ``slices`` slices by iterative cyclic rotation.

    For B <= L these are the first B right-rotations of (0, …, L-1), in that order. For
    B > L the sequences are expanded level by level: a node keeps its prefix and makes
    children from the right-rotations of its remaining suffix, the budget being shared as
    evenly as possible (earlier rotations first). So for every prefix length k the number
    of distinct k-prefixes is min(B, L!/(L-k)!), and first slices are balanced.
    """
    check_budget(slices, budget)
    return [_cyclic_nth(slices, b) for b in range(budget)]


def _cyclic_nth(slices: int, index: int) -> Perm:
    """Return the sequence that budget ``index + 1`` adds to budget ``index``.

    Raising the budget by one gives one more sequence to exactly one child of each node on
    a path from the root: at a node whose suffix has n slices and which held c sequences,
    the child taking the new one is rotation c mod n, which then held c // n. Reading b in
    this mixed radix (L, L-1, …) is a bijection from 0..L!-1 onto the permutations.
    """
    prefix: Perm = ()
    suffix: Perm = tuple(range(slices))
    count = index
    while count and suffix:
        n = len(suffix)
        j = count % n
        rotated = suffix[n - j :] + suffix[: n - j]
        prefix, suffix, count = prefix + rotated[:1], rotated[1:], count // n
    return prefix + suffix


def score(
    sequence: Sequence[int], prior: Sequence[float] | np.ndarray, t: float = DEFAULT_T
) -> float:
    """Return the BMS score Σ_n n·(1 − Σ_{j≤n} p_{π_j})^t of one sequence (prior normalised).

    (1 − P_n)^t is the chance that the first n slices survive t deletions aimed at the
    shard, so a high score means deep prefixes are likely to survive. t is the deletion
    horizon: t = 1 makes every Latin square score the same (the score is then linear in p),
    and the authors' t = 100 sends every score to ≈ 0 for a normalised prior, so neither
    separates candidates; the default t = 3 is the smallest integer horizon at which the
    matching clearly prefers keeping low-risk slices together at the front (measured on
    skewed priors in ``tests/test_sequences.py``), and it stays well away from underflow.
    """
    p = normalised_prior(prior, len(sequence))
    _check_perm(sequence, len(p))
    cumulative = np.cumsum(p[list(sequence)])
    n = np.arange(1, len(p) + 1)
    return float(np.sum(n * np.clip(1.0 - cumulative, 0.0, 1.0) ** t))


def bms(prior: Sequence[float] | np.ndarray, budget: int, t: float = DEFAULT_T) -> list[Perm]:
    """Return ``budget`` sequences by bipartite-matching selection under a deletion prior.

    One round grows L partial sequences, one per first slice, a position at a time; at each
    position the Hungarian algorithm gives every sequence a distinct next slice, maximising
    the summed score gain. A round is therefore a Latin square (B = L). For B < L the B
    best-scoring sequences of the first round are kept (low-risk slices lead). For B > L
    further rounds are run in which extending a sequence into a prefix that an earlier
    round already produced is penalised above any score gain, so each round adds new,
    still prior-aware permutations; the best-scoring new ones fill the budget. Output is
    ordered round by round, best score first.
    """
    p = normalised_prior(prior, len(prior))
    slices = len(p)
    check_budget(slices, budget)
    if t <= 0 or not math.isfinite(t):
        raise SequenceError(f"t must be a finite number > 0, got {t!r}")
    chosen: list[Perm] = []
    prefixes: set[Perm] = set()
    while len(chosen) < budget:
        fresh = [perm for perm in _latin_round(p, t, prefixes) if perm not in set(chosen)]
        if not fresh:
            break
        fresh = sorted(set(fresh), key=lambda perm: (-score(perm, p, t), perm))
        for perm in fresh[: budget - len(chosen)]:
            chosen.append(perm)
            prefixes.update(perm[:k] for k in range(1, slices + 1))
    if len(chosen) < budget:  # rounds stopped finding new prefixes: rank what is left
        rest = (perm for perm in _all_perms(slices) if perm not in set(chosen))
        ranked = sorted(rest, key=lambda perm: (-score(perm, p, t), perm))
        chosen.extend(ranked[: budget - len(chosen)])
    return chosen


def _latin_round(p: np.ndarray, t: float, used_prefixes: set[Perm]) -> list[Perm]:
    from scipy.optimize import linear_sum_assignment  # slow to import: only when used

    slices = len(p)
    partial: list[Perm] = [(s,) for s in range(slices)]
    penalty = float(slices * slices + 1)  # above any total score gain of one step
    forbidden = 1e12
    for position in range(2, slices + 1):
        gain = np.empty((slices, slices))
        for row, perm in enumerate(partial):
            used = float(p[list(perm)].sum())
            for s in range(slices):
                if s in perm:
                    gain[row, s] = -forbidden
                    continue
                survive = max(0.0, 1.0 - used - p[s]) ** t
                gain[row, s] = position * survive
                if perm + (s,) in used_prefixes:
                    gain[row, s] -= penalty
        rows, cols = linear_sum_assignment(gain, maximize=True)
        partial = [partial[r] + (int(c),) for r, c in zip(rows, cols, strict=True)]
    return partial


def random_sequences(slices: int, budget: int, seed: int = 0) -> list[Perm]:
    """Return ``budget`` distinct uniformly random sequences (seeded)."""
    check_budget(slices, budget)
    rng = np.random.default_rng(seed)
    if slices <= 8 and budget > math.factorial(slices) // 2:
        every = _all_perms(slices)
        picks = rng.permutation(len(every))[:budget]
        return [every[i] for i in picks]
    out: list[Perm] = []
    seen: set[Perm] = set()
    while len(out) < budget:
        perm = tuple(int(x) for x in rng.permutation(slices))
        if perm not in seen:
            seen.add(perm)
            out.append(perm)
    return out


def all_sequences(slices: int) -> list[Perm]:
    """Return all L! sequences in lexicographic order (the full budget); L <= 9."""
    if not isinstance(slices, int) or not 1 <= slices <= 9:
        raise SequenceError(f"all_sequences needs 1 <= slices <= 9, got {slices!r}")
    return _all_perms(slices)


def _all_perms(slices: int) -> list[Perm]:
    return list(itertools.permutations(range(slices)))


def diversity(sequences: Sequence[Sequence[int]]) -> float:
    """Return the mean pairwise positional Hamming distance of a set of sequences."""
    arr = np.asarray(sequences)
    if arr.ndim != 2:
        raise SequenceError(f"expected a list of equal-length sequences, got shape {arr.shape}")
    n = len(arr)
    if n < 2:
        return 0.0
    differ = (arr[:, None, :] != arr[None, :, :]).sum(axis=2)
    return float(differ[np.triu_indices(n, k=1)].mean())


def select_sequences(
    method: str,
    slices: int,
    budget: int,
    prior: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    t: float = DEFAULT_T,
) -> list[Perm]:
    """Return sequences by method name: ``cyclic``, ``bms`` (needs ``prior``, uniform when
    omitted), ``random`` or ``full`` (all L!, budget must equal L!)."""
    if method == "cyclic":
        return cyclic(slices, budget)
    if method == "bms":
        return bms(prior if prior is not None else [1.0] * slices, budget, t)
    if method == "random":
        return random_sequences(slices, budget, seed)
    if method == "full":
        every = all_sequences(slices)
        if budget != len(every):
            raise SequenceError(
                f"method 'full' trains all {len(every)} sequences of {slices} slices; "
                f"got budget {budget}"
            )
        return every
    raise SequenceError(f"unknown sequence method {method!r}; choose one of {', '.join(METHODS)}")


def normalised_prior(prior: Iterable[float] | np.ndarray, slices: int) -> np.ndarray:
    """Return ``prior`` as a float array summing to 1, checking length and values."""
    p = np.asarray(list(prior), dtype=np.float64)
    if p.ndim != 1 or len(p) != slices:
        raise SequenceError(f"prior must hold {slices} values (one per slice), got {p.tolist()!r}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise SequenceError(f"prior values must be finite and >= 0, got {p.tolist()!r}")
    if p.sum() <= 0:
        raise SequenceError(f"prior must not be all zero, got {p.tolist()!r}")
    return np.asarray(p / p.sum(), dtype=np.float64)


def _check_perm(sequence: Sequence[int], slices: int) -> None:
    if sorted(int(s) for s in sequence) != list(range(slices)):
        raise SequenceError(
            f"a sequence must be a permutation of 0..{slices - 1}, got {list(sequence)!r}"
        )
