"""Ablations: layers per slice (how many layers each block holds) and the block order
(the paper's top-down vs bottom-up), each on one sequence over all the data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from s3t.experiments.common import (
    ExperimentSettings,
    Say,
    fresh_workspace,
    model_layers,
    write_results,
)
from s3t.report.plots import plot_bars
from s3t.system.api import S3T


def run_ablation(settings: ExperimentSettings, out: Path, say: Say = print) -> dict[str, Any]:
    """Train one sequence per variant and report test accuracy and training time."""
    data = settings.dataset()
    layers = model_layers(settings.model)
    L = settings.slices
    variants: list[tuple[str, dict[str, Any]]] = []
    for per in sorted({1, max(1, layers // L)}):
        variants.append((f"top-down, {per} layer(s) per slice", {"layers_per_slice": per}))
    variants.append(
        (f"bottom-up, {max(1, layers // L)} layer(s) per slice", {"order": "bottom-up"})
    )
    rows: list[dict[str, Any]] = []
    for label, lora in variants:
        say(f"ablation: {label}")
        root = fresh_workspace(out, label)
        began = time.perf_counter()
        system = S3T.fit(root, data, settings.config(1, L, 1, **lora))
        seconds = time.perf_counter() - began
        accuracy = system.evaluate()["accuracy"]
        rows.append(
            {"variant": label, "accuracy": round(accuracy, 4), "train_seconds": round(seconds, 1)}
        )
        say(f"  accuracy {accuracy:.4f}, {seconds:.0f} s")
    plot_bars(
        out / "ablation_accuracy.png",
        [r["variant"] for r in rows],
        [r["accuracy"] for r in rows],
        "test accuracy",
        f"Ablations (L={L}, {settings.model})",
    )
    results = {"settings": settings, "rows": rows}
    write_results(out, "ablation", results)
    return results
