"""A small trained workspace shared (read-only: copied per test) by the system tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import toy_dataset

from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig


@pytest.fixture(scope="session")
def toy_config(tiny_bert: Path) -> S3TConfig:
    return S3TConfig(
        model=ModelSpec(str(tiny_bert), num_labels=2),
        layout=LayoutSettings(shards=2, slices=3, budget=3, seed=2),
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=16),
    )


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory, toy_config: S3TConfig) -> Path:
    root = tmp_path_factory.mktemp("template") / "ws"
    S3T.fit(root, toy_dataset(), toy_config)
    return root


@pytest.fixture
def trained(tmp_path: Path, trained_template: Path) -> Path:
    """A fresh copy of a trained 2-shard, 3-slice, 3-sequence workspace."""
    root = tmp_path / "ws"
    shutil.copytree(trained_template, root)
    return root
