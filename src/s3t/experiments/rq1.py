"""RQ1: does slice-wise training cost accuracy? S3T training of one sequence on all the
data (one shard), for several L, next to ordinary LoRA fine-tuning of every layer at once,
each stage and the baseline with the same number of epochs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from s3t.experiments.common import (
    ExperimentSettings,
    Say,
    fresh_workspace,
    full_lora,
    model_layers,
    write_results,
)
from s3t.report.plots import plot_bars
from s3t.system.api import S3T


def run_rq1(
    settings: ExperimentSettings, out: Path, slices: tuple[int, ...] = (2, 3, 6), say: Say = print
) -> dict[str, Any]:
    """Train the baseline and one S3T sequence per L; return accuracies and timings."""
    data = settings.dataset()
    if data.test is None:
        raise ValueError("RQ1 needs a dataset with a held-out test split")
    layers = model_layers(settings.model)
    runs = [("ordinary LoRA (all layers)", full_lora(settings, layers))]
    runs += [(f"S3T one sequence, L={L}", settings.config(1, L, 1)) for L in slices if layers >= L]
    rows: list[dict[str, Any]] = []
    for label, config in runs:
        say(f"rq1: {label} on {len(data.train)} samples")
        root = fresh_workspace(out, label)
        began = time.perf_counter()
        system = S3T.fit(root, data, config)
        seconds = time.perf_counter() - began
        metrics = system.evaluate()
        passes = sum(s.samples for s in system.stages()) * settings.epochs
        rows.append(
            {
                "run": label,
                "slices": config.layout.slices,
                "accuracy": round(metrics["accuracy"], 4),
                "train_seconds": round(seconds, 1),
                "sample_passes": passes,
            }
        )
        say(f"  accuracy {metrics['accuracy']:.4f} in {seconds:.0f} s")
    base = rows[0]["accuracy"]
    for row in rows:
        row["points_vs_ordinary"] = round(100 * (row["accuracy"] - base), 2)
    plot_bars(
        out / "rq1_accuracy.png",
        [r["run"] for r in rows],
        [r["accuracy"] for r in rows],
        "test accuracy",
        f"RQ1: slice-wise vs ordinary LoRA ({settings.model}, {settings.data})",
    )
    results = {
        "settings": settings,
        "test_samples": len(data.test),
        "train_samples": len(data.train),
        "rows": rows,
    }
    write_results(out, "rq1", results)
    return results
