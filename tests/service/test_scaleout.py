"""Serving from many machines, on a real local Ray cluster: a deletion authority and two
prediction replicas (on this machine's two CPUs, a tiny model) behind Ray Serve's proxy.

- While clients predict and another forgets, no answer to a request sent after a
  deletion's acknowledgement uses a stage that deletion purged (checked from each
  answer's provenance: replica, epoch, artifacts), no deletion is lost, and nothing but
  the documented 503 is a server error.
- A replica that stops syncing (a hung or cut-off replica) holds a deletion's
  acknowledgement no longer than its lease, and refuses predictions once its lease ran
  out; it serves again once it syncs.
- A replica whose process dies is replaced by Ray, and the new one serves the current
  epoch.
- A shard that dies is retrained in Ray tasks, and the replicas serve the new stages.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="serving on Ray needs the ray extra")

from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T
from s3t.system.training.background import RetrainPolicy

pytestmark = pytest.mark.slow
LEASE = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(
    trained_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any, Path]]:
    import ray
    from ray import serve

    from s3t.service.scaleout import start_on_ray

    workspace = tmp_path_factory.mktemp("scaleout") / "ws"
    shutil.copytree(trained_template, workspace)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="s3t")
    try:
        service = start_on_ray(
            workspace,
            ServiceSettings(require_tokens=False),
            RetrainPolicy(when_dead=True, poll_seconds=0.2),  # retraining as Ray tasks
            replicas=2,
            lease_seconds=LEASE,
            port=_free_port(),
            replica_cpus=0.5,
            test_hooks=True,
        )
        handle = serve.get_deployment_handle("s3t-replica", app_name="s3t")
        try:
            yield service.url, handle, workspace
        finally:
            service.stop()
    finally:
        ray.shutdown()


def _answer(http: httpx.Client, text: str) -> tuple[int, dict[str, Any]]:
    response = http.post("/v1/predict", json={"inputs": [text]})
    return response.status_code, response.json()


def test_no_answer_after_an_acknowledgement_uses_what_it_purged(
    cluster: tuple[str, Any, Path],
) -> None:
    url, _, workspace = cluster
    http = httpx.Client(base_url=url, timeout=60)
    samples = http.get("/v1/samples").json()
    victims = [s["id"] for s in samples if s["shard"] == 0][:6]
    answers: list[tuple[float, str, int, set[str]]] = []
    codes: list[int] = []
    stop = threading.Event()

    def predicting(worker: int) -> None:
        client = httpx.Client(base_url=url, timeout=60)
        i = 0
        while not stop.is_set():
            sent = time.monotonic()  # the promise is about requests sent after an ack
            code, body = _answer(client, f"good film {worker} {i}")
            codes.append(code)
            if code == 200:
                used = {a for s in body["served"] for a in s["artifacts"]}
                answers.append((sent, body["replica"], body["epoch"], used))
            i += 1

    threads = [threading.Thread(target=predicting, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    acks: list[tuple[float, set[str], list[str]]] = []
    try:
        for victim in victims:
            receipt = http.post("/v1/forget", json={"ids": [victim]}).json()
            acks.append((time.monotonic(), set(receipt["purged_artifacts"]), receipt["deleted"]))
            time.sleep(0.3)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert codes and all(c < 500 or c == 503 for c in codes), sorted(set(codes))
    assert len({r for _, r, _, _ in answers}) == 2  # both replicas answered
    assert any(sent > acks[0][0] for sent, _, _, _ in answers)  # not vacuous
    for acked, purged, _ in acks:
        late = [used for sent, _, _, used in answers if sent > acked]
        assert all(not (used & purged) for used in late)
    with S3T.open(workspace, read_only=True) as auditor:
        deleted = {s.id for s in auditor.samples(include_deleted=True) if s.deleted_at}
        assert set(victims) <= deleted  # no deletion lost
        assert auditor.verify().ok


def test_a_hung_replica_holds_an_acknowledgement_no_longer_than_its_lease(
    cluster: tuple[str, Any, Path],
) -> None:
    url, handle, _ = cluster
    http = httpx.Client(base_url=url, timeout=60)
    hung = handle.pause_sync.remote(4 * LEASE).result()  # stops syncing: hung, or cut off
    victim = next(s["id"] for s in http.get("/v1/samples").json() if s["shard"] == 1)
    began = time.monotonic()
    receipt = http.post("/v1/forget", json={"ids": [victim]}).json()
    waited = time.monotonic() - began
    assert receipt["deleted"] == [victim]
    assert waited < LEASE + 2.0, waited  # the lease (and its margin) bound the wait
    refused, served_late = 0, []
    for i in range(40):  # the hung replica's lease ran out: it answers nothing
        code, body = _answer(http, f"fine film {i}")
        if code == 503 and hung in body.get("detail", ""):
            refused += 1
        elif code == 200 and body["replica"] == hung:
            served_late.append(body)
    assert refused and not served_late
    deadline = time.monotonic() + 8 * LEASE  # once it syncs again it serves again
    while time.monotonic() < deadline:
        code, body = _answer(http, "good film")
        if code == 200 and body["replica"] == hung:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{hung} did not serve again after it synced")
    status = http.get("/v1/status").json()
    assert {r["replica"]: r["current"] for r in status["replicas"]}[hung]


def test_a_replica_that_dies_is_replaced_and_serves_the_current_epoch(
    cluster: tuple[str, Any, Path],
) -> None:
    url, handle, _ = cluster
    http = httpx.Client(base_url=url, timeout=60)
    before = {r["replica"] for r in http.get("/v1/status").json()["replicas"]}
    with contextlib.suppress(Exception):  # the replica ends before it can answer
        handle.crash.remote().result()
    victim = next(s["id"] for s in http.get("/v1/samples").json() if s["shard"] == 0)
    http.post("/v1/forget", json={"ids": [victim]}).raise_for_status()  # a newer epoch
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = http.get("/v1/status").json()
        fresh = [r for r in status["replicas"] if r["replica"] not in before and r["current"]]
        if fresh:
            break
        time.sleep(0.5)
    else:
        pytest.fail("Ray did not replace the replica that died")
    newcomer = fresh[0]["replica"]
    current = fresh[0]["epoch"]
    for _ in range(200):
        code, body = _answer(http, "a fine film")
        if code == 200 and body["replica"] == newcomer:
            assert body["epoch"] == current
            break
    else:
        pytest.fail(f"the new replica {newcomer} never answered")


def test_a_dead_shard_is_retrained_in_ray_tasks_and_served_by_the_replicas(
    cluster: tuple[str, Any, Path],
) -> None:
    url, _, _ = cluster
    http = httpx.Client(base_url=url, timeout=60)
    shard = http.get("/v1/status").json()["shards"][1]
    by_slice: dict[int, list[str]] = {}
    for s in http.get("/v1/samples", params={"shard": 1}).json():
        by_slice.setdefault(s["slice"], []).append(s["id"])
    killers = [by_slice[perm[0]][0] for perm in shard["sequences"]]
    receipt = http.post("/v1/forget", json={"ids": killers}).json()
    assert receipt["served_depth_after"]["1"] == 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        code, body = _answer(http, "good film")
        if code == 200 and any(s["shard"] == 1 for s in body["served"]):
            break  # retrained, published, fetched by the replica and served
        time.sleep(0.5)
    else:
        pytest.fail("shard 1 was not retrained and served again")
    events = [e["event"] for e in http.get("/v1/audit").json()]
    assert events.count("stage-swapped") > 0 and http.get("/v1/verify").status_code == 200
