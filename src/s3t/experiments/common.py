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
from s3t.data.examples import Dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings, description, option
from s3t.errors import ConfigError
from s3t.system.config import LayoutSettings, S3TConfig

Say = Callable[[str], None]
PRETRAIN_MANIFEST = "s3t_pretrain.json"


@dataclass(frozen=True)
class ExperimentSettings:
    """The model, data and optimisation every run of an experiment uses. The learning-rate
    defaults are the best of a sweep on a validation split carved from the training data
    (README); the experiments train without a validation split, as in the paper."""

    model: str = option("builtin:minilm", description(ModelSpec, "name_or_path"))
    data: str = option(
        "builtin:rotten_tomatoes",
        "Data source: a CSV/JSONL/parquet file, a saved `datasets` folder or builtin:NAME.",
    )
    limit: int | None = option(2400, "Training samples (a seeded sample); unset: all of them.")
    epochs: int = option(2, description(TrainSettings, "epochs"))
    lr: float = option(2e-3, "S3T's stage learning rate.")
    baseline_lr: float = option(
        1e-3,
        "Ordinary LoRA's learning rate (every layer trains at once, unstable at the stage rate).",
    )
    batch_size: int = option(16, description(TrainSettings, "batch_size"))
    rank: int = option(16, description(LoraSettings, "rank"))
    max_length: int = option(128, description(ModelSpec, "max_length"))
    shards: int = option(2, description(LayoutSettings, "shards"))
    slices: int = option(3, description(LayoutSettings, "slices"))
    seed: int = option(0, description(LayoutSettings, "seed"))
    deletions: int = option(30, "Deletion requests replayed (rq2, demo).")
    deletion_batch: int = option(5, "Deletion requests per batch of the replay.")
    test_fraction: float = option(
        0.2, "Held-out test share carved from sources without a test split."
    )

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
            train=TrainSettings(
                lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, validation_fraction=0.0
            ),
        )

    def dataset(self) -> Dataset:
        """Load the data; if the model was pretrained by s3t on part of it, leave that out."""
        from s3t.data import load_dataset

        data = load_dataset(self.data, seed=self.seed, test_fraction=self.test_fraction)
        manifest = Path(self.model) / PRETRAIN_MANIFEST
        if manifest.exists():
            used = set(json.loads(manifest.read_text()).get("trained_on", []))
            keep = [i for i, sid in enumerate(data.train.ids) if sid not in used]
            data = replace(data, train=data.train.take(keep))
        if self.limit is not None and self.limit < len(data.train):
            from s3t.data.splits import sample_rows

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


def workspace_path(out: Path, label: str) -> Path:
    """Where an experiment keeps the workspace of one run: ``out/workspaces/<label>``."""
    name = "".join(c if c.isalnum() or c in "=-." else "_" for c in label).strip("_")
    return out / "workspaces" / name


def fresh_workspace(out: Path, label: str) -> Path:
    """An emptied folder for one run (see :func:`workspace_path`)."""
    root = workspace_path(out, label)
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
