"""Limits checked before any work, errors that are always JSON, probes, metrics, the
access log, labels-only answers, and batching without head-of-line blocking."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from s3t.errors import QueueFullError
from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T


def _client(system: S3T, **settings: object) -> TestClient:
    app = create_app(system, ServiceSettings(require_tokens=False, **settings))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://localhost")


@pytest.fixture
def limited(system: S3T) -> Iterator[TestClient]:
    with _client(
        system, max_body_bytes=4096, max_inputs=4, max_chars=100, max_forget_ids=3, max_new_tokens=8
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "limit"),
    [
        ("/v1/predict", {"inputs": ["x"] * 5}, "max_inputs is 4"),
        ("/v1/predict", {"inputs": ["x" * 101]}, "max_chars is 100"),
        ("/v1/predict", {"inputs": [["x", "y" * 101]]}, "max_chars is 100"),
        ("/v1/forget", {"ids": ["a", "b", "c", "d"]}, "max_forget_ids is 3"),
        ("/v1/generate", {"prompts": ["hi"], "max_new_tokens": 9}, "max_new_tokens is 8"),
        ("/v1/predict", {"inputs": ["y" * 5000]}, "max_body_bytes is 4096"),
    ],
)
def test_each_limit_is_a_413_naming_it(
    limited: TestClient, path: str, body: object, limit: str
) -> None:
    before = limited.get("/v1/status").json()
    out = limited.post(path, json=body)
    assert out.status_code == 413 and limit in out.json()["detail"], out.text
    assert limited.get("/v1/status").json() == before


def test_a_body_without_a_length_is_cut_off_at_the_limit(system: S3T) -> None:
    import asyncio

    app = create_app(system, ServiceSettings(require_tokens=False, max_body_bytes=4096))
    pieces = {"read": 0}
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:  # 1 MB offered in 1 kB pieces, no Content-Length
        pieces["read"] += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": pieces["read"] < 1000}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "scheme": "http",
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413 and b"max_body_bytes is 4096" in sent[1]["body"]  # type: ignore[operator]
    assert pieces["read"] == 5  # it stopped reading at the limit: the rest was never held


def test_errors_are_always_json(system: S3T, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(system, ServiceSettings(require_tokens=False))
    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    cases = [
        (client.get("/nowhere"), 404, "NotFound"),
        (client.delete("/v1/status"), 405, "MethodNotAllowed"),
        (
            client.post(
                "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "InvalidRequest",
        ),
        (client.post("/v1/predict", json={"inputs": "a string"}), 422, "InvalidRequest"),
        (client.post("/v1/forget", json={"ids": ["x"], "extra": 1}), 422, "InvalidRequest"),
    ]
    for response, status, error in cases:
        assert (response.status_code, response.json()["error"]) == (status, error), response.text
        assert set(response.json()) >= {"error", "detail"} and response.json()["detail"]
    monkeypatch.setattr(S3T, "status", lambda self: 1 / 0)
    crashed = client.get("/v1/status")
    assert crashed.status_code == 500 and crashed.json()["error"] == "InternalError"
    assert crashed.headers["x-request-id"] in crashed.json()["detail"]
    assert "ZeroDivisionError" not in crashed.text  # no traceback reaches a user


def test_probes_metrics_and_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/v1/healthz").json() == {"ok": True}
    assert client.get("/v1/readyz").status_code in (200, 503)  # loading in the background
    with caplog.at_level(logging.INFO, logger="s3t.access"):
        out = client.post(
            "/v1/predict", json={"inputs": ["a fine film"]}, headers={"x-request-id": "req-42"}
        )
    assert out.status_code == 200 and out.headers["x-request-id"] == "req-42"
    line = json.loads(caplog.records[-1].getMessage())
    assert (
        line["request_id"] == "req-42" and line["route"] == "/v1/predict" and line["status"] == 200
    )
    ready = client.get("/v1/readyz").json()
    assert ready["ready"] and ready["model_loaded"] and ready["live_shards"] == 2
    victim = client.get("/v1/samples").json()[0]["id"]
    forgot = client.post("/v1/forget", params={"wait": "erasure"}, json={"ids": [victim]})
    assert forgot.json()["erasure"] == "complete"
    metrics = client.get("/metrics").text
    for name in (
        's3t_requests_total{method="POST",route="/v1/predict",status="200"} 1.0',
        "s3t_request_seconds_bucket",
        "s3t_predict_batch_inputs_count 1.0",
        "s3t_deletion_requests_total 1.0",
        "s3t_deleted_samples_total 1.0",
        "s3t_live_shards 2.0",
        's3t_served_depth{shard="0"}',
        "s3t_erasures_pending 0.0",
        "s3t_predict_queue_inputs 0.0",
        's3t_background_stages{status="retrained"}',
    ):
        assert name in metrics, name


def test_labels_only_answers_carry_no_scores(system: S3T) -> None:
    with _client(system, labels_only=True) as client:
        out = client.post("/v1/predict", json={"inputs": ["a fine film", "dull"]}).json()
        assert len(out["labels"]) == 2 and out["scores"] == []


def test_concurrent_predictions_are_answered_in_shared_batches(system: S3T) -> None:
    with _client(system, max_wait_ms=50.0) as client:
        barrier = threading.Barrier(8)

        def one(i: int) -> int:
            barrier.wait()
            return client.post("/v1/predict", json={"inputs": [f"film number {i}"]}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(8))) == [200] * 8
        metrics = client.get("/metrics").text
    count = float(metrics.split("s3t_predict_batch_requests_count ")[1].split()[0])
    assert count < 8  # fewer batches than requests: they were coalesced


def test_a_small_request_waits_at_most_a_chunk_behind_a_large_one(system: S3T) -> None:
    batcher = system.batcher(max_batch=8, max_wait=0.0, chunk=4, max_queued=1000)
    try:
        finished: dict[str, float] = {}
        big = batcher.submit(system.validate_request([f"a long review {i}" for i in range(200)]))
        big.add_done_callback(lambda f: finished.setdefault("big", time.monotonic()))
        small = batcher.submit(system.validate_request(["a short one"]))
        small.add_done_callback(lambda f: finished.setdefault("small", time.monotonic()))
        assert len(small.result(60).labels) == 1 and len(big.result(120).labels) == 200
        assert finished["small"] < finished["big"]
        assert (
            big.result().labels == system.predict([f"a long review {i}" for i in range(200)]).labels
        )
    finally:
        batcher.stop()


def test_a_full_queue_is_refused_with_retry_after(system: S3T) -> None:
    batcher = system.batcher(max_queued=3)
    try:
        with pytest.raises(QueueFullError, match="limit 3"):
            batcher.submit(system.validate_request(["a", "b", "c", "d"]))
    finally:
        batcher.stop()
    with _client(system, max_queued=2) as client:
        out = client.post("/v1/predict", json={"inputs": ["a", "b", "c"]})
        assert out.status_code == 503 and out.headers["retry-after"] == "1"
        assert out.json()["error"] == "QueueFullError"


def test_a_damaged_registry_is_a_json_error_naming_the_file(
    client: TestClient, system: S3T, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3t.system.store.database import damaged

    path = system.path / "registry.sqlite"

    def broken(self: S3T) -> None:
        raise damaged(path, "database disk image is malformed")

    monkeypatch.setattr(S3T, "status", broken)
    answer = client.get("/v1/status")
    assert answer.status_code == 500 and answer.json()["error"] == "RegistryDamagedError"
    detail = answer.json()["detail"]
    assert str(path) in detail and "restore the workspace from a backup" in detail
    assert "Traceback" not in answer.text
