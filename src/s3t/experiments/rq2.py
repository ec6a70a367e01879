"""RQ2: deletion capability and cost, measured on a trained system.

- accuracy vs number of deletions for B = 1 (SISA), 2 and L: one system is trained with
  budget L; cyclic selections nest, so its first B sequences *are* the budget-B system;
- deletion rate δ: measured by replaying uniform deletion streams with real ``forget``
  calls (on backups of the system) next to the simulator and the closed form; and
  simulated against m and L;
- deletion time: S3T ``forget`` vs SISA (retrain the hit sequence) vs full retraining;
- storage vs δ: S3T's LoRA stage artifacts vs SISA's full-model slice checkpoints;
- membership inference: deleted samples vs never-seen ones on the served model.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.sequences import cyclic
from s3t.core.simulate import budget_sweep, harmonic, simulate, theoretical_delta
from s3t.experiments.common import (
    ExperimentSettings,
    Say,
    full_lora,
    model_layers,
    stream_of_deletions,
    write_results,
)
from s3t.report.plots import plot_bars, plot_deletion_curves, plot_lines
from s3t.system.api import S3T
from s3t.system.serving.scoring import Evaluator


def budgets_for(slices: int) -> list[int]:
    """The budgets compared: 1 (SISA), 2 and L."""
    return sorted({1, min(2, slices), slices})


def accuracy_under_deletions(
    system: S3T, scorer: Evaluator, stream: list[str], batch: int, budgets: list[int], say: Say
) -> list[dict[str, Any]]:
    """Forget ``stream`` in batches; after each, score every budget view and record depths,
    live shards and forget latency."""
    rows = [_snapshot(system, scorer, budgets, 0, [])]
    for start in range(0, len(stream), batch):
        latencies = []
        for sid in stream[start : start + batch]:
            began = time.perf_counter()
            system.forget([sid])
            latencies.append(1000 * (time.perf_counter() - began))
        rows.append(_snapshot(system, scorer, budgets, start + len(latencies), latencies))
        say(_describe(rows[-1]))
    return rows


def _snapshot(
    system: S3T, scorer: Evaluator, budgets: list[int], done: int, latencies: list[float]
) -> dict[str, Any]:
    view = {}
    for b in budgets:
        depth = system.served_depths(b)
        view[b] = {
            "accuracy": scorer.accuracy(b),
            "served_depths": [depth[k] for k in sorted(depth)],
            "live_shards": sum(1 for d in depth.values() if d > 0),
        }
    return {
        "deletions": done,
        "budgets": view,
        "forget_ms_max": round(max(latencies), 3) if latencies else None,
        "forget_ms_mean": round(statistics.mean(latencies), 3) if latencies else None,
    }


def _describe(row: dict[str, Any]) -> str:
    parts = []
    for b, v in row["budgets"].items():
        acc = "dead" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
        live = f"{v['live_shards']}/{len(v['served_depths'])} live"
        parts.append(f"B={b}: acc {acc}, {live}, depths {v['served_depths']}")
    return (
        f"  after {row['deletions']:>3} deletions — "
        + "; ".join(parts)
        + f" — forget ≤ {row['forget_ms_max']} ms"
    )


def measured_delta(
    root: Path, work: Path, budgets: list[int], streams: int, seed: int
) -> dict[int, list[int]]:
    """Replay ``streams`` uniform deletion streams with real ``forget`` calls, each on a
    backup of the system, until budget max(budgets) fails; return δ per budget per stream."""
    source = S3T.open(root, read_only=True)
    out: dict[int, list[int]] = {b: [] for b in budgets}
    for k in range(streams):
        copy = work / f"stream-{k}"
        shutil.rmtree(copy, ignore_errors=True)
        system = S3T.open(source.backup(copy))
        ids = [s.id for s in system.samples()]
        dead_at: dict[int, int] = {}
        for count, sid in enumerate(stream_of_deletions(ids, len(ids), seed + k), start=1):
            system.forget([sid])
            for b in budgets:
                if b not in dead_at and not any(system.served_depths(b).values()):
                    dead_at[b] = count
            if len(dead_at) == len(budgets):
                break
        for b in budgets:
            out[b].append(dead_at.get(b, len(ids)))
        system.close()
        shutil.rmtree(copy, ignore_errors=True)
    return out


def run_rq2(
    settings: ExperimentSettings, out: Path, streams: int = 100, say: Say = print
) -> dict[str, Any]:
    """Run every RQ2 measurement; see the module docstring."""
    data = settings.dataset()
    assert data.test is not None
    m, L = settings.shards, settings.slices
    budgets = budgets_for(L)
    root = out / "workspaces"
    shutil.rmtree(root, ignore_errors=True)
    say(f"rq2: training m={m}, L={L}, B={L} on {len(data.train)} samples")
    began = time.perf_counter()
    trained = S3T.fit(root / "system", data, settings.config(m, L, L))
    fit_seconds = time.perf_counter() - began
    say("rq2: ordinary LoRA on all data (the full-retraining reference)")
    began = time.perf_counter()
    ordinary = S3T.fit(root / "ordinary", data, full_lora(settings, model_layers(settings.model)))
    full_seconds = time.perf_counter() - began
    ordinary_accuracy = ordinary.evaluate()["accuracy"]

    replay_root = root / "replay"
    shutil.copytree(root / "system", replay_root)
    system = S3T.open(replay_root)
    scorer = system.evaluator(data.test)
    stream = stream_of_deletions(
        [s.id for s in system.samples()], settings.deletions, settings.seed
    )
    curve = accuracy_under_deletions(system, scorer, stream, settings.deletion_batch, budgets, say)
    mia = _membership(root, data, say)

    say(f"rq2: measuring δ with {streams} replayed deletion streams")
    measured = measured_delta(
        root / "system", root / "streams", budgets, streams, settings.seed + 1
    )
    sweep = budget_sweep(m, L, budgets, trials=4000, seed=settings.seed)
    delta_rows = [
        {
            "budget": row.budget,
            "measured_mean": round(float(np.mean(measured[row.budget])), 2),
            "measured_ci95": round(
                float(1.96 * np.std(measured[row.budget], ddof=1) / np.sqrt(streams)), 2
            )
            if streams > 1
            else None,
            "simulated": round(row.delta_mean, 2),
            "theory": round(row.delta_theory or 0.0, 2),
        }
        for row in sweep.rows
    ]
    grid = _delta_grid(m, L, settings.seed)

    forget_ms = [v for r in curve[1:] for v in [r["forget_ms_mean"]] if v is not None]
    sisa_seconds = _sisa_seconds(trained, L)
    storage = _storage(trained, m, L)

    results = {
        "settings": settings,
        "shards": m,
        "slices": L,
        "budgets": budgets,
        "fit_seconds": round(fit_seconds, 1),
        "ordinary_lora_accuracy": round(ordinary_accuracy, 4),
        "accuracy_vs_deletions": curve,
        "delta": delta_rows,
        "delta_grid": grid,
        "deletion_time": {
            "s3t_forget_ms": round(statistics.mean(forget_ms), 3) if forget_ms else None,
            "sisa_retrain_s": round(statistics.mean(sisa_seconds), 2),
            "full_retrain_s": round(full_seconds, 1),
        },
        "storage": storage,
        "membership": mia,
    }
    _plots(out, results)
    write_results(out, "rq2", results)
    return results


def _delta_grid(shards: int, slices: int, seed: int) -> dict[str, list[dict[str, float]]]:
    def point(key: str, value: int, m: int, L: int, b: int) -> dict[str, float]:
        r = simulate(m, cyclic(L, b), trials=2000, seed=seed)
        return {
            key: value,
            "budget": b,
            "simulated": round(r.mean, 2),
            "theory": round(theoretical_delta(m, L, b), 2),
        }

    by_m = [point("shards", m, m, slices, b) for m in (1, 2, 5, 10) for b in (1, slices)]
    by_l = [point("slices", L, shards, L, b) for L in (2, 3, 4, 6) for b in (1, L)]
    return {"vs_shards": by_m, "vs_slices": by_l}


def _membership(root: Path, data: Any, say: Say) -> dict[str, Any]:
    """Loss-threshold membership inference around one deletion request: a user's samples
    (here: up to 60 from the last slice of shard 0's first sequence) are attacked before
    and after they are forgotten, next to never-seen test samples and retained samples."""
    copy = root / "membership"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root / "system", copy)
    system = S3T.open(copy)
    perm = system.sequences(0)[0].perm
    in_slice = [s.id for s in system.samples(0) if s.slice == perm[-1]]
    victims = in_slice[:60]
    others = [s.id for s in system.samples(0) if s.slice == perm[0]][: len(data.test)]
    before = system.membership(data.train.subset(victims), data.train.subset(others), data.test)
    system.forget(victims)
    after = system.membership(data.train.subset(victims), data.train.subset(others), data.test)
    say(
        f"rq2: membership attack AUC on {len(victims)} forgotten samples vs never-seen: "
        f"{before.deleted_vs_unseen:.3f} before, {after.deleted_vs_unseen:.3f} after the deletion "
        f"(retained samples: {after.retained_vs_unseen:.3f})"
    )
    shutil.rmtree(copy, ignore_errors=True)
    return {
        "forgotten": len(victims),
        "auc_forgotten_before": round(before.deleted_vs_unseen, 4),
        "auc_forgotten_after": round(after.deleted_vs_unseen, 4),
        "auc_retained_after": round(after.retained_vs_unseen, 4),
        "unseen": len(data.test),
    }


def _sisa_seconds(system: S3T, slices: int) -> list[float]:
    """SISA answers a hit at position j by retraining its sequence from stage j on: the
    sum of the recorded training times of those stages (sequence 0 of shard 0), per j."""
    metrics = {s.artifact: s.metrics for s in system.stages()}
    row = system.sequences(0)[0]
    stage_seconds = [metrics[a].get("seconds", 0.0) for a in row.artifacts]
    return [float(sum(stage_seconds[j:])) for j in range(slices)]


def _storage(system: S3T, shards: int, slices: int) -> dict[str, Any]:
    stage_bytes = statistics.mean(s.bytes for s in system.stages())
    # a SISA checkpoint is the whole fine-tuned model (our injected LoRA excluded)
    model_bytes = system.model_info().parameter_bytes
    s3t = [
        {
            "budget": b,
            "delta": round(theoretical_delta(shards, slices, b), 2),
            "bytes": int(shards * b * slices * stage_bytes),
        }
        for b in range(1, slices + 1)
    ]
    sisa = [
        {
            "shards": m,
            "delta": round(m * slices * harmonic(m), 2),
            "bytes": int(m * slices * model_bytes),
        }
        for m in (1, 2, 3, 5, 8, 10, 15, 20)
    ]
    return {
        "stage_artifact_bytes": int(stage_bytes),
        "model_checkpoint_bytes": int(model_bytes),
        "s3t": s3t,
        "sisa": sisa,
    }


def _plots(out: Path, r: dict[str, Any]) -> None:
    plot_deletion_curves(
        out / "rq2_accuracy_vs_deletions.png",
        r["accuracy_vs_deletions"],
        r["ordinary_lora_accuracy"],
        f"Accuracy under deletions (m={r['shards']}, L={r['slices']})",
    )
    plot_lines(
        out / "rq2_delta_vs_budget.png",
        {
            "measured (replayed forget streams)": (
                [d["budget"] for d in r["delta"]],
                [d["measured_mean"] for d in r["delta"]],
            ),
            "simulated": ([d["budget"] for d in r["delta"]], [d["simulated"] for d in r["delta"]]),
            "theory m·L·H(m·min(B,L))": (
                [d["budget"] for d in r["delta"]],
                [d["theory"] for d in r["delta"]],
            ),
        },
        "budget B",
        "deletions before service failure δ",
        "Deletion rate vs budget",
    )
    times = r["deletion_time"]
    plot_bars(
        out / "rq2_deletion_time.png",
        ["S3T forget", "SISA: retrain hit sequence", "full retraining"],
        [(times["s3t_forget_ms"] or 0.0) / 1000, times["sisa_retrain_s"], times["full_retrain_s"]],
        "seconds per deletion request (log)",
        "Time to honour one deletion",
        logy=True,
    )
    plot_lines(
        out / "rq2_storage_vs_delta.png",
        {
            "S3T (LoRA stage artifacts), B = 1..L": (
                [s["delta"] for s in r["storage"]["s3t"]],
                [s["bytes"] / 2**20 for s in r["storage"]["s3t"]],
            ),
            "SISA (full-model slice checkpoints), m = 1..20": (
                [s["delta"] for s in r["storage"]["sisa"]],
                [s["bytes"] / 2**20 for s in r["storage"]["sisa"]],
            ),
        },
        "expected deletions before failure δ",
        "storage (MiB)",
        "Storage vs deletion rate",
        logy=True,
    )
