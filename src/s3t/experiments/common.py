"""What every experiment shares: its settings, building S3T configs from them, loading the
data (keeping a pretrained backbone's own training images out), scoring the served system
under several budgets at once, and writing results."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.jsonable import jsonable
from s3t.data import load_dataset
from s3t.data.examples import Dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.errors import ConfigError
from s3t.system.config import LayoutSettings, S3TConfig

Say = Callable[[str], None]
PRETRAIN_MANIFEST = "s3t_pretrain.json"


@dataclass(frozen=True)
class ExperimentSettings:
    """The model, data and optimisation every run of an experiment uses.

    ``limit`` caps the training samples (seeded sample); ``epochs`` are per stage; ``lr``
    is S3T's stage learning rate and ``baseline_lr`` that of ordinary LoRA fine-tuning
    (every layer trains at once, which is unstable at the stage rate). Both defaults are
    the best of a sweep on a validation split carved from the training data (README);
    ``slices`` and ``shards`` are the experiment's defaults where it varies them;
    ``test_fraction`` carves a held-out split from sources that have none.
    """

    model: str = "builtin:minilm"
    data: str = "builtin:rotten_tomatoes"
    limit: int | None = 2400
    epochs: int = 2
    lr: float = 2e-3
    baseline_lr: float = 1e-3
    batch_size: int = 16
    rank: int = 16
    max_length: int = 128
    shards: int = 2
    slices: int = 3
    seed: int = 0
    deletions: int = 30
    deletion_batch: int = 5
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit!r}")
        if self.deletion_batch < 1 or self.deletions < 0:
            raise ConfigError(
                f"deletions must be >= 0 and deletion_batch >= 1, got {self.deletions!r}, {self.deletion_batch!r}"
            )

    def config(self, shards: int, slices: int, budget: int, **lora: Any) -> S3TConfig:
        """Return the S3T configuration of one run."""
        return S3TConfig(
            model=ModelSpec(self.model, max_length=self.max_length),
            layout=LayoutSettings(shards=shards, slices=slices, budget=budget, seed=self.seed),
            lora=LoraSettings(rank=self.rank, **lora),
            train=TrainSettings(lr=self.lr, epochs=self.epochs, batch_size=self.batch_size),
        )

    def dataset(self) -> Dataset:
        """Load the data; if the model was pretrained by s3t on part of it, leave that out."""
        data = load_dataset(self.data, seed=self.seed, test_fraction=self.test_fraction)
        manifest = Path(self.model) / PRETRAIN_MANIFEST
        if manifest.exists():
            used = set(json.loads(manifest.read_text()).get("trained_on", []))
            keep = [i for i, sid in enumerate(data.train.ids) if sid not in used]
            data = replace(data, train=data.train.take(keep))
        if self.limit is not None and self.limit < len(data.train):
            from s3t.data.sources import sample_rows

            data = replace(data, train=sample_rows(data.train, self.limit, self.seed))
        return data


def full_lora(settings: ExperimentSettings, num_layers: int) -> S3TConfig:
    """Ordinary LoRA fine-tuning as an S3T config: one shard, one stage whose block is every
    layer, so LoRA on all layers and the head train together on all the data."""
    config = settings.config(1, 1, 1, layers_per_slice=num_layers)
    return replace(config, train=replace(config.train, lr=settings.baseline_lr))


def model_layers(model: str) -> int:
    """Number of transformer layers of a model, read from its config."""
    from transformers import AutoConfig

    from s3t.engine.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model))
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise ConfigError(f"cannot tell how many layers {model!r} has")


def fresh_workspace(out: Path, label: str) -> Path:
    """An emptied folder ``out/workspaces/<label as a file name>`` for one run."""
    name = "".join(c if c.isalnum() or c in "=-." else "_" for c in label).strip("_")
    root = out / "workspaces" / name
    shutil.rmtree(root, ignore_errors=True)
    return root


def write_results(out: Path, name: str, results: dict[str, Any]) -> Path:
    """Write ``results.json`` (with when and with what it was produced)."""
    out.mkdir(parents=True, exist_ok=True)
    body = {"experiment": name, "date": time.strftime("%Y-%m-%d %H:%M"), **results}
    path = out / "results.json"
    path.write_text(json.dumps(jsonable(body), indent=2))
    return path


def stream_of_deletions(ids: Sequence[str], count: int, seed: int) -> list[str]:
    """A seeded uniform stream of distinct sample ids to delete."""
    rng = np.random.default_rng(seed)
    return [str(x) for x in rng.choice(list(ids), size=min(count, len(ids)), replace=False)]
