"""s3t: exact machine unlearning for fine-tuned transformers (S3T, ICLR 2025).

The public API, imported lazily so that ``import s3t`` (and the CLI) stay fast::

    from s3t import S3T, S3TConfig, LayoutSettings, LoraSettings, ModelSpec, TrainSettings
    from s3t import load_dataset, partition, cyclic, bms, simulate
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "S3T": "s3t.system.api",
    "Status": "s3t.system.api",
    "RetrainPolicy": "s3t.system.training.background",
    "S3TConfig": "s3t.system.config",
    "LayoutSettings": "s3t.system.config",
    "ModelSpec": "s3t.engine.settings",
    "LoraSettings": "s3t.engine.settings",
    "TrainSettings": "s3t.engine.settings",
    "Family": "s3t.engine.settings",
    "Receipt": "s3t.system.forget",
    "VerifyReport": "s3t.system.verify",
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
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3t' has no attribute {name!r}")
