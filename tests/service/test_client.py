"""s3t.Client: the library's methods and return types over HTTP, retries that respect
Retry-After, and errors that are the s3t errors the service named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from s3t.client import Client
from s3t.errors import AccessDeniedError, InvalidRequestError, UnknownSampleError
from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T
from s3t.system.forget import Receipt
from s3t.system.reports import Health, SampleInfo, Status
from s3t.system.serving.requests import Prediction
from s3t.system.verify import VerifyReport


def _client_over(app: Any, token: str | None) -> Client:
    client = Client("http://localhost", token=token)
    client._http = TestClient(app, base_url="http://localhost", headers=client._http.headers)
    return client


@pytest.fixture
def served(system: S3T) -> Iterator[tuple[Client, S3T]]:
    token = system.create_token(["admin"], "ops")[1]
    app = create_app(system, ServiceSettings(require_tokens=True))
    with TestClient(app, base_url="http://localhost"):  # runs the lifespan
        yield _client_over(app, token), system


def test_the_client_has_the_library_s_methods_and_types(served: tuple[Client, S3T]) -> None:
    client, system = served
    prediction = client.predict(["a fine film", "dull"])
    assert isinstance(prediction, Prediction)
    assert prediction.labels == system.predict(["a fine film", "dull"]).labels
    samples = client.samples(shard=0)
    assert isinstance(samples[0], SampleInfo) and samples == system.samples(0)
    receipt = client.forget([samples[0].id], wait_erasure=True)
    assert isinstance(receipt, Receipt) and receipt.deleted == [samples[0].id]
    assert receipt.erasure == "complete" and client.erasure_complete(receipt.request_id)
    acknowledged = client.forget([samples[1].id])  # on commit: the erasure follows
    assert client.finish_erasure(acknowledged.request_id, 30).erasure == "complete"
    assert client.receipt(receipt.request_id) == system.receipt(receipt.request_id)
    assert isinstance(client.status(), Status) and client.status() == system.status()
    assert isinstance(client.health(), Health)
    report = client.verify()
    assert isinstance(report, VerifyReport) and report.ok
    assert client.verify_receipt(receipt).ok
    assert client.audit()[-1]["event"] == "erasure-completed"
    retrained = client.retrain()
    assert retrained["status"]["sequences_below_full_depth"] == 0
    assert [t.name for t in client.tokens()] == ["ops"]


def test_errors_are_the_s3t_errors_the_service_named(
    served: tuple[Client, S3T], system: S3T
) -> None:
    client, _ = served
    with pytest.raises(UnknownSampleError) as err:
        client.forget(["nobody"])
    assert err.value.ids == ["nobody"]
    with pytest.raises(InvalidRequestError, match="aggregate: Input should be 'mean-logits'"):
        client.predict(["x"], aggregate="median")
    app = create_app(system, ServiceSettings(require_tokens=True))
    with pytest.raises(AccessDeniedError, match="401"):
        _client_over(app, "s3t_000000000000_" + "y" * 43).status()


def test_retries_respect_retry_after_and_are_bounded() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(0)
        if len(calls) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"error": "QueueFullError", "detail": "busy"},
            )
        return httpx.Response(
            200,
            json={
                "ok": True,
                "live_shards": 1,
                "failed": False,
                "quarantined": 0,
                "erasures_pending": 0,
                "read_only": False,
            },
        )

    client = Client("http://localhost")
    client._http = httpx.Client(base_url="http://localhost", transport=httpx.MockTransport(handler))
    assert client.health().live_shards == 1 and len(calls) == 3
    calls.clear()
    client.retries = 1
    from s3t.errors import QueueFullError

    with pytest.raises(QueueFullError, match="busy"):
        client.health()
    assert len(calls) == 2  # one try, one retry, then the error
