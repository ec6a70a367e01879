"""The service benchmark: `s3t serve` as a real process, driven by 16 concurrent clients in a
fixed mix, next to the same mix one request at a time and to in-process prediction on
batches of 32 (the model's own limit on this machine), all in one run; plus the server's
memory before and after a client streams a huge body.

The mix, per client: eight one-input predictions, then a status; one more client forgets a
sample every half second. Victims come from the last slice of each shard's only sequence,
so deletions cut served depth by one stage and no shard ever dies: the prediction cost
stays comparable across the run, and every forget erases fresh content.

The forgetting client runs in a process of its own, as privacy tooling would: inside the
process of the 16 predicting clients it would mostly measure its wait for that process's
interpreter lock. Latencies are reported as each client saw them and, from the server's
access log, as the server spent them (parsing to response).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s3t.data import load_dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.errors import ServiceUnavailableError
from s3t.extras import require
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig

Say = Callable[[str], None]


def bench_service(out: Path, quick: bool, say: Say) -> dict[str, Any]:
    """Run the benchmark; see the module docstring."""
    httpx = require("httpx", "serve", "the service benchmark")
    samples, seconds = (300, 8.0) if quick else (1200, 40.0)
    data = load_dataset("builtin:rotten_tomatoes", limit=samples, seed=2)
    assert data.test is not None
    texts = list(data.test.text or ())[:512]
    config = S3TConfig(
        ModelSpec("builtin:minilm", num_labels=2),
        LayoutSettings(shards=2, slices=3, budget=1),
        LoraSettings(rank=16),
        TrainSettings(lr=2e-3, epochs=1, batch_size=32, validation_fraction=0.0),
    )
    root = out / "service"
    shutil.rmtree(root, ignore_errors=True)
    say(f"service benchmark: training MiniLM, m=2 shards, on {samples} samples")
    system = S3T.fit(root / "ws", data, config)

    in_process = _in_process(system, texts, min(seconds, 15.0))
    say(
        f"  in-process S3T.predict: {in_process['batch32_inputs_per_second']} inputs/s on batches "
        f"of 32, {in_process['single_inputs_per_second']} inputs/s one at a time"
    )
    victims = _victims(system)
    token = system.create_token(["admin"], "bench")[1]
    system.close()

    port = _free_port()
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from s3t.cli.main import main; main()",
            "serve",
            "-w",
            str(root / "ws"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(httpx, url)
        _, seen = server_side_latencies(root / "serve.log", 0)
        concurrent = _drive(httpx, url, token, texts, victims, clients=16, seconds=seconds)
        concurrent["server_side"], seen = server_side_latencies(root / "serve.log", seen)
        say("  16 clients: " + _line(concurrent))
        serial = _drive(httpx, url, token, texts, victims, clients=1, seconds=seconds)
        serial["server_side"], seen = server_side_latencies(root / "serve.log", seen)
        say("  one at a time: " + _line(serial))
        memory = _oversized_body(httpx, url, token, server.pid, 20 if quick else 200)
        say(
            f"  RSS {memory['rss_before_mb']} MB before and {memory['rss_after_mb']} MB after a "
            f"{memory['body_mb']} MB body (answered {memory['status']})"
        )
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    predict = concurrent["routes"]["predict"]["inputs_per_second"]
    return {
        "model": "all-MiniLM-L6-v2, m=2 shards, L=3, B=1",
        "seconds_per_run": seconds,
        "in_process": in_process,
        "concurrent": concurrent,
        "one_at_a_time": serial,
        "memory": memory,
        "predict_vs_in_process_batch32": round(
            predict / in_process["batch32_inputs_per_second"], 3
        ),
        "predict_vs_one_at_a_time": round(
            predict / max(serial["routes"]["predict"]["inputs_per_second"], 1e-9), 3
        ),
    }


def _in_process(system: S3T, texts: list[str], seconds: float) -> dict[str, float]:
    system.predict(texts[:32])  # load the model
    rates = {}
    for name, size in (("batch32", 32), ("single", 1)):
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            start = done % (len(texts) - size)
            system.predict(texts[start : start + size])
            done += size
        rates[f"{name}_inputs_per_second"] = round(done / (time.perf_counter() - began), 2)
    return rates


def _victims(system: S3T) -> list[str]:
    """Samples of the last slice of each shard's sequence: deleting them never kills a shard."""
    out = []
    for row in system.sequences():
        out += [s.id for s in system.samples(row.shard) if s.slice == row.perm[-1]]
    np.random.default_rng(0).shuffle(out)
    return out


def _drive(
    httpx: Any,
    url: str,
    token: str,
    texts: list[str],
    victims: list[str],
    clients: int,
    seconds: float,
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"predict": [], "status": [], "forget": []}
    errors = {"5xx": 0, "other": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    def record(route: str, seconds: float, status: int) -> None:
        with lock:
            latencies[route].append(seconds)
            if status >= 500:
                errors["5xx"] += 1
            elif status >= 400:
                errors["other"] += 1

    def client(worker: int) -> None:
        http = httpx.Client(base_url=url, headers=headers, timeout=120)
        i = worker
        while time.monotonic() < stop:
            for _ in range(8):
                began = time.perf_counter()
                text = texts[i % len(texts)]
                status = http.post("/v1/predict", json={"inputs": [text]}).status_code
                record("predict", time.perf_counter() - began, status)
                i += clients
            began = time.perf_counter()
            status = http.get("/v1/status").status_code
            record("status", time.perf_counter() - began, status)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    began = time.perf_counter()
    forgetter = subprocess.Popen(
        [sys.executable, "-c", "from s3t.experiments.bench_service import forget_client as f; f()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert forgetter.stdin is not None
    forgetter.stdin.write(json.dumps([url, token, victims, time.time() + seconds]))
    forgetter.stdin.close()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert forgetter.stdout is not None
    output = forgetter.stdout.read()
    if forgetter.wait(60) != 0:
        raise RuntimeError(f"the forgetting client failed (exit {forgetter.returncode}); see above")
    answered = json.loads(output)
    wall = time.perf_counter() - began
    del victims[len(victims) - len(answered) :]  # the ones forgotten now
    for seconds_taken, status in answered:
        record("forget", seconds_taken, status)
    routes = {}
    for route, values in latencies.items():
        ms = np.asarray(values) * 1000 if values else np.zeros(1)
        routes[route] = {
            "requests": len(values),
            "requests_per_second": round(len(values) / wall, 2),
            "inputs_per_second": round(len(values) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
    total = sum(len(v) for v in latencies.values())
    return {
        "clients": clients,
        "requests_per_second": round(total / wall, 2),
        "routes": routes,
        "errors_5xx": errors["5xx"],
        "errors_4xx": errors["other"],
    }


def forget_client() -> None:
    """The forgetting client (a process of its own): reads ``[url, token, victims,
    until]`` as JSON on stdin, forgets one victim (from the end) every half second until
    the wall-clock time ``until``, and writes ``[[seconds, status], ...]`` as JSON on
    stdout."""
    import httpx

    url, token, victims, until = json.loads(sys.stdin.read())
    answered = []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as http:
        while time.time() < until and victims:
            began = time.perf_counter()
            status = http.post("/v1/forget", json={"ids": [victims.pop()]}).status_code
            answered.append([time.perf_counter() - began, status])
            time.sleep(0.5)
    sys.stdout.write(json.dumps(answered))


def server_side_latencies(log: Path, skip: int) -> tuple[dict[str, dict[str, float]], int]:
    """Per route, p50/p99 of the time the server spent on each request (its access log,
    lines after the first ``skip``); and the number of lines read."""
    lines = log.read_text(errors="replace").splitlines()
    spent: dict[str, list[float]] = {}
    for line in lines[skip:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "ms" in entry and "route" in entry:
            spent.setdefault(str(entry["route"]).removeprefix("/v1/"), []).append(entry["ms"])
    out = {
        route: {
            "p50_ms": round(float(np.percentile(v, 50)), 2),
            "p99_ms": round(float(np.percentile(v, 99)), 2),
        }
        for route, v in spent.items()
    }
    return out, len(lines)


def _oversized_body(httpx: Any, url: str, token: str, pid: int, megabytes: int) -> dict[str, Any]:
    before = _rss_mb(pid)

    def body() -> Iterator[bytes]:
        for _ in range(megabytes):
            yield b"x" * (1 << 20)

    try:
        status = httpx.post(
            url + "/v1/predict",
            content=body(),
            headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=120,
        ).status_code
    except httpx.TransportError:  # closed after answering 413 mid-upload
        status = 413
    return {
        "body_mb": megabytes,
        "status": status,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(_rss_mb(pid), 1),
    }


def _line(run: dict[str, Any]) -> str:
    r = run["routes"]
    return (
        f"{run['requests_per_second']} requests/s; predict {r['predict']['inputs_per_second']}/s "
        f"p50 {r['predict']['p50_ms']} ms p99 {r['predict']['p99_ms']} ms; forget p50 "
        f"{r['forget']['p50_ms']} ms p99 {r['forget']['p99_ms']} ms (server side: p99 "
        f"{run['server_side'].get('forget', {}).get('p99_ms')} ms); 5xx {run['errors_5xx']}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(httpx: Any, url: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/v1/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise ServiceUnavailableError(f"the service at {url} did not become ready in {timeout:.0f} s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
