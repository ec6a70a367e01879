"""The order of prediction answers and deletion acknowledgements: an answer computed
before a deletion was acknowledged is sent before that acknowledgement, and an answer
validated after it never uses a stage the deletion purged.

The answers of a batch are validated and enter the fence under one lock, on the batcher's
thread (:meth:`ResponseFence.admit`); a deletion, once committed, waits until every answer
that entered before it has been sent (:meth:`ResponseFence.wait_until_sent`). On a
prediction replica the same fence orders the switch to a new serving state with the
answers in flight (:meth:`ResponseFence.wait_sent`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from s3t.core.selection import Served
from s3t.system.serving.requests import Prediction


class Answering(Protocol):
    """What the fence asks of the system: whether stages are still served, and who
    answers (a replica's name and epoch; nothing in one process)."""

    def still_valid(self, served: list[Served]) -> bool: ...
    def answering(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Ticket:
    """An admitted answer's place in the fence, and who answered it."""

    number: int
    provenance: dict[str, Any] = field(default_factory=dict)


class ResponseFence:
    """See the module docstring."""

    def __init__(self, system: Answering) -> None:
        self.system = system
        self.lock = threading.Lock()
        self._next = 0
        self._open: set[int] = set()

    def admit(self, answers: list[Prediction]) -> list[Ticket] | None:
        """The batcher's admit hook: a ticket per answer, or ``None`` when a deletion
        purged a stage one of them used (they are computed again)."""
        served = [s for answer in answers for s in answer.served]
        with self.lock:
            if not self.system.still_valid(served):
                return None
            provenance = self.system.answering()
            numbers = range(self._next + 1, self._next + 1 + len(answers))
            self._next += len(answers)
            self._open.update(numbers)
        return [Ticket(n, provenance) for n in numbers]

    def position(self) -> int:
        """The last answer that entered."""
        with self.lock:
            return self._next

    def switch(self, change: Callable[[], None]) -> int:
        """Make ``change`` (a replica's switch to a new serving state) where no answer can
        be admitted meanwhile; return the last answer admitted before it."""
        with self.lock:
            change()
            return self._next

    def leave(self, ticket: int | None) -> None:
        """The answer was sent (or its request ended)."""
        with self.lock:
            self._open.discard(ticket or 0)

    def _sent(self, position: int) -> bool:
        with self.lock:
            return not any(t <= position for t in self._open)

    async def wait_until_sent(self, position: int, timeout: float = 30.0) -> None:
        """Wait (polling every millisecond, at most ``timeout``) until every answer that
        entered at or before ``position`` was sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._sent(position):
            await asyncio.sleep(0.001)

    def wait_sent(self, position: int, timeout: float = 30.0) -> bool:
        """:meth:`wait_until_sent` for a thread; whether they were all sent in time."""
        deadline = time.monotonic() + timeout
        while not self._sent(position):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True


class Admission:
    """One prediction's place in the fence: taken on the batcher's thread when its answer
    is admitted, released once the answer was sent or the request ended (whichever
    happens first; a request abandoned before its answer was admitted releases the ticket
    the moment it is taken)."""

    def __init__(self, fence: ResponseFence) -> None:
        self.fence = fence
        self._lock = threading.Lock()
        self._ticket: Ticket | None = None
        self._released = False

    @property
    def provenance(self) -> dict[str, Any]:
        """Who answered (a replica and its epoch), once admitted."""
        return self._ticket.provenance if self._ticket is not None else {}

    def admitted(self, ticket: Ticket) -> None:
        """The batcher admitted the answer under ``ticket``."""
        with self._lock:
            self._ticket = ticket
            if self._released:
                self.fence.leave(ticket.number)

    def release(self) -> None:
        """The answer was sent, or the request ended without it."""
        with self._lock:
            self._released = True
            if self._ticket is not None:
                self.fence.leave(self._ticket.number)
