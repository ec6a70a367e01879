"""Membership-inference sanity check: a loss-threshold attack against the served system.

A sample the served models were trained on tends to have a lower loss than one they never
saw. The attack's AUC (probability that a member's loss is below a non-member's) is ≈ 0.5
when the two groups are indistinguishable. After an exact deletion, deleted samples must
score like never-seen samples, while retained training samples may still score above 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from s3t.data.examples import Examples
from s3t.errors import InvalidRequestError
from s3t.system.serving.scoring import sample_losses
from s3t.system.serving.server import Server


def attack_auc(member_losses: np.ndarray, other_losses: np.ndarray) -> float:
    """AUC of the loss-threshold attack: P(member loss < other loss), ties counting half
    (the Mann-Whitney U statistic, normalised)."""
    a = np.asarray(member_losses, dtype=np.float64)
    b = np.asarray(other_losses, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise InvalidRequestError("both groups need at least one sample")
    ranks = rankdata(np.concatenate([a, b]))  # ties get their average rank
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2  # others ranked above members
    return float(u / (len(a) * len(b)))


@dataclass(frozen=True)
class MembershipReport:
    """Attack AUCs against never-seen samples."""

    deleted_vs_unseen: float
    retained_vs_unseen: float
    deleted: int
    retained: int
    unseen: int


def membership_report(
    server: Server, deleted: Examples, retained: Examples, unseen: Examples
) -> MembershipReport:
    """Run the loss-threshold attack for deleted and for retained training samples."""
    unseen_losses = sample_losses(server, unseen)
    return MembershipReport(
        deleted_vs_unseen=attack_auc(sample_losses(server, deleted), unseen_losses),
        retained_vs_unseen=attack_auc(sample_losses(server, retained), unseen_losses),
        deleted=len(deleted),
        retained=len(retained),
        unseen=len(unseen),
    )
