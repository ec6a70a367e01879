"""`s3t demo` and `s3t experiment NAME`: the paper's experiments on real data, with plots."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from s3t.cli.output import console, print_json, progress_bar


class Experiment(StrEnum):
    """The experiments `s3t experiment` runs."""

    RQ1 = "rq1"
    RQ2 = "rq2"
    RQ3 = "rq3"
    ABLATION = "ablation"
    PRETRAIN_VIT = "pretrain-vit"


def _settings(**values: Any) -> Any:
    from s3t.experiments.common import ExperimentSettings

    return ExperimentSettings(**{k: v for k, v in values.items() if v is not None})


def _help(name: str, default: object | None = None) -> str:
    """An experiment setting's help, derived from its one description."""
    from s3t.engine.settings import description, help_of
    from s3t.experiments.common import ExperimentSettings

    if default is None:
        return help_of(ExperimentSettings, name)
    return f"{description(ExperimentSettings, name)} (default: {default})"


MODEL = typer.Option(None, help=_help("model"))
DATA = typer.Option(None, help=_help("data"))
LIMIT = typer.Option(None, help=_help("limit"))
EPOCHS = typer.Option(None, help=_help("epochs"))
LR = typer.Option(None, help=_help("lr"))
BASELINE_LR = typer.Option(None, help=_help("baseline_lr"))
SHARDS = typer.Option(None, "--shards", "-m", help=_help("shards"))
SLICES = typer.Option(None, "--slices", "-L", help=_help("slices"))
#: what the demo uses where it differs from the experiments' defaults
DEMO = {"limit": 2000, "deletions": 12, "deletion_batch": 3}


def demo(
    workspace: Path = typer.Option(
        Path("s3t-demo"), "--workspace", "-w", help="Where the demo's workspaces and report go."
    ),
    model: str | None = MODEL,
    data: str | None = DATA,
    limit: int | None = typer.Option(None, help=_help("limit", DEMO["limit"])),
    epochs: int | None = EPOCHS,
    shards: int | None = SHARDS,
    slices: int | None = SLICES,
    deletions: int | None = typer.Option(None, help=_help("deletions", DEMO["deletions"])),
    deletion_batch: int | None = typer.Option(
        None, help=_help("deletion_batch", DEMO["deletion_batch"])
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON at the end."),
) -> None:
    """Train S3T on real data with a real model, delete, heal, verify, and write a report."""
    from s3t.extras import require

    require("matplotlib", "experiments", "`s3t demo`")
    from s3t.cli.train import stage_progress
    from s3t.experiments.demo import run_demo

    settings = _settings(
        model=model,
        data=data,
        limit=limit or DEMO["limit"],
        epochs=epochs,
        shards=shards,
        slices=slices,
        deletions=deletions or DEMO["deletions"],
        deletion_batch=deletion_batch or DEMO["deletion_batch"],
    )
    with progress_bar(enabled=not as_json) as update:
        results = run_demo(settings, workspace, say=_say(as_json), on_event=stage_progress(update))
    if as_json:
        print_json(results)


def experiment(
    name: Experiment = typer.Argument(..., help="rq1, rq2, rq3, ablation or pretrain-vit."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/NAME)."),
    model: str | None = MODEL,
    data: str | None = DATA,
    limit: int | None = LIMIT,
    epochs: int | None = EPOCHS,
    lr: float | None = LR,
    baseline_lr: float | None = BASELINE_LR,
    batch_size: int | None = typer.Option(None, help=_help("batch_size")),
    rank: int | None = typer.Option(None, help=_help("rank")),
    shards: int | None = SHARDS,
    slices: int | None = SLICES,
    deletions: int | None = typer.Option(None, help=_help("deletions")),
    streams: int = typer.Option(100, help="Deletion streams replayed to measure δ (rq2)."),
    trials: int = typer.Option(2000, help="Monte Carlo trials (rq3)."),
    seed: int | None = typer.Option(None, help=_help("seed")),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run one of the paper's experiments; writes results.json and PNG plots."""
    from s3t.extras import require

    require("matplotlib", "experiments", "`s3t experiment`")
    folder = out or Path("runs") / name.value
    say = _say(as_json)
    settings = _settings(
        model=model,
        data=data,
        limit=limit,
        epochs=epochs,
        lr=lr,
        baseline_lr=baseline_lr,
        batch_size=batch_size,
        rank=rank,
        shards=shards,
        slices=slices,
        deletions=deletions,
        seed=seed,
    )
    results: dict[str, Any]
    if name is Experiment.RQ1:
        from s3t.experiments.rq1 import run_rq1

        results = run_rq1(settings, folder, say=say)
    elif name is Experiment.RQ2:
        from s3t.experiments.rq2 import run_rq2

        results = run_rq2(settings, folder, streams=streams, say=say)
    elif name is Experiment.RQ3:
        from s3t.experiments.rq3 import run_rq3

        results = run_rq3(
            folder, shards=shards or 5, slices=slices or 6, trials=trials, seed=seed or 0, say=say
        )
    elif name is Experiment.ABLATION:
        from s3t.experiments.ablation import run_ablation

        results = run_ablation(settings, folder, say=say)
    else:
        from s3t.experiments.vit import pretrain_vit

        results = pretrain_vit(
            folder,
            data=data or "builtin:fashion_mnist",
            samples=limit or 12000,
            epochs=epochs or 2,
            say=say,
        )
    if as_json:
        print_json(results)
    else:
        console.print(f"results and plots in {folder}")


def _say(quiet: bool) -> Any:
    return (
        (lambda line: None)
        if quiet
        else (lambda line: console.print(line, highlight=False, markup=False))
    )
