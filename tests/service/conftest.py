"""A small trained workspace for the service tests (copied per test) and a client over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T


@pytest.fixture
def workspace(trained: Path) -> Path:
    """A fresh copy of the trained 2-shard, 3-slice, 3-sequence workspace (labels neg/pos)."""
    return trained


@pytest.fixture
def system(workspace: Path) -> Iterator[S3T]:
    """The copy, opened."""
    with S3T.open(workspace) as opened:
        yield opened


@pytest.fixture
def client(system: S3T) -> Iterator[TestClient]:
    """An in-process client of the service over the copy (lifespan run), tokens off."""
    app = create_app(system, ServiceSettings(require_tokens=False))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client
