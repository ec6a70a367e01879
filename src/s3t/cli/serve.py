"""`s3t serve`: the HTTP service over one workspace, run by uvicorn. FastAPI, uvicorn and
the model stack are imported only when the command runs, so `s3t --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from s3t.system.training.background import RetrainPolicy

RETRAIN_FORMS = "off, dead or depth:N (N >= 1)"


def retrain_policy(text: str) -> RetrainPolicy | None:
    """Parse ``--retrain``: ``off`` (no background retraining), ``dead`` (retrain a shard
    once it lost every model) or ``depth:N`` (also once its served depth falls below N)."""
    from s3t.system.training.background import RetrainPolicy

    value = text.strip().lower()
    if value == "off":
        return None
    if value == "dead":
        return RetrainPolicy(when_dead=True)
    kind, _, number = value.partition(":")
    if kind == "depth" and number.isdigit() and int(number) >= 1:
        return RetrainPolicy(min_depth=int(number), when_dead=True)
    raise typer.BadParameter(f"--retrain takes {RETRAIN_FORMS}, got {text!r}")


def serve(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace folder."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    retrain: str = typer.Option(
        "off",
        "--retrain",
        help="Background retraining: off; dead (retrain a shard once it lost every model); "
        "depth:N (also once its served depth falls below N).",
    ),
) -> None:
    """Serve a workspace over HTTP: predict, forget, status, verify, retrain (docs at /docs)."""
    policy = retrain_policy(retrain)
    from s3t.extras import require

    uvicorn = require("uvicorn", "serve", "`s3t serve`")
    require("fastapi", "serve", "`s3t serve`")
    from s3t.service import app_for_workspace

    uvicorn.run(app_for_workspace(workspace, policy), host=host, port=port)
