"""The service's errors: every error answer is JSON ``{"error", "detail"}``, and each s3t
error class has one HTTP status (:data:`ERROR_STATUS`). The handlers here turn s3t errors,
refused tokens, invalid bodies, unknown routes and unexpected failures into such answers;
an unexpected failure's traceback goes to the log only, under the request's id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from s3t.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    InvalidRequestError,
    MissingExtraError,
    ModelError,
    PartitionError,
    QueueFullError,
    RegistryDamagedError,
    RetrainConflictError,
    S3TError,
    SchemaVersionError,
    SequenceError,
    ServiceUnavailableError,
    UnknownRequestError,
    UnknownSampleError,
    UnknownSubjectError,
    UnknownTokenError,
    WorkspaceError,
)
from s3t.service.bodies import S3TJSONResponse

log = logging.getLogger(__name__)


class LimitError(InvalidRequestError):
    """A request over one of the service's limits (HTTP 413, naming the limit)."""


#: The HTTP status of every s3t error; the most specific class in an error's MRO wins.
ERROR_STATUS: dict[type[S3TError], int] = {
    LimitError: 413,
    UnknownSampleError: 404,
    UnknownSubjectError: 404,
    UnknownRequestError: 404,
    UnknownTokenError: 404,
    InvalidRequestError: 422,
    PartitionError: 422,
    ConfigError: 400,
    ModelError: 400,
    DataError: 400,
    SequenceError: 400,
    MissingExtraError: 501,
    QueueFullError: 503,
    ServiceUnavailableError: 503,
    SchemaVersionError: 409,
    RegistryDamagedError: 500,
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


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every error answer."""
    return {"error": error, "detail": detail, **extra}


class RefusalError(Exception):
    """A request refused before it reaches a route (no token, a bad one, a missing scope)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


async def _s3t_error(request: Request, exc: Exception) -> S3TJSONResponse:
    assert isinstance(exc, S3TError)
    status = status_for(exc)
    extra: dict[str, Any] = {"ids": exc.ids} if isinstance(exc, UnknownSampleError) else {}
    if isinstance(exc, UnknownSubjectError):
        extra = {"subjects": exc.subjects}
    if status >= 500 and status != 503:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return S3TJSONResponse(error_body(type(exc).__name__, str(exc), **extra), status, headers)


async def _refusal(request: Request, exc: Exception) -> S3TJSONResponse:
    assert isinstance(exc, RefusalError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return S3TJSONResponse(error_body(exc.error, exc.detail), exc.status, headers)


async def _invalid(request: Request, exc: Exception) -> S3TJSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in exc.errors()[:5]
    ]
    return S3TJSONResponse(error_body("InvalidRequest", "; ".join(problems)), 422)


async def _http_error(request: Request, exc: Exception) -> S3TJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    names = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}; the API is under /v1 (see /docs)"
    return S3TJSONResponse(
        error_body(names.get(exc.status_code, "HTTPError"), detail), exc.status_code
    )


async def _unexpected(request: Request, exc: Exception) -> S3TJSONResponse:
    request_id = getattr(request.state, "request_id", "?")
    log.error(
        "request %s: %s %s failed", request_id, request.method, request.url.path, exc_info=exc
    )
    return S3TJSONResponse(
        error_body(
            "InternalError", f"an unexpected error; it is logged under request id {request_id}"
        ),
        500,
        headers={"x-request-id": request_id},
    )


def too_large(limit: str, value: int, allowed: int) -> LimitError:
    return LimitError(f"{limit} is {allowed}, the request has {value}")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as JSON (see the module docstring)."""
    app.add_exception_handler(S3TError, _s3t_error)
    app.add_exception_handler(RefusalError, _refusal)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
