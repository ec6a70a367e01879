"""Background retraining: a worker thread that heals truncated shards while predictions
and deletions keep being served. Each retrained stage is swapped in atomically by the
trainer, which discards (and replans) any stage whose data saw a sample deleted meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from s3t.engine.settings import Compute
from s3t.errors import ConfigError
from s3t.system.store.workspace import Workspace

if TYPE_CHECKING:
    from s3t.core.schedule import StageKey
    from s3t.system.training.trainer import EventCallback, Executor, StageOutcome, Trainer

log = logging.getLogger(__name__)


RetrainOrder = Literal["service-first", "shard-by-shard"]
RETRAIN_ORDERS: tuple[str, ...] = get_args(RetrainOrder)


@dataclass(frozen=True)
class RetrainPolicy:
    """When the background worker retrains a shard, and in which order.

    ``min_depth``: when the shard's served depth falls below this (``None``: never for
    that reason); ``when_dead``: when the shard has lost every model; ``poll_seconds``:
    how often the registry is checked (deletions made through this process wake it at
    once). A shard the policy selects is brought back to full depth. ``order``:
    ``service-first`` trains one stage at a time across every selected shard, planned
    again after each — first a stage 1 for each dead shard (on its smallest slice), then
    the shallowest shard deeper — and gives up a stage the moment a deletion takes one of
    its samples, or a shard dies while it deepens another; ``shard-by-shard`` brings
    each selected shard to full depth in turn (s3t 0.2's order, kept for comparison).
    """

    min_depth: int | None = None
    when_dead: bool = True
    poll_seconds: float = 1.0
    order: RetrainOrder = "service-first"

    def __post_init__(self) -> None:
        if self.min_depth is not None and self.min_depth < 1:
            raise ConfigError(f"min_depth must be >= 1, got {self.min_depth!r}")
        if self.poll_seconds <= 0:
            raise ConfigError(f"poll_seconds must be > 0, got {self.poll_seconds!r}")
        if self.order not in RETRAIN_ORDERS:
            raise ConfigError(f"order must be one of {list(RETRAIN_ORDERS)}, got {self.order!r}")

    def shards_due(self, workspace: Workspace) -> list[int]:
        """Return the shards this policy says to retrain now (never one whose every sample
        is deleted: it has nothing to train on and stays dead)."""
        registry = workspace.registry()
        return [
            shard
            for shard, depth in sorted(workspace.served_depths().items())
            if (
                (self.when_dead and depth == 0)
                or (self.min_depth is not None and depth < self.min_depth)
            )
            and registry.has_live(shard)
        ]


class BackgroundRetrainer:
    """Runs :class:`Trainer` on the shards a policy selects, in a daemon thread."""

    def __init__(
        self,
        workspace: Workspace,
        policy: RetrainPolicy,
        on_event: EventCallback | None = None,
        compute: Compute | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.ws = workspace
        self.compute = compute
        self.policy = policy
        #: trains elsewhere (Ray tasks) instead of this process, shards in parallel
        self.executor = executor
        self.on_event = on_event
        self.outcomes: list[StageOutcome] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3t-retrain", daemon=True)
        self._trainer: Trainer | None = None
        self._trainer_lock = threading.Lock()
        #: shards selected and not yet back at full depth (service-first order)
        self._targets: set[int] = set()
        #: deletions made through this process: (when, (shard, slice) groups hit, whether a
        #: shard died), read by the stage in progress to give itself up
        self._deletions: list[tuple[float, set[tuple[int, int]], bool]] = []
        self._deletions_lock = threading.Lock()
        self._stage_began = 0.0
        #: whether the retraining model instance is loaded (see :meth:`prepare`)
        self.prepared = False

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def prepare(self) -> None:
        """Load the retraining model instance now, so that the first retraining after a
        failure starts at once (otherwise it is loaded when first needed)."""
        if self.executor is None:
            self._get_trainer().local.worker  # noqa: B018 - loads the model
        self.prepared = True

    def _get_trainer(self) -> Trainer:
        with self._trainer_lock:
            if self._trainer is None:
                from s3t.system.training.trainer import Trainer

                self._trainer = Trainer(self.ws, self.on_event, compute=self.compute)
            return self._trainer

    def due(self) -> list[int]:
        """The shards the policy says to retrain now."""
        return self.policy.shards_due(self.ws)

    def drop_cached(self, groups: set[tuple[int, int]]) -> None:
        """Forget the cached activations of these (shard, slice) groups (a deletion)."""
        trainer = self._trainer
        if trainer is not None:
            trainer.drop_cached(groups)

    def note_deletion(
        self, committed: float, groups: set[tuple[int, int]], shard_died: bool
    ) -> None:
        """A deletion committed (at ``committed``, wall-clock time) through this process hit
        these (shard, slice) groups (and killed a shard): drop their cached activations,
        give up a stage it makes moot, and check the policy now."""
        with self._deletions_lock:
            self._deletions.append((committed, set(groups), shard_died))
            cutoff = time.time() - 600
            self._deletions = [d for d in self._deletions if d[0] > cutoff]
        self.drop_cached(groups)
        self.wake()

    def _superseded(self, key: StageKey, restoring: bool) -> str | None:
        """Why to give up ``key`` now (service-first order), or ``None``."""
        with self._deletions_lock:
            since = [d for d in self._deletions if d[0] > self._stage_began]
        if any((key.shard, s) in groups for _, groups, _ in since for s in key.prefix):
            return "a deletion took one of its samples while it trained"
        if not restoring and any(died for _, _, died in since):
            return "a shard died while it deepened another: restoring it comes first"
        return None

    def wake(self) -> None:
        """Check the policy now (e.g. right after a deletion)."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker has nothing left to do; False on timeout."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the worker to stop after the current stage and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._trainer is not None and not self._thread.is_alive():
            self._trainer.close()  # its activation cache's spill files go with it

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                progress = (
                    self._next_stage()
                    if self.policy.order == "service-first"
                    else self._next_shards()
                )
                self.error = None
                if progress:
                    continue  # check again at once: deletions may have arrived meanwhile
            except Exception as exc:  # keep serving; surface the error in status
                log.exception("background retraining failed")
                self.error = exc
            if not self._wake.is_set():  # nothing arrived since this check: really idle
                self._idle.set()
            self._wake.wait(self.policy.poll_seconds)

    def _next_stage(self) -> int:
        """One stage of the selected shards, in service-first order (with an executor:
        every selected shard's stages, in parallel tasks, each in service-first order);
        how many stages were handled (0: none left)."""
        self._targets |= set(self.policy.shards_due(self.ws))
        if not self._targets:
            return 0
        if self.executor is not None:
            done = self._get_trainer().complete(
                sorted(self._targets), executor=self.executor, restoring=True
            )
            self.outcomes += done
            self._targets.clear()
            return len(done)
        self._stage_began = time.time()  # the stage's plan reads the registry after this
        done = self._get_trainer().restore_next(sorted(self._targets), self._superseded)
        self.outcomes += done
        if not done:
            self._targets.clear()  # every selected shard is back at full depth
        return len(done)

    def _next_shards(self) -> int:
        """Every selected shard to full depth, one shard after another."""
        progress = 0
        for shard in self.policy.shards_due(self.ws):
            if self._stop.is_set():
                break
            if self.executor is not None:
                done = self._get_trainer().complete([shard], executor=self.executor)
            else:
                done = self._get_trainer().complete([shard], stop=self._stop)
            self.outcomes += done
            progress += len(done)
        return progress
