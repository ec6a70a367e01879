"""Seeded, order-independent choices over sample ids: a held-out test split and a random
sample of rows. Every choice ranks samples by a keyed hash of their id, so it never
depends on the order of rows in a file."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from s3t.data.examples import Examples
from s3t.errors import DataError

log = logging.getLogger(__name__)


def hash_unit(key: object, sid: str) -> float:
    """Return a number in [0, 1) drawn from blake2b of ``f"{key}:{sid}"``: a sample's place
    in a split or sample depends on its id and the key only, never on row order."""
    digest = hashlib.blake2b(f"{key}:{sid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_held_out(
    examples: Examples, fraction: float, key: object
) -> tuple[Examples, Examples | None]:
    """Return (train, test): test holds the rows whose keyed hash falls below ``fraction``
    (``None`` if no row does), train the rest, both in their original order."""
    in_test = np.array([hash_unit(key, sid) < fraction for sid in examples.ids], dtype=bool)
    if in_test.all():
        raise DataError(
            f"test_fraction={fraction!r} leaves no training rows out of {len(examples)}; "
            "use a smaller test_fraction or more data"
        )
    if not in_test.any():
        log.warning("test_fraction=%s selects no row out of %d", fraction, len(examples))
        return examples, None
    return examples.take(np.flatnonzero(~in_test)), examples.take(np.flatnonzero(in_test))


def sample_rows(examples: Examples, limit: int, key: object) -> Examples:
    """Keep the ``limit`` rows of smallest keyed hash (a seeded random sample that does not
    depend on row order), in their original order; all rows if there are fewer."""
    if limit >= len(examples):
        return examples
    ranks = np.argsort([hash_unit(key, sid) for sid in examples.ids], kind="stable")
    return examples.take(np.sort(ranks[:limit]))
