"""Upkeep of an open workspace by a long-running process (the HTTP service, or a library
user who deleted samples): erase what deletions committed, within milliseconds of the
commit (or of the reader that blocked the erasure finishing), pick up erasures that other
processes left pending within ``poll_seconds``, and sweep leftovers of crashed processes
at a steady interval."""

from __future__ import annotations

import logging
import threading
import time

from s3t.system.store.workspace import Workspace

log = logging.getLogger(__name__)


class Janitor:
    """A daemon thread that keeps one workspace clean (see the module docstring).

    It erases at once when woken (``wake()`` after a deletion), retries every few
    milliseconds while a reader of an older snapshot holds the old pages, looks for
    erasures left pending by other processes every ``poll_seconds``, and sweeps crash
    leftovers every ``sweep_seconds``."""

    def __init__(
        self,
        workspace: Workspace,
        sweep_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        retry_seconds: float = 0.005,
    ) -> None:
        self.ws = workspace
        self.sweep_seconds = sweep_seconds
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.sweeps = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3t-janitor", daemon=True)

    def start(self) -> None:
        """Start the thread (once)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def wake(self) -> None:
        """Erase now (e.g. right after a deletion committed)."""
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the current pass and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            pending: list[str] = []
            try:
                if time.monotonic() >= next_sweep:
                    self.ws.sweep()
                    self.sweeps += 1
                    next_sweep = time.monotonic() + self.sweep_seconds
                if self.ws.registry().pending_erasures():
                    pending = self.ws.erase_pending(busy_ms=50)
                self.error = None
            except Exception as exc:  # keep serving; surface the error in status
                log.exception("workspace upkeep failed")
                self.error = exc
            idle = min(self.poll_seconds, max(0.0, next_sweep - time.monotonic()))
            self._wake.wait(self.retry_seconds if pending else idle)
