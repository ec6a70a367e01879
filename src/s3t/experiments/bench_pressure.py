"""Deletions under pressure: `s3t serve` as a real process on a small workspace (a tiny
random BERT over MiniLM's tokenizer, 600 Rotten Tomatoes samples, m=3 shards, L=B=3),
retraining in the background under ``--retrain depth:2``, 16 clients mixing predictions
with status, verify, health and receipt reads, and one more client, in a process of its
own, forgetting uniformly drawn live samples at a fixed rate.

Each run reports the forget acknowledgement p50/p99 (as the client saw it), the
erasure-complete p50/p99 (from the audit log: the ``forget`` event's time to its
``erasure-completed`` event's), the share of predictions answered 503 (no shard serves),
and every outage: the time from a first 503 to the next answered prediction. The runs:
one deletion per second (the acknowledgement and erasure figures), then five per second
with the retraining order of s3t 0.2 (``shard-by-shard``) and with ``service-first``, in
the same run, next to what the availability simulator predicts from the retraining speed
the service measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3t.data import load_dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.experiments.bench_service import _free_port, _wait_ready
from s3t.extras import require
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig

Say = Callable[[str], None]


def save_tiny_model(path: Path) -> Path:
    """A random 3-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer, saved like a
    checkpoint: real tokenisation, a model small enough that the service's own work shows."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from s3t.engine.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_workspace(root: Path, samples: int = 600) -> tuple[Path, list[str]]:
    """Train the benchmark's workspace; return it and some test texts."""
    model = save_tiny_model(root / "model")
    data = load_dataset("builtin:rotten_tomatoes", limit=samples, seed=3)
    assert data.test is not None
    config = S3TConfig(
        ModelSpec(str(model), num_labels=2, max_length=64),
        LayoutSettings(shards=3, slices=3, budget=3),
        LoraSettings(rank=4),
        TrainSettings(lr=5e-3, epochs=1, batch_size=16, validation_fraction=0.0),
    )
    S3T.fit(root / "template", data, config).close()
    return root / "template", list(data.test.text or ())[:256]


def run_pressure(
    template: Path,
    work: Path,
    texts: list[str],
    rate: float,
    seconds: float,
    retrain: str,
    extra_args: list[str] | None = None,
    clients: int = 16,
) -> dict[str, Any]:
    """One run on a fresh copy of ``template``; see the module docstring."""
    httpx = require("httpx", "serve", "the pressure benchmark")
    ws = work / "ws"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, ws)
    with S3T.open(ws) as system:
        token = system.create_token(["admin"], "bench")[1]
        victims = [s.id for s in system.samples()]
    np.random.default_rng(int(rate * 1000)).shuffle(victims)
    port = _free_port()
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from s3t.cli.main import main; main()",
            "serve",
            "-w",
            str(ws),
            "--port",
            str(port),
            "--retrain",
            retrain,
            *(extra_args or []),
        ],
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    url = f"http://127.0.0.1:{port}"
    ids_file = work / "request_ids"
    ids_file.write_text("")
    try:
        _wait_ready(httpx, url)
        result = _drive(httpx, url, token, texts, victims, rate, seconds, clients, ids_file)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        time.sleep(3.0)  # let the last erasures finish
        audit = http.get("/v1/audit").json()
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    result["erasure_ms"] = _erasure_latencies(audit)
    return result


def _drive(
    httpx: Any,
    url: str,
    token: str,
    texts: list[str],
    victims: list[str],
    rate: float,
    seconds: float,
    clients: int,
    ids_file: Path,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    predictions: list[tuple[float, int]] = []
    reads: dict[str, list[tuple[float, int]]] = {
        "status": [],
        "verify": [],
        "health": [],
        "receipt": [],
    }

    def latest_request() -> str | None:
        lines = ids_file.read_text().split()
        return lines[-1] if lines else None

    def client(worker: int) -> None:
        http = httpx.Client(base_url=url, headers=headers, timeout=120)
        i, rounds = worker, worker
        while time.monotonic() < stop:
            rounds += 1
            for _ in range(4):
                text = texts[i % len(texts)]
                began = time.perf_counter()
                code = http.post("/v1/predict", json={"inputs": [text]}).status_code
                with lock:
                    predictions.append((time.monotonic(), code))
                i += clients
            route = ("status", "verify", "health", "receipt")[rounds % 4]
            path = {
                "status": "/v1/status",
                "verify": "/v1/verify",
                "health": "/v1/health",
                "receipt": None,
            }[route]
            if path is None:
                request = latest_request()
                path = f"/v1/deletions/{request}" if request else "/v1/health"
            began = time.perf_counter()
            code = http.get(path).status_code
            with lock:
                reads[route].append((time.perf_counter() - began, code))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    forgetter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from s3t.experiments.bench_pressure import forget_client as f; f()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert forgetter.stdin is not None
    forgetter.stdin.write(
        json.dumps([url, token, victims, rate, time.time() + seconds, str(ids_file)])
    )
    forgetter.stdin.close()
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert forgetter.stdout is not None
    answered = json.loads(forgetter.stdout.read())
    forgetter.wait(60)
    acks = np.asarray([a[0] for a in answered]) * 1000 if answered else np.zeros(1)
    codes = [c for _, c in predictions]
    outages = _outages(predictions)
    return {
        "rate_per_second": rate,
        "seconds": seconds,
        "forgets": len(answered),
        "forget_codes": sorted({a[1] for a in answered}),
        "ack_p50_ms": round(float(np.percentile(acks, 50)), 2),
        "ack_p99_ms": round(float(np.percentile(acks, 99)), 2),
        "predictions": len(codes),
        "predictions_per_second": round(len(codes) / (time.monotonic() - began), 2),
        "share_503": round(sum(c == 503 for c in codes) / max(len(codes), 1), 4),
        "other_5xx": sum(c >= 500 and c != 503 for c in codes)
        + sum(c >= 500 for v in reads.values() for _, c in v),
        "outages": len(outages),
        "outage_mean_s": round(float(np.mean(outages)), 2) if outages else 0.0,
        "outage_max_s": round(float(np.max(outages)), 2) if outages else 0.0,
        "reads": {
            k: {
                "requests": len(v),
                "p50_ms": round(float(np.percentile([s * 1000 for s, _ in v] or [0], 50)), 2),
                "p99_ms": round(float(np.percentile([s * 1000 for s, _ in v] or [0], 99)), 2),
            }
            for k, v in reads.items()
        },
    }


def _outages(predictions: list[tuple[float, int]]) -> list[float]:
    """Durations from a first 503 to the next answered (200) prediction."""
    out, down = [], None
    for at, code in sorted(predictions):
        if code == 503 and down is None:
            down = at
        elif code == 200 and down is not None:
            out.append(at - down)
            down = None
    return out


def _erasure_latencies(audit: list[dict[str, Any]]) -> dict[str, float]:
    forgot = {e["detail"]["request_id"]: e["at"] for e in audit if e["event"] == "forget"}
    done: dict[str, float] = {}
    for e in audit:
        if e["event"] == "erasure-completed":
            for r in e["detail"]["requests"]:
                done.setdefault(r, e["at"])
    spans = [1000 * (done[r] - at) for r, at in forgot.items() if r in done]
    values = np.asarray(spans or [0.0])
    return {
        "completed": len(spans),
        "of": len(forgot),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def forget_client() -> None:
    """The forgetting client (a process of its own): reads ``[url, token, victims, rate,
    until, ids_file]`` as JSON on stdin, forgets one victim at ``rate`` per second until
    ``until``, appends each request id to ``ids_file`` and writes ``[[seconds, status],
    ...]`` as JSON on stdout."""
    import httpx

    url, token, victims, rate, until, ids_file = json.loads(sys.stdin.read())
    answered = []
    period = 1.0 / rate
    next_at = time.monotonic()
    with (
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as http,
        open(ids_file, "a") as ids,
    ):
        while time.time() < until and victims:
            began = time.perf_counter()
            response = http.post("/v1/forget", json={"ids": [victims.pop()]})
            answered.append([time.perf_counter() - began, response.status_code])
            if response.status_code == 200:
                ids.write(response.json()["request_id"] + "\n")
                ids.flush()
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    sys.stdout.write(json.dumps(answered))


def bench_pressure(out: Path, quick: bool, say: Say) -> dict[str, Any]:
    """Run the benchmark; see the module docstring."""
    seconds = 15.0 if quick else 60.0
    root = out / "pressure"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    say(f"pressure benchmark: a tiny model on 600 samples, m=3, L=B=3, {seconds:.0f} s per run")
    template, texts = build_workspace(root)
    runs: dict[str, Any] = {}
    for name, rate, order in (
        ("one_per_second", 1.0, "service-first"),
        ("five_per_second_shard_by_shard", 5.0, "shard-by-shard"),
        ("five_per_second_service_first", 5.0, "service-first"),
    ):
        run = run_pressure(
            template,
            root / name,
            texts,
            rate,
            seconds,
            "depth:2",
            ["--retrain-order", order],
        )
        run["order"] = order
        run["simulated"] = _simulated(template, root / name / "ws", rate, order, seconds)
        runs[name] = run
        say(f"  {rate:g}/s {order}: " + _line(run))
    old = runs["five_per_second_shard_by_shard"]["share_503"]
    new = runs["five_per_second_service_first"]["share_503"]
    return {
        "model": "random BERT (3 layers, hidden 32) with MiniLM's tokenizer; m=3, L=B=3",
        "samples": 600,
        "seconds_per_run": seconds,
        "clients": 16,
        "runs": runs,
        "share_503_new_over_old": round(new / old, 3) if old else None,
    }


def _simulated(template: Path, ws: Path, rate: float, order: str, seconds: float) -> dict[str, Any]:
    """What the availability simulator predicts for this run, from the retraining speed
    the service measured and the workspace's slice sizes when the run began."""
    from collections import Counter

    from s3t.core.availability import RetrainSpeed, simulate_availability

    with S3T.open(template, read_only=True) as system:
        cells = Counter((s.shard, s.slice) for s in system.samples())
    with S3T.open(ws, read_only=True) as system:
        speed = system.status().retrain_speed
    if not speed:
        return {}
    sizes = [[cells[(k, s)] for s in range(3)] for k in range(3)]
    sim = simulate_availability(
        sizes,
        rate,
        RetrainSpeed(speed["stage_overhead_seconds"], speed["seconds_per_sample"]),
        3,
        order=order,
        seconds=seconds,
        trials=20,
        min_depth=2,
    )
    return {
        "speed": speed,
        "share_503": round(1 - sim.up, 4),
        "outage_seconds": round(sim.outage_seconds, 3),
    }


def _line(run: dict[str, Any]) -> str:
    erasure = run["erasure_ms"]
    return (
        f"forget ack p50 {run['ack_p50_ms']} ms p99 {run['ack_p99_ms']} ms; erasure complete "
        f"p50 {erasure['p50_ms']} ms p99 {erasure['p99_ms']} ms; 503 share "
        f"{100 * run['share_503']:.1f}% ({run['outages']} outages, mean "
        f"{run['outage_mean_s']} s); {run['predictions_per_second']} predictions/s"
    )
