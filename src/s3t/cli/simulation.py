"""`s3t simulate` and `s3t sequences`: the pure core, no torch."""

from __future__ import annotations

from pathlib import Path

import typer

from s3t.cli.output import parse_floats, parse_ints, print_json, table

METHOD_HELP = "Sequence selection: cyclic, bms (uses --prior), random, or full (all L!)."


def simulate(
    shards: int = typer.Option(5, "--shards", "-m", help="Number of shards m."),
    slices: int = typer.Option(6, "--slices", "-L", help="Slices per shard L."),
    budget: str = typer.Option("1,2,3,4,5,6", "--budget", "-B", help="Budgets, e.g. 1,2,4."),
    method: str = typer.Option("cyclic", help=METHOD_HELP),
    prior: str | None = typer.Option(None, help="Per-slice deletion prior p1,...,pL."),
    trials: int = typer.Option(2000, help="Monte Carlo trials per budget."),
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    plot: Path | None = typer.Option(None, help="Write a PNG of δ vs budget and served depth."),
    subjects: str | None = typer.Option(
        None,
        help="Simulate requests by data subjects instead of samples: zipf:MEAN or "
        "lognormal:MEAN subject sizes; compares subject-aware and subject-oblivious "
        "partitioning.",
    ),
    samples: int = typer.Option(10_000, help="Samples, with --subjects or --rate."),
    rate: str | None = typer.Option(
        None,
        help="Deletions per second, e.g. 1,5,10: simulate a running service that retrains in "
        "the background (--stage-overhead, --seconds-per-sample) and report the share of "
        "time it is up, for both retraining orders, and the rate it sustains.",
    ),
    stage_overhead: float = typer.Option(
        0.5, help="With --rate: seconds a stage takes besides its samples (status measures it)."
    ),
    seconds_per_sample: float = typer.Option(
        0.004, help="With --rate: training seconds per sample of a stage, epochs included."
    ),
    seconds: float = typer.Option(300.0, help="With --rate: simulated seconds per trial."),
    min_depth: int | None = typer.Option(
        None,
        help="With --rate: retrain a shard once its served depth falls below this (as "
        "`s3t serve --retrain depth:N`); default L.",
    ),
) -> None:
    """Simulate deletion streams: deletions served before service failure (δ) per budget,
    or, with --rate, the availability of a service that retrains while deletions arrive."""
    from s3t.core.simulate import budget_sweep

    budgets = parse_ints(budget, "--budget")
    if rate is not None:
        _availability(
            shards,
            slices,
            budgets,
            samples,
            parse_floats(rate, "--rate") or [],
            stage_overhead,
            seconds_per_sample,
            seconds,
            max(1, min(trials, 50)),
            seed,
            as_json,
            min_depth,
        )
        return
    if subjects is not None:
        _subjects(shards, slices, budgets, method, subjects, samples, trials, seed, as_json)
        return
    sweep = budget_sweep(
        shards, slices, budgets, method, parse_floats(prior, "--prior"), trials, seed
    )
    if plot is not None:
        from s3t.report.plots import plot_simulation

        plot_simulation(
            plot,
            budgets,
            [r.delta_mean for r in sweep.rows],
            [r.delta_ci95 for r in sweep.rows],
            [r.delta_theory for r in sweep.rows],
            {r.budget: r.depth_curve for r in sweep.rows},
            sweep.sisa.mean,
            f"S3T deletion rate: m={shards}, L={slices}, {method}, {trials} trials",
        )
    if as_json:
        print_json(
            [r.to_dict() | {"sisa_delta_mean": round(sweep.sisa.mean, 4)} for r in sweep.rows]
        )
        return
    r10 = min(10, len(sweep.rows[0].depth_curve) - 1)
    table(
        f"Deletions before service failure (m={shards}, L={slices}, {method}, {trials} trials)",
        ["budget", "δ simulated ± 95% CI", "δ theory", "× SISA", f"depth after {r10}"],
        [
            (
                r.budget,
                f"{r.delta_mean:.2f} ± {r.delta_ci95:.2f}",
                None if r.delta_theory is None else round(r.delta_theory, 2),
                f"{r.ratio_over_sisa:.2f}",
                round(float(r.depth_curve[r10]), 3),
            )
            for r in sweep.rows
        ],
    )
    typer.echo(
        f"SISA (one sequence per shard): δ = {sweep.sisa.mean:.2f}; SISA retraining a shard on "
        f"any hit: δ = {sweep.sisa_retrain.mean:.2f}"
    )
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def sequences(
    slices: int = typer.Option(..., "--slices", "-L", help="Slices per shard L."),
    budget: int = typer.Option(..., "--budget", "-B", help="Number of sequences B."),
    method: str = typer.Option("cyclic", help=METHOD_HELP),
    prior: str | None = typer.Option(None, help="Per-slice deletion prior p1,...,pL (bms)."),
    t: float | None = typer.Option(None, help="BMS score exponent (default 3)."),
    seed: int = typer.Option(0, help="Seed for --method random."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the sequences a selection method picks, and their diversity."""
    from s3t.core.sequences import DEFAULT_T, diversity, score, select_sequences

    p = parse_floats(prior, "--prior")
    exponent = DEFAULT_T if t is None else t
    seqs = select_sequences(method, slices, budget, p, seed, exponent)
    scores = [score(s, p, exponent) for s in seqs] if p is not None else None
    div = diversity(seqs)
    if as_json:
        print_json(
            {
                "slices": slices,
                "budget": budget,
                "method": method,
                "sequences": [list(s) for s in seqs],
                "diversity": div,
                "scores": scores,
            }
        )
        return
    columns = ["#", "sequence"] + (["score"] if scores else [])
    rows = [
        [i, " ".join(map(str, s))] + ([round(scores[i], 4)] if scores else [])
        for i, s in enumerate(seqs)
    ]
    table(f"{method} sequences, L={slices}, B={budget}", columns, rows)
    typer.echo(f"diversity (mean pairwise positional Hamming distance): {div:.3f}")


def _availability(
    shards: int,
    slices: int,
    budgets: list[int],
    samples: int,
    rates: list[float],
    overhead: float,
    per_sample: float,
    seconds: float,
    trials: int,
    seed: int,
    as_json: bool,
    min_depth: int | None,
) -> None:
    from s3t.core.availability import (
        ORDERS,
        RetrainSpeed,
        capacity,
        simulate_availability,
        sustainable_rate,
    )

    speed = RetrainSpeed(overhead, per_sample)
    base, extra = divmod(samples, shards * slices)
    sizes = [
        [base + (1 if k * slices + s < extra else 0) for s in range(slices)] for k in range(shards)
    ]
    rows, limits = [], []
    for b in budgets:
        cap = capacity(sizes, speed, b)
        for order in ORDERS:
            limits.append(
                {
                    "budget": b,
                    "order": order,
                    "sustained_99": sustainable_rate(
                        sizes, speed, b, 0.99, order, seconds, 4, seed, min_depth
                    ),
                    "first_stages": cap.first_stages,
                    "full_depth": cap.full_depth,
                }
            )
            for r in rates:
                run = simulate_availability(
                    sizes, r, speed, b, None, order, seconds, trials, seed, min_depth
                )
                rows.append({"budget": b} | run.to_dict())
    if as_json:
        print_json({"availability": rows, "sustainable": limits})
        return
    table(
        f"A service retraining in the background (m={shards}, L={slices}, {samples} samples; "
        f"a stage takes {overhead:g} s + {1000 * per_sample:g} ms per sample; "
        f"{trials} trials of {seconds:g} s)",
        ["B", "deletions/s", "order", "up", "live shards", "served depth", "mean outage"],
        [
            (
                r["budget"],
                r["rate"],
                r["order"],
                f"{100 * r['up']:.1f}% ± {100 * r['up_ci95']:.1f}",
                f"{r['live_shards']:.2f}",
                f"{r['served_depth']:.2f}",
                f"{r['outage_seconds']:.2f} s",
            )
            for r in rows
        ],
    )
    for row in limits:
        typer.echo(
            f"B={row['budget']} {row['order']}: up 99% of the time up to {row['sustained_99']:g} "
            f"deletions/s (simulated); retraining keeps up with {row['first_stages']:g}/s for the "
            f"first stages and {row['full_depth']:g}/s for full depth (closed form)"
        )


def _subjects(
    shards: int,
    slices: int,
    budgets: list[int],
    method: str,
    spec: str,
    samples: int,
    trials: int,
    seed: int,
    as_json: bool,
) -> None:
    from s3t.core.subject_streams import compare_partitioning
    from s3t.core.subjects import SIZE_DISTRIBUTIONS, subject_sizes

    kind, _, number = spec.partition(":")
    try:
        mean = float(number or 5)
    except ValueError:
        mean = -1.0
    if kind not in SIZE_DISTRIBUTIONS or mean < 1:
        raise typer.BadParameter(
            f"--subjects takes zipf:MEAN or lognormal:MEAN (MEAN >= 1), got {spec!r}"
        )
    sizes = subject_sizes(samples, mean, kind, seed)
    rows = []
    for b in budgets:
        c = compare_partitioning(sizes, shards, slices, b, trials, seed, method)
        rows.append(
            {
                "budget": b,
                "subjects": c.subjects,
                "mean_subject_size": round(c.mean_subject_size, 3),
                "largest_subject": c.largest_subject,
                "split_subjects": c.split_subjects,
                "aware_delta_mean": round(c.aware.mean, 3),
                "aware_delta_ci95": round(c.aware.ci95, 3),
                "oblivious_delta_mean": round(c.oblivious.mean, 3),
                "oblivious_delta_ci95": round(c.oblivious.ci95, 3),
                "ratio": round(c.aware.mean / c.oblivious.mean, 3),
                "sample_level_theory": round(c.sample_theory, 3),
                "aware_depth_after_10": round(c.aware.depth_after(10), 3),
                "oblivious_depth_after_10": round(c.oblivious.depth_after(10), 3),
            }
        )
    if as_json:
        print_json(rows)
        return
    first = rows[0]
    table(
        f"Subject requests before service failure (m={shards}, L={slices}, {method}, "
        f"{first['subjects']} subjects of mean size {first['mean_subject_size']}, "
        f"{trials} trials)",
        [
            "budget",
            "δ subject-aware",
            "δ subject-oblivious",
            "ratio",
            "δ in samples, theory",
            "depth after 10 (aware / oblivious)",
        ],
        [
            (
                r["budget"],
                f"{r['aware_delta_mean']:.2f} ± {r['aware_delta_ci95']:.2f}",
                f"{r['oblivious_delta_mean']:.2f} ± {r['oblivious_delta_ci95']:.2f}",
                f"{r['ratio']:.2f}",
                r["sample_level_theory"],
                f"{r['aware_depth_after_10']:.2f} / {r['oblivious_depth_after_10']:.2f}",
            )
            for r in rows
        ],
    )
    typer.echo(
        f"largest subject: {first['largest_subject']} samples; subjects split over several "
        f"cells: {first['split_subjects']}"
    )
