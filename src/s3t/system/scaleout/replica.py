"""A prediction replica of a scaled-out service: it holds the frozen base and the stages its
deletion authority names, nothing else — no registry, no sample — and answers predictions
with them; every other request goes to the authority.

It syncs with the authority in a loop (:meth:`~s3t.system.scaleout.authority.
DeletionAuthority.sync`). A newer state is applied in this order: the stages it names are
fetched and their sha256 checked; then, under the service's answer fence, the state is
switched, so that no answer computed with a stage the state dropped is admitted after;
then the replica waits until every answer admitted before has been sent, drops the stages
it no longer serves from memory, and only then confirms the epoch at its next sync. Its
lease runs from when it sent the sync that earned it; once it runs out (the authority is
unreachable, or this replica fell behind), every prediction is refused (503) until a sync
at the current epoch earns a new one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from s3t.core.selection import Served
from s3t.engine.settings import Compute
from s3t.errors import (
    ArtifactError,
    InvalidRequestError,
    S3TError,
    ServiceUnavailableError,
)
from s3t.system.access import TokenCache, TokenInfo
from s3t.system.config import S3TConfig
from s3t.system.forget import Receipt
from s3t.system.reports import Generation, Health, SampleInfo, Status
from s3t.system.scaleout.state import Grant, ServingState
from s3t.system.serving.batcher import Admit, Batcher
from s3t.system.serving.requests import Prediction, PredictRequest
from s3t.system.serving.server import Server
from s3t.system.store.records import TokenRow
from s3t.system.training.trainer import StageOutcome
from s3t.system.verify import VerifyReport

log = logging.getLogger(__name__)


class AnswerFence(Protocol):
    """How a replica orders its state switches with the answers its service sends: a
    switch made where no answer can be admitted (returning the last one admitted before),
    and a wait until every answer up to a position was sent."""

    def switch(self, change: Callable[[], None]) -> int: ...
    def wait_sent(self, position: int, timeout: float = 30.0) -> bool: ...


class ReplicaState:
    """The serving state a replica applied, and the stages it holds: its server's
    :class:`~s3t.system.serving.source.ServingSource`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.config = S3TConfig.from_dict(state.config)
        self.blobs: dict[str, bytes] = {}

    @property
    def task(self) -> str:
        return self.state.task

    @property
    def modality(self) -> str:
        return self.state.modality

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.state.label_names

    def selection(self, budget: int | None, exclude: Collection[str] = ()) -> dict[int, Served]:
        if budget is not None:
            raise InvalidRequestError("a prediction replica serves the full budget only")
        banned = set(exclude)
        return {s.shard: s for s in self.state.served if not banned & set(s.artifacts)}

    def unusable_among(self, artifacts: Iterable[str]) -> set[str]:
        return set(artifacts) - self.state.artifacts()

    def read_artifact(self, artifact: str) -> bytes:
        blob = self.blobs.get(artifact)
        if blob is None:
            raise ArtifactError(f"artifact {artifact[:12]} is not served by this replica")
        return blob

    def may_quarantine(self, artifact: str) -> bool:
        return False  # only the authority takes stages out of service


class ReplicaSystem:
    """What the HTTP service calls on a prediction replica (the methods of
    :class:`~s3t.system.api.S3T` it uses): predictions here, everything else at the
    deletion authority (a Ray actor handle). ``name`` identifies the replica in
    provenance and in the authority's table."""

    read_only = True  # a replica writes nothing

    def __init__(self, authority: Any, name: str, compute: Compute | None = None) -> None:
        self.authority = authority
        self.name = name
        self.compute = compute or Compute()
        self.source: ReplicaState | None = None
        self._server: Server | None = None
        self._fence: AnswerFence | None = None
        self._lease_until = 0.0
        self._rows: list[TokenRow] = []
        self._tokens = TokenCache(lambda: self._rows)
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._started = threading.Lock()
        self._thread = threading.Thread(target=self._sync_loop, name="s3t-sync", daemon=True)

    # ----- the replica's own business ---------------------------------------------------------
    def order_with(self, fence: AnswerFence) -> None:
        """Order state switches with the answers this service sends (see the module
        docstring)."""
        self._fence = fence

    def start(self) -> None:
        """Fetch the current state and its stages, load the model, and keep syncing."""
        with self._started:
            if self._thread.is_alive():
                return
            grant = self._sync(("", -1))
            assert grant.state is not None
            self._apply(grant.state)
            _ = self.server.engine
            self._thread.start()

    def pause_sync(self, seconds: float) -> None:
        """Stop syncing for ``seconds`` (tests use it to play a hung or cut-off replica)."""
        self._paused_until = time.monotonic() + seconds

    @property
    def epoch(self) -> int:
        """The epoch this replica serves."""
        return self.source.state.epoch if self.source is not None else -1

    @property
    def lease_left(self) -> float:
        """Seconds left on this replica's lease (0: it answers no prediction)."""
        return max(0.0, self._lease_until - time.monotonic())

    @property
    def server(self) -> Server:
        if self._server is None:
            raise ServiceUnavailableError("this replica has no serving state yet; retry shortly")
        return self._server

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() < self._paused_until:
                self._stop.wait(0.05)
                continue
            try:
                source = self.source
                assert source is not None
                grant = self._sync(source.state.key)
                if grant.state is not None and grant.state.key != source.state.key:
                    self._apply(grant.state)
            except Exception as exc:  # the authority is away: the lease runs out meanwhile
                log.warning(
                    "replica %s: syncing with the deletion authority failed: %s", self.name, exc
                )
                self._stop.wait(0.2)

    def _sync(self, known: tuple[str, int]) -> Grant:
        sent = time.monotonic()
        import ray

        timeout = 30.0 if self.source is None else max(5.0, 3 * self.lease_left + 5.0)
        grant: Grant = ray.get(self.authority.sync.remote(self.name, known), timeout=timeout)
        if grant.lease_seconds is not None:
            self._lease_until = max(self._lease_until, sent + grant.lease_seconds)
        self._rows = grant.tokens
        self._tokens.refresh()
        return grant

    def _apply(self, state: ServingState) -> None:
        held = self.source.blobs if self.source is not None else {}
        wanted = sorted(state.artifacts() - set(held))
        fetched = self._call("artifact_bytes", wanted) if wanted else {}
        for artifact, blob in fetched.items():
            if hashlib.sha256(blob).hexdigest() != artifact:
                raise ArtifactError(
                    f"artifact {artifact[:12]} arrived corrupted (sha256 differs); not applied"
                )
        fresh = ReplicaState(state)
        fresh.blobs = {a: b for a, b in {**held, **fetched}.items() if a in state.artifacts()}
        if self._fence is None or self._server is None:
            self._switch(fresh)
            return
        # no answer using a dropped stage is admitted after the switch, and every answer
        # admitted before it is sent before this replica confirms the epoch
        position = self._fence.switch(lambda: self._switch(fresh))
        self._fence.wait_sent(position)

    def _switch(self, fresh: ReplicaState) -> None:
        self.source = fresh
        if self._server is None:
            self._server = Server(fresh, compute=self.compute)
        else:
            self._server.source = fresh
            self._server.keep_tensors(fresh.state.artifacts())

    def _call(self, method: str, *args: Any) -> Any:
        """Call the deletion authority; its errors are raised as themselves, and an
        authority that cannot be reached is a 503 naming it."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(getattr(self.authority, method).remote(*args), timeout=120)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, S3TError):
                raise cause from None
            raise
        except (RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise ServiceUnavailableError(
                f"the deletion authority cannot be reached ({type(exc).__name__}): deletions "
                "and reports are refused until it is back; retry shortly"
            ) from None

    # ----- what the service calls -------------------------------------------------------------
    @property
    def config(self) -> S3TConfig:
        return self._source().config

    @property
    def task(self) -> str:
        return self._source().task

    @property
    def modality(self) -> str:
        return self._source().modality

    @property
    def model_loaded(self) -> bool:
        return self._server is not None and self._server.loaded and self.lease_left > 0

    def load_model(self) -> None:
        self.start()

    def validate_request(self, inputs: Any, aggregate: str = "mean-logits") -> PredictRequest:
        return self.server.request(inputs, aggregate)

    def batcher(
        self,
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queued: int = 4096,
        chunk: int = 32,
        on_batch: Any = None,
        admit: Admit | None = None,
    ) -> Batcher:
        return Batcher(self.server, max_batch, max_wait, max_queued, chunk, on_batch, admit)

    def still_valid(self, served: Sequence[Served]) -> bool:
        """Whether these stages are still served here; a replica whose lease ran out
        answers nothing (:class:`ServiceUnavailableError`)."""
        self.answering()
        return self.server.still_valid(served)

    def answering(self) -> dict[str, Any]:
        """This replica and the epoch it answers from (503 once its lease ran out)."""
        if self.lease_left <= 0:
            raise ServiceUnavailableError(
                f"prediction replica {self.name} holds no lease from the deletion authority "
                "(it is unreachable, or this replica is behind): it answers nothing until it "
                "is back; retry — another replica may answer"
            )
        return {"replica": self.name, "epoch": self.epoch}

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> Generation:
        self.answering()
        outputs, served = self.server.generate(prompts, max_new_tokens)
        self.answering()
        return Generation(outputs, served)

    def predict(self, inputs: Any, aggregate: str = "mean-logits") -> Prediction:
        self.answering()
        return self.server.predict(inputs, aggregate)

    def token_cache(self) -> TokenCache:
        return self._tokens

    def forget(
        self,
        ids: Sequence[str | int] = (),
        *,
        subjects: Sequence[str | int] = (),
        wait_erasure: bool | float = False,
    ) -> Receipt:
        return self._call("forget", list(ids), list(subjects), wait_erasure)  # type: ignore[no-any-return]

    def erasure_complete(self, request_id: str) -> bool:
        return bool(self._call("erasure_complete", request_id))

    def receipt(self, request_id: str) -> Receipt:
        return self._call("receipt", request_id)  # type: ignore[no-any-return]

    def status(self) -> Status:
        return self._call("status")  # type: ignore[no-any-return]

    def health(self) -> Health:
        return self._call("health")  # type: ignore[no-any-return]

    def verify(self) -> VerifyReport:
        return self._call("verify")  # type: ignore[no-any-return]

    def verify_receipt(self, receipt: Receipt) -> VerifyReport:
        return self._call("verify_receipt", receipt)  # type: ignore[no-any-return]

    def samples(
        self, shard: int | None = None, include_deleted: bool = False, subject: str | None = None
    ) -> list[SampleInfo]:
        return self._call("samples", shard, include_deleted, subject)  # type: ignore[no-any-return]

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        return self._call("audit", since)  # type: ignore[no-any-return]

    def retrain(self, shards: Sequence[int] | None = None) -> list[StageOutcome]:
        return self._call("retrain", shards)  # type: ignore[no-any-return]

    def retrain_in_background(self) -> dict[str, Any]:
        return self._call("retrain_in_background")  # type: ignore[no-any-return]

    def tokens(self) -> list[TokenInfo]:
        return self._call("tokens")  # type: ignore[no-any-return]

    def create_token(self, scopes: Sequence[str], name: str = "") -> tuple[TokenInfo, str]:
        return self._call("create_token", list(scopes), name)  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str) -> TokenInfo:
        return self._call("revoke_token", token_id)  # type: ignore[no-any-return]

    def start_maintenance(self) -> None:
        """Nothing to keep clean here: the authority does."""

    def close(self) -> None:
        """Stop syncing."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _source(self) -> ReplicaState:
        if self.source is None:
            raise ServiceUnavailableError("this replica has no serving state yet; retry shortly")
        return self.source
