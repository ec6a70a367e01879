"""`s3t serve --ray`: the service scaled out on Ray Serve. One deletion authority (a Ray
actor on this node: it alone opens the workspace) and N prediction replicas (a Ray Serve
deployment on any node), each serving the same ``/v1`` API — predictions from the stages
the authority published, everything else by asking the authority. See
:mod:`s3t.system.scaleout` for the fence that keeps every replica behind every
acknowledged deletion.

:func:`start_on_ray` starts it and returns a handle (tests and benchmarks drive it in
their own process); :func:`serve_on_ray` is the command: start, wait for SIGTERM or
SIGINT, stop.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from starlette.types import Receive, Scope, Send

from s3t.engine.settings import Compute
from s3t.service.app import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.scaleout.authority import DeletionAuthority
from s3t.system.scaleout.replica import ReplicaSystem
from s3t.system.training.background import RetrainPolicy

log = logging.getLogger(__name__)

NAMESPACE = "s3t"
#: this process's replica (a Serve replica is one process). Ray ships the deployment class
#: and its ingress app by value, each with a copy of the globals it refers to; both reach
#: this dict through the imported module instead (:func:`_shared`).
_REPLICA: dict[str, Any] = {}


def _shared() -> dict[str, Any]:
    registry: dict[str, Any] = importlib.import_module("s3t.service.scaleout")._REPLICA
    return registry


class _ReplicaApp:
    """The replica's ASGI app, built on its first request from the replica's system (Ray
    Serve starts the app's lifespan before the replica's constructor ran: the replica
    loads its model and state there, and stops syncing when the lifespan ends)."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if "system" in _shared():
                        _shared()["system"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if self._app is None:
            replica = _shared()
            self._app = create_app(replica["system"], replica["settings"])
        await self._app(scope, receive, send)


@serve.deployment(name="s3t-replica")
@serve.ingress(_ReplicaApp())
class PredictionReplica:
    """One prediction replica (see the module docstring)."""

    def __init__(
        self,
        authority: str,
        settings: ServiceSettings,
        device: str = "auto",
        test_hooks: bool = False,
    ) -> None:
        import ray

        context = serve.get_replica_context()
        name = f"replica-{context.replica_id.unique_id}"
        system = ReplicaSystem(
            ray.get_actor(authority, namespace=NAMESPACE), name, Compute(device=device)
        )
        system.start()  # the current state, its stages and the model, before any request
        gc.collect()
        gc.freeze()  # see s3t.service.app: full collections would pause every thread
        _shared().update(system=system, settings=settings)
        self.system, self.test_hooks = system, test_hooks

    def check_health(self) -> None:
        """Ray Serve's health check: a replica that stopped syncing is replaced."""
        if not self.system._thread.is_alive():
            raise RuntimeError(f"{self.system.name} stopped syncing with the deletion authority")

    def pause_sync(self, seconds: float) -> str:
        """Test hook: stop syncing for a while (a hung or cut-off replica); its name."""
        self._hooks()
        self.system.pause_sync(seconds)
        return self.system.name

    def crash(self) -> None:
        """Test hook: end this replica's process at once (Ray Serve replaces it)."""
        self._hooks()
        os._exit(1)

    def _hooks(self) -> None:
        if not self.test_hooks:
            raise PermissionError("test hooks are off for this deployment")


@dataclass
class RayService:
    """A running scaled-out service: its deletion authority, and where it answers."""

    authority: Any
    authority_name: str
    url: str

    def stop(self) -> None:
        """Stop the replicas and the authority (which closes the workspace)."""
        import ray

        serve.shutdown()
        try:
            ray.get(self.authority.close.remote(), timeout=60)
        finally:
            ray.kill(self.authority)


def start_on_ray(
    workspace: str | Path,
    settings: ServiceSettings,
    policy: RetrainPolicy | None = None,
    *,
    address: str | None = None,
    replicas: int = 2,
    lease_seconds: float = 5.0,
    host: str = "127.0.0.1",
    port: int = 8000,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    device: str = "auto",
    test_hooks: bool = False,
) -> RayService:
    """Start the deletion authority on this node and ``replicas`` prediction replicas
    behind Ray Serve's HTTP proxy at ``host:port``; return once every replica serves."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(
            address=address,
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    root = Path(workspace).resolve()
    name = f"s3t-authority-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    authority: Any = (
        ray.remote(DeletionAuthority)
        .options(
            name=name,
            namespace=NAMESPACE,
            max_restarts=-1,  # Ray restarts it from the workspace
            max_concurrency=64,  # threads: long-polling replicas, deletions, reports
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
        )
        .remote(str(root), policy, lease_seconds)
    )
    ray.get(authority.serving_state.remote())  # the workspace is open
    serve.start(http_options={"host": host, "port": port})
    replica: Any = PredictionReplica  # a Serve deployment (the decorator's typing is loose)
    deployment = replica.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
        health_check_period_s=2.0,
    )
    serve.run(deployment.bind(name, settings, device, test_hooks), name="s3t", route_prefix="/")
    return RayService(authority, name, f"http://{host}:{port}")


def serve_on_ray(workspace: str | Path, settings: ServiceSettings, **options: Any) -> None:
    """Start (see :func:`start_on_ray`), then serve until SIGTERM or SIGINT."""
    service = start_on_ray(workspace, settings, **options)
    log.warning("s3t serving %s on Ray at %s", workspace, service.url)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    service.stop()
