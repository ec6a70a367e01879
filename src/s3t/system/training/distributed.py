"""Training on Ray: shards are independent, so each shard's planned stages are trained by one
Ray task (its own process and model instance, given only that shard's live samples, its
jobs and the parent artifacts they start from). The task runs the same canonical
computation as local training, with the driver's thread count and CPU-kernel settings, so
its artifacts are bit-identical to local ones on the same kind of machine. The driver
stays the only writer: the trainer commits every returned stage through the race-checked
swap.

Install the extra (``pip install 's3t[ray]'``); ``RayExecutor(address="auto")`` joins a
running cluster, the default starts a local one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from s3t.engine.settings import Compute
from s3t.errors import ConfigError
from s3t.extras import require
from s3t.system.config import S3TConfig
from s3t.system.training.stage_worker import ShardWork, StageWorker, TrainedStage
from s3t.system.training.trainer import EventCallback, StageEvent

log = logging.getLogger(__name__)

#: environment variables that select CPU kernels; workers get the driver's values
KERNEL_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "CUBLAS_WORKSPACE_CONFIG",
)


def train_shard(
    config: dict[str, Any],
    work: ShardWork,
    threads: int,
    device: str = "cpu",
    cache_memory: int = 4 * 2**30,
) -> Iterator[TrainedStage]:
    """Run in a Ray worker (a streaming generator task): train a shard's jobs with the
    driver's thread count, precision (it is in the config) and determinism settings, on
    ``device`` (a GPU Ray assigned, or the CPU), handing each stage back as soon as it is
    trained; the activation cache spills to a private temporary folder removed at the end."""
    import tempfile

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="s3t-cache-") as scratch:
            compute = Compute(device=device, cache_memory=cache_memory, cache_dir=Path(scratch))
            yield from StageWorker(S3TConfig.from_dict(config), compute=compute).run(work)
    finally:
        torch.set_num_threads(before)


class RayExecutor:
    """Trains shards in parallel Ray tasks; ``cpus_per_task`` sizes each task (and, by
    default, its thread count: the driver's, so that results match local training)."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: int = 1,
        threads: int | None = None,
        gpus_per_task: float = 0.0,
        cache_memory: int = 4 * 2**30,
        num_gpus: int | None = None,
        device: str | None = None,
    ) -> None:
        if cpus_per_task < 1:
            raise ConfigError(f"cpus_per_task must be >= 1, got {cpus_per_task!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads!r}")
        if gpus_per_task < 0:
            raise ConfigError(f"gpus_per_task must be >= 0, got {gpus_per_task!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.threads = threads
        self.gpus_per_task = gpus_per_task
        self.cache_memory = cache_memory
        self.num_gpus = num_gpus
        # a task computes on the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES), else
        # on the CPU; ``device`` overrides it
        self.device = device or ("cuda" if gpus_per_task > 0 else "cpu")

    def _ray(self) -> Any:
        ray = require("ray", "ray", "training on Ray")
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=None if self.address else self.num_cpus,
                num_gpus=None if self.address else self.num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        return ray

    def run(
        self,
        config: S3TConfig,
        work: Sequence[ShardWork],
        on_event: EventCallback,
        stop: threading.Event | None = None,
    ) -> Iterator[TrainedStage]:
        """Start one task per shard; yield each stage as soon as its task trained it (stages
        of different shards interleave as they finish)."""
        import torch

        ray = self._ray()
        env = {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ}
        # a task asks for its CPUs and GPUs; with fewer GPUs than shards Ray queues the rest
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_task,
            "num_gpus": self.gpus_per_task,
            "num_returns": "streaming",
        }
        if env:
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(**options)(train_shard)
        threads = self.threads or torch.get_num_threads()
        streams = []
        for shard in work:
            streams.append(
                task.remote(config.to_dict(), shard, threads, self.device, self.cache_memory)
            )
            for job in shard.jobs:
                on_event(StageEvent("start", job.key, detail={"samples": len(job.samples)}))
        pending = {stream: None for stream in streams}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, fetch_local=False)
            stream = ready[0]
            try:
                yield ray.get(next(stream))
            except StopIteration:  # the task trained all its jobs
                pending.pop(stream)
