"""`s3t train`: partition data, select sequences and train every stage into a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from s3t.cli.output import console, err_console, print_json, progress_bar
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings, help_of
from s3t.system.config import LayoutSettings

DEVICE = typer.Option(
    "auto",
    "--device",
    envvar="S3T_DEVICE",
    help="auto (a CUDA GPU, then MPS, then the CPU), cpu, cuda, cuda:N or mps; for a "
    "workspace folder (a service uses its own).",
)
GPUS_PER_TASK = typer.Option(
    0.0, help="GPUs each Ray shard task asks for (with fewer GPUs than shards, Ray queues)."
)
CACHE_MEMORY = typer.Option(
    "4G",
    "--cache-memory",
    help="Memory for the frozen-layer activation cache; beyond it the cache spills to a "
    "memory-mapped file in the workspace (erased with the samples it holds).",
)
DATA_HELP = (
    "CSV/JSONL/parquet file, a folder saved by `datasets`, or builtin:rotten_tomatoes, "
    "builtin:fashion_mnist, builtin:digits, builtin:tiny_alpaca."
)


def train(
    workspace: Path = typer.Option(
        ..., "--workspace", "-w", help="Workspace folder (created, or resumed)."
    ),
    model: str | None = typer.Option(None, help=help_of(ModelSpec, "name_or_path")),
    data: str = typer.Option(..., help=DATA_HELP),
    shards: int | None = typer.Option(
        None, "--shards", "-m", help=help_of(LayoutSettings, "shards")
    ),
    slices: int | None = typer.Option(
        None, "--slices", "-L", help=help_of(LayoutSettings, "slices")
    ),
    budget: int | None = typer.Option(
        None, "--budget", "-B", help=help_of(LayoutSettings, "budget")
    ),
    method: str | None = typer.Option(None, help=help_of(LayoutSettings, "method")),
    epochs: int | None = typer.Option(None, help=help_of(TrainSettings, "epochs")),
    lr: float | None = typer.Option(None, help=help_of(TrainSettings, "lr")),
    batch_size: int | None = typer.Option(None, help=help_of(TrainSettings, "batch_size")),
    rank: int | None = typer.Option(None, help=help_of(LoraSettings, "rank")),
    alpha: float | None = typer.Option(None, help=help_of(LoraSettings, "alpha")),
    layers_per_slice: int | None = typer.Option(
        None, help=help_of(LoraSettings, "layers_per_slice")
    ),
    targets: str | None = typer.Option(None, help=help_of(LoraSettings, "targets")),
    max_length: int | None = typer.Option(None, help=help_of(ModelSpec, "max_length")),
    num_labels: int | None = typer.Option(None, help=help_of(ModelSpec, "num_labels")),
    validation_fraction: float | None = typer.Option(
        None, help=help_of(TrainSettings, "validation_fraction")
    ),
    patience: int | None = typer.Option(None, help=help_of(TrainSettings, "patience")),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Turn off: " + help_of(TrainSettings, "cache_activations")
    ),
    precision: str | None = typer.Option(None, help=help_of(TrainSettings, "precision")),
    quantize: str | None = typer.Option(None, help=help_of(ModelSpec, "quantize")),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help=help_of(TrainSettings, "gradient_checkpointing")
    ),
    accumulation_steps: int | None = typer.Option(
        None, help=help_of(TrainSettings, "accumulation_steps")
    ),
    device: str = DEVICE,
    cache_memory: str = CACHE_MEMORY,
    seed: int | None = typer.Option(None, help=help_of(LayoutSettings, "seed")),
    limit: int | None = typer.Option(None, help="Train on a seeded sample of N rows."),
    id_column: str | None = typer.Option(None, help="Column with sample ids."),
    text_column: str | None = typer.Option(None, help="Column with the text."),
    text_pair_column: str | None = typer.Option(
        None, help="Column with the second text of a pair."
    ),
    label_column: str | None = typer.Option(None, help="Column with the label."),
    image_column: str | None = typer.Option(None, help="Column with the image."),
    subject_column: str | None = typer.Option(
        None,
        help="Column naming each sample's data subject (the person it belongs to): a "
        "subject's samples are kept in one shard and slice, so forgetting a person cuts "
        "one sequence position. builtin:rotten_tomatoes offers movie_name and pseudo_author.",
    ),
    template: str | None = typer.Option(
        None, help="GLUE/SuperGLUE input template (e.g. rte, copa)."
    ),
    test_fraction: float = typer.Option(
        0.0, help="Hold out this share as a test split (files without one)."
    ),
    config: Path | None = typer.Option(None, help="TOML/JSON config file; options given here win."),
    ray: bool = typer.Option(False, "--ray", help="Train shards in parallel Ray tasks."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (default: start a local one)."
    ),
    gpus_per_task: float = GPUS_PER_TASK,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Train an S3T system: m shards × B sequences × L stages of LoRA blocks."""
    from s3t.data.sources import load_dataset
    from s3t.system.api import S3T

    settings = _resolve_config(
        config,
        model=model,
        layout=dict(shards=shards, slices=slices, budget=budget, method=method, seed=seed),
        lora=dict(
            rank=rank,
            alpha=alpha,
            layers_per_slice=layers_per_slice,
            targets=tuple(t.strip() for t in targets.split(",")) if targets else None,
        ),
        train=dict(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            validation_fraction=validation_fraction,
            patience=patience,
            cache_activations=False if no_cache else None,
            precision=precision,
            gradient_checkpointing=True if gradient_checkpointing else None,
            accumulation_steps=accumulation_steps,
        ),
        max_length=max_length,
        num_labels=num_labels,
        quantize=quantize,
    )
    dataset = load_dataset(
        data,
        id_column=id_column,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        image_column=image_column,
        subject_column=subject_column,
        template=template,
        test_fraction=test_fraction,
        limit=limit,
        seed=settings.layout.seed,
    )
    if not as_json:
        console.print(
            f"training {settings.layout.shards} shard(s) × {settings.layout.budget} sequence(s) × "
            f"{settings.layout.slices} stage(s) of {settings.model.name_or_path} on "
            f"{len(dataset.train)} samples of {dataset.name} → {workspace}"
        )
    with progress_bar(enabled=not as_json) as update:
        system = S3T.fit(
            workspace,
            dataset,
            settings,
            on_event=stage_progress(update, quiet=as_json),
            executor=ray_executor(ray, ray_address, gpus_per_task, device, cache_memory),
            compute=compute_options(device, cache_memory),
        )
    with system:  # closed when the command ends
        summary = training_summary(system)
    if as_json:
        print_json(summary)
        return
    console.print(
        f"done: {len(summary['stages'])} stage artifacts, served depth "
        f"{[s['served_depth'] for s in summary['status']['shards']]}"
    )
    if summary.get("test"):
        console.print(f"held-out test: {summary['test']}")


def _resolve_config(
    file: Path | None,
    model: str | None,
    max_length: int | None,
    num_labels: int | None,
    quantize: str | None = None,
    **sections: dict[str, Any],
) -> Any:
    from s3t.engine.settings import ModelSpec
    from s3t.system.config import S3TConfig

    base = S3TConfig.from_file(file) if file else None
    name = model or (base.model.name_or_path if base else None)
    if not name:
        raise typer.BadParameter("give --model (or model.name_or_path in --config)")
    if base is None:
        base = S3TConfig(model=ModelSpec(name))
    overrides = {
        k: {f: v for f, v in values.items() if v is not None} for k, values in sections.items()
    }
    overrides["model"] = {
        k: v
        for k, v in {
            "name_or_path": name,
            "max_length": max_length,
            "num_labels": num_labels,
            "quantize": quantize,
        }.items()
        if v is not None
    }
    return base.with_overrides(**overrides)


def ray_executor(
    enabled: bool,
    address: str | None,
    gpus_per_task: float = 0.0,
    device: str = "auto",
    cache_memory: str = "4G",
) -> Any:
    """The Ray executor when asked for (``--ray``/``--ray-address``), else ``None``: shard
    tasks compute on the GPU Ray gives them (``--gpus-per-task``), else on the CPU."""
    if not enabled and not address:
        return None
    from s3t.engine.settings import parse_bytes
    from s3t.errors import InvalidRequestError
    from s3t.system.training.distributed import RayExecutor

    if device not in ("auto", "cpu") and gpus_per_task <= 0:
        raise InvalidRequestError(
            f"--ray with --device {device}: give --gpus-per-task so that Ray gives each "
            "shard task a GPU (tasks without one train on the CPU)"
        )
    return RayExecutor(
        address=address,
        gpus_per_task=gpus_per_task,
        cache_memory=parse_bytes(cache_memory),
        device=None if device == "auto" else device,
    )


def compute_options(device: str, cache_memory: str) -> Any:
    """The run-time compute choices of ``--device`` and ``--cache-memory``."""
    from s3t.engine.settings import Compute, parse_bytes

    return Compute(device=device, cache_memory=parse_bytes(cache_memory))


def stage_progress(update: Any, quiet: bool = False) -> Any:
    """Turn trainer events into progress bars: stages done overall, and batches of the
    current stage (and print the memory estimate before training starts)."""
    done = {"stages": 0, "total": 0}

    def on_event(event: Any) -> None:
        if event.kind == "memory":
            if not quiet:
                err_console.print(f"{event.detail['estimate']} on {event.detail['device']}")
        elif event.kind == "plan":
            done["total"] = event.total
            update("stages", 0, max(event.total, 1))
        elif event.kind == "step":
            label = f"{event.key.label()} (stage {event.key.stage})"
            update(
                "batches of this stage",
                event.step,
                event.total,
                f"{label} loss {event.loss:.3f} · {event.samples_per_second:.0f} samples/s",
            )
        elif event.kind in ("swapped", "reused", "discarded", "skipped"):
            done["stages"] += 1
            update(
                "stages",
                done["stages"],
                max(done["total"], done["stages"]),
                f"last: {event.key.label()} {event.kind}",
            )

    return on_event


def training_summary(system: Any) -> dict[str, Any]:
    """JSON summary of a trained workspace: config, status, and one entry per active stage."""
    stages = [
        {
            "shard": stage.shard,
            "sequence": min(stage.sequences),
            "sequences": stage.sequences,
            "stage": stage.stage,
            "slices": stage.slices,
            "samples": stage.samples,
            "artifact": stage.artifact,
            "path": stage.path,
            "metrics": stage.metrics,
        }
        for stage in system.stages()
        if stage.active
    ]
    summary: dict[str, Any] = {
        "workspace": str(system.path),
        "config": system.config.to_dict(),
        "status": system.status().to_dict(),
        "stages": stages,
    }
    if system.has_test_split and system.task != "instruction":
        summary["test"] = system.evaluate()
    return summary
