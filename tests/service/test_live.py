"""`s3t serve` as a real process on a free loopback port, under a bounded mixed load:
several clients predicting while deletions land and a dead shard retrains in the
background. Zero server errors, zero lost or half-applied deletions, no answer completed
after a deletion's acknowledgement computed by a stage that deletion purged, memory that
stays bounded when a client streams a huge body, and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from s3t.client import Client
from s3t.system.api import S3T

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def live(
    workspace: Path, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes]]]:
    system = S3T.open(workspace)
    tokens = {
        "app": system.create_token(["predict", "read"], "app")[1],
        "privacy": system.create_token(["forget", "read"], "privacy")[1],
    }
    system.close()
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from s3t.cli.main import main; main()",
            "serve",
            "-w",
            str(workspace),
            "--port",
            str(port),
            "--retrain",
            "dead",
            "--max-wait-ms",
            "10",
        ],
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/v1/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        time.sleep(0.2)
    else:
        pytest.fail("the service did not become ready")
    try:
        yield url, tokens, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
        log.close()


def test_a_mixed_load_keeps_every_promise(
    live: tuple[str, dict[str, str], subprocess.Popen[bytes]], workspace: Path
) -> None:
    url, tokens, process = live
    app, privacy = Client(url, tokens["app"]), Client(url, tokens["privacy"])
    status = privacy.status()
    # shard 1 dies (every first slice hit): the background retrainer heals it meanwhile
    perms = status.shards[1].sequences
    by_slice: dict[int, list[str]] = {}
    for s in privacy.samples(shard=1):
        by_slice.setdefault(s.slice, []).append(s.id)
    victims = [by_slice[p[0]].pop() for p in perms]
    victims += [s.id for s in privacy.samples(shard=0)[::11]][:6]
    answers: list[tuple[float, set[str], int]] = []
    acks: list[tuple[float, set[str], list[str]]] = []
    codes: list[int] = []
    stop = threading.Event()

    def predicting(worker: int) -> None:
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {tokens['app']}"}, timeout=60
        )
        i = 0
        while not stop.is_set():
            inputs = [f"film {worker} {i}"] * (1 + (i % 3))
            sent = time.monotonic()  # the promise is about requests sent after an ack
            response = client.post("/v1/predict", json={"inputs": inputs})
            codes.append(response.status_code)
            if response.status_code == 200:
                used = {a for s in response.json()["served"] for a in s["artifacts"]}
                answers.append((sent, used, worker))
            i += 1

    requests: list[str] = []

    def forgetting() -> None:
        for victim in victims:
            receipt = privacy.forget([victim])
            acks.append((time.monotonic(), set(receipt.purged_artifacts), receipt.deleted))
            requests.append(receipt.request_id)
            time.sleep(0.15)

    verified: list[bool] = []

    def reading() -> None:
        while not stop.is_set():
            verified.append(privacy.verify().ok)  # no false violation under load
            privacy.status()
            time.sleep(0.1)

    threads = [threading.Thread(target=predicting, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reading)]
    for t in threads:
        t.start()
    forgetting()
    deadline = time.time() + 120
    while time.time() < deadline and privacy.status().sequences_below_full_depth:
        time.sleep(0.5)  # the background retrainer heals what the deletions cut
    stop.set()
    for t in threads:
        t.join(60)

    assert codes and all(code < 500 for code in codes), sorted(set(codes))
    assert verified and all(verified), verified
    assert len(answers) > 40
    assert any(sent > acks[0][0] for sent, _, _ in answers)  # the check below is not vacuous
    for acked_at, purged, _ in acks:  # no request sent after an ack is served what it purged
        late = [used for sent, used, _ in answers if sent > acked_at]
        assert all(not (used & purged) for used in late)
    forgotten = {sid for _, _, deleted in acks for sid in deleted}
    assert forgotten == set(victims)
    assert all(privacy.erasure_complete(r) for r in requests)  # erased in the background
    final = privacy.status()
    assert final.sequences_below_full_depth == 0 and final.live_shards == 2
    metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {tokens['app']}"}).text
    assert "s3t_predict_batch_requests_bucket" in metrics

    # the CLI acts on the running service with --url/--token
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", "from s3t.cli.main import main; main()", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    shown = cli("status", "--url", url, "--token", tokens["app"], "--json")
    assert shown.returncode == 0 and '"live_shards": 2' in shown.stdout, shown.stderr
    denied = cli("forget", "--url", url, "--token", tokens["app"], victims[0])
    assert denied.returncode == 2 and "lacks the 'forget' scope" in denied.stderr

    # a client streams a 64 MB body: refused at the limit, memory stays bounded
    before = _rss_mb(process.pid)

    def huge() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * (1 << 20)

    try:
        refused = httpx.post(
            url + "/v1/predict",
            content=huge(),
            headers={
                "Authorization": f"Bearer {tokens['app']}",
                "content-type": "application/json",
            },
            timeout=60,
        )
        assert refused.status_code == 413
    except httpx.TransportError:
        pass  # the service may close the connection once it has answered 413
    assert _rss_mb(process.pid) - before < 32

    # SIGTERM with work in flight: requests finish, the acknowledged deletion is durable.
    # Each request sends half its body, SIGTERM arrives, then the rest: they are in flight.
    last = privacy.samples(shard=0)[0].id
    receipt = privacy.forget([last], wait_erasure=True)  # ?wait=erasure
    halfway, resume = threading.Semaphore(0), threading.Event()
    finished: list[int | str] = []

    def body() -> Iterator[bytes]:
        yield b'{"inputs": ["x", '
        halfway.release()
        resume.wait(60)
        yield b'"y", "z"]}'

    def in_flight() -> None:
        try:
            headers = {"content-type": "application/json"}
            response = app._http.post("/v1/predict", content=body(), headers=headers)
            finished.append(response.status_code)
        except httpx.HTTPError as exc:
            finished.append(repr(exc))

    threads = [threading.Thread(target=in_flight) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        assert halfway.acquire(timeout=60)
    time.sleep(0.5)  # the service reads the halves it was sent
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # shutting down, it waits for the requests in flight
    resume.set()
    for t in threads:
        t.join(60)
    # uvicorn finishes in-flight requests, shuts the app down, then re-raises the signal
    assert process.wait(60) in (0, -signal.SIGTERM)
    assert finished == [200, 200, 200]  # the requests in flight were answered
    reopened = S3T.open(workspace)
    deleted = {s.id for s in reopened.samples(include_deleted=True) if s.deleted_at}
    assert forgotten | {last} <= deleted and receipt.erasure == "complete"
    assert reopened.verify().ok
