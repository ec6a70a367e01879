"""`s3t demo`: S3T end to end on a real model and real data, in minutes, with pictures.

1. train a sharded S3T system (m shards × B = L sequences × L stages) on Rotten Tomatoes
   with the packaged MiniLM, plus ordinary LoRA fine-tuning and one S3T sequence on all
   the data (RQ1), all scored on the same held-out test split;
2. replay a stream of deletion requests against a copy of the system, printing after each
   batch the accuracy of the budget-1 (SISA), 2 and L views, live shards, served depths and
   deletion latency;
3. heal the most damaged shard by retraining it in the background while requests are
   served, then verify exactness;
4. write ``report.md`` with plots. Re-running reuses the trained workspaces.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3t.core.simulate import budget_sweep
from s3t.experiments.common import (
    ExperimentSettings,
    Say,
    full_lora,
    model_layers,
    stream_of_deletions,
    write_results,
)
from s3t.experiments.rq2 import accuracy_under_deletions, budgets_for
from s3t.experiments.subjects import compare_on_systems
from s3t.report.plots import plot_deletion_curves, plot_lines, plot_simulation, plot_subjects
from s3t.system.api import S3T
from s3t.system.serving.scoring import Evaluator

#: measured on 2 CPU cores for MiniLM: samples/s when training the lowest (slowest) block
SAMPLES_PER_SECOND = 100.0


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains, and a time estimate."""

    settings: ExperimentSettings
    budget: int

    def sample_passes(self) -> float:
        s = self.settings
        n = s.limit or 0
        stage_share = (s.slices + 1) / 2  # stage i sees i/L of the data
        sharded = self.budget * stage_share * n * s.epochs  # every shard's share adds up to n
        one_sequence = stage_share * n * s.epochs
        ordinary = 1.4 * n * s.epochs  # all layers trainable: ~1.4x slower per sample
        heal = stage_share * n / s.shards * s.epochs  # one sequence of one shard
        subjects = sharded  # the subject-aware twin of the sharded system
        return sharded + one_sequence + ordinary + heal + subjects

    def estimate_minutes(self) -> float:
        return (self.sample_passes() / SAMPLES_PER_SECOND + 60) / 60


def run_demo(
    settings: ExperimentSettings, out: Path, say: Say = print, on_event: Any = None
) -> dict[str, Any]:
    """Run the demo into ``out``; see the module docstring."""
    plan = DemoPlan(settings, budget=settings.slices)
    m, L = settings.shards, settings.slices
    say(
        f"s3t demo: {settings.model} on {settings.data} ({settings.limit} training samples), "
        f"{m} shards × {L} sequences × {L} stages, its subject-aware twin, plus two reference models. "
        f"Estimated time on 2 CPU cores: ~{plan.estimate_minutes():.0f} min (less when re-run: "
        f"trained workspaces in {out} are reused)."
    )
    data = settings.dataset()
    assert data.test is not None
    trained: dict[str, S3T] = {}
    fit_seconds: dict[str, float] = {}
    for name, config in (
        ("system", settings.config(m, L, L)),
        ("one-sequence", settings.config(1, L, 1)),
        ("ordinary-lora", full_lora(settings, model_layers(settings.model))),
    ):
        say(f"[{name}] training (or resuming) in {out / name}")
        began = time.perf_counter()
        trained[name] = S3T.fit(out / name, data, config, on_event=on_event)
        fit_seconds[name] = time.perf_counter() - began
    accuracy = {name: trained[name].evaluate()["accuracy"] for name in trained}
    say(
        "held-out test accuracy — ordinary LoRA: {:.4f} · S3T one sequence (L={}): {:.4f} · "
        "S3T sharded ensemble served (m={}): {:.4f}".format(
            accuracy["ordinary-lora"], L, accuracy["one-sequence"], m, accuracy["system"]
        )
    )

    replay = out / "replay"
    shutil.rmtree(replay, ignore_errors=True)
    system = S3T.open(trained["system"].backup(replay))  # a consistent copy of a live one
    scorer = system.evaluator(data.test)
    budgets = budgets_for(L)
    stream = stream_of_deletions(
        [s.id for s in system.samples()], settings.deletions, settings.seed
    )
    say(
        f"replaying {len(stream)} deletion requests in batches of {settings.deletion_batch} (no retraining yet)"
    )
    curve = accuracy_under_deletions(system, scorer, stream, settings.deletion_batch, budgets, say)

    heal = _heal(system, scorer, say)
    say("forgetting people: subject-aware vs oblivious partitioning, at equal m, L, B")
    people = compare_on_systems(settings, data, trained["system"], out, say, on_event)
    report = system.verify()
    say(
        f"verify: {'no violations' if report.ok else f'{len(report.violations)} VIOLATIONS'} ({report.checked})"
    )

    sweep = budget_sweep(m, L, list(range(1, L + 1)), trials=4000, seed=settings.seed)
    stage_times = _stage_times(trained["system"])
    results = {
        "settings": settings,
        "test_samples": len(data.test),
        "train_samples": len(data.train),
        "accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "fit_seconds": {k: round(v, 1) for k, v in fit_seconds.items()},
        "accuracy_vs_deletions": curve,
        "healing": heal,
        "verify_ok": report.ok,
        "delta": [r.to_dict() for r in sweep.rows],
        "stage_seconds": stage_times,
        "subjects": people,
    }
    write_results(out, "demo", results)
    _write_report(out, results, sweep)
    say(f"report written to {out / 'report.md'}")
    return results


def _heal(system: S3T, scorer: Evaluator, say: Say) -> dict[str, Any]:
    """Retrain the most damaged shard in a background thread while predictions are served,
    until it serves at full depth again (its other sequences are left to later retraining:
    the sequence closest to full depth is retrained first)."""
    status = system.status()
    worst = min(status.shards, key=lambda s: (s.served_depth, sum(s.depths)))
    if worst.served_depth == status.slices:
        say("every shard serves at full depth: nothing to heal")
        return {"shard": None}
    say(
        f"healing shard {worst.shard} (served depth {worst.served_depth}) in the background while serving requests"
    )
    events: list[str] = []
    healed = threading.Event()

    def on_event(event: Any) -> None:
        if event.kind in ("swapped", "reused", "discarded"):
            line = f"  retraining event: {event.key.label()} {event.kind}"
            events.append(line)
            say(line)
            if system.status().shards[worst.shard].served_depth == status.slices:
                healed.set()

    done = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            system.retrain(shards=[worst.shard], on_event=on_event, stop=healed)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    began = time.perf_counter()
    threading.Thread(target=work, daemon=True).start()
    latencies = []
    while not done.wait(0.5):
        t0 = time.perf_counter()
        system.predict(["a moving, beautifully acted film"])
        latencies.append(1000 * (time.perf_counter() - t0))
    if errors:
        raise errors[0]
    seconds = time.perf_counter() - began
    after = system.status().shards[worst.shard]
    accuracy = scorer.accuracy(None)
    say(
        f"shard {worst.shard} serves at depth {after.served_depth} again after {seconds:.0f} s; "
        f"{len(latencies)} predictions served meanwhile (median "
        f"{statistics.median(latencies) if latencies else 0:.0f} ms); test accuracy now {accuracy:.4f}"
    )
    return {
        "shard": worst.shard,
        "depth_before": worst.served_depth,
        "depth_after": after.served_depth,
        "sequences_still_truncated": sum(d < status.slices for d in after.depths),
        "seconds": round(seconds, 1),
        "predictions_served_meanwhile": len(latencies),
        "accuracy_after": accuracy,
        "events": events,
    }


def _stage_times(system: S3T) -> list[dict[str, Any]]:
    stages = {s.artifact: s for s in system.stages()}
    return [
        {
            "shard": row.shard,
            "sequence": row.seq,
            "stage": stage,
            "samples": stages[artifact].samples,
            "seconds": stages[artifact].metrics.get("seconds"),
        }
        for row in system.sequences()
        for stage, artifact in enumerate(row.artifacts, start=1)
    ]


def _write_report(out: Path, r: dict[str, Any], sweep: Any) -> None:
    s = r["settings"]
    curve = r["accuracy_vs_deletions"]
    budgets = sorted(curve[0]["budgets"])
    plot_deletion_curves(
        out / "accuracy_vs_deletions.png",
        curve,
        r["accuracy"]["ordinary-lora"],
        f"Accuracy under deletions (m={s.shards}, L={s.slices})",
    )
    plot_simulation(
        out / "delta_simulated_vs_theory.png",
        [row.budget for row in sweep.rows],
        [row.delta_mean for row in sweep.rows],
        [row.delta_ci95 for row in sweep.rows],
        [row.delta_theory for row in sweep.rows],
        {row.budget: row.depth_curve for row in sweep.rows},
        sweep.sisa.mean,
        f"Deletion rate, m={s.shards}, L={s.slices}: simulated vs theory",
    )
    stages = r["stage_seconds"]
    plot_lines(
        out / "training_time_per_stage.png",
        {
            f"shard {k}, sequence {q}": (
                [x["stage"] for x in stages if (x["shard"], x["sequence"]) == (k, q)],
                [x["seconds"] or 0.0 for x in stages if (x["shard"], x["sequence"]) == (k, q)],
            )
            for k, q in sorted({(x["shard"], x["sequence"]) for x in stages})
        },
        "stage (block trained; its data is slices 1..stage of the sequence)",
        "seconds",
        "Training time per stage",
    )
    people = r["subjects"]
    plot_subjects(
        out / "subjects.png",
        {
            f"{name} partitioning": (
                [p["requests"] for p in people[name]["accuracy_vs_subject_requests"]],
                [p["accuracy"] for p in people[name]["accuracy_vs_subject_requests"]],
            )
            for name in ("aware", "oblivious")
        },
        {
            name: (
                people[name]["delta_measured_mean"],
                people[name]["delta_measured_ci95"],
                people[name]["delta_simulated_mean"],
                people[name]["delta_simulated_ci95"],
            )
            for name in ("aware", "oblivious")
        },
        f"{people['subjects']} pseudo-authors (Zipf, mean {people['mean_subject_size']} snippets), "
        f"m={s.shards}, L=B={s.slices}",
    )
    acc = r["accuracy"]
    cost = 100 * (acc["system"] - acc["one-sequence"])
    rows = "\n".join(
        f"| {row['deletions']} | "
        + " | ".join(
            "dead"
            if row["budgets"][b]["accuracy"] is None
            else f"{row['budgets'][b]['accuracy']:.4f}"
            for b in budgets
        )
        + " | "
        + " | ".join(str(row["budgets"][b]["served_depths"]) for b in budgets)
        + f" | {row['forget_ms_max'] or ''} |"
        for row in curve
    )
    heal = r["healing"]
    text = f"""# s3t demo report

Model `{s.model}`, data `{s.data}`: {r["train_samples"]} training samples, {r["test_samples"]} held-out
test samples (the fixed test split; never used for training or model selection).
LoRA rank {s.rank}, {s.epochs} epoch(s) per stage, batch {s.batch_size}; learning rate {s.lr} for S3T
stages and {s.baseline_lr} for ordinary LoRA (each the best of a sweep on a validation split of
the training data; see README).
Machine: 2 CPU cores. Command: `make demo` (= `s3t demo`).

## Accuracy on the same held-out split

| model | test accuracy | training time (s) |
|---|---|---|
| ordinary LoRA fine-tuning on all the data | {acc["ordinary-lora"]:.4f} | {r["fit_seconds"]["ordinary-lora"]} |
| S3T slice-wise training, one sequence on all the data (L={s.slices}) | {acc["one-sequence"]:.4f} | {r["fit_seconds"]["one-sequence"]} |
| S3T sharded ensemble as served (m={s.shards}, B=L={s.slices}) | {acc["system"]:.4f} | {r["fit_seconds"]["system"]} |

RQ1: slice-wise training is {100 * (acc["one-sequence"] - acc["ordinary-lora"]):+.2f} points from ordinary LoRA.
Sharding costs {-cost:.2f} points here: each of the {s.shards} shard models sees only 1/{s.shards} of the data
(the price of retraining only a shard's share when a deletion does force retraining).
(Training times of re-runs are near zero: the workspaces are reused.)

## Deletions

{len(curve) - 1} batches of {s.deletion_batch} uniformly drawn deletion requests, no retraining.
Budget B means: serve from each shard's first B sequences only (B=1 is SISA's single slice
order; the selections nest, so one trained system gives all three views).

| deletions | {" | ".join(f"acc B={b}" for b in budgets)} | {" | ".join(f"served depths B={b}" for b in budgets)} | forget max (ms) |
|---|{"---|" * (2 * len(budgets) + 1)}
{rows}

![accuracy vs deletions](accuracy_vs_deletions.png)

## Healing

{("Shard " + str(heal["shard"]) + f" was retrained in the background in {heal['seconds']} s, served depth {heal['depth_before']} → {heal['depth_after']}, while {heal['predictions_served_meanwhile']} prediction requests were answered. Test accuracy afterwards: {heal['accuracy_after']:.4f}.") if heal.get("shard") is not None else "Nothing needed healing."}
`verify` after everything: {"no violations" if r["verify_ok"] else "VIOLATIONS — see results.json"}.

## Forgetting people

Deletion requests come from people. The training snippets were dealt to {people["subjects"]} pseudo-authors
(Zipf-distributed, {people["mean_subject_size"]} snippets each on average, the largest {people["largest_subject"]}; Rotten
Tomatoes names no authors), and the same data was trained again with subject-aware partitioning
(a person's snippets in one slice) at the same m, L and B. Then whole people asked to be forgotten:

| partitioning | slices hit per request | δ in person requests, measured (100 streams) | simulated on the same layout | accuracy after {people["aware"]["accuracy_vs_subject_requests"][-1]["requests"]} requests |
|---|---|---|---|---|
| oblivious (the usual layout) | {people["oblivious"]["cells_per_subject"]} | {people["oblivious"]["delta_measured_mean"]} ± {people["oblivious"]["delta_measured_ci95"]} | {people["oblivious"]["delta_simulated_mean"]} ± {people["oblivious"]["delta_simulated_ci95"]} | {_accuracy_or_failed(people["oblivious"]["accuracy_vs_subject_requests"][-1]["accuracy"])} |
| subject-aware | {people["aware"]["cells_per_subject"]} | {people["aware"]["delta_measured_mean"]} ± {people["aware"]["delta_measured_ci95"]} | {people["aware"]["delta_simulated_mean"]} ± {people["aware"]["delta_simulated_ci95"]} | {_accuracy_or_failed(people["aware"]["accuracy_vs_subject_requests"][-1]["accuracy"])} |

Subject-aware partitioning serves **{people["ratio"]}×** as many people's requests before service failure.

![subjects](subjects.png)

## Deletion rate: simulation vs theory

![delta](delta_simulated_vs_theory.png)

## Training time per stage

![stage times](training_time_per_stage.png)
"""
    (out / "report.md").write_text(text)


def _accuracy_or_failed(accuracy: float | None) -> str:
    return "service failed (no shard left)" if accuracy is None else f"{accuracy:.4f}"
