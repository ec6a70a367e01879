"""The HTTP service: one FastAPI app over one open :class:`~s3t.system.api.S3T`, every route
under ``/v1`` (plus ``/metrics``), each behind a bearer-token scope.

    GET  /v1/healthz   alive (no token)         GET  /v1/readyz    model loaded, a shard live
    POST /v1/predict   predict                  POST /v1/generate  predict
    POST /v1/forget    forget                   GET  /v1/deletions/{id}[/verify]   read
    GET  /v1/status, /v1/samples, /v1/audit, /v1/verify                            read
    POST /v1/retrain   admin                    GET|POST /v1/tokens, DELETE /v1/tokens/{id}  admin
    GET  /metrics      read (Prometheus text format)

Predictions are coalesced into batches by a worker thread (:mod:`s3t.system.serving.batcher`)
and awaited without holding a server thread, so forget, status and health never wait on
the model. A prediction's answer and a deletion are ordered: an answer computed before a
deletion was acknowledged is sent before that acknowledgement, and one validated after it
never uses a stage the deletion purged (:class:`ResponseFence`). Every error is JSON
``{"error", "detail"}`` (:mod:`s3t.service.errors`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.background import BackgroundTask

from s3t.errors import (
    InvalidRequestError,
)
from s3t.service.bodies import (
    ForgetRequest,
    GenerateRequest,
    PredictRequest,
    RetrainRequest,
    S3TJSONResponse,
    TokenRequest,
    image_array,
)
from s3t.service.errors import (
    LimitError,
    RefusalError,
    error_body,
    install_error_handlers,
    too_large,
)
from s3t.service.gate import Gate, Telemetry
from s3t.service.settings import ServiceSettings
from s3t.system.access import TokenInfo
from s3t.system.api import S3T
from s3t.system.training.background import RetrainPolicy

log = logging.getLogger(__name__)


class ResponseFence:
    """Orders prediction answers and deletion acknowledgements (see the module docstring):
    a prediction is validated and enters the fence under one lock; a deletion, once
    committed, waits until every answer that entered before it has been sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._next = 0
        self._open: set[int] = set()

    def enter(self) -> int:
        """Register an answer about to be sent (call holding :attr:`lock`)."""
        self._next += 1
        self._open.add(self._next)
        return self._next

    def position(self) -> int:
        """The last answer that entered (call holding :attr:`lock`)."""
        return self._next

    def leave(self, ticket: int | None) -> None:
        """The answer was sent (or its request ended)."""
        with self.lock:
            self._open.discard(ticket or 0)

    async def wait_until_sent(self, position: int, timeout: float = 30.0) -> None:
        """Wait (polling every millisecond, at most ``timeout``) until every answer that
        entered at or before ``position`` was sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not any(t <= position for t in self._open):
                    return
            await asyncio.sleep(0.001)


@dataclass
class ServiceState:
    """What the endpoints share."""

    system: S3T
    settings: ServiceSettings
    telemetry: Telemetry
    owns_system: bool = False
    fence: ResponseFence = field(default_factory=ResponseFence)
    #: synchronous retrains share one trainer (one model instance): one at a time
    retrain_lock: threading.Lock = field(default_factory=threading.Lock)
    background_lock: threading.Lock = field(default_factory=threading.Lock)
    started_background: bool = False
    batcher: Any = None
    _start_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_batcher(self) -> Any:
        """The prediction batcher (started on first use when no lifespan ran)."""
        with self._start_lock:
            if self.batcher is None:
                self.batcher = self.system.batcher(
                    max_batch=self.settings.max_batch,
                    max_wait=self.settings.max_wait_ms / 1000,
                    max_queued=self.settings.max_queued,
                    chunk=self.settings.chunk,
                    on_batch=self.telemetry.observe_batch,
                )
                batcher = self.batcher
                self.telemetry.queue_depth = lambda: batcher.queued
        return self.batcher


async def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.s3t
    return state


State = Annotated[ServiceState, Depends(_state)]


def scope(name: str) -> Callable[[Request], Awaitable[TokenInfo | None]]:
    """A dependency admitting a request whose bearer token holds ``name`` (or admin)."""

    async def check(request: Request) -> TokenInfo | None:
        state: ServiceState = request.app.state.s3t
        if not state.settings.require_tokens:
            return None
        header = request.headers.get("authorization", "")
        kind, _, presented = header.partition(" ")
        if kind.lower() != "bearer" or not presented:
            raise RefusalError(
                401,
                "Unauthorized",
                "send `Authorization: Bearer <token>`; create one with `s3t token create`",
            )
        token = await run_in_threadpool(state.system.authenticate, presented.strip())
        if token is None:
            raise RefusalError(401, "Unauthorized", "the bearer token is unknown or revoked")
        request.state.token = token.id
        if not token.allows(name):
            raise RefusalError(
                403,
                "Forbidden",
                f"this token lacks the {name!r} scope (it has {list(token.scopes)})",
            )
        return token

    return check


def _scoped(name: str) -> Any:
    return Depends(scope(name))


v1 = APIRouter(prefix="/v1")


def create_app(
    system: S3T, settings: ServiceSettings | None = None, *, owns_system: bool = False
) -> FastAPI:
    """Return the service over an open system. On shutdown the app answers what is queued,
    stops the background work it started, and closes the system when ``owns_system``."""
    settings = settings or ServiceSettings()
    telemetry = Telemetry(system)
    state = ServiceState(system, settings, telemetry, owns_system)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if system.task != "instruction":
            state.start_batcher()
        # load the model now, in the background: /v1/readyz turns ready when it is in memory
        threading.Thread(target=system.load_model, name="s3t-load", daemon=True).start()
        yield
        if state.batcher is not None:
            await run_in_threadpool(state.batcher.stop)
        if state.owns_system or state.started_background:
            await run_in_threadpool(system.close)

    app = FastAPI(
        title="s3t",
        summary="Exact machine unlearning for a fine-tuned transformer (S3T): predict and "
        "forget on one workspace.",
        version="1",
        lifespan=lifespan,
        default_response_class=S3TJSONResponse,
    )
    app.state.s3t = state
    install_error_handlers(app)
    app.include_router(v1)
    app.add_api_route("/metrics", metrics, methods=["GET"], dependencies=[_scoped("read")])
    app.add_middleware(Gate, settings=settings, telemetry=telemetry)
    return app


def app_for_workspace(
    path: str | Path,
    retrain_policy: RetrainPolicy | None = None,
    settings: ServiceSettings | None = None,
) -> FastAPI:
    """Open a workspace (retraining in the background under ``retrain_policy``, if given;
    sweeping and finishing erasures all along) and return its service."""
    system = S3T.open(path)
    try:
        if retrain_policy is not None:
            system.start_background(retrain_policy)
        if not system.read_only:
            system.start_maintenance()
    except BaseException:
        system.close()
        raise
    return create_app(system, settings, owns_system=True)


# ----- probes and reports ----------------------------------------------------------------------
@v1.get("/healthz")
def healthz() -> dict[str, Any]:
    """Liveness: the process answers (no token needed; reveals nothing)."""
    return {"ok": True}


@v1.get("/readyz")
def readyz(state: State) -> S3TJSONResponse:
    """Readiness: the model is loaded and at least one shard serves (no token needed)."""
    health = state.system.health()
    loaded = state.system.model_loaded
    ready = loaded and health.live_shards > 0
    body: dict[str, Any] = {
        "ready": ready,
        "model_loaded": loaded,
        "live_shards": health.live_shards,
    }
    if not ready:
        reason = "the model is not loaded yet" if not loaded else "no shard serves a model"
        body.update(error_body("NotReady", reason))
    return S3TJSONResponse(body, 200 if ready else 503)


@v1.get("/health", dependencies=[_scoped("read")])
def health(state: State) -> dict[str, Any]:
    """Live shards, quarantined stages and pending erasures; reads only the registry."""
    return state.system.health().to_dict()


@v1.get("/status", dependencies=[_scoped("read")])
def status(state: State) -> dict[str, Any]:
    """Per-shard depths, live shards, deletions so far and deletions left before failure."""
    return state.system.status().to_dict()


@v1.get("/verify", dependencies=[_scoped("read")])
def verify(state: State) -> S3TJSONResponse:
    """Recompute every exactness invariant: 200 when none is broken, 409 otherwise."""
    report = state.system.verify()
    return S3TJSONResponse(report.to_dict(), status_code=200 if report.ok else 409)


@v1.get("/samples", dependencies=[_scoped("read")])
def samples(
    state: State,
    shard: Annotated[int | None, Query(ge=0, le=2**31, description="Only this shard.")] = None,
    subject: Annotated[str | None, Query(max_length=256, description="Only this subject.")] = None,
    include_deleted: Annotated[bool, Query(description="Include deleted samples.")] = False,
) -> list[dict[str, Any]]:
    """Sample ids with their shard, slice, subject and deletion time."""
    return [s.to_dict() for s in state.system.samples(shard, include_deleted, subject)]


@v1.get("/audit", dependencies=[_scoped("read")])
def audit(
    state: State,
    since: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only events after this number.")
    ] = 0,
) -> list[dict[str, Any]]:
    """The hash-chained, append-only audit log, oldest first."""
    return state.system.audit(since)


def metrics(state: State) -> Any:
    """Prometheus metrics: requests, latency, queue, batches, deletions, shards, retraining."""
    return state.telemetry.exposition()


# ----- serving ---------------------------------------------------------------------------------
@v1.post("/predict", dependencies=[_scoped("predict")])
async def predict(body: PredictRequest, state: State, http: Request) -> S3TJSONResponse:
    """Labels (or values) from the longest valid prefix of every live shard; 503 when no
    shard serves or the queue is full (with Retry-After)."""
    settings, system = state.settings, state.system
    if len(body.inputs) > settings.max_inputs:
        raise too_large("max_inputs", len(body.inputs), settings.max_inputs)
    for i, x in enumerate(body.inputs):
        for text in x if isinstance(x, list) else [x]:
            if isinstance(text, str) and len(text) > settings.max_chars:
                raise LimitError(f"max_chars is {settings.max_chars}, input {i} has {len(text)}")
    inputs: Any = image_array(body.inputs) if system.modality == "image" else body.inputs
    request = system.validate_request(inputs, body.aggregate)
    batcher = state.start_batcher()
    while True:
        prediction = await asyncio.wrap_future(batcher.submit(request))
        with state.fence.lock:  # validated and registered before any later deletion commits
            if system.still_valid(prediction.served):
                ticket = state.fence.enter()
                http.state.fence, http.state.fence_ticket = state.fence, ticket
                break
    answer = prediction.to_dict()
    if settings.labels_only:
        answer["scores"] = []
    return S3TJSONResponse(answer, background=BackgroundTask(state.fence.leave, ticket))


@v1.post("/generate", dependencies=[_scoped("predict")])
def generate(body: GenerateRequest, state: State) -> dict[str, Any]:
    """Greedy responses of a language-model workspace, and the models that produced each."""
    settings = state.settings
    if len(body.prompts) > settings.max_inputs:
        raise too_large("max_inputs", len(body.prompts), settings.max_inputs)
    longest = max((len(p) for p in body.prompts), default=0)
    if longest > settings.max_chars:
        raise LimitError(f"max_chars is {settings.max_chars}, a prompt has {longest}")
    if body.max_new_tokens > settings.max_new_tokens:
        raise too_large("max_new_tokens", body.max_new_tokens, settings.max_new_tokens)
    return state.system.generate(body.prompts, body.max_new_tokens).to_dict()


# ----- deletion and healing --------------------------------------------------------------------
@v1.post("/forget", dependencies=[_scoped("forget")])
async def forget(body: ForgetRequest, state: State) -> dict[str, Any]:
    """Forget samples now: exact, committed to disk and erased before this response is
    sent; every prediction answered before it with a stage it purged is sent first."""
    named = len(body.ids) + len(body.subjects)
    if named > state.settings.max_forget_ids:
        raise too_large("max_forget_ids", named, state.settings.max_forget_ids)
    receipt = await run_in_threadpool(lambda: state.system.forget(body.ids, subjects=body.subjects))
    with state.fence.lock:
        position = state.fence.position()
    await state.fence.wait_until_sent(position)
    state.telemetry.observe_deletion(len(receipt.deleted))
    return receipt.to_dict()


@v1.get("/deletions/{request_id}", dependencies=[_scoped("read")])
def deletion(request_id: str, state: State) -> dict[str, Any]:
    """The receipt of an earlier deletion request, with its erasure state now."""
    return state.system.receipt(request_id).to_dict()


@v1.get("/deletions/{request_id}/verify", dependencies=[_scoped("read")])
def verify_deletion(
    request_id: str,
    state: State,
    chain_head: Annotated[
        str | None,
        Query(
            max_length=64,
            description="The chain head from the receipt you kept (default: the stored one).",
        ),
    ] = None,
) -> S3TJSONResponse:
    """Prove that a deletion is still in force and that the log up to it was not rewritten:
    200 when so, 409 with the report when not."""
    receipt = state.system.receipt(request_id)
    if chain_head is not None:
        receipt = replace(receipt, chain_head=chain_head)
    report = state.system.verify_receipt(receipt)
    return S3TJSONResponse(report.to_dict(), status_code=200 if report.ok else 409)


@v1.post("/retrain", dependencies=[_scoped("admin")])
def retrain(body: RetrainRequest, state: State) -> Any:
    """Heal truncated sequences: now (``wait``), or in the background (202)."""
    system = state.system
    if not body.wait:
        if body.shards is not None:
            raise InvalidRequestError(
                "shards can only be chosen with wait=true; the background retrainer heals "
                f"the shards its policy selects, got shards={body.shards!r}"
            )
        return _retrain_in_background(state)
    with state.retrain_lock:
        outcomes = system.retrain(body.shards)
    return {"stages": [o.to_dict() for o in outcomes], "status": system.status().to_dict()}


def _retrain_in_background(state: ServiceState) -> S3TJSONResponse:
    system = state.system
    with state.background_lock:
        started = system.background is None
        if started:
            slices = system.config.layout.slices
            background = system.start_background(RetrainPolicy(min_depth=slices, when_dead=True))
            state.started_background = True
        else:
            assert system.background is not None
            background = system.background
            background.wake()
    policy = background.policy
    return S3TJSONResponse(
        {"accepted": True, "started": started, "policy": asdict(policy), "due": background.due()},
        status_code=202,
    )


# ----- tokens ----------------------------------------------------------------------------------
@v1.get("/tokens", dependencies=[_scoped("admin")])
def tokens(state: State) -> list[dict[str, Any]]:
    """Every access token (never a secret)."""
    return [t.to_dict() for t in state.system.tokens()]


@v1.post("/tokens", dependencies=[_scoped("admin")], status_code=201)
def create_token(body: TokenRequest, state: State) -> dict[str, Any]:
    """A new token; its secret is in this answer and nowhere else."""
    info, secret = state.system.create_token(body.scopes, body.name)
    return {**info.to_dict(), "token": secret}


@v1.delete("/tokens/{token_id}", dependencies=[_scoped("admin")])
def revoke_token(token_id: str, state: State) -> dict[str, Any]:
    """Revoke a token now."""
    return state.system.revoke_token(token_id).to_dict()
