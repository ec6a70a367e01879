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
import functools
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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
from s3t.service.fence import Admission, ResponseFence
from s3t.service.gate import Gate, Telemetry
from s3t.service.settings import ServiceSettings
from s3t.system.access import TokenCache, TokenInfo
from s3t.system.api import S3T
from s3t.system.scaleout.replica import ReplicaSystem
from s3t.system.training.background import RetrainPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ServiceState:
    """What the endpoints share."""

    system: S3T | ReplicaSystem
    settings: ServiceSettings
    telemetry: Telemetry
    fence: ResponseFence
    tokens: TokenCache
    owns_system: bool = False
    #: synchronous retrains share one trainer (one model instance): one at a time
    retrain_lock: threading.Lock = field(default_factory=threading.Lock)
    started_background: bool = False
    batcher: Any = None
    _start_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    #: deletions run on a thread of their own, so an acknowledgement never queues behind
    #: reports; reports (status, verify, samples, audit, receipts) share a few threads, so
    #: however many arrive they compete with deletions and predictions for the
    #: interpreter lock as a few threads, not as many
    deletions: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="s3t-forget")
    )
    reports: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="s3t-report")
    )

    async def report(self, compute: Callable[..., T], *args: Any) -> T:
        """Run a report (a read of the workspace) on the report threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.reports, functools.partial(compute, *args)
        )

    async def delete(self, compute: Callable[[], T]) -> T:
        """Run a deletion on the deletion thread."""
        return await asyncio.get_running_loop().run_in_executor(self.deletions, compute)

    def refresh_tokens(self, seconds: float = 0.1) -> None:
        """Keep the token cache current (a token revoked elsewhere is refused within
        ``seconds``) until the service stops."""
        while not self.stopping.wait(seconds):
            try:
                self.tokens.refresh()
            except Exception:  # keep serving with the tokens known; say why
                log.exception("reading the access tokens failed")

    def shutdown(self) -> None:
        """Finish what the lanes are doing and stop their threads."""
        self.deletions.shutdown(wait=True)
        self.reports.shutdown(wait=True)

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
                    admit=self.fence.admit,
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
        presented = presented.strip()
        if not state.tokens.knows(presented):  # created a moment ago elsewhere?
            await state.report(state.tokens.refresh)
        token = state.tokens.authenticate(presented)
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
    system: S3T | ReplicaSystem,
    settings: ServiceSettings | None = None,
    *,
    owns_system: bool = False,
) -> FastAPI:
    """Return the service over an open system. On shutdown the app answers what is queued,
    stops the background work it started, and closes the system when ``owns_system``."""
    settings = settings or ServiceSettings()
    telemetry = Telemetry(system)
    state = ServiceState(
        system, settings, telemetry, ResponseFence(system), system.token_cache(), owns_system
    )
    if isinstance(system, ReplicaSystem):
        system.order_with(state.fence)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if system.task != "instruction":
            state.start_batcher()
        # load the model now, in the background: /v1/readyz turns ready when it is in memory
        threading.Thread(target=_load, args=(system,), name="s3t-load", daemon=True).start()
        refresher = threading.Thread(target=state.refresh_tokens, name="s3t-tokens", daemon=True)
        refresher.start()
        yield
        state.stopping.set()
        refresher.join(5)
        if state.batcher is not None:
            await run_in_threadpool(state.batcher.stop)
        await run_in_threadpool(state.shutdown)
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


def _load(system: S3T | ReplicaSystem) -> None:
    """Load the models, then take what lives as long as the process (models, libraries)
    out of the garbage collector's full scans: with them in, each full collection pauses
    every thread — the event loop, deletions included — for 100-250 ms."""
    system.load_model()
    gc.collect()
    gc.freeze()


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
async def health(state: State) -> dict[str, Any]:
    """Live shards, quarantined stages and pending erasures; reads only the registry."""
    return (await state.report(state.system.health)).to_dict()


@v1.get("/status", dependencies=[_scoped("read")])
async def status(state: State) -> dict[str, Any]:
    """Per-shard depths, live shards, deletions so far and deletions left before failure."""
    return (await state.report(state.system.status)).to_dict()


@v1.get("/verify", dependencies=[_scoped("read")])
async def verify(state: State) -> S3TJSONResponse:
    """Recompute every exactness invariant: 200 when none is broken, 409 otherwise."""
    report = await state.report(state.system.verify)
    return S3TJSONResponse(report.to_dict(), status_code=200 if report.ok else 409)


@v1.get("/samples", dependencies=[_scoped("read")])
async def samples(
    state: State,
    shard: Annotated[int | None, Query(ge=0, le=2**31, description="Only this shard.")] = None,
    subject: Annotated[str | None, Query(max_length=256, description="Only this subject.")] = None,
    include_deleted: Annotated[bool, Query(description="Include deleted samples.")] = False,
) -> list[dict[str, Any]]:
    """Sample ids with their shard, slice, subject and deletion time."""
    rows = await state.report(state.system.samples, shard, include_deleted, subject)
    return [s.to_dict() for s in rows]


@v1.get("/audit", dependencies=[_scoped("read")])
async def audit(
    state: State,
    since: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only events after this number.")
    ] = 0,
) -> list[dict[str, Any]]:
    """The hash-chained, append-only audit log, oldest first."""
    return await state.report(state.system.audit, since)


async def metrics(state: State) -> Any:
    """Prometheus metrics: requests, latency, queue, batches, deletions, shards, retraining."""
    return await state.report(state.telemetry.exposition)


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
    place = http.state.admission = Admission(state.fence)  # the gate releases it at the end
    prediction = await asyncio.wrap_future(
        state.start_batcher().submit(request, on_admit=place.admitted)
    )
    system.answering()  # a replica whose lease ran out since sends nothing (503)
    answer = prediction.to_dict() | place.provenance
    if settings.labels_only:
        answer["scores"] = []
    return S3TJSONResponse(answer, background=BackgroundTask(place.release))


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
async def forget(
    body: ForgetRequest,
    state: State,
    wait: Annotated[
        Literal["erasure"] | None,
        Query(
            description="erasure: answer only once no byte of the samples is left in any "
            "file (bounded by the service's erase_wait; the receipt says which state it "
            "reached). Without it the answer comes once the deletion is committed and no "
            "longer served, and the erasure follows within milliseconds."
        ),
    ] = None,
) -> dict[str, Any]:
    """Forget samples now: exact and committed to disk when this response is sent, and
    every prediction answered before it with a stage it purged is sent first. The
    receipt's ``erasure`` says whether the bytes are gone from every file yet."""
    named = len(body.ids) + len(body.subjects)
    if named > state.settings.max_forget_ids:
        raise too_large("max_forget_ids", named, state.settings.max_forget_ids)
    receipt = await state.delete(lambda: state.system.forget(body.ids, subjects=body.subjects))
    await state.fence.wait_until_sent(state.fence.position())
    state.telemetry.observe_deletion(len(receipt.deleted))
    if wait == "erasure" and receipt.erasure == "pending":
        deadline, pause = time.monotonic() + state.settings.erase_wait, 0.002
        while time.monotonic() < deadline:
            if await state.report(state.system.erasure_complete, receipt.request_id):
                break
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.05)
        receipt = await state.report(state.system.receipt, receipt.request_id)
    return receipt.to_dict()


@v1.get("/deletions/{request_id}", dependencies=[_scoped("read")])
async def deletion(request_id: str, state: State) -> dict[str, Any]:
    """The receipt of an earlier deletion request, with its erasure state now."""
    return (await state.report(state.system.receipt, request_id)).to_dict()


@v1.get("/deletions/{request_id}/verify", dependencies=[_scoped("read")])
async def verify_deletion(
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
    receipt = await state.report(state.system.receipt, request_id)
    if chain_head is not None:
        receipt = replace(receipt, chain_head=chain_head)
    report = await state.report(state.system.verify_receipt, receipt)
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
    accepted = state.system.retrain_in_background()
    if accepted["started"]:
        state.started_background = True  # stopped with the app
    return S3TJSONResponse(accepted, status_code=202)


# ----- tokens ----------------------------------------------------------------------------------
@v1.get("/tokens", dependencies=[_scoped("admin")])
def tokens(state: State) -> list[dict[str, Any]]:
    """Every access token (never a secret)."""
    return [t.to_dict() for t in state.system.tokens()]


@v1.post("/tokens", dependencies=[_scoped("admin")], status_code=201)
def create_token(body: TokenRequest, state: State) -> dict[str, Any]:
    """A new token; its secret is in this answer and nowhere else."""
    info, secret = state.system.create_token(body.scopes, body.name)
    state.tokens.refresh()
    return {**info.to_dict(), "token": secret}


@v1.delete("/tokens/{token_id}", dependencies=[_scoped("admin")])
def revoke_token(token_id: str, state: State) -> dict[str, Any]:
    """Revoke a token now."""
    info = state.system.revoke_token(token_id)
    state.tokens.refresh()  # refused from the next request
    return info.to_dict()
