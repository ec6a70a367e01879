"""What every request passes on its way in and out: a request id, the trusted-hosts check,
the body-size limit (enforced while reading: a body is never held past the limit), one
JSON access-log line, and the Prometheus metrics the service exposes."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from s3t.service.settings import ServiceSettings

if TYPE_CHECKING:
    from s3t.system.api import S3T
    from s3t.system.scaleout.replica import ReplicaSystem

access_log = logging.getLogger("s3t.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Telemetry:
    """The service's metrics (one registry per app) and the state gauges read at scrape."""

    def __init__(self, system: S3T | ReplicaSystem) -> None:
        self.system = system
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "s3t_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "s3t_request_seconds",
            "Time to answer a request",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_inputs = Histogram(
            "s3t_predict_batch_inputs",
            "Inputs per prediction batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "s3t_predict_batch_requests",
            "Requests coalesced per prediction batch",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.deleted = Counter(
            "s3t_deleted_samples", "Samples forgotten through this service", registry=self.registry
        )
        self.deletion_requests = Counter(
            "s3t_deletion_requests", "Deletion requests acknowledged", registry=self.registry
        )
        self.queue_depth: Any = lambda: 0
        self.registry.register(_StateCollector(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_batch(self, inputs: int, requests: int) -> None:
        """Record one prediction batch."""
        self.batch_inputs.observe(inputs)
        self.batch_requests.observe(requests)

    def observe_deletion(self, samples: int) -> None:
        """Record one acknowledged deletion request."""
        self.deletion_requests.inc()
        self.deleted.inc(samples)

    def exposition(self) -> Response:
        """The metrics in Prometheus' text format."""
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")


class _StateCollector:
    """Gauges read from the workspace at scrape time."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        system = self.telemetry.system
        status = system.status()
        yield GaugeMetricFamily(
            "s3t_live_shards", "Shards serving a model", value=status.live_shards
        )
        depth = GaugeMetricFamily("s3t_served_depth", "Served depth per shard", labels=["shard"])
        for s in status.shards:
            depth.add_metric([str(s.shard)], s.served_depth)
        yield depth
        yield GaugeMetricFamily(
            "s3t_erasures_pending",
            "Deletions whose erasure is not finished",
            value=status.erasures_pending,
        )
        yield GaugeMetricFamily(
            "s3t_quarantined_stages",
            "Corrupted stages out of service",
            value=len(status.quarantined),
        )
        yield GaugeMetricFamily(
            "s3t_sequences_below_full_depth",
            "Sequences waiting for retraining",
            value=status.sequences_below_full_depth,
        )
        yield GaugeMetricFamily(
            "s3t_predict_queue_inputs",
            "Inputs waiting for the model",
            value=self.telemetry.queue_depth(),
        )
        if status.replicas:  # serving on Ray: the deletion authority's view of each replica
            epoch = GaugeMetricFamily(
                "s3t_replica_epoch", "Serving epoch each replica confirmed", labels=["replica"]
            )
            lease = GaugeMetricFamily(
                "s3t_replica_lease_seconds_left",
                "Seconds left on each replica's lease (0: it answers nothing)",
                labels=["replica"],
            )
            seen = GaugeMetricFamily(
                "s3t_replica_seconds_since_seen",
                "Seconds since the deletion authority last heard from each replica",
                labels=["replica"],
            )
            for r in status.replicas:
                epoch.add_metric([r["replica"]], r["epoch"])
                lease.add_metric([r["replica"]], r["lease_seconds_left"])
                seen.add_metric([r["replica"]], r["seconds_since_seen"])
            yield from (epoch, lease, seen)
        retrain = GaugeMetricFamily(
            "s3t_background_stages", "Stages handled by background retraining", labels=["status"]
        )
        for key in ("stages_retrained", "stages_discarded"):
            retrain.add_metric([key.removeprefix("stages_")], float(status.background.get(key, 0)))
        yield retrain


class Gate:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings, telemetry: Telemetry) -> None:
        self.app = app
        self.settings = settings
        self.telemetry = telemetry
        self.any_host = "*" in settings.trusted_hosts
        self.hosts = {h.lower() for h in settings.trusted_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = self._check_host(headers)
            if refusal is None:
                body, refusal = await self._read_body(headers, receive)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            admission = state.get("admission")
            if admission is not None:  # a prediction's place in the deletion fence
                admission.release()
            route = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - began
            self.telemetry.observe_request(route, scope["method"], status["code"], seconds)
            access_log.info(
                json.dumps(
                    {
                        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status["code"],
                        "ms": round(seconds * 1000, 2),
                        "token": state.get("token"),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                )
            )

    def _check_host(self, headers: dict[str, str]) -> ASGIApp | None:
        if self.any_host:
            return None
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name in self.hosts:
            return None
        return _json(
            400,
            "UntrustedHost",
            f"host {host!r} is not trusted; serve with --trusted-host {name or 'NAME'} to allow it",
        )

    async def _read_body(
        self, headers: dict[str, str], receive: Receive
    ) -> tuple[bytes, ASGIApp | None]:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return b"", _json(
                413, "PayloadTooLarge", f"max_body_bytes is {limit}, the body has {declared}"
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # never hold more than the limit
                return b"", _json(
                    413, "PayloadTooLarge", f"max_body_bytes is {limit}, the body is longer"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (a real disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json(status: int, error: str, detail: str) -> ASGIApp:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Response(body, status, media_type="application/json")
