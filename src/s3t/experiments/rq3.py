"""RQ3: does sequence selection matter? Diversity of cyclic vs random selections, and BMS vs
cyclic vs random under a uniform and a skewed deletion prior (deletion rate and served
depth). Pure simulation: seconds, no model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3t.core.sequences import bms, cyclic, diversity, random_sequences
from s3t.core.simulate import simulate
from s3t.experiments.common import Say, write_results
from s3t.report.plots import plot_lines

PRIORS: dict[str, Callable[[int], np.ndarray]] = {
    "uniform": lambda L: np.full(L, 1.0 / L),
    "zipf": lambda L: (1.0 / np.arange(1, L + 1)) / (1.0 / np.arange(1, L + 1)).sum(),
    "geometric": lambda L: 2.0 ** np.arange(L) / (2.0 ** np.arange(L)).sum(),
}


def run_rq3(
    out: Path,
    shards: int = 5,
    slices: int = 6,
    trials: int = 2000,
    deletions: int = 20,
    seed: int = 0,
    say: Say = print,
) -> dict[str, Any]:
    """Compare selection methods; write results.json and two plots."""
    budgets = list(range(1, slices + 1))
    div = {
        "cyclic": [diversity(cyclic(slices, b)) for b in budgets],
        "random (mean of 20)": [
            float(np.mean([diversity(random_sequences(slices, b, s)) for s in range(20)]))
            for b in budgets
        ],
    }
    say(
        f"rq3: diversity at B=L: cyclic {div['cyclic'][-1]:.2f}, random {div['random (mean of 20)'][-1]:.2f}"
    )
    rows = []
    for name, make in PRIORS.items():
        prior = make(slices)
        for b in budgets:
            entry: dict[str, Any] = {"prior": name, "budget": b}
            for method, seqs in (
                ("bms", bms(prior.tolist(), b)),
                ("cyclic", cyclic(slices, b)),
            ):
                r = simulate(shards, seqs, trials=trials, prior=prior, seed=seed)
                entry[method] = {
                    "delta": round(r.mean, 2),
                    "depth": round(r.depth_after(deletions), 3),
                }
            rand = [
                simulate(
                    shards,
                    random_sequences(slices, b, s),
                    trials=trials // 4,
                    prior=prior,
                    seed=seed,
                )
                for s in range(8)
            ]
            entry["random"] = {
                "delta": round(float(np.mean([r.mean for r in rand])), 2),
                "depth": round(float(np.mean([r.depth_after(deletions) for r in rand])), 3),
            }
            rows.append(entry)
        mid = next(r for r in rows if r["prior"] == name and r["budget"] == max(1, slices // 2))
        say(
            f"rq3: {name} prior, B={mid['budget']}: served depth after {deletions} deletions — "
            f"bms {mid['bms']['depth']}, cyclic {mid['cyclic']['depth']}, random {mid['random']['depth']}"
        )
    plot_lines(
        out / "rq3_diversity.png",
        {k: (budgets, v) for k, v in div.items()},
        "budget B",
        "mean pairwise positional Hamming distance",
        f"Diversity of selections (L={slices})",
    )
    for name in PRIORS:
        mine = [r for r in rows if r["prior"] == name]
        plot_lines(
            out / f"rq3_depth_{name}.png",
            {m: (budgets, [r[m]["depth"] for r in mine]) for m in ("bms", "cyclic", "random")},
            "budget B",
            f"mean served depth after {deletions} deletions",
            f"Selection under a {name} prior (m={shards}, L={slices})",
        )
    results = {
        "shards": shards,
        "slices": slices,
        "trials": trials,
        "deletions": deletions,
        "diversity": div,
        "rows": rows,
    }
    write_results(out, "rq3", results)
    return results
