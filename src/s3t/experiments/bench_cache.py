"""The activation cache at scale: training throughput and peak resident memory with the
cache in RAM and with it spilled to disk, at growing data sizes.

Each measurement runs in a fresh process (peak RSS is per process): all-MiniLM-L6-v2,
three blocks (the first stage trains the top block, layers 4-5; the cache holds the input
of layer 4 for every sample, in three groups as three slices would be), one epoch of the
first stage over every sample, batch 32. Sizes: Rotten Tomatoes' training split cut to
2,000 samples, all of it (11,504 snippets), and 50,000 (it repeated with fresh ids).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Say = Callable[[str], None]
RAM = 64 * 2**30  # a budget the cache never reaches: all of it in memory
SPILL = 16 * 2**20  # a budget far below the cache: (almost) all of it spilled


def _texts(samples: int) -> tuple[list[str], list[str], list[int]]:
    from s3t.data import load_dataset

    train = load_dataset("builtin:rotten_tomatoes").train
    assert train.text is not None and train.labels is not None
    texts, labels = list(train.text), [int(x) for x in train.labels]
    ids = [f"r{k}-{i}" for k in range(samples // len(texts) + 1) for i in range(len(texts))]
    texts, labels = texts * (samples // len(texts) + 1), labels * (samples // len(texts) + 1)
    return ids[:samples], texts[:samples], labels[:samples]


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    samples: int, budget: int, spill_dir: Path | None, cache: bool = True
) -> dict[str, Any]:
    """One measurement, in this process (see :func:`bench_cache` for fresh processes)."""
    import torch

    from s3t.engine.blocks import BlockModel
    from s3t.engine.cache import ActivationCache
    from s3t.engine.features import FeatureStore
    from s3t.engine.loading import load_backbone
    from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
    from s3t.engine.train import train_stage

    ids, texts, labels = _texts(samples)
    backbone = load_backbone(ModelSpec("builtin:minilm", num_labels=2, max_length=128))
    engine = BlockModel(backbone, LoraSettings(rank=16), 3, torch.device("cpu"))
    store = FeatureStore(backbone, ids, text=texts, labels=np.asarray(labels, dtype=np.int64))
    activations = None
    fill = 0.0
    if cache:
        activations = ActivationCache(
            engine, [engine.start_layer(1)], max_bytes=budget, spill_dir=spill_dir
        )
        activations.bind(store, {sid: i % 3 for i, sid in enumerate(ids)})
        began = time.perf_counter()
        activations.ensure(list(range(len(ids))))
        fill = time.perf_counter() - began
    settings = TrainSettings(lr=1e-3, epochs=1, batch_size=32, validation_fraction=0.0)
    result = train_stage(engine, store, 1, ids, settings, seed=1, cache=activations)
    out = {
        "samples": samples,
        "mode": "no cache" if not cache else ("spilled" if spill_dir is not None else "in RAM"),
        "cache_fill_seconds": round(fill, 2),
        "train_seconds": round(result.seconds, 2),
        "train_samples_per_second": round(result.samples_per_second, 1),
        "end_to_end_samples_per_second": round(samples / (fill + result.seconds), 1),
        "cache_in_memory_mb": round((activations.memory_bytes if activations else 0) / 2**20, 1),
        "cache_spilled_mb": round((activations.spilled_bytes if activations else 0) / 2**20, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "train_loss": round(result.train_loss, 4),
    }
    if activations is not None:
        activations.close()
    return out


def bench_cache(work: Path, sizes: list[int], say: Say) -> dict[str, Any]:
    """Measure every size with the cache in RAM and spilled (and the 2k size without a
    cache, for scale), each in a fresh process."""
    runs = []
    plan: list[tuple[int, str]] = [(sizes[0], "none")]
    plan += [(n, mode) for n in sizes for mode in ("ram", "spill")]
    for samples, mode in plan:
        spill = work / f"spill-{samples}"
        shutil.rmtree(spill, ignore_errors=True)
        command = [sys.executable, "-m", "s3t.experiments.bench_cache", "--samples", str(samples)]
        command += {"none": ["--no-cache"], "ram": [], "spill": ["--spill", str(spill)]}[mode]
        done = subprocess.run(
            command, capture_output=True, text=True, env=dict(os.environ), check=False
        )
        shutil.rmtree(spill, ignore_errors=True)
        if done.returncode != 0:
            raise RuntimeError(f"cache benchmark {samples}/{mode} failed: {done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(row)
        say(
            f"  cache {row['mode']:>8}, {samples:>6} samples: train {row['train_samples_per_second']}"
            f" samples/s, fill {row['cache_fill_seconds']} s, peak RSS {row['peak_rss_mb']} MB "
            f"(spilled {row['cache_spilled_mb']} MB)"
        )
    by = {(r["samples"], r["mode"]): r for r in runs}
    ratios = {
        str(n): round(
            by[(n, "spilled")]["train_samples_per_second"]
            / by[(n, "in RAM")]["train_samples_per_second"],
            3,
        )
        for n in sizes
    }
    return {
        "model": "all-MiniLM-L6-v2, LoRA r=16, stage 1 of 3 (top block), batch 32, one epoch",
        "spill_budget_mb": SPILL // 2**20,
        "runs": runs,
        "spilled_over_ram_throughput": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="one activation-cache measurement (JSON)")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--spill", type=Path, default=None)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budget = SPILL if args.spill is not None else RAM
    print(json.dumps(measure(args.samples, budget, args.spill, cache=not args.no_cache)))


if __name__ == "__main__":
    main()
