"""The HTTP service in-process: every endpoint's contract, the error table, and predictions
racing deletions without a server error or a broken invariant."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from s3t.errors import (
    ArtifactError,
    DataError,
    InvalidRequestError,
    ModelError,
    PartitionError,
    RetrainConflictError,
    S3TError,
    SchemaVersionError,
    ServiceUnavailableError,
    UnknownSampleError,
    WorkspaceError,
)
from s3t.service import create_app, status_for
from s3t.service.bodies import image_array
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T

LABELS = {"neg", "pos"}


def _sample_in(client: TestClient, shard: int, slice_: int, skip: int = 0) -> str:
    rows = client.get("/v1/samples", params={"shard": shard}).json()
    return [r["id"] for r in rows if r["slice"] == slice_][skip]


def _cheapest_slice(perms: list[list[int]]) -> int:
    """The slice whose deletion truncates the shard's sequences by the fewest stages."""
    return min(perms[0], key=lambda s: sum(len(p) - p.index(s) for p in perms))


def test_health_and_status_report_live_shards_without_loading_the_model(
    client: TestClient, workspace: Path
) -> None:
    health = client.get("/v1/health").json()
    assert health["ok"] and health["live_shards"] == 2 and not health["failed"]
    status = client.get("/v1/status").json()
    assert status["live_shards"] == 2
    assert [s["served_depth"] for s in status["shards"]] == [3, 3]
    other = S3T.open(workspace, read_only=True)  # what those routes call
    other.health(), other.status()
    assert not other.model_loaded


def test_predict_gives_label_names_and_rejects_bad_input(client: TestClient) -> None:
    for aggregate in ("mean-logits", "vote"):
        out = client.post(
            "/v1/predict", json={"inputs": ["a fine film", "dull plot"], "aggregate": aggregate}
        )
        assert out.status_code == 200, out.text
        body = out.json()
        assert len(body["labels"]) == 2 and set(body["labels"]) <= LABELS
        assert [s["shard"] for s in body["served"]] == [0, 1]
    pairs = client.post("/v1/predict", json={"inputs": [["a fine film", "the plot"]]})
    assert pairs.status_code == 200 and pairs.json()["labels"][0] in LABELS

    empty = client.post("/v1/predict", json={"inputs": []})
    assert empty.status_code == 422
    assert empty.json()["error"] == "InvalidRequestError"
    assert "non-empty" in empty.json()["detail"]
    assert client.post("/v1/predict", json={"inputs": ["x"], "aggregate": "max"}).status_code == 422
    assert client.post("/v1/generate", json={"prompts": ["hi"]}).json()["error"] == (
        "InvalidRequestError"
    )
    assert client.post(
        "/v1/generate", json={"prompts": ["hi"], "max_new_tokens": 0}
    ).status_code == (422)


def test_forget_returns_a_stored_receipt_and_names_unknown_ids(client: TestClient) -> None:
    victim = _sample_in(client, 0, 0)
    out = client.post("/v1/forget", json={"ids": [victim]}, params={"wait": "erasure"})
    assert out.status_code == 200, out.text
    receipt = out.json()
    assert receipt["deleted"] == [victim] and receipt["truncated"]
    assert receipt["erasure"] == "complete"
    stored = client.get(f"/v1/deletions/{receipt['request_id']}")
    assert stored.status_code == 200 and stored.json() == receipt
    bad_wait = client.post("/v1/forget", json={"ids": [victim]}, params={"wait": "forever"})
    assert bad_wait.status_code == 422 and bad_wait.json()["error"] == "InvalidRequest"

    missing = client.get("/v1/deletions/no-such-request")
    assert missing.status_code == 404 and missing.json()["error"] == "UnknownRequestError"
    unknown = client.post("/v1/forget", json={"ids": [victim, "nobody", 123456]})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "UnknownSampleError"
    assert unknown.json()["ids"] == ["123456", "nobody"]
    for ids, error in (([], "InvalidRequestError"), ([""], "PartitionError")):
        bad = client.post("/v1/forget", json={"ids": ids})
        assert (bad.status_code, bad.json()["error"]) == (422, error)
    assert client.post("/v1/forget", json={"ids": [True]}).status_code == 422
    assert client.get("/v1/status").json()["deletion_requests"] == 1


def test_samples_and_audit(client: TestClient) -> None:
    live = client.get("/v1/samples").json()
    assert len(live) == 120 and {"id", "shard", "slice", "deleted_at"} <= set(live[0])
    assert len(client.get("/v1/samples", params={"shard": 1}).json()) < 120
    client.post("/v1/forget", json={"ids": [live[0]["id"]]}, params={"wait": "erasure"})
    assert len(client.get("/v1/samples").json()) == 119
    everything = client.get("/v1/samples", params={"include_deleted": True}).json()
    assert [r["id"] for r in everything if r["deleted_at"]] == [live[0]["id"]]

    events = client.get("/v1/audit").json()
    assert [e["event"] for e in events][-2:] == ["forget", "erasure-completed"]
    assert client.get("/v1/audit", params={"since": events[-1]["seq"]}).json() == []
    assert client.get("/v1/audit", params={"since": -1}).status_code == 422


def test_every_first_slice_forgotten_means_503_until_retrained(client: TestClient) -> None:
    status = client.get("/v1/status").json()
    victims = [
        _sample_in(client, shard["shard"], perm[0])
        for shard in status["shards"]
        for perm in shard["sequences"]
    ]
    receipt = client.post("/v1/forget", json={"ids": victims}).json()
    assert receipt["failed"]
    health = client.get("/v1/health").json()
    assert health["live_shards"] == 0 and health["failed"]
    out = client.post("/v1/predict", json={"inputs": ["a fine film"]})
    assert out.status_code == 503 and out.json()["error"] == "ServiceUnavailableError"
    assert client.get("/v1/verify").status_code == 200


def test_retrain_wait_restores_depth_and_verify_stays_ok(client: TestClient) -> None:
    perms = client.get("/v1/status").json()["shards"][0]["sequences"]
    client.post("/v1/forget", json={"ids": [_sample_in(client, 0, _cheapest_slice(perms))]})
    assert client.get("/v1/status").json()["shards"][0]["served_depth"] < 3

    out = client.post("/v1/retrain", json={"shards": [0], "wait": True})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["stages"] and {s["shard"] for s in body["stages"]} == {0}
    assert all(s["status"] in ("trained", "reused") for s in body["stages"])
    assert set(body["status"]["shards"][0]["depths"]) == {3}
    assert client.get("/v1/verify").json()["ok"]
    assert client.post("/v1/retrain", json={"shards": [7]}).status_code == 422


def test_retrain_without_waiting_hands_the_work_to_the_background(system: S3T) -> None:
    app = create_app(system, ServiceSettings(require_tokens=False))
    with TestClient(app, base_url="http://localhost") as client:
        perms = client.get("/v1/status").json()["shards"][1]["sequences"]
        client.post("/v1/forget", json={"ids": [_sample_in(client, 1, _cheapest_slice(perms))]})
        out = client.post("/v1/retrain", json={"wait": False})
        assert out.status_code == 202, out.text
        assert out.json()["started"] and out.json()["policy"]["min_depth"] == 3
        assert system.background is not None and system.background.wait_idle(timeout=120)
        assert client.get("/v1/status").json()["shards"][1]["depths"] == [3, 3, 3]
        again = client.post("/v1/retrain", json={"wait": False}).json()
        assert not again["started"] and again["due"] == []
        assert client.post("/v1/retrain", json={"shards": [1], "wait": False}).status_code == 422
    assert system.background is None  # the app stopped the retrainer it started


def test_verify_answers_409_with_the_report_when_an_invariant_breaks(
    client: TestClient, workspace: Path
) -> None:
    assert client.get("/v1/verify").status_code == 200
    next((workspace / "artifacts").rglob("*.safetensors")).unlink()
    out = client.get("/v1/verify")
    assert out.status_code == 409
    assert not out.json()["ok"] and out.json()["violations"]


def test_predictions_racing_deletions_never_fail(client: TestClient) -> None:
    victims = [r["id"] for r in client.get("/v1/samples", params={"shard": 0}).json()][:12]
    barrier = threading.Barrier(8)

    def predict(_: int) -> list[int]:
        barrier.wait()
        return [
            client.post("/v1/predict", json={"inputs": ["a fine film", "dull"]}).status_code
            for _ in range(3)
        ]

    def forget(worker: int) -> list[int]:
        barrier.wait()
        return [
            client.post("/v1/forget", json={"ids": [sid]}).status_code
            for sid in victims[worker * 3 : worker * 3 + 3]
        ]

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(predict, i) for i in range(4)]
        jobs += [pool.submit(forget, i) for i in range(4)]
        codes = [code for job in jobs for code in job.result()]
    assert codes == [200] * 24
    gone = [r["id"] for r in client.get("/v1/samples", params={"include_deleted": True}).json()]
    assert set(victims) <= set(gone)
    assert not set(victims) & {r["id"] for r in client.get("/v1/samples").json()}
    assert client.get("/v1/verify").status_code == 200


class _NewerSchemaError(SchemaVersionError):
    pass


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownSampleError(["a"]), 404),
        (InvalidRequestError("x"), 422),
        (PartitionError("x"), 422),
        (DataError("x"), 400),
        (ServiceUnavailableError("x"), 503),
        (SchemaVersionError("x"), 409),
        (_NewerSchemaError("x"), 409),
        (ArtifactError("x"), 500),
        (WorkspaceError("x"), 500),
        (RetrainConflictError("x"), 409),
        (ModelError("x"), 400),
        (S3TError("x"), 500),
    ],
)
def test_error_table_picks_the_most_specific_class(error: S3TError, status: int) -> None:
    assert status_for(error) == status


def test_image_inputs_become_pixel_arrays() -> None:
    pixels: list[Any] = [[[0, 255], [7, 9]], [[1, 2], [3, 4]]]
    assert image_array(pixels).dtype.name == "uint8"
    assert image_array([[[0.5, 1.0], [0.0, 0.2]]]).shape == (1, 2, 2)
    with pytest.raises(InvalidRequestError):
        image_array([])
    with pytest.raises(DataError):
        image_array([[[1, 2], [3]]])


def test_a_deletion_is_proved_by_its_receipt_and_bad_numbers_are_422(client: TestClient) -> None:
    victim = _sample_in(client, 0, 0)
    receipt = client.post("/v1/forget", json={"ids": [victim]}).json()
    proof = client.get(f"/v1/deletions/{receipt['request_id']}/verify")
    assert proof.status_code == 200 and proof.json()["ok"]
    forged = client.get(
        f"/v1/deletions/{receipt['request_id']}/verify", params={"chain_head": "0" * 64}
    )
    assert forged.status_code == 409 and forged.json()["violations"][0]["check"] == "receipt"
    for path, params in (("/v1/audit", {"since": 2**63}), ("/v1/samples", {"shard": 2**63})):
        bad = client.get(path, params=params)
        assert bad.status_code == 422 and "error" in bad.json(), bad.text
