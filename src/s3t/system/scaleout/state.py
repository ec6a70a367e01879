"""What a deletion authority and its prediction replicas say to each other: the serving
state it publishes (an epoch, the models each live shard serves, and what a replica needs
to run them), and the answer to a replica's sync (a newer state, a lease, the tokens).

An epoch is a pair (incarnation, number): the number is bumped by every deletion and every
change of what is served; the incarnation changes when the authority is started again, so
a replica never mistakes a restarted authority's first state for one it already holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from s3t.core.selection import Served
from s3t.system.store.records import TokenRow


@dataclass(frozen=True)
class ServingState:
    """One serving state: its epoch, the served model of each live shard, and the
    configuration (model, LoRA, layout) and task a replica builds its model from."""

    incarnation: str
    epoch: int
    served: tuple[Served, ...]
    config: dict[str, Any]
    task: str
    modality: str
    label_names: tuple[str, ...] | None

    @property
    def key(self) -> tuple[str, int]:
        """What identifies the state: (incarnation, epoch)."""
        return self.incarnation, self.epoch

    def artifacts(self) -> set[str]:
        """Every stage artifact the state serves."""
        return {a for s in self.served for a in s.artifacts}


@dataclass(frozen=True)
class Grant:
    """The authority's answer to a replica's sync: a state newer than the replica's (or
    ``None``), the lease it renewed (``None``: none — a replica earns its lease only at the
    current epoch), and the access tokens (hashed)."""

    state: ServingState | None
    lease_seconds: float | None
    tokens: list[TokenRow] = field(default_factory=list)


@dataclass
class ReplicaRecord:
    """What the authority knows of one replica: the epoch it confirmed, until when its
    lease runs by the authority's clock (``monotonic``), and when it was last heard from."""

    confirmed: tuple[str, int] = ("", -1)
    lease_until: float = 0.0
    seen: float = 0.0
