"""Shared test set-up: offline Hugging Face, quiet logs, a deterministic torch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import (
    save_tiny_causal_lm,
    save_tiny_text_model,
    save_tiny_vit,
)


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
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer tiny GPT-2."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("gpt2"), "gpt2", layers=3)
