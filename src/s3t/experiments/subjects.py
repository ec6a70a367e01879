"""Forgetting people: subject-aware vs subject-oblivious partitioning on a trained system.

Rotten Tomatoes names no authors, so the training snippets are dealt to pseudo-authors
whose numbers of snippets follow a seeded Zipf distribution of mean 5 (a keyed hash of the
id decides who wrote what). The same data is trained twice at equal m, L, B: once
partitioned obliviously (the usual layout: a person's snippets scattered over shards and
slices), once subject-aware (a person's snippets in one slice). Then deletion requests
arrive per person:

- δ in subject requests, measured by replaying ``streams`` streams of whole-person
  requests with real ``forget_subject`` calls on backups of each system, next to the
  simulator run on that very layout (its 95% confidence interval);
- test accuracy after r subject requests, one stream per system.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.subject_streams import simulate_subjects
from s3t.data.builtin import pseudo_authors
from s3t.data.examples import Dataset
from s3t.experiments.common import ExperimentSettings, Say
from s3t.system.api import S3T

MEAN_SUBJECT_SIZE = 5.0


def with_pseudo_authors(data: Dataset, seed: int) -> Dataset:
    """The data with every training sample dealt to a pseudo-author (Zipf, mean 5)."""
    owners = pseudo_authors(data.train.ids, MEAN_SUBJECT_SIZE, seed)
    return replace(data, train=replace(data.train, subjects=owners))


def compare_on_systems(
    settings: ExperimentSettings,
    data: Dataset,
    oblivious: S3T,
    out: Path,
    say: Say,
    on_event: Any = None,
    streams: int = 100,
    requests: int = 12,
) -> dict[str, Any]:
    """Train the subject-aware twin of ``oblivious`` and compare both (module docstring)."""
    people = with_pseudo_authors(data, settings.seed)
    owners = dict(zip(people.train.ids, people.train.subjects or (), strict=True))
    sizes = np.bincount(np.unique(list(owners.values()), return_inverse=True)[1])
    say(
        f"subjects: {len(sizes)} pseudo-authors, {sizes.mean():.2f} snippets each on average "
        f"(largest {sizes.max()}); training the subject-aware twin in {out / 'system-subjects'}"
    )
    aware = S3T.fit(out / "system-subjects", people, oblivious.config, on_event=on_event)
    results: dict[str, Any] = {
        "subjects": len(sizes),
        "mean_subject_size": round(float(sizes.mean()), 3),
        "largest_subject": int(sizes.max()),
    }
    for name, system in (("oblivious", oblivious), ("aware", aware)):
        cells = _cells(system, owners)
        simulated = simulate_subjects(
            list(cells.values()),
            [_perms(system, k) for k in range(system.config.layout.shards)],
            trials=4000,
            seed=settings.seed,
        )
        measured = _measured_delta(system, owners, out / f"streams-{name}", streams, settings.seed)
        curve = _accuracy_curve(
            system, owners, data, out / f"curve-{name}", requests, settings.seed
        )
        results[name] = {
            "delta_measured_mean": round(float(np.mean(measured)), 3),
            "delta_measured_ci95": round(
                float(1.96 * np.std(measured, ddof=1) / np.sqrt(len(measured))), 3
            ),
            "delta_simulated_mean": round(simulated.mean, 3),
            "delta_simulated_ci95": round(simulated.ci95, 3),
            "cells_per_subject": round(float(np.mean([len(c) for c in cells.values()])), 3),
            "accuracy_vs_subject_requests": curve,
        }
        say(
            f"  {name}: δ in subject requests measured {results[name]['delta_measured_mean']} ± "
            f"{results[name]['delta_measured_ci95']} ({streams} streams), simulated "
            f"{results[name]['delta_simulated_mean']} ± {results[name]['delta_simulated_ci95']}; "
            f"a request hits {results[name]['cells_per_subject']} slices on average; "
            + _final(curve)
        )
    results["ratio"] = round(
        results["aware"]["delta_measured_mean"] / results["oblivious"]["delta_measured_mean"], 3
    )
    return results


def _final(curve: list[dict[str, Any]]) -> str:
    last = curve[-1]
    if last["accuracy"] is None:
        return f"after {last['requests']} requests no shard is left in service"
    return f"accuracy after {last['requests']} requests {last['accuracy']}"


def _cells(system: S3T, owners: dict[str, str]) -> dict[str, list[tuple[int, int]]]:
    cells: dict[str, set[tuple[int, int]]] = {}
    for s in system.samples(include_deleted=True):
        cells.setdefault(owners[s.id], set()).add((s.shard, s.slice))
    return {k: sorted(v) for k, v in cells.items()}


def _perms(system: S3T, shard: int) -> list[tuple[int, ...]]:
    return [tuple(row.perm) for row in system.sequences(shard)]


def _stream(owners: dict[str, str], seed: int) -> list[str]:
    people = sorted(set(owners.values()))
    return [str(x) for x in np.random.default_rng(seed).permutation(people)]


def _measured_delta(
    system: S3T, owners: dict[str, str], work: Path, streams: int, seed: int
) -> list[int]:
    """Whole-person deletion streams with real forgets: requests until service failure."""
    out = []
    for k in range(streams):
        copy = work / f"stream-{k}"
        shutil.rmtree(copy, ignore_errors=True)
        replica = S3T.open(system.backup(copy))
        count = 0
        for person in _stream(owners, seed + k):
            ids = [sid for sid, o in owners.items() if o == person]
            replica.forget(ids)  # the oblivious system knows no subjects: forget their ids
            count += 1
            if not any(replica.served_depths().values()):
                break
        out.append(count)
        replica.close()
        shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _accuracy_curve(
    system: S3T, owners: dict[str, str], data: Dataset, work: Path, requests: int, seed: int
) -> list[dict[str, Any]]:
    shutil.rmtree(work, ignore_errors=True)
    replica = S3T.open(system.backup(work))
    scorer = replica.evaluator(data.test)
    curve = [{"requests": 0, "accuracy": scorer.accuracy(), "live_shards": _live(replica)}]
    for r, person in enumerate(_stream(owners, seed)[:requests], start=1):
        replica.forget([sid for sid, o in owners.items() if o == person])
        if r % 2 == 0:
            accuracy = scorer.accuracy()
            curve.append(
                {
                    "requests": r,
                    "accuracy": None if accuracy is None else round(accuracy, 4),
                    "live_shards": _live(replica),
                }
            )
    replica.close()
    shutil.rmtree(work, ignore_errors=True)
    return curve


def _live(system: S3T) -> int:
    return sum(1 for d in system.served_depths().values() if d > 0)
