"""Independent references for exactness tests: train a model from scratch with the engine
alone (no registry, no trainer), on slices recomputed from the partition."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from s3t.core.partition import partition
from s3t.core.schedule import StageKey, is_validation, stage_seed
from s3t.data.examples import Dataset, Examples
from s3t.engine.blocks import BlockModel, State
from s3t.engine.features import FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.train import train_stage
from s3t.system.api import S3T
from s3t.system.config import S3TConfig
from s3t.system.store.registry import Registry
from s3t.system.store.workspace import Workspace
from s3t.system.training.reference import stage_tensors
from tiny import sentiment_texts


def _dead_pid() -> int:
    """A process id no process can have: one past the kernel's largest."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 2**22 + 1  # Linux's largest pid_max, plus one


DEAD_PID = _dead_pid()


def toy_dataset(n: int = 120, test: int = 30, seed: int = 0) -> Dataset:
    texts, labels = sentiment_texts(n + test, seed)
    ids = tuple(f"r{i:04d}" for i in range(n + test))
    names = ("neg", "pos")
    return Dataset(
        "toy",
        Examples(
            ids=ids[:n],
            task="classification",
            text=tuple(texts[:n]),
            labels=labels[:n],
            label_names=names,
        ),
        Examples(
            ids=ids[n:],
            task="classification",
            text=tuple(texts[n:]),
            labels=labels[n:],
            label_names=names,
        ),
    )


MARKERS = [f"ZQMARK{i:04d}QZ" for i in range(12)]


def marked_dataset(n: int = 120, test: int = 30) -> Dataset:
    """The toy dataset with a unique marker string in 12 training texts (the even ones also
    thousands of characters long, so SQLite keeps them on overflow pages), to look for in
    the raw bytes of a workspace's files."""
    base = toy_dataset(n, test)
    texts = list(base.train.text or ())
    for i, marker in enumerate(MARKERS):
        row = 5 + 9 * i
        filler = " good film" * (400 if i % 2 == 0 else 1)
        texts[row] = f"{marker} {texts[row]}{filler} {marker}"
    return Dataset("marked", replace(base.train, text=tuple(texts)), base.test)


def marker_ids(data: Dataset) -> dict[str, str]:
    """marker -> the id of the training sample that holds it."""
    return {
        m: next(sid for sid, t in zip(data.train.ids, data.train.text or (), strict=True) if m in t)
        for m in MARKERS
    }


def files_holding(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose raw bytes contain ``needle`` (UTF-8)."""
    raw = needle.encode()
    return sorted(p for p in root.rglob("*") if p.is_file() and raw in p.read_bytes())


def scratch_stages(
    config: S3TConfig,
    train: Examples,
    shard: int,
    perm: tuple[int, ...],
    depth: int,
    excluded: Iterable[str] = (),
) -> tuple[BlockModel, list[State], State]:
    """Train stages 1..depth of ``perm`` from a freshly loaded model on the samples of those
    slices (minus ``excluded``); return the engine holding that model, blocks and head."""
    gone = set(excluded)
    layout = partition(
        train.ids,
        config.layout.shards,
        config.layout.slices,
        seed=config.layout.seed,
        labels=train.labels if config.layout.stratify else None,
    )
    backbone = load_backbone(config.model, seed=config.layout.seed)
    engine = BlockModel(backbone, config.lora, config.layout.slices)
    store = FeatureStore.from_examples(backbone, train)
    blocks: list[State] = []
    head: State = {}
    for stage in range(1, depth + 1):
        prefix = perm[:stage]
        data = sorted(
            sid
            for sid, (k, s) in layout.assignment.items()
            if k == shard and s in prefix and sid not in gone
        )
        frac, seed = config.train.validation_fraction, config.layout.seed
        result = train_stage(
            engine,
            store,
            stage,
            [i for i in data if not is_validation(i, frac, seed)],
            config.train,
            stage_seed(seed, StageKey(shard, prefix)),
            val_ids=[i for i in data if is_validation(i, frac, seed)],
        )
        blocks.append(result.block)
        head = result.head
        engine.assemble(blocks, head)
    return engine, blocks, head


def assert_same_state(a: State, b: State) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max()}"


def split_logits(engine: BlockModel, texts: list[str], depth: int) -> np.ndarray:
    """Logits of a depth-``depth`` model, one text at a time, computed as the server does:
    the base model's hidden states up to the lowest trained layer, then the rest."""
    out = []
    engine.set_eval()
    with torch.no_grad():
        for text in texts:
            store = FeatureStore(engine.backbone, ["x"], text=[text])
            batch = store.collate([0])
            start = engine.start_layer(depth)
            hidden = engine.hidden_states_at(batch, [start])[start] if start > 0 else None
            out.append(engine.forward(batch, start, hidden).numpy()[0])
    return np.asarray(out)


def logits_of(engine: BlockModel, texts: list[str]) -> np.ndarray:
    store = FeatureStore(engine.backbone, [str(i) for i in range(len(texts))], text=texts)
    engine.set_eval()
    with torch.no_grad():
        return engine.forward(store.collate(list(range(len(texts))))).numpy()


def workspace_of(system: S3T) -> Workspace:
    """The workspace behind a system, opened anew (white-box tests only)."""
    return Workspace(system.path)


def registry_of(system: S3T) -> Registry:
    """A registry connection to a system's workspace (white-box tests only)."""
    return workspace_of(system).registry()


def tensors_of(system: S3T, artifact: str) -> tuple[State, State]:
    """(block, head) tensors of one of a system's artifacts."""
    return stage_tensors(workspace_of(system), artifact)


def workspace_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "artifacts").rglob("*.safetensors"))
