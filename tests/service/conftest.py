"""A small trained workspace for the service tests (copied per test) and a client over it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent.parent / "system"))

from helpers import toy_dataset

from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.service import create_app
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig


@pytest.fixture(scope="session")
def service_template(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A trained 2-shard, 3-slice, 2-sequence text classifier workspace (labels neg/pos)."""
    config = S3TConfig(
        model=ModelSpec(str(tiny_bert), num_labels=2),
        layout=LayoutSettings(shards=2, slices=3, budget=2, seed=2),
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=16),
    )
    root = tmp_path_factory.mktemp("service") / "ws"
    S3T.fit(root, toy_dataset(96, 12), config)
    return root


@pytest.fixture
def workspace(tmp_path: Path, service_template: Path) -> Path:
    """A fresh copy of the trained workspace."""
    root = tmp_path / "ws"
    shutil.copytree(service_template, root)
    return root


@pytest.fixture
def system(workspace: Path) -> Iterator[S3T]:
    """The copy, opened."""
    with S3T.open(workspace) as opened:
        yield opened


@pytest.fixture
def client(system: S3T) -> Iterator[TestClient]:
    """An in-process client of the service over the copy (lifespan run)."""
    with TestClient(create_app(system)) as test_client:
        yield test_client
