"""Coalescing concurrent predictions: requests wait in a bounded queue and a worker thread
answers them in batches, one pass per served model for the whole batch.

Fairness: a batch takes at most ``chunk`` inputs from each waiting request, in arrival
order, up to ``max_batch`` inputs; so a large request is answered a chunk per batch and a
small one that arrives meanwhile waits at most one batch, never behind the whole large one.
A batch is formed as soon as ``max_batch`` inputs wait, or ``max_wait`` seconds after its
first request arrived. When more than ``max_queued`` inputs wait, a request is refused at
once (:class:`QueueFullError`, with a retry hint) instead of queueing without bound.

Every answer of a batch comes from one consistent choice of served models, checked
against deletions after it was computed (see :meth:`Server.consistently`). A caller that
orders answers with other events (the HTTP service, with deletion acknowledgements) gives
an ``admit`` hook: it sees the answers a batch completes, on the worker thread, and either
admits them (returning one token per answer, handed to each request's ``on_admit``) or
returns ``None``, and they are computed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from s3t.errors import QueueFullError
from s3t.system.serving.requests import Prediction, PredictRequest
from s3t.system.serving.server import Server

log = logging.getLogger(__name__)


Admit = Callable[[list[Prediction]], list[Any] | None]


@dataclass
class _Pending:
    request: PredictRequest
    future: Future[Prediction]
    on_admit: Callable[[Any], None] | None = None
    done: int = 0  # inputs already answered
    parts: list[Prediction] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.request) - self.done


class Batcher:
    """See the module docstring. ``on_batch(inputs, requests)`` observes each batch."""

    def __init__(
        self,
        server: Server,
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queued: int = 4096,
        chunk: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.server = server
        self.admit = admit
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queued = max_queued
        self.chunk = max(1, min(chunk, max_batch))
        self.on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="s3t-batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Inputs waiting now."""
        return self._queued

    def submit(
        self, request: PredictRequest, on_admit: Callable[[Any], None] | None = None
    ) -> Future[Prediction]:
        """Queue a validated request; its future holds the prediction (or the error).
        ``on_admit`` receives the admit hook's token for it, before the future is done."""
        with self._cond:
            if self._stop:
                raise QueueFullError("the service is shutting down; retry on another replica")
            if self._queued + len(request) > self.max_queued:
                raise QueueFullError(
                    f"{self._queued} inputs are waiting (limit {self.max_queued}); retry shortly"
                )
            pending = _Pending(request, Future(), on_admit)
            self._queue.append(pending)
            self._queued += len(request)
            self._cond.notify()
        return pending.future

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def _next_batch(self) -> list[tuple[_Pending, int]] | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait
            while self._queued < self.max_batch and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            kind = self._queue[0].request.kind
            batch: list[tuple[_Pending, int]] = []
            size = 0
            for pending in self._queue:
                if pending.request.kind != kind or size >= self.max_batch:
                    continue
                take = min(self.chunk, pending.left, self.max_batch - size)
                batch.append((pending, take))
                size += take
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            requests = [_slice(p.request, p.done, p.done + take) for p, take in batch]
            try:
                answers = self.server.predict_many(requests)
                failure: BaseException | None = None
            except BaseException as exc:  # every request of the batch gets the error
                answers, failure = [], exc
            if self.on_batch is not None:
                self.on_batch(sum(len(r) for r in requests), len(requests))
            finished: list[_Pending] = []
            with self._cond:
                for i, (pending, take) in enumerate(batch):
                    self._queued -= take
                    pending.done += take
                    if failure is not None:
                        self._finish(pending, failure)
                        continue
                    pending.parts.append(answers[i])
                    if pending.left == 0:
                        finished.append(pending)
            if finished:
                self._deliver(finished)

    def _deliver(self, finished: list[_Pending]) -> None:
        """Hand finished requests their answers, through the admit hook when there is one
        (refused: computed again, ahead of the queue)."""
        answers = [_join(p.parts) for p in finished]
        try:
            tokens = self.admit(answers) if self.admit is not None else [None] * len(answers)
        except BaseException as exc:
            with self._cond:
                for pending in finished:
                    self._finish(pending, exc)
            return
        with self._cond:
            if tokens is None:
                for pending in reversed(finished):
                    pending.done, pending.parts = 0, []
                    self._queue.remove(pending)
                    self._queue.appendleft(pending)
                    self._queued += len(pending.request)
                self._cond.notify()
                return
            for pending, answer, token in zip(finished, answers, tokens, strict=True):
                if pending.on_admit is not None:
                    pending.on_admit(token)
                self._finish(pending, None, answer)

    def _finish(
        self, pending: _Pending, failure: BaseException | None, answer: Prediction | None = None
    ) -> None:
        if pending in self._queue:
            self._queue.remove(pending)
            self._queued -= pending.left
        if pending.future.done():
            return
        if failure is not None:
            pending.future.set_exception(failure)
        else:
            pending.future.set_result(answer if answer is not None else _join(pending.parts))


def _slice(request: PredictRequest, start: int, stop: int) -> PredictRequest:
    if request.kind == "image":
        return PredictRequest(request.kind, request.aggregate, images=request.images[start:stop])
    return PredictRequest(
        request.kind,
        request.aggregate,
        texts=(request.texts or ())[start:stop],
        pairs=(request.pairs or ())[start:stop] if request.pairs is not None else None,
    )


def _join(parts: list[Prediction]) -> Prediction:
    """One prediction from a request's chunks; provenance: the models of every chunk."""
    served = []
    for part in parts:
        served += [s for s in part.served if s not in served]
    return Prediction(
        labels=[x for p in parts for x in p.labels],
        scores=[x for p in parts for x in p.scores],
        served=served,
        aggregate=parts[0].aggregate,
    )
