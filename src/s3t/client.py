"""A client of a running s3t service, with the library's methods and return types::

    from s3t import Client
    client = Client("http://127.0.0.1:8000", token="s3t_…")
    client.predict(["a fine film"]).labels
    receipt = client.forget(["rt-01097"])            # a Receipt, as S3T.forget returns
    client.verify_receipt(receipt).ok

Built on httpx (the ``serve`` extra). Requests refused with 429 or 503 are retried after
the ``Retry-After`` the service sends (a few times, bounded); every other error becomes the
s3t error the service named (``UnknownSampleError``, ``InvalidRequestError``, …), and a
refused token an :class:`~s3t.errors.AccessDeniedError`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import s3t.errors as errors
from s3t.errors import (
    AccessDeniedError,
    S3TError,
    ServiceUnavailableError,
    UnknownSampleError,
    UnknownSubjectError,
)
from s3t.extras import require
from s3t.system.access import TokenInfo
from s3t.system.forget import Receipt
from s3t.system.reports import Generation, Health, SampleInfo, Status
from s3t.system.serving.requests import Prediction
from s3t.system.verify import VerifyReport

_ERRORS: dict[str, type[S3TError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, S3TError)
}


class Client:
    """See the module docstring. ``retries`` bounds the retries of a refused (429/503)
    request; ``max_retry_wait`` caps each wait, in seconds."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        max_retry_wait: float = 10.0,
    ) -> None:
        httpx = require("httpx", "serve", "s3t.Client")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- the library's methods ---------------------------------------------------------------
    def predict(self, inputs: Sequence[Any], aggregate: str = "mean-logits") -> Prediction:
        """Predict with the served models (texts, [text, pair] pairs, or images as lists)."""
        return Prediction.from_dict(
            self._call("POST", "/v1/predict", json={"inputs": list(inputs), "aggregate": aggregate})
        )

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> Generation:
        """Generate responses (language-model workspaces)."""
        body = {"prompts": list(prompts), "max_new_tokens": max_new_tokens}
        return Generation.from_dict(self._call("POST", "/v1/generate", json=body))

    def forget(
        self,
        ids: Sequence[str | int] = (),
        *,
        subjects: Sequence[str | int] = (),
        wait_erasure: bool | float = False,
    ) -> Receipt:
        """Forget samples (and every sample of some subjects) now: durable and no longer
        served on return; the receipt says whether the erasure is complete yet.
        ``wait_erasure`` asks the service to answer only once it is (``True``: up to the
        service's bound; a number: at most that many seconds more, polling)."""
        body = {"ids": list(ids), "subjects": list(subjects)}
        params = {"wait": "erasure"} if wait_erasure is not False else {}
        receipt = Receipt.from_dict(self._call("POST", "/v1/forget", json=body, params=params))
        if receipt.erasure == "pending" and not isinstance(wait_erasure, bool):
            receipt = self.finish_erasure(receipt.request_id, float(wait_erasure))
        return receipt

    def finish_erasure(self, request_id: str, timeout: float = 30.0) -> Receipt:
        """Wait up to ``timeout`` seconds for a deletion's erasure to complete; return its
        receipt with the state reached."""
        deadline = time.monotonic() + timeout
        receipt = self.receipt(request_id)
        while receipt.erasure == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
            receipt = self.receipt(request_id)
        return receipt

    def erasure_complete(self, request_id: str) -> bool:
        """Whether no byte of this deletion's samples is left in any of the service's files."""
        return self.receipt(request_id).erasure == "complete"

    def forget_subject(self, subjects: Sequence[str | int]) -> Receipt:
        """Forget every sample of these data subjects, in one request."""
        return self.forget(subjects=subjects)

    def receipt(self, request_id: str) -> Receipt:
        """The receipt of an earlier deletion request, with its erasure state now."""
        return Receipt.from_dict(self._call("GET", f"/v1/deletions/{request_id}"))

    def status(self) -> Status:
        """Per-shard depths, live shards, deletions, erasures pending."""
        return Status.from_dict(self._call("GET", "/v1/status"))

    def health(self) -> Health:
        """Live shards, quarantined stages and pending erasures."""
        health: Health = Health.from_dict(self._call("GET", "/v1/health"))
        return health

    def verify(self) -> VerifyReport:
        """The service's workspace checked by verify (a 409 is a report, not an error)."""
        return VerifyReport.from_dict(self._call("GET", "/v1/verify", report=True))

    def verify_receipt(self, receipt: Receipt | dict[str, Any]) -> VerifyReport:
        """Prove that a deletion is still in force against the receipt you kept."""
        kept = receipt if isinstance(receipt, Receipt) else Receipt.from_dict(receipt)
        data = self._call(
            "GET",
            f"/v1/deletions/{kept.request_id}/verify",
            params={"chain_head": kept.chain_head},
            report=True,
        )
        return VerifyReport.from_dict(data)

    def samples(
        self, shard: int | None = None, include_deleted: bool = False, subject: str | None = None
    ) -> list[SampleInfo]:
        """Sample ids with their shard, slice, subject and deletion time."""
        params: dict[str, Any] = {"include_deleted": include_deleted}
        if shard is not None:
            params["shard"] = shard
        if subject is not None:
            params["subject"] = subject
        rows = self._call("GET", "/v1/samples", params=params)
        return [
            SampleInfo(r["id"], r["shard"], r["slice"], r["subject"], r["deleted_at"]) for r in rows
        ]

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """The hash-chained audit log, oldest first."""
        return list(self._call("GET", "/v1/audit", params={"since": since}))

    def retrain(self, shards: Sequence[int] | None = None, wait: bool = True) -> dict[str, Any]:
        """Retrain now (``wait``: each stage's outcome and the status after) or hand the work
        to the service's background retrainer (``wait=False``)."""
        body = {"shards": list(shards) if shards is not None else None, "wait": wait}
        return dict(self._call("POST", "/v1/retrain", json=body))

    def tokens(self) -> list[TokenInfo]:
        """The service's access tokens (admin scope)."""
        return [
            TokenInfo(t["id"], t["name"], tuple(t["scopes"]), t["created"], t["revoked"])
            for t in self._call("GET", "/v1/tokens")
        ]

    # ----- transport ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, report: bool = False, **kwargs: Any) -> Any:
        httpx = require("httpx", "serve", "s3t.Client")
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ServiceUnavailableError(
                    f"cannot reach the s3t service at {self.url}: {exc}"
                ) from None
            if response.status_code in (429, 503) and attempt < self.retries:
                time.sleep(_retry_after(response, self.max_retry_wait, attempt))
                continue
            break
        if response.is_success or (report and response.status_code == 409):
            return response.json()
        raise _error(response)


def _retry_after(response: Any, cap: float, attempt: int) -> float:
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.5 * 2**attempt
    return max(0.0, min(wait, cap))


def _error(response: Any) -> S3TError:
    try:
        body = response.json()
        name, detail = str(body.get("error", "")), str(body.get("detail", response.text))
    except ValueError:
        body, name, detail = {}, "", response.text or f"HTTP {response.status_code}"
    if response.status_code in (401, 403):
        return AccessDeniedError(
            f"the service refused the token ({response.status_code}): {detail}"
        )
    if name == "UnknownSampleError":
        return UnknownSampleError(body.get("ids", []))
    if name == "UnknownSubjectError":
        return UnknownSubjectError(body.get("subjects", []))
    cls = _ERRORS.get(name)
    if cls is None:
        cls = errors.InvalidRequestError if response.status_code in (413, 422) else S3TError
    return cls(f"{detail} (HTTP {response.status_code})")
