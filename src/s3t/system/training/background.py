"""Background retraining: a worker thread that heals truncated shards while predictions
and deletions keep being served. Each retrained stage is swapped in atomically by the
trainer, which discards (and replans) any stage whose data saw a sample deleted meanwhile.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3t.engine.settings import Compute
from s3t.errors import ConfigError
from s3t.system.store.workspace import Workspace

if TYPE_CHECKING:
    from s3t.system.training.trainer import EventCallback, StageOutcome, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainPolicy:
    """When the background worker retrains a shard.

    ``min_depth``: when the shard's served depth falls below this (``None``: never for
    that reason); ``when_dead``: when the shard has lost every model; ``poll_seconds``:
    how often the registry is checked.
    """

    min_depth: int | None = None
    when_dead: bool = True
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.min_depth is not None and self.min_depth < 1:
            raise ConfigError(f"min_depth must be >= 1, got {self.min_depth!r}")
        if self.poll_seconds <= 0:
            raise ConfigError(f"poll_seconds must be > 0, got {self.poll_seconds!r}")

    def shards_due(self, workspace: Workspace) -> list[int]:
        """Return the shards this policy says to retrain now (never one whose every sample
        is deleted: it has nothing to train on and stays dead)."""
        registry = workspace.registry()
        slices = range(workspace.config.layout.slices)
        return [
            shard
            for shard, depth in sorted(workspace.served_depths().items())
            if (
                (self.when_dead and depth == 0)
                or (self.min_depth is not None and depth < self.min_depth)
            )
            and registry.live_ids(shard, slices)
        ]


class BackgroundRetrainer:
    """Runs :class:`Trainer` on the shards a policy selects, in a daemon thread."""

    def __init__(
        self,
        workspace: Workspace,
        policy: RetrainPolicy,
        on_event: EventCallback | None = None,
        compute: Compute | None = None,
    ) -> None:
        self.ws = workspace
        self.compute = compute
        self.policy = policy
        self.on_event = on_event
        self.outcomes: list[StageOutcome] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3t-retrain", daemon=True)
        self._trainer: Trainer | None = None
        self._trainer_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def prepare(self) -> None:
        """Load the retraining model instance now, so that the first retraining after a
        failure starts at once (otherwise it is loaded when first needed)."""
        self._get_trainer().local.worker  # noqa: B018 - loads the model

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
                due = self.policy.shards_due(self.ws)
                if due:
                    trainer = self._get_trainer()
                    progress = 0
                    for shard in due:
                        if self._stop.is_set():
                            break
                        done = trainer.complete([shard], stop=self._stop)
                        self.outcomes += done
                        progress += len(done)
                    self.error = None
                    if progress:
                        continue  # check again at once: deletions may have arrived meanwhile
            except Exception as exc:  # keep serving; surface the error in status
                log.exception("background retraining failed")
                self.error = exc
            if not self._wake.is_set():  # nothing arrived since this check: really idle
                self._idle.set()
            self._wake.wait(self.policy.poll_seconds)
