"""`s3t serve`: --retrain parsing, and the app it hands to uvicorn (not started here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from s3t.cli.main import app
from s3t.cli.serve import retrain_policy
from s3t.errors import InvalidRequestError
from s3t.system.training.background import RetrainPolicy

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("off", None),
        ("dead", RetrainPolicy(when_dead=True)),
        ("depth:2", RetrainPolicy(min_depth=2, when_dead=True)),
    ],
)
def test_retrain_forms(text: str, policy: RetrainPolicy | None) -> None:
    assert retrain_policy(text) == policy


@pytest.mark.parametrize("text", ["sometimes", "depth:0", "depth:x", "depth"])
def test_bad_retrain_forms_list_the_allowed_ones(text: str) -> None:
    with pytest.raises(typer.BadParameter, match=r"off, dead or depth:N"):
        retrain_policy(text)


def test_bad_retrain_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "-w", str(tmp_path), "--retrain", "sometimes"])
    assert result.exit_code == 2
    assert "depth:N" in " ".join(result.output.split())


def test_serve_runs_the_workspace_app_and_shutdown_stops_retraining(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda served, **kw: seen.update(app=served, **kw))
    result = runner.invoke(
        app, ["serve", "-w", str(workspace), "--port", "8123", "--retrain", "depth:2"]
    )
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    system = seen["app"].state.s3t.system
    assert system.background is not None
    assert system.background.policy == RetrainPolicy(min_depth=2, when_dead=True)
    with TestClient(seen["app"], base_url="http://localhost") as client:
        assert client.get("/v1/health").json()["live_shards"] == 2
    assert system.background is None


def test_a_policy_deeper_than_the_workspace_is_refused(workspace: Path) -> None:
    result = runner.invoke(app, ["serve", "-w", str(workspace), "--retrain", "depth:4"])
    assert isinstance(result.exception, InvalidRequestError)
    assert "got 4" in str(result.exception)
