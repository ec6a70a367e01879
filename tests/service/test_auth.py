"""Bearer tokens with scopes: every route but the probes refuses a missing, unknown,
revoked or under-scoped token with a JSON 401/403; tokens are stored hashed and never
logged; the Host header must be trusted; a non-loopback service without tokens is refused."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from s3t.errors import ConfigError
from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T

NEEDS = {"/v1/predict": "predict", "/v1/generate": "predict", "/v1/forget": "forget"}
ADMIN = {"/v1/retrain", "/v1/tokens", "/v1/tokens/{token_id}"}
OPEN = {"/v1/healthz", "/v1/readyz"}
BODIES = {
    "/v1/predict": {"inputs": ["a fine film"]},
    "/v1/generate": {"prompts": ["hi"]},
    "/v1/forget": {"ids": ["no-such-sample"]},
    "/v1/retrain": {"shards": [9]},
    "/v1/tokens": {"scopes": ["read"]},
}


@pytest.fixture
def secured(system: S3T) -> Iterator[tuple[TestClient, dict[str, str]]]:
    tokens = {
        scope: system.create_token([scope], f"{scope}-app")[1]
        for scope in ("predict", "read", "forget", "admin")
    }
    app = create_app(system, ServiceSettings(require_tokens=True))
    with TestClient(app, base_url="http://localhost") as client:
        yield client, tokens


def _routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def _call(client: TestClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = path.replace("{request_id}", "nope").replace("{token_id}", "nope")
    response = client.request(method, url, headers=headers, json=BODIES.get(path))
    assert response.headers["content-type"].startswith(("application/json", "text/plain"))
    if response.status_code in (401, 403):
        assert set(response.json()) == {"error", "detail"}
    return response.status_code


def test_every_route_refuses_a_missing_or_under_scoped_token(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = secured
    routes = _routes(client)
    assert len(routes) >= 15
    for method, path in routes:
        if path in OPEN:
            assert _call(client, method, path, None) in (200, 503)
            continue
        needed = "admin" if path in ADMIN else NEEDS.get(path, "read")
        assert _call(client, method, path, None) == 401, (method, path)
        assert _call(client, method, path, "s3t_000000000000_" + "x" * 43) == 401, (method, path)
        for scope, token in tokens.items():
            status = _call(client, method, path, token)
            if scope == needed or scope == "admin":
                assert status not in (401, 403), (method, path, scope, status)
            else:
                assert status == 403, (method, path, scope, status)


def test_a_revoked_token_is_refused_at_once_and_secrets_are_never_stored_or_logged(
    secured: tuple[TestClient, dict[str, str]],
    system: S3T,
    workspace: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, tokens = secured
    read = {"Authorization": f"Bearer {tokens['read']}"}
    with caplog.at_level(logging.INFO, logger="s3t.access"):
        assert client.get("/v1/status", headers=read).status_code == 200
    line = caplog.records[-1].getMessage()
    assert '"status": 200' in line and tokens["read"] not in line
    assert tokens["read"].split("_")[1] in line  # the token's id, for the audit trail
    for token in tokens.values():
        assert not any(
            token.split("_", 2)[2].encode() in p.read_bytes()
            for p in workspace.rglob("*")
            if p.is_file()
        )
    read_id = next(t.id for t in system.tokens() if t.name == "read-app")
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert client.delete(f"/v1/tokens/{read_id}", headers=admin).json()["revoked"]
    refused = client.get("/v1/status", headers=read)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    created = client.post("/v1/tokens", headers=admin, json={"scopes": ["read"], "name": "new"})
    assert created.status_code == 201
    fresh = {"Authorization": f"Bearer {created.json()['token']}"}
    assert client.get("/v1/status", headers=fresh).status_code == 200
    events = [e["event"] for e in system.audit()]
    assert {"token-created", "token-revoked"} <= set(events)


def test_untrusted_hosts_are_refused(system: S3T) -> None:
    app = create_app(system, ServiceSettings(require_tokens=False))
    with TestClient(app, base_url="http://evil.example") as client:
        out = client.get("/v1/healthz")
        assert out.status_code == 400 and out.json()["error"] == "UntrustedHost"
    app = create_app(system, ServiceSettings(require_tokens=False, trusted_hosts=("api.example",)))
    with TestClient(app, base_url="http://api.example:8080") as client:
        assert client.get("/v1/healthz").status_code == 200


def test_serving_a_public_address_without_tokens_is_refused(workspace: Path) -> None:
    from s3t.cli.serve import service_settings

    with pytest.raises(ConfigError, match="without access tokens"):
        service_settings(workspace, "0.0.0.0", insecure=False, trusted_hosts=["*"])
    with pytest.raises(ConfigError, match="--trusted-host"):
        service_settings(workspace, "0.0.0.0", insecure=True, trusted_hosts=[])
    assert not service_settings(
        workspace, "0.0.0.0", insecure=True, trusted_hosts=["*"]
    ).require_tokens
    assert not service_settings(workspace, "127.0.0.1", False, []).require_tokens
    S3T.open(workspace).create_token(["read"])
    assert service_settings(workspace, "127.0.0.1", False, []).require_tokens


def test_token_commands(workspace: Path) -> None:
    import json

    from typer.testing import CliRunner

    from s3t.cli.main import app

    runner = CliRunner()
    made = runner.invoke(
        app,
        ["token", "create", "-w", str(workspace), "--scope", "predict", "--name", "web", "--json"],
    )
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)
    assert token["token"].startswith("s3t_") and token["scopes"] == ["predict"]
    listed = json.loads(
        runner.invoke(app, ["token", "list", "-w", str(workspace), "--json"]).stdout
    )
    assert [t["name"] for t in listed] == ["web"] and "token" not in listed[0]
    assert runner.invoke(app, ["token", "revoke", "web", "-w", str(workspace)]).exit_code == 0
    assert S3T.open(workspace).authenticate(token["token"]) is None
    bad = runner.invoke(app, ["token", "create", "-w", str(workspace), "--scope", "root"])
    assert bad.exit_code != 0
