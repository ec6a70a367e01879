"""`s3t serve` (the HTTP service, run by uvicorn) and `s3t token` (its access tokens).
FastAPI, uvicorn and the model stack are imported only when a command runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from s3t.cli.output import console, err_console, print_json, table
from s3t.cli.system import open_workspace
from s3t.engine.settings import help_of
from s3t.errors import ConfigError

if TYPE_CHECKING:
    from s3t.service.settings import ServiceSettings
    from s3t.system.training.background import RetrainPolicy

RETRAIN_FORMS = "off, dead or depth:N (N >= 1)"
WS = typer.Option(..., "--workspace", "-w", help="Workspace folder.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _service_help(name: str) -> str:
    from s3t.service.settings import ServiceSettings

    return help_of(ServiceSettings, name)


def retrain_policy(text: str, order: str = "service-first") -> RetrainPolicy | None:
    """Parse ``--retrain``: ``off`` (no background retraining), ``dead`` (retrain a shard
    once it lost every model) or ``depth:N`` (also once its served depth falls below N);
    ``order`` is ``--retrain-order``."""
    from s3t.system.training.background import RETRAIN_ORDERS, RetrainPolicy

    if order not in RETRAIN_ORDERS:
        raise typer.BadParameter(
            f"--retrain-order takes {' or '.join(RETRAIN_ORDERS)}, got {order!r}"
        )
    chosen: dict[str, Any] = {"order": order}
    value = text.strip().lower()
    if value == "off":
        return None
    if value == "dead":
        return RetrainPolicy(when_dead=True, **chosen)
    kind, _, number = value.partition(":")
    if kind == "depth" and number.isdigit() and int(number) >= 1:
        return RetrainPolicy(min_depth=int(number), when_dead=True, **chosen)
    raise typer.BadParameter(f"--retrain takes {RETRAIN_FORMS}, got {text!r}")


def service_settings(
    workspace: Path, host: str, insecure: bool, trusted_hosts: list[str], **limits: object
) -> ServiceSettings:
    """The service's settings for this command line: tokens are required when the workspace
    has any, and always on a non-loopback address unless ``--insecure``."""
    from s3t.service.settings import LOOPBACK_NAMES, ServiceSettings, is_loopback
    from s3t.system.api import S3T

    with S3T.open(workspace, read_only=True) as system:
        active = [t for t in system.tokens() if t.revoked is None]
    loopback = is_loopback(host)
    if not loopback and not active and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without access tokens: create one with `s3t token "
            f"create -w {workspace} --scope predict`, or pass --insecure to serve anyone who "
            "reaches the port"
        )
    if not loopback and not trusted_hosts:
        raise ConfigError(
            f"serving on {host} needs the host names clients use: --trusted-host NAME "
            "(repeatable), or --trusted-host '*' for any"
        )
    if not active:
        err_console.print(
            "[yellow]warning:[/] no access tokens: anyone who reaches the port may predict, "
            "forget, retrain and read every sample id (create tokens with `s3t token create`)",
            highlight=False,
        )
    values = {k: v for k, v in limits.items() if v is not None}
    return ServiceSettings(
        trusted_hosts=tuple(trusted_hosts) or LOOPBACK_NAMES,
        require_tokens=bool(active),
        **values,  # type: ignore[arg-type]
    )


def serve(
    workspace: Path = WS,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    retrain: str = typer.Option(
        "off",
        "--retrain",
        help="Background retraining: off; dead (retrain a shard once it lost every model); "
        "depth:N (also once its served depth falls below N).",
    ),
    retrain_order: str = typer.Option(
        "service-first",
        "--retrain-order",
        help="service-first: one stage at a time, a stage 1 for every dead shard before any "
        "shard is deepened; shard-by-shard: each shard to full depth in turn (s3t 0.2).",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow serving a non-loopback address without tokens."
    ),
    trusted_host: list[str] = typer.Option(
        None, "--trusted-host", help=_service_help("trusted_hosts") + " Repeatable."
    ),
    labels_only: bool = typer.Option(False, "--labels-only", help=_service_help("labels_only")),
    max_body_bytes: int | None = typer.Option(None, help=_service_help("max_body_bytes")),
    max_inputs: int | None = typer.Option(None, help=_service_help("max_inputs")),
    max_chars: int | None = typer.Option(None, help=_service_help("max_chars")),
    max_forget_ids: int | None = typer.Option(None, help=_service_help("max_forget_ids")),
    max_new_tokens: int | None = typer.Option(None, help=_service_help("max_new_tokens")),
    max_batch: int | None = typer.Option(None, help=_service_help("max_batch")),
    max_wait_ms: float | None = typer.Option(None, help=_service_help("max_wait_ms")),
    max_queued: int | None = typer.Option(None, help=_service_help("max_queued")),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Scale out on Ray Serve: this process's node holds the deletion authority (the "
        "one process that opens the workspace), --replicas prediction replicas serve "
        "predictions on any node (needs the ray extra).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="With --ray: join this Ray cluster (auto: the local one)."
    ),
    replicas: int = typer.Option(2, "--replicas", min=1, help="With --ray: prediction replicas."),
    lease_seconds: float = typer.Option(
        5.0,
        "--lease-seconds",
        min=0.5,
        help="With --ray: how long a replica answers without hearing from the authority; "
        "also the longest a deletion waits for a replica that stopped answering.",
    ),
    replica_cpus: float = typer.Option(
        1.0, "--replica-cpus", min=0, help="With --ray: CPUs Ray reserves per replica."
    ),
    replica_gpus: float = typer.Option(
        0.0, "--replica-gpus", min=0, help="With --ray: GPUs per replica (fractions share one)."
    ),
) -> None:
    """Serve a workspace over HTTP under /v1 (docs at /docs): predict, forget, status,
    verify, receipts, retrain, tokens, and /metrics. SIGTERM finishes in-flight requests.
    With --ray, prediction replicas on a Ray cluster serve the same API."""
    from s3t.extras import require

    policy = retrain_policy(retrain, retrain_order)
    uvicorn = require("uvicorn", "serve", "`s3t serve`")
    require("fastapi", "serve", "`s3t serve`")
    require("prometheus_client", "serve", "`s3t serve`")
    settings = service_settings(
        workspace,
        host,
        insecure,
        list(trusted_host or []),
        labels_only=labels_only or None,
        max_body_bytes=max_body_bytes,
        max_inputs=max_inputs,
        max_chars=max_chars,
        max_forget_ids=max_forget_ids,
        max_new_tokens=max_new_tokens,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queued=max_queued,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("s3t.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    # the model thread holds the GIL between torch calls; switching threads every 1 ms
    # (Python's default: 5 ms) keeps deletions, status and probes from queueing behind it
    sys.setswitchinterval(0.001)
    if ray:
        require("ray", "ray", "`s3t serve --ray`")
        require("ray.serve", "ray", "`s3t serve --ray`")
        from s3t.service.scaleout import serve_on_ray

        serve_on_ray(
            workspace,
            settings,
            policy=policy,
            address=ray_address,
            replicas=replicas,
            lease_seconds=lease_seconds,
            host=host,
            port=port,
            replica_cpus=replica_cpus,
            replica_gpus=replica_gpus,
        )
        return
    from s3t.service import app_for_workspace

    uvicorn.run(
        app_for_workspace(workspace, policy, settings),
        host=host,
        port=port,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


tokens = typer.Typer(help="Access tokens of the HTTP service (stored hashed in the workspace).")


@tokens.command("create")
def token_create(
    scope: list[str] = typer.Option(
        ..., "--scope", help="predict, read, forget or admin (repeatable)."
    ),
    name: str = typer.Option("", help="A name to recognise the token by."),
    workspace: Path = WS,
    as_json: bool = JSON,
) -> None:
    """Create a token; it is printed once and never stored (only its hash is)."""
    info, secret = open_workspace(workspace).create_token(scope, name)
    if as_json:
        print_json({**info.to_dict(), "token": secret})
        return
    console.print(
        f"token {info.id} ({info.name or 'unnamed'}) with scopes {', '.join(info.scopes)}:"
    )
    console.print(secret, highlight=False, soft_wrap=True)
    console.print("keep it now: it cannot be shown again (revoke with `s3t token revoke ID`)")


@tokens.command("list")
def token_list(workspace: Path = WS, as_json: bool = JSON) -> None:
    """List tokens (ids, names, scopes, revocation); never their secrets."""
    rows = open_workspace(workspace, read_only=True).tokens()
    if as_json:
        print_json([t.to_dict() for t in rows])
        return
    table(
        f"{len(rows)} token(s)",
        ["id", "name", "scopes", "revoked"],
        [(t.id, t.name, ",".join(t.scopes), "yes" if t.revoked else "") for t in rows],
    )


@tokens.command("revoke")
def token_revoke(
    token: str = typer.Argument(..., help="Token id (or a unique name)."),
    workspace: Path = WS,
    as_json: bool = JSON,
) -> None:
    """Revoke a token now (a running service refuses it from its next request)."""
    info = open_workspace(workspace).revoke_token(token)
    if as_json:
        print_json(info.to_dict())
        return
    console.print(f"revoked token {info.id} ({info.name or 'unnamed'})")
