"""`make bench`: every benchmark of the project, each with its baseline in the same run.

- training: the same S3T schedule trained by the authors'-style ``transformers.Trainer``
  pipeline and by our engine (samples/s, ratio, test accuracy of both);
- forget: latency of single-id deletion requests (p50/p99) next to what SISA would spend
  on the same request (retraining the affected sequence from its last valid stage);
- simulation: Monte Carlo speed of the deletion-rate simulator;
- precision: the same sequence in fp32 and in bf16 autocast on the CPU (speed, accuracy);
- cache: training throughput and peak RSS with the activation cache in RAM vs spilled to
  disk at 2k, 11.5k and 50k samples (:mod:`s3t.experiments.bench_cache`);
- service: the live HTTP service under 16 concurrent clients vs one at a time vs
  in-process batches (:mod:`s3t.experiments.bench_service`);
- pressure: deletions under load with readers, acknowledgement and erasure latency, and
  the share of predictions a deletion stream leaves unanswered with the old and the new
  retraining order (:mod:`s3t.experiments.bench_pressure`).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.partition import partition
from s3t.core.sequences import cyclic
from s3t.core.simulate import simulate
from s3t.data import load_dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import os

    import torch

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"


def bench_training(
    out: Path, samples: int, slices: int, epochs: int, lr: float, say: Say
) -> dict[str, Any]:
    """Train one sequence of ``slices`` stages on Rotten Tomatoes with both pipelines."""
    from s3t.experiments.trainer_baseline import train_with_trainer

    data = load_dataset("builtin:rotten_tomatoes", limit=samples, seed=0)
    assert data.test is not None
    spec = ModelSpec("builtin:minilm", num_labels=2, max_length=128)
    lora = LoraSettings(rank=16)
    settings = TrainSettings(lr=lr, epochs=epochs, batch_size=32, validation_fraction=0.0)
    config = S3TConfig(spec, LayoutSettings(shards=1, slices=slices, budget=1), lora, settings)
    say(f"training benchmark: {samples} samples, L={slices}, {epochs} epoch(s) per stage")

    shutil.rmtree(out / "ours", ignore_errors=True)
    began: list[float] = []
    system = S3T.fit(out / "ours", data, config, on_event=_plan_clock(began))
    ours_seconds = time.perf_counter() - began[0]
    ours_samples = sum(s.samples for s in system.stages()) * epochs
    ours_accuracy = system.evaluate()["accuracy"]
    say(f"  ours: {ours_samples / ours_seconds:.1f} samples/s, test accuracy {ours_accuracy:.4f}")

    labels = [int(x) for x in np.asarray(data.train.labels)]
    layout = partition(data.train.ids, 1, slices, seed=0, labels=labels)
    slice_of = {sid: s for sid, (_, s) in layout.assignment.items()}
    base = train_with_trainer(
        spec, lora, settings, data.train, data.test, cyclic(slices, 1)[0], slice_of
    )
    say(
        f"  transformers.Trainer: {base.samples_per_second:.1f} samples/s, test accuracy {base.accuracy:.4f}"
    )
    return {
        "model": "all-MiniLM-L6-v2 (LoRA r=16 on query/value)",
        "data": f"Rotten Tomatoes, {samples} training samples, {len(data.test)} test",
        "slices": slices,
        "epochs_per_stage": epochs,
        "ours_samples_per_second": round(ours_samples / ours_seconds, 2),
        "trainer_samples_per_second": round(base.samples_per_second, 2),
        "speedup": round((ours_samples / ours_seconds) / base.samples_per_second, 3),
        "ours_seconds": round(ours_seconds, 2),
        "trainer_seconds": round(base.seconds, 2),
        "ours_accuracy": round(ours_accuracy, 4),
        "trainer_accuracy": round(base.accuracy, 4),
        "accuracy_gap_points": round(100 * (ours_accuracy - base.accuracy), 2),
    }


def _plan_clock(began: list[float]) -> Callable[[Any], None]:
    """An event callback noting when training starts (the model is loaded by then)."""

    def on_event(event: Any) -> None:
        if event.kind == "plan":
            began.append(time.perf_counter())

    return on_event


def bench_precision(out: Path, samples: int, slices: int, epochs: int, say: Say) -> dict[str, Any]:
    """The same sequence trained in fp32 and with bf16 autocast (base in bf16, LoRA and
    head in fp32) on this CPU: throughput and test accuracy, same run."""
    data = load_dataset("builtin:rotten_tomatoes", limit=samples, seed=0)
    say(f"precision benchmark: {samples} samples, L={slices}, fp32 vs bf16")
    rows: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        settings = TrainSettings(
            lr=1e-3, epochs=epochs, batch_size=32, validation_fraction=0.0, precision=precision
        )
        config = S3TConfig(
            ModelSpec("builtin:minilm", num_labels=2, max_length=128),
            LayoutSettings(shards=1, slices=slices, budget=1),
            LoraSettings(rank=16),
            settings,
        )
        shutil.rmtree(out / precision, ignore_errors=True)
        began: list[float] = []
        system = S3T.fit(out / precision, data, config, on_event=_plan_clock(began))
        seconds = time.perf_counter() - began[0]
        trained = sum(s.samples for s in system.stages()) * epochs
        accuracy = system.evaluate()["accuracy"]
        system.close()
        rows[precision] = {
            "samples_per_second": round(trained / seconds, 2),
            "seconds": round(seconds, 2),
            "accuracy": round(accuracy, 4),
        }
        say(f"  {precision}: {trained / seconds:.1f} samples/s, test accuracy {accuracy:.4f}")
    return {
        "model": "all-MiniLM-L6-v2 (LoRA r=16)",
        "data": f"Rotten Tomatoes, {samples} training samples",
        "slices": slices,
        "epochs_per_stage": epochs,
        **rows,
        "bf16_over_fp32_speed": round(
            rows["bf16"]["samples_per_second"] / rows["fp32"]["samples_per_second"], 3
        ),
        "accuracy_gap_points": round(
            100 * (rows["bf16"]["accuracy"] - rows["fp32"]["accuracy"]), 2
        ),
    }


def bench_forget(out: Path, samples: int, requests: int, say: Say) -> dict[str, Any]:
    """Latency of single-id forget requests vs SISA's retraining of the affected sequence."""
    data = load_dataset("builtin:rotten_tomatoes", limit=samples, seed=1)
    config = S3TConfig(
        ModelSpec("builtin:minilm", num_labels=2),
        LayoutSettings(shards=2, slices=3, budget=1),
        LoraSettings(rank=16),
        TrainSettings(lr=1e-3, epochs=1, batch_size=32),
    )
    root = out / "forget"
    shutil.rmtree(root, ignore_errors=True)
    say(f"forget benchmark: training a 2-shard, 3-slice system on {samples} samples")
    S3T.fit(root / "trained", data, config).close()  # closed: a plain folder to copy

    latency = root / "latency"
    shutil.copytree(root / "trained", latency)
    system = S3T.open(latency)
    ids = [s.id for s in system.samples()]
    rng = np.random.default_rng(0)
    times = []
    for sid in rng.choice(ids, size=min(requests, len(ids)), replace=False):
        began = time.perf_counter()
        system.forget([str(sid)])
        times.append((time.perf_counter() - began) * 1000)
    p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    say(f"  forget: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(times)} requests")

    # SISA answers a request by retraining the hit shard from the checkpoint before the hit
    # slice; under uniform deletions each position 1..L is equally likely, so time all three.
    sisa_times = []
    for position in range(3):
        copy = root / f"sisa-{position}"
        shutil.copytree(root / "trained", copy, dirs_exist_ok=True)
        sisa = S3T.open(copy)
        perm = sisa.sequences(0)[0].perm
        victim = next(s.id for s in sisa.samples(0) if s.slice == perm[position])
        sisa.forget([victim])
        began = time.perf_counter()
        sisa.retrain()
        sisa_times.append(time.perf_counter() - began)
        say(f"  SISA retrain after a hit at position {position + 1}: {sisa_times[-1]:.1f} s")
    sisa_ms = 1000 * statistics.mean(sisa_times)
    return {
        "requests": len(times),
        "forget_p50_ms": round(p50, 3),
        "forget_p99_ms": round(p99, 3),
        "sisa_retrain_ms_mean": round(sisa_ms, 1),
        "sisa_retrain_ms_by_position": [round(1000 * t, 1) for t in sisa_times],
        "ratio_sisa_over_forget_p50": round(sisa_ms / p50, 1),
        "ratio_sisa_over_forget_p99": round(sisa_ms / p99, 1),
    }


def bench_simulation(say: Say) -> dict[str, Any]:
    """Time 10,000 trials of m=5, L=6, B=6."""
    simulate(5, cyclic(6, 6), trials=100, seed=0)  # warm up
    began = time.perf_counter()
    result = simulate(5, cyclic(6, 6), trials=10_000, seed=1)
    seconds = time.perf_counter() - began
    say(f"simulation: 10,000 trials of m=5, L=6, B=6 in {seconds:.2f} s (δ = {result.mean:.2f})")
    return {
        "trials": 10_000,
        "seconds": round(seconds, 3),
        "delta_mean": round(result.mean, 3),
        "delta_theory": round(result.theory or 0, 3),
    }


def run_all(out: Path, quick: bool = False, say: Say = print) -> dict[str, Any]:
    """Run every benchmark; write ``results.json`` and ``results.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "make bench",
        "date": time.strftime("%Y-%m-%d"),
    }
    results["simulation"] = bench_simulation(say)
    results["training"] = bench_training(
        work, 300 if quick else 2000, 3, 1 if quick else 2, 1e-3, say
    )
    results["forget"] = bench_forget(work, 300 if quick else 1500, 50 if quick else 300, say)
    results["precision"] = bench_precision(
        work / "precision", 300 if quick else 2000, 3, 1 if quick else 2, say
    )
    from s3t.experiments.bench_cache import bench_cache

    say("activation cache benchmark: in RAM vs spilled, fresh process each")
    results["cache"] = bench_cache(work, [600, 2000] if quick else [2000, 11504, 50000], say)
    from s3t.experiments.bench_service import bench_service

    results["service"] = bench_service(work, quick, say)
    from s3t.experiments.bench_pressure import bench_pressure

    results["pressure"] = bench_pressure(work, quick, say)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    shutil.rmtree(work, ignore_errors=True)
    return results


def markdown(results: dict[str, Any]) -> str:
    """Render benchmark results as a markdown summary."""
    t, f, s = results["training"], results["forget"], results["simulation"]
    return "\n".join(
        [
            "# s3t benchmarks",
            "",
            f"Machine: {results['machine']}. Command: `{results['command']}` ({results['date']}).",
            "",
            "## Training throughput (same schedule, same run)",
            "",
            f"{t['model']}; {t['data']}; one sequence of L={t['slices']} stages, {t['epochs_per_stage']} epoch(s) per stage.",
            "",
            "| pipeline | samples/s | wall time (s) | test accuracy |",
            "|---|---|---|---|",
            f"| transformers.Trainer + peft, per stage | {t['trainer_samples_per_second']} | {t['trainer_seconds']} | {t['trainer_accuracy']} |",
            f"| s3t engine | {t['ours_samples_per_second']} | {t['ours_seconds']} | {t['ours_accuracy']} |",
            "",
            f"Speed-up: **{t['speedup']}×**; accuracy difference {t['accuracy_gap_points']:+} points.",
            "",
            "## Deletion latency",
            "",
            "| | time |",
            "|---|---|",
            f"| s3t forget, p50 ({f['requests']} single-id requests) | {f['forget_p50_ms']} ms |",
            f"| s3t forget, p99 | {f['forget_p99_ms']} ms |",
            f"| SISA: retrain the hit sequence from its checkpoint (mean over hit positions) | {f['sisa_retrain_ms_mean']} ms |",
            "",
            f"SISA needs **{f['ratio_sisa_over_forget_p50']:,}×** the p50 forget time ({f['ratio_sisa_over_forget_p99']:,}× the p99).",
            "",
            "## Simulator",
            "",
            f"{s['trials']:,} trials of m=5, L=6, B=6 in {s['seconds']} s (δ = {s['delta_mean']}, theory {s['delta_theory']}).",
            "",
            *_precision_markdown(results["precision"]),
            *_cache_markdown(results["cache"]),
            *_service_markdown(results["service"]),
            *_pressure_markdown(results["pressure"]),
        ]
    )


def _precision_markdown(v: dict[str, Any]) -> list[str]:
    return [
        "## Precision on this CPU: fp32 vs bf16 autocast (same run)",
        "",
        f"{v['model']}; {v['data']}; one sequence of L={v['slices']} stages, {v['epochs_per_stage']} epoch(s) per stage.",
        "",
        "| precision | samples/s | wall time (s) | test accuracy |",
        "|---|---|---|---|",
        *[
            f"| {p} | {v[p]['samples_per_second']} | {v[p]['seconds']} | {v[p]['accuracy']} |"
            for p in ("fp32", "bf16")
        ],
        "",
        f"bf16 runs at **{v['bf16_over_fp32_speed']}×** the fp32 speed; accuracy difference {v['accuracy_gap_points']:+} points.",
        "",
    ]


def _cache_markdown(v: dict[str, Any]) -> list[str]:
    rows = [
        f"| {r['samples']:,} | {r['mode']} | {r['train_samples_per_second']} | {r['cache_fill_seconds']} | "
        f"{r['cache_in_memory_mb']} | {r['cache_spilled_mb']} | {r['peak_rss_mb']} |"
        for r in v["runs"]
    ]
    ratios = ", ".join(f"{int(n):,}: {x}×" for n, x in v["spilled_over_ram_throughput"].items())
    return [
        "## The activation cache in RAM and spilled to disk (fresh process each)",
        "",
        f"{v['model']}; spilled runs get a {v['spill_budget_mb']} MB cache budget.",
        "",
        "| samples | cache | train samples/s | cache fill (s) | cache in RAM (MB) | spilled (MB) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Spilled vs in-RAM training throughput: {ratios}.",
        "",
    ]


def _service_markdown(v: dict[str, Any]) -> list[str]:
    rows = []
    for label, run in (
        ("16 concurrent clients", v["concurrent"]),
        ("one at a time", v["one_at_a_time"]),
    ):
        for route in ("predict", "status", "forget"):
            r = run["routes"][route]
            server = run.get("server_side", {}).get(route, {})
            rows.append(
                f"| {label} | {route} | {r['requests']} | {r['requests_per_second']} | {r['p50_ms']} | {r['p99_ms']} | {server.get('p50_ms', '–')} | {server.get('p99_ms', '–')} |"
            )
    m, p = v["memory"], v["in_process"]
    return [
        "## The HTTP service (`s3t serve`, a real process)",
        "",
        f"{v['model']}; each run {v['seconds_per_run']} s: per client eight one-input predictions then a status, plus one client, in a process of its own, forgetting a sample every 0.5 s. Latency as the clients saw it (client p50/p99) and as the server spent it (its access log). Clients and server share the machine's cores.",
        "",
        "| clients | route | requests | per second | client p50 ms | client p99 ms | server p50 ms | server p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"In-process `S3T.predict` in the same run: {p['batch32_inputs_per_second']} inputs/s on batches of 32, {p['single_inputs_per_second']} one at a time.",
        f"Served predictions reach **{v['predict_vs_in_process_batch32']}×** the in-process batch-32 throughput and **{v['predict_vs_one_at_a_time']}×** one-at-a-time serving; server errors: {v['concurrent']['errors_5xx']} (concurrent), {v['one_at_a_time']['errors_5xx']} (one at a time).",
        f"Server memory: {m['rss_before_mb']} MB before and {m['rss_after_mb']} MB after a client streamed a {m['body_mb']} MB body (answered {m['status']}).",
        "",
    ]


def _pressure_markdown(v: dict[str, Any]) -> list[str]:
    rows = []
    for run in v["runs"].values():
        e, sim = run["erasure_ms"], run.get("simulated", {})
        simulated = f"{100 * sim['share_503']:.1f}%" if sim else "–"
        rows.append(
            f"| {run['rate_per_second']:g}/s | {run['order']} | {run['forgets']} | {run['ack_p50_ms']} / {run['ack_p99_ms']} | "
            f"{e['p50_ms']} / {e['p99_ms']} | {100 * run['share_503']:.1f}% | {run['outages']} | {run['outage_mean_s']} / {run['outage_max_s']} | "
            f"{run['predictions_per_second']} | {simulated} |"
        )
    return [
        "## Deletions under pressure (`s3t serve --retrain depth:2`, a real process)",
        "",
        f"{v['model']}, {v['samples']} samples; each run {v['seconds_per_run']:g} s with {v['clients']} clients "
        "(four one-input predictions, then a status, verify, health or receipt read, in turn) and one more client, "
        "in a process of its own, forgetting uniformly drawn live samples. Acknowledgement as the forgetting client "
        "saw it; erasure from the audit log (commit to `erasure-completed`); an outage runs from a first 503 to the "
        "next answered prediction. The simulated 503 share comes from `s3t simulate --rate` with the retraining "
        "speed the run measured.",
        "",
        "| deletions | retraining order | forgets | ack p50 / p99 ms | erasure p50 / p99 ms | 503 share | outages | outage mean / max s | predictions/s | simulated 503 share |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"At five deletions per second the service-first order leaves **{v['share_503_new_over_old']}×** the 503 share of the shard-by-shard order of s3t 0.2.",
        "",
    ]
