"""s3t: exact machine unlearning for fine-tuned transformers (S3T, ICLR 2025).

The public API, imported lazily so that ``import s3t`` (and the CLI) stay fast, and typed
for checkers through the ``TYPE_CHECKING`` imports below::

    from s3t import S3T, S3TConfig, LayoutSettings, LoraSettings, ModelSpec, TrainSettings
    from s3t import load_dataset, partition, cyclic, bms, simulate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "S3T": "s3t.system.api",
    "Client": "s3t.client",
    "Status": "s3t.system.reports",
    "Health": "s3t.system.reports",
    "StageInfo": "s3t.system.reports",
    "SampleInfo": "s3t.system.reports",
    "SequenceInfo": "s3t.system.reports",
    "ExportInfo": "s3t.system.reports",
    "Generation": "s3t.system.reports",
    "RetrainPolicy": "s3t.system.training.background",
    "RayExecutor": "s3t.system.training.distributed",
    "S3TConfig": "s3t.system.config",
    "LayoutSettings": "s3t.system.config",
    "ModelSpec": "s3t.engine.settings",
    "LoraSettings": "s3t.engine.settings",
    "TrainSettings": "s3t.engine.settings",
    "Family": "s3t.engine.settings",
    "Receipt": "s3t.system.forget",
    "VerifyReport": "s3t.system.verify",
    "ReferenceReport": "s3t.system.training.reference",
    "Prediction": "s3t.system.serving.requests",
    "Served": "s3t.core.selection",
    "load_dataset": "s3t.data",
    "Dataset": "s3t.data",
    "Examples": "s3t.data",
    "partition": "s3t.core.partition",
    "Layout": "s3t.core.partition",
    "cyclic": "s3t.core.sequences",
    "bms": "s3t.core.sequences",
    "random_sequences": "s3t.core.sequences",
    "all_sequences": "s3t.core.sequences",
    "diversity": "s3t.core.sequences",
    "score": "s3t.core.sequences",
    "simulate": "s3t.core.simulate",
    "budget_sweep": "s3t.core.simulate",
    "theoretical_delta": "s3t.core.simulate",
    "S3TError": "s3t.errors",
    "UnknownSampleError": "s3t.errors",
    "ServiceUnavailableError": "s3t.errors",
    "MissingExtraError": "s3t.errors",
}

if TYPE_CHECKING:
    from s3t.client import Client
    from s3t.core.partition import Layout, partition
    from s3t.core.selection import Served
    from s3t.core.sequences import (
        all_sequences,
        bms,
        cyclic,
        diversity,
        random_sequences,
        score,
    )
    from s3t.core.simulate import budget_sweep, simulate, theoretical_delta
    from s3t.data import Dataset, Examples, load_dataset
    from s3t.engine.settings import Family, LoraSettings, ModelSpec, TrainSettings
    from s3t.errors import MissingExtraError, S3TError, ServiceUnavailableError, UnknownSampleError
    from s3t.system.api import S3T
    from s3t.system.config import LayoutSettings, S3TConfig
    from s3t.system.forget import Receipt
    from s3t.system.reports import (
        ExportInfo,
        Generation,
        Health,
        SampleInfo,
        SequenceInfo,
        StageInfo,
        Status,
    )
    from s3t.system.serving.requests import Prediction
    from s3t.system.training.background import RetrainPolicy
    from s3t.system.training.distributed import RayExecutor
    from s3t.system.training.reference import ReferenceReport
    from s3t.system.verify import VerifyReport

__all__ = [
    "S3T",
    "Client",
    "Dataset",
    "Examples",
    "ExportInfo",
    "Family",
    "Generation",
    "Health",
    "Layout",
    "LayoutSettings",
    "LoraSettings",
    "MissingExtraError",
    "ModelSpec",
    "Prediction",
    "RayExecutor",
    "Receipt",
    "ReferenceReport",
    "RetrainPolicy",
    "S3TConfig",
    "S3TError",
    "SampleInfo",
    "SequenceInfo",
    "Served",
    "ServiceUnavailableError",
    "StageInfo",
    "Status",
    "TrainSettings",
    "UnknownSampleError",
    "VerifyReport",
    "__version__",
    "all_sequences",
    "bms",
    "budget_sweep",
    "cyclic",
    "diversity",
    "load_dataset",
    "partition",
    "random_sequences",
    "score",
    "simulate",
    "theoretical_delta",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3t' has no attribute {name!r}")
