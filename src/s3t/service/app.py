"""The HTTP service: one FastAPI app over one open :class:`~s3t.system.api.S3T`.

    GET  /health                 cheap liveness: live shards, failed (never loads the model)
    GET  /status                 S3T.status()
    POST /predict                S3T.predict()          POST /generate   S3T.generate()
    POST /forget                 S3T.forget(): durable when the response is sent
    GET  /deletions/{request_id} a stored deletion receipt
    GET  /verify                 S3T.verify(): 200 when ok, 409 with the same report when not
    POST /retrain                S3T.retrain() now, or 202 and the background retrainer
    GET  /samples, GET /audit    the sample table and the audit log

Endpoints are plain ``def``s, so FastAPI runs them in its threadpool: the model is guarded
by the server's lock and every thread has its own registry connection. Every s3t error
becomes one status code through :data:`ERROR_STATUS` and one handler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool

from s3t.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    InvalidRequestError,
    ModelError,
    PartitionError,
    RetrainConflictError,
    S3TError,
    SchemaVersionError,
    SequenceError,
    ServiceUnavailableError,
    UnknownRequestError,
    UnknownSampleError,
    WorkspaceError,
)
from s3t.service.bodies import (
    ForgetRequest,
    GenerateRequest,
    PredictRequest,
    RetrainRequest,
    S3TJSONResponse,
    image_array,
)
from s3t.system.api import S3T
from s3t.system.training.background import RetrainPolicy

log = logging.getLogger(__name__)

#: The HTTP status of every s3t error; the most specific class in an error's MRO wins.
ERROR_STATUS: dict[type[S3TError], int] = {
    UnknownSampleError: 404,
    UnknownRequestError: 404,
    InvalidRequestError: 422,
    PartitionError: 422,
    ConfigError: 400,
    ModelError: 400,
    DataError: 400,
    SequenceError: 400,
    ServiceUnavailableError: 503,
    SchemaVersionError: 409,
    RetrainConflictError: 409,
    ArtifactError: 500,
    WorkspaceError: 500,
    S3TError: 500,
}


def status_for(error: S3TError) -> int:
    """Return the HTTP status of an s3t error (see :data:`ERROR_STATUS`)."""
    for cls in type(error).__mro__:
        if issubclass(cls, S3TError) and cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


async def _s3t_error(request: Request, exc: Exception) -> S3TJSONResponse:
    """Answer an s3t error with its status from the table and a body naming it."""
    assert isinstance(exc, S3TError)
    status = status_for(exc)
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
    if isinstance(exc, UnknownSampleError):
        body["ids"] = exc.ids
    if status >= 500 and status != 503:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return S3TJSONResponse(body, status_code=status)


@dataclass
class ServiceState:
    """What the endpoints share: the system, and locks for the work that must not overlap."""

    system: S3T
    owns_system: bool = False
    #: synchronous retrains share one trainer (one model instance): one at a time
    retrain_lock: threading.Lock = field(default_factory=threading.Lock)
    background_lock: threading.Lock = field(default_factory=threading.Lock)
    started_background: bool = False


async def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.s3t
    return state


State = Annotated[ServiceState, Depends(_state)]
router = APIRouter()


def create_app(system: S3T, *, owns_system: bool = False) -> FastAPI:
    """Return the service over an open system. On shutdown the app stops a background
    retrainer it started itself, and closes the system when ``owns_system``."""
    state = ServiceState(system, owns_system)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if state.owns_system or state.started_background:
            await run_in_threadpool(system.close)

    app = FastAPI(
        title="s3t",
        summary="Exact machine unlearning for a fine-tuned transformer (S3T): predict and "
        "forget on one workspace.",
        lifespan=lifespan,
        default_response_class=S3TJSONResponse,
    )
    app.state.s3t = state
    app.add_exception_handler(S3TError, _s3t_error)
    app.include_router(router)
    return app


def app_for_workspace(path: str | Path, retrain_policy: RetrainPolicy | None = None) -> FastAPI:
    """Open a workspace (retraining in the background under ``retrain_policy``, if given)
    and return its service; the app closes the system on shutdown."""
    system = S3T.open(path)
    try:
        if retrain_policy is not None:
            system.start_background(retrain_policy)
        if not system.read_only:
            system.start_maintenance()
    except BaseException:
        system.close()
        raise
    return create_app(system, owns_system=True)


# ----- reports ---------------------------------------------------------------------------------
@router.get("/health")
def health(state: State) -> dict[str, Any]:
    """Whether the service answers, how many shards serve, quarantined stages and pending
    erasures; reads only the registry."""
    return state.system.health().to_dict()


@router.get("/status")
def status(state: State) -> dict[str, Any]:
    """Per-shard depths, live shards, deletions so far and deletions left before failure."""
    return state.system.status().to_dict()


@router.get("/verify")
def verify(state: State) -> S3TJSONResponse:
    """Recompute every exactness invariant: 200 when none is broken, 409 otherwise."""
    report = state.system.verify()
    return S3TJSONResponse(report.to_dict(), status_code=200 if report.ok else 409)


@router.get("/samples")
def samples(
    state: State,
    shard: Annotated[int | None, Query(ge=0, description="Only this shard.")] = None,
    include_deleted: Annotated[bool, Query(description="Include deleted samples.")] = False,
) -> list[dict[str, Any]]:
    """Sample ids with their shard, slice and deletion time."""
    return [s.to_dict() for s in state.system.samples(shard, include_deleted)]


@router.get("/audit")
def audit(
    state: State,
    since: Annotated[int, Query(ge=0, description="Only events after this number.")] = 0,
) -> list[dict[str, Any]]:
    """The append-only audit log, oldest first."""
    return state.system.audit(since)


# ----- serving ---------------------------------------------------------------------------------
@router.post("/predict")
def predict(body: PredictRequest, state: State) -> dict[str, Any]:
    """Labels (or values) from the longest valid prefix of every live shard; 503 when no
    shard serves."""
    system = state.system
    inputs: Any = body.inputs
    if system.modality == "image":
        inputs = image_array(body.inputs)
    return system.predict(inputs, body.aggregate).to_dict()


@router.post("/generate")
def generate(body: GenerateRequest, state: State) -> dict[str, Any]:
    """Greedy responses of a language-model workspace, and the models that produced each."""
    return state.system.generate(body.prompts, body.max_new_tokens).to_dict()


# ----- deletion and healing --------------------------------------------------------------------
@router.post("/forget")
def forget(body: ForgetRequest, state: State) -> dict[str, Any]:
    """Forget samples now: exact, and committed to disk before this response is sent."""
    return state.system.forget(body.ids).to_dict()


@router.get("/deletions/{request_id}")
def deletion(request_id: str, state: State) -> dict[str, Any]:
    """The receipt of an earlier deletion request, with its erasure state now."""
    return state.system.receipt(request_id).to_dict()


@router.get("/deletions/{request_id}/verify")
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


@router.post("/retrain")
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
        {
            "accepted": True,
            "started": started,
            "policy": asdict(policy),
            "due": background.due(),
        },
        status_code=202,
    )
