"""The deletion authority: the one process of a scaled-out service that opens the workspace.

It accepts deletions, keeps receipts, verifies, retrains and swaps, exactly as a system in
one process does (it *is* one, :class:`~s3t.system.api.S3T`), and it publishes what is
served to the prediction replicas as epochs (:mod:`~s3t.system.scaleout.state`):

- every deletion and every change of what is served (a swap, a quarantine) is a new epoch;
- a replica syncs in a loop (a long poll): it gets each newer state at once, and it earns a
  lease of ``lease_seconds`` only by syncing at the current epoch — confirming that it
  applied it and sent every answer computed before;
- a deletion is acknowledged once every replica confirmed its epoch, or its lease ran out
  (plus ``margin_seconds`` for clocks that tick at slightly different rates): a replica
  whose lease ran out answers nothing, so a hung, partitioned or slow replica can never
  answer from a stage a deletion purged after that deletion was acknowledged.

A replica's lease runs from when it *sent* its sync, the authority's from when it received
it, so the authority's idea of a lease never ends before the replica's. The authority runs
as a Ray actor with threads (``max_concurrency``); every method is safe to call from many.
Background retraining runs as Ray tasks (:class:`~s3t.system.training.distributed.
RayExecutor`, every selected shard in parallel, each in service-first order); a swap is
published within 0.1 s, and replicas fetch the new stages before they serve them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from s3t.engine.settings import Compute
from s3t.errors import ConfigError, ServiceUnavailableError
from s3t.system.access import TokenInfo
from s3t.system.api import S3T
from s3t.system.forget import Receipt
from s3t.system.reports import Health, SampleInfo, Status
from s3t.system.scaleout.state import Grant, ReplicaRecord, ServingState
from s3t.system.training.background import RetrainPolicy
from s3t.system.training.distributed import RayExecutor
from s3t.system.training.trainer import StageOutcome
from s3t.system.verify import VerifyReport

log = logging.getLogger(__name__)

_FORGET_REPLICAS = 60.0  # seconds after its lease ended that a silent replica is forgotten


class DeletionAuthority:
    """See the module docstring."""

    def __init__(
        self,
        workspace: str | Path,
        retrain_policy: RetrainPolicy | None = None,
        lease_seconds: float = 5.0,
        margin_seconds: float = 0.5,
        compute: Compute | None = None,
        retrain_on_ray: bool = True,
    ) -> None:
        if lease_seconds <= 0 or margin_seconds < 0:
            raise ConfigError(
                f"a lease must last > 0 s and the margin be >= 0 s, got {lease_seconds!r} "
                f"and {margin_seconds!r}"
            )
        self.system = S3T.open(workspace, compute=compute)
        if retrain_policy is not None:
            # running as a Ray actor: retraining runs as Ray tasks, shards in parallel
            executor = RayExecutor(address="auto") if retrain_on_ray else None
            self.system.start_background(retrain_policy, executor=executor)
        if not self.system.read_only:
            self.system.start_maintenance()
        self.lease_seconds = lease_seconds
        self.margin_seconds = margin_seconds
        self.poll_seconds = lease_seconds / 3
        self.incarnation = uuid.uuid4().hex[:12]
        self._cond = threading.Condition()
        self._publishing = threading.Lock()  # one publisher at a time: never an older state
        self._replicas: dict[str, ReplicaRecord] = {}
        self._tokens = self.system.token_cache()
        self._state = self._serving_state(0)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="s3t-publish", daemon=True)
        self._watcher.start()

    # ----- epochs and leases ------------------------------------------------------------------
    def serving_state(self) -> ServingState:
        """The state published now."""
        with self._cond:
            return self._state

    def publish(self, force: bool = False) -> tuple[str, int]:
        """Publish what is served now as a new epoch when it changed (or when ``force``d:
        a deletion); return the current epoch."""
        with self._publishing:
            fresh = self._serving_state(self._state.epoch + 1)
            with self._cond:
                if force or fresh.served != self._state.served:
                    self._state = fresh
                    self._cond.notify_all()
                return self._state.key

    def sync(self, replica: str, known: tuple[str, int]) -> Grant:
        """A replica's sync: at an older epoch it gets the current state at once (and no
        lease); at the current one it confirms it, earns a lease, and waits up to a third
        of the lease for a newer state."""
        now = time.monotonic()
        with self._cond:
            record = self._replicas.setdefault(replica, ReplicaRecord())
            record.seen = now
            if tuple(known) != self._state.key:
                return Grant(self._state, None, self._tokens.rows())
            record.confirmed = self._state.key
            record.lease_until = now + self.lease_seconds
            self._cond.notify_all()
            deadline = now + self.poll_seconds
            while self._state.key == tuple(known) and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            newer = self._state if self._state.key != tuple(known) else None
        return Grant(newer, self.lease_seconds, self._tokens.rows())

    def wait_confirmed(self, key: tuple[str, int]) -> None:
        """Wait until every replica confirmed epoch ``key`` (or a later one), or its lease
        (and the margin) ran out."""
        with self._cond:
            while True:
                now = time.monotonic()
                waiting = [
                    r.lease_until + self.margin_seconds
                    for r in self._replicas.values()
                    if _behind(r, key) and now < r.lease_until + self.margin_seconds
                ]
                if not waiting:
                    return
                self._cond.wait(min(waiting) - now)

    def replicas(self) -> list[dict[str, Any]]:
        """Each replica heard from lately: the epoch it confirmed, whether that is the
        current one, the seconds left on its lease and since it was last heard from."""
        now = time.monotonic()
        with self._cond:
            for name in [
                n for n, r in self._replicas.items() if r.lease_until + _FORGET_REPLICAS < now
            ]:
                del self._replicas[name]
            return [
                {
                    "replica": name,
                    "epoch": r.confirmed[1],
                    "current": r.confirmed == self._state.key,
                    "lease_seconds_left": round(max(0.0, r.lease_until - now), 3),
                    "seconds_since_seen": round(now - r.seen, 3),
                }
                for name, r in sorted(self._replicas.items())
            ]

    def artifact_bytes(self, artifacts: Sequence[str]) -> dict[str, bytes]:
        """The files of stages a replica is about to serve (sha256-checked here and there)."""
        return self.system.artifact_bytes(artifacts)

    def close(self) -> None:
        """Stop publishing and close the workspace."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._watcher.join(5)
        self.system.close()

    # ----- what the service forwards ----------------------------------------------------------
    def forget(
        self, ids: Sequence[str | int], subjects: Sequence[str | int], wait_erasure: bool | float
    ) -> Receipt:
        """Forget (as :meth:`S3T.forget`), publish the new epoch, and return once every
        replica confirmed it or its lease ran out."""
        receipt = self.system.forget(ids, subjects=subjects, wait_erasure=wait_erasure)
        if receipt.deleted:
            self.wait_confirmed(self.publish(force=True))
        return receipt

    def status(self) -> Status:
        """The system's status, with every replica's epoch and lease."""
        return replace(self.system.status(), replicas=self.replicas())

    def health(self) -> Health:
        return self.system.health()

    def verify(self) -> VerifyReport:
        return self.system.verify()

    def verify_receipt(self, receipt: Receipt) -> VerifyReport:
        return self.system.verify_receipt(receipt)

    def receipt(self, request_id: str) -> Receipt:
        return self.system.receipt(request_id)

    def erasure_complete(self, request_id: str) -> bool:
        return self.system.erasure_complete(request_id)

    def samples(
        self, shard: int | None, include_deleted: bool, subject: str | None
    ) -> list[SampleInfo]:
        return self.system.samples(shard, include_deleted, subject)

    def audit(self, since: int) -> list[dict[str, Any]]:
        return self.system.audit(since)

    def retrain(self, shards: Sequence[int] | None) -> list[StageOutcome]:
        """Retrain now; what it swaps in is published before this returns."""
        outcomes = self.system.retrain(shards)
        self.publish()
        return outcomes

    def retrain_in_background(self) -> dict[str, Any]:
        return self.system.retrain_in_background()

    def tokens(self) -> list[TokenInfo]:
        return self.system.tokens()

    def create_token(self, scopes: Sequence[str], name: str) -> tuple[TokenInfo, str]:
        made = self.system.create_token(scopes, name)
        self._tokens.refresh()
        return made

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token; replicas refuse it from their next sync (within a third of a
        lease)."""
        revoked = self.system.revoke_token(token_id)
        self._tokens.refresh()
        with self._cond:
            self._cond.notify_all()
        return revoked

    # ----- inside -----------------------------------------------------------------------------
    def _serving_state(self, epoch: int) -> ServingState:
        try:
            served = tuple(self.system.served())
        except ServiceUnavailableError:
            served = ()
        return ServingState(
            incarnation=self.incarnation,
            epoch=epoch,
            served=served,
            config=self.system.config.to_dict(),
            task=self.system.task,
            modality=self.system.modality,
            label_names=self.system.label_names,
        )

    def _watch(self) -> None:
        """Publish what retraining swaps in (and quarantines take out) within 0.1 s, and
        keep the tokens current."""
        beat = 0
        while not self._stop.wait(0.1):
            try:
                self.publish()
                beat += 1
                if beat % 5 == 0:
                    self._tokens.refresh()
            except Exception:  # keep publishing; say why
                log.exception("publishing the serving state failed")


def _behind(record: ReplicaRecord, key: tuple[str, int]) -> bool:
    """Whether a replica has not confirmed epoch ``key`` (or a later one) yet."""
    incarnation, epoch = record.confirmed
    return incarnation != key[0] or epoch < key[1]
