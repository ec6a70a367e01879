"""Creating an S3T system: the model is loaded and checked against the data, the memory
estimate reported, and only then is the workspace written (partition, sequences, samples)
and a trainer made ready for it. Nothing is written when the model or the data is wrong."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from s3t.data.examples import Dataset, Examples
from s3t.engine.settings import Compute, Family
from s3t.errors import DataError
from s3t.system.config import S3TConfig
from s3t.system.store.workspace import Workspace
from s3t.system.training.trainer import EventCallback, Trainer

log = logging.getLogger(__name__)


def check_fits(family: Family, train: Examples) -> None:
    """Raise :class:`DataError` unless the model family can learn this data's task."""
    expected = {"text": Family.ENCODER, "image": Family.IMAGE, "instruction": Family.CAUSAL_LM}
    if expected[train.modality] is not family:
        raise DataError(
            f"the data holds {train.modality} inputs ({train.task}) but the model is a {family} "
            f"model; use a {expected[train.modality]} model"
        )


def create_and_train(
    workspace: str | Path,
    dataset: Dataset,
    config: S3TConfig,
    *,
    risk: dict[str, float] | None = None,
    on_event: EventCallback | None = None,
    compute: Compute,
    remote: bool = False,
) -> tuple[Workspace, Trainer]:
    """Create (or resume) the workspace and return it with a trainer ready to train it
    (holding the loaded model unless ``remote``: Ray workers load their own)."""
    if config.model.num_labels == 0 and dataset.train.task != "instruction":
        config = replace(config, model=replace(config.model, num_labels=dataset.train.num_labels))
    from s3t.core.schedule import StageKey
    from s3t.engine.compute import estimate_for, resolve_device
    from s3t.engine.loading import load_backbone
    from s3t.system.training.trainer import StageEvent

    device = resolve_device(compute.device)
    backbone = load_backbone(  # fail before any writing
        config.model, seed=config.layout.seed, device=device, precision=config.train.precision
    )
    check_fits(backbone.anatomy.family, dataset.train)
    estimate = estimate_for(backbone, config.lora, config.layout.slices, config.train)
    log.info("%s on %s", estimate.describe(), device)
    if on_event is not None:
        detail = {"estimate": estimate.describe(), "device": str(device), "bytes": estimate.total}
        on_event(StageEvent("memory", StageKey(-1, ()), detail=detail))
    ws = Workspace.create(workspace, config, dataset, risk)
    local = None if remote else backbone  # Ray workers load their own: free this one
    del backbone
    return ws, Trainer(ws, on_event, backbone=local, compute=compute)
