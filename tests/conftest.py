"""Shared test set-up: offline Hugging Face, tiny models built in code, and a small trained
workspace that system, CLI and service tests copy."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
from pathlib import Path

import pytest

from helpers import marked_dataset, toy_dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig
from tiny import save_tiny_causal_lm, save_tiny_text_model, save_tiny_vit


@pytest.fixture(scope="session")
def tiny_bert12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-layer tiny BERT classifier (so layer 1 vs layers 10 and 11 is covered)."""
    return save_tiny_text_model(tmp_path_factory.mktemp("bert12"), "bert", layers=12)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer tiny BERT classifier."""
    return save_tiny_text_model(tmp_path_factory.mktemp("bert6"), "bert", layers=6)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer tiny RoBERTa classifier."""
    return save_tiny_text_model(tmp_path_factory.mktemp("roberta"), "roberta", layers=3)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer tiny ViT for 8x8 single-channel images."""
    return save_tiny_vit(tmp_path_factory.mktemp("vit"), layers=3)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer tiny Llama."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("llama"), "llama", layers=3)


@pytest.fixture(scope="session")
def tiny_llama64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer tiny Llama of width 64: bitsandbytes' 4-bit blocks (64 values) fit it."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("llama64"), "llama", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer tiny GPT-2."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("gpt2"), "gpt2", layers=3)


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
    S3T.fit(root, toy_dataset(), toy_config).close()  # closed: copies see no live side files
    return root


@pytest.fixture(scope="session")
def marked_template(tmp_path_factory: pytest.TempPathFactory, toy_config: S3TConfig) -> Path:
    root = tmp_path_factory.mktemp("marked") / "ws"
    S3T.fit(root, marked_dataset(), toy_config).close()
    return root


@pytest.fixture
def marked(tmp_path: Path, marked_template: Path) -> Path:
    """A fresh copy of a trained workspace whose training texts hold marker strings."""
    root = tmp_path / "marked"
    shutil.copytree(marked_template, root)
    return root


@pytest.fixture
def trained(tmp_path: Path, trained_template: Path) -> Path:
    """A fresh copy of a trained 2-shard, 3-slice, 3-sequence workspace."""
    root = tmp_path / "ws"
    shutil.copytree(trained_template, root)
    return root
