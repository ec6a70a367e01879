"""Commands on a trained workspace: forget, predict, status, verify, retrain, export,
audit, samples. Each takes --workspace and --json."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from s3t.cli.output import console, print_json, progress_bar, table
from s3t.cli.train import DEVICE, GPUS_PER_TASK
from s3t.errors import InvalidRequestError

WS = typer.Option(..., "--workspace", "-w", help="Workspace folder.")
WS_OR_URL = typer.Option(None, "--workspace", "-w", help="Workspace folder (or give --url).")
URL = typer.Option(
    None, "--url", envvar="S3T_URL", help="Act on a running s3t service instead of a folder."
)
TOKEN = typer.Option(None, "--token", envvar="S3T_TOKEN", help="The service's bearer token.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


_opened: list[Any] = []


def open_workspace(workspace: Path, read_only: bool = False, device: str = "auto") -> Any:
    """Open a workspace for one command; ``close_opened`` releases it when the command ends."""
    from s3t.engine.settings import Compute
    from s3t.system.api import S3T

    system = S3T.open(workspace, read_only=read_only, compute=Compute(device=device))
    _opened.append(system)
    return system


def close_opened() -> None:
    """Close every workspace the command opened (its database connection included)."""
    while _opened:
        opened = _opened.pop()
        try:
            opened.close()
        except Exception as exc:  # the command's own outcome stands; say what was left
            logging.getLogger(__name__).warning("closing %s: %s", opened.path, exc)


def _system(
    workspace: Path | None,
    url: str | None,
    token: str | None,
    read_only: bool = False,
    device: str = "auto",
) -> Any:
    """The workspace (opened here), or a client of the service at ``url``: both have the
    methods the commands call, with the same return types."""
    if (workspace is None) == (url is None):
        raise InvalidRequestError("give either --workspace (a folder) or --url (a running service)")
    if url is not None:
        from s3t.client import Client

        return Client(url, token)
    assert workspace is not None
    return open_workspace(workspace, read_only, device)


def _read_lines(file: Path | None) -> list[str]:
    if file is None:
        return []
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{file} is not UTF-8 text (byte {exc.start} is not valid UTF-8); save it as UTF-8"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def forget(
    ids: list[str] = typer.Argument(None, help="Sample ids to forget."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="File with one sample id per line."
    ),
    subject: list[str] = typer.Option(
        None, "--subject", help="Forget every sample of this data subject (repeatable)."
    ),
    wait_erasure: bool = typer.Option(
        False,
        "--wait-erasure",
        help="Return only once no byte of the samples is left in any file (without it the "
        "deletion is acknowledged once committed and the erasure follows in milliseconds).",
    ),
    erase_wait: float = typer.Option(
        30.0, "--erase-wait", min=0, help="With --wait-erasure: the longest wait, in seconds."
    ),
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Forget samples — or every sample of some data subjects — now, in one request:
    exact, durable, no longer served when this returns; truncates the sequences that saw
    them, and erases every byte of them from the workspace's files (the receipt says
    whether that is complete yet; --wait-erasure waits for it)."""
    wanted = list(ids or []) + _read_lines(file)
    people = list(subject or [])
    if not wanted and not people:
        raise InvalidRequestError(
            "give sample ids (arguments or --file) or --subject to forget; nothing was changed"
        )
    system = _system(workspace, url, token)
    began = time.perf_counter()
    receipt = system.forget(wanted, subjects=people)
    elapsed_ms = (time.perf_counter() - began) * 1000
    if receipt.erasure == "pending" and wait_erasure:
        receipt = system.finish_erasure(receipt.request_id, erase_wait)
    if as_json:
        print_json(receipt.to_dict() | {"milliseconds": round(elapsed_ms, 3)})
        return
    whose = f" of subject(s) {', '.join(receipt.subjects)}" if receipt.subjects else ""
    console.print(
        f"request {receipt.request_id}: forgot {len(receipt.deleted)} sample(s){whose}"
        + (f", {len(receipt.already_deleted)} already forgotten" if receipt.already_deleted else "")
        + f" in {elapsed_ms:.1f} ms"
    )
    if receipt.truncated:
        table(
            "sequences truncated",
            ["shard", "sequence", "depth before", "depth after", "stages switched off"],
            [
                (t.shard, t.seq, t.depth_before, t.depth_after, len(t.deactivated))
                for t in receipt.truncated
            ],
        )
    state = (
        "FAILED (no shard serves)"
        if receipt.failed
        else "degraded"
        if receipt.degraded
        else "full depth"
    )
    console.print(f"served depth per shard: {receipt.served_depth_after} — {state}")
    console.print(
        f"erasure {receipt.erasure}"
        + (
            " (it follows in milliseconds: this command finishes it before it exits, or a "
            f"running service does; `s3t receipt {receipt.request_id}` shows it, "
            "--wait-erasure waits for it)"
            if receipt.erasure == "pending"
            else ""
        )
        + f" · audit chain #{receipt.chain_seq} {receipt.chain_head[:16]}… (keep the receipt: "
        f"`s3t receipt {receipt.request_id} --json`)"
    )


def predict(
    texts: list[str] = typer.Argument(None, help="Texts to classify."),
    file: Path | None = typer.Option(None, "--file", "-f", help="File with one text per line."),
    aggregate: str = typer.Option("mean-logits", help="mean-logits, mean-probs or vote."),
    max_new_tokens: int = typer.Option(32, help="For language models: tokens to generate."),
    device: str = DEVICE,
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Predict with the served models (or generate, for a language-model workspace)."""
    inputs = list(texts or []) + _read_lines(file)
    if not inputs:
        raise InvalidRequestError("give texts to predict (arguments or --file)")
    system = _system(workspace, url, token, device=device)
    if url is None and system.modality == "image":
        raise InvalidRequestError(
            "`s3t predict` takes texts; predict images with POST /predict (`s3t serve`) or "
            "the Python API (S3T.open(...).predict(array))"
        )
    if url is None and system.task == "instruction":
        generation = system.generate(inputs, max_new_tokens)
        if as_json:
            print_json(generation.to_dict())
        else:
            table(
                "generations",
                ["prompt", "response"],
                list(zip(inputs, generation.outputs, strict=True)),
            )
        return
    result = system.predict(inputs, aggregate)
    if as_json:
        print_json(result.to_dict())
        return
    table(
        "predictions",
        ["input", "label", "score"],
        [
            (text[:60], label, max(scores))
            for text, label, scores in zip(inputs, result.labels, result.scores, strict=True)
        ],
    )
    console.print(
        "served by "
        + ", ".join(f"shard {s.shard} seq {s.seq} depth {s.depth}" for s in result.served)
    )


def status(
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Per-shard depths, live shards, deletions so far, deletions left before failure."""
    state = _system(workspace, url, token, read_only=True).status()
    if as_json:
        print_json(state.to_dict())
        return
    table(
        f"{len(state.shards)} shard(s), L={state.slices}, B={state.budget}",
        ["shard", "served depth", "serving seq", "sequence depths", "live samples", "deleted"],
        [
            (
                s.shard,
                s.served_depth,
                s.serving_sequence,
                " ".join(map(str, s.depths)),
                s.live_samples,
                s.deleted_samples,
            )
            for s in state.shards
        ],
    )
    console.print(
        f"live shards {state.live_shards}/{len(state.shards)} · subjects {state.subjects} "
        f"({state.deleted_subjects} forgotten) · deletion requests {state.deletion_requests} "
        f"· samples deleted {state.deleted_samples} · sequences below full depth "
        f"{state.sequences_below_full_depth} · expected further deletions before failure "
        f"(no retraining) {state.estimated_deletions_left:.1f}"
    )
    if state.sustainable_deletion_rate is not None:
        speed = state.retrain_speed
        console.print(
            f"retraining: {speed['stage_overhead_seconds']:.2f} s per stage + "
            f"{1000 * speed['seconds_per_sample']:.2f} ms per sample (last "
            f"{speed['stages_measured']:.0f} stages) · keeps up with "
            f"{state.sustainable_deletion_rate:g} deletions/s for the first stages (service), "
            f"{state.full_depth_deletion_rate:g}/s for full depth · availability at a rate: "
            f"`s3t simulate -m {len(state.shards)} -L {state.slices} -B {state.budget} "
            f"--rate 1,5 --stage-overhead {speed['stage_overhead_seconds']:g} "
            f"--seconds-per-sample {speed['seconds_per_sample']:g} "
            f"--samples {sum(s.live_samples for s in state.shards)}`",
            highlight=False,
        )
    if state.quarantined:
        console.print(
            f"[yellow]{len(state.quarantined)} corrupted stage(s) quarantined[/]: their "
            "sequences serve a shorter prefix until `s3t retrain` rebuilds them"
        )
    if state.erasures_pending:
        console.print(
            f"erasures pending: {state.erasures_pending} (finished within seconds by a running "
            "service or this workspace's next open)"
        )


def verify(
    receipt: Path | None = typer.Option(
        None, "--receipt", help="A deletion receipt (JSON) to prove still in force."
    ),
    recompute: bool = typer.Option(
        False, "--recompute", help="Also retrain every served model from scratch and compare."
    ),
    device: str = DEVICE,
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Check exactness from one snapshot of the registry and the files, without changing
    anything; exit 1 on any violation."""
    if recompute and url is not None:
        raise InvalidRequestError("--recompute retrains models: run it on the workspace folder")
    from s3t.errors import RegistryDamagedError

    try:
        system = _system(workspace, url, token, read_only=not recompute, device=device)
    except RegistryDamagedError as exc:  # too damaged to open: report the damage
        from s3t.system.api import S3T

        assert workspace is not None
        report = S3T.verify_damaged(workspace, exc)
    else:
        if receipt is not None:
            report = system.verify_receipt(_read_json(receipt))
        else:
            report = system.verify(recompute=recompute)
    if as_json:
        print_json(report.to_dict())
    else:
        for key, value in report.checked.items():
            console.print(f"checked {key.replace('_', ' ')}: {value}")
        for v in report.violations:
            console.print(f"[red]VIOLATION[/] {v.check}: {escape(v.detail)}", highlight=False)
        for note in report.pending:
            console.print(f"[yellow]pending[/] {escape(note)}", highlight=False)
        if report.chain_seq:
            console.print(f"audit chain head #{report.chain_seq}: {report.chain_head}")
        console.print(
            "[green]verified: no violations[/]"
            if report.ok
            else f"[red]{len(report.violations)} violation(s)[/]"
        )
    if not report.ok:
        raise typer.Exit(1)


def _read_json(file: Path) -> dict[str, Any]:
    lines = _read_lines(file)
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{file} is not a JSON receipt: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{file} is not a JSON receipt (expected an object)")
    return data


def retrain(
    shard: list[int] = typer.Option(None, "--shard", help="Only these shards (repeatable)."),
    ray: bool = typer.Option(False, "--ray", help="Retrain shards in parallel Ray tasks."),
    ray_address: str | None = typer.Option(None, help="Ray cluster to join."),
    gpus_per_task: float = GPUS_PER_TASK,
    device: str = DEVICE,
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Retrain every truncated sequence back to full depth (deleted samples excluded)."""
    from s3t.cli.train import ray_executor, stage_progress

    system = _system(workspace, url, token, device=device)
    if url is not None:  # the service retrains with its own model instance
        if ray or ray_address:
            raise InvalidRequestError(
                "--ray trains from this machine: run it on the workspace folder"
            )
        answer = system.retrain(shard or None)
        rows = answer["stages"]
        status = answer["status"]
    else:
        with progress_bar(enabled=not as_json) as update:
            outcomes = system.retrain(
                shard or None,
                on_event=stage_progress(update, quiet=as_json),
                executor=ray_executor(ray, ray_address, gpus_per_task, device),
            )
        rows = [o.to_dict() for o in outcomes]
        status = system.status().to_dict()
    if as_json:
        print_json({"stages": rows, "status": status})
        return
    if not rows:
        console.print("nothing to retrain: every sequence is at full depth")
        return
    table(
        "retrained stages",
        ["shard", "slices", "status", "samples", "seconds"],
        [
            (r["shard"], ">".join(map(str, r["slices"])), r["status"], r["samples"], r["seconds"])
            for r in rows
        ],
    )


def export(
    shard: int = typer.Option(..., "--shard", help="Shard whose served model to export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (PEFT adapter + head)."),
    device: str = DEVICE,
    workspace: Path = WS,
    as_json: bool = JSON,
) -> None:
    """Export a shard's served model as a PEFT adapter folder (PeftModel.from_pretrained;
    its tensors are fp32 on the CPU whatever the device)."""
    info = open_workspace(workspace, device=device).export(shard, out)
    if as_json:
        print_json(info.to_dict())
        return
    console.print(
        f"exported shard {info.shard} (sequence {info.sequence}, depth {info.depth}) to {info.path}"
    )


def receipt(
    request_id: str = typer.Argument(..., help="The deletion request id."),
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Show the receipt of a deletion request (keep it: `s3t verify --receipt` proves it)."""
    found = _system(workspace, url, token, read_only=True).receipt(request_id)
    if as_json:
        print_json(found.to_dict())
        return
    console.print(
        f"request {found.request_id}: {len(found.deleted)} sample(s) forgotten, erasure "
        f"{found.erasure}, audit chain #{found.chain_seq} {found.chain_head}"
    )


def reference(
    shard: int = typer.Option(..., "--shard", help="Shard to recompute."),
    seq: int | None = typer.Option(None, "--seq", help="Sequence (default: the one served)."),
    depth: int | None = typer.Option(
        None, "--depth", help="Stages to recompute (default: all valid)."
    ),
    device: str = DEVICE,
    workspace: Path = WS,
    as_json: bool = JSON,
) -> None:
    """Retrain a sequence from scratch on its current samples and compare it, stage by
    stage, with the recorded artifacts (bit-identical on the machine that trained them)."""
    result = open_workspace(workspace, read_only=True, device=device).reference(shard, seq, depth)
    if as_json:
        print_json(result.to_dict())
    else:
        table(
            f"shard {result.shard} sequence {result.seq}: from-scratch reference",
            ["stage", "slices", "samples", "recorded", "recomputed", "identical", "max |diff|"],
            [
                (
                    s.stage,
                    ">".join(map(str, s.slices)),
                    s.samples,
                    (s.recorded or "—")[:12],
                    s.recomputed[:12],
                    ("yes, same file" if s.same_artifact else "tensors, bit for bit")
                    if s.identical
                    else "no",
                    s.max_abs_diff,
                )
                for s in result.stages
            ],
        )
    if not result.within_tolerance:
        raise typer.Exit(1)


def audit(
    since: int = typer.Option(0, help="Only events after this sequence number."),
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Show the append-only audit log."""
    events = _system(workspace, url, token, read_only=True).audit(since)
    if as_json:
        print_json(events)
        return
    table(
        "audit log",
        ["#", "time (UTC)", "event", "detail"],
        [(e["seq"], _when(e["at"]), e["event"], _short(e["detail"])) for e in events],
    )


def samples(
    shard: int | None = typer.Option(None, "--shard", help="Only this shard."),
    subject: str | None = typer.Option(None, "--subject", help="Only this data subject."),
    deleted: bool = typer.Option(False, "--deleted", help="Include deleted samples."),
    workspace: Path | None = WS_OR_URL,
    url: str | None = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """List sample ids with their shard, slice and data subject."""
    system = _system(workspace, url, token, read_only=True)
    rows = system.samples(shard, include_deleted=deleted, subject=subject)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    table(
        f"{len(rows)} samples",
        ["id", "shard", "slice", "subject", "deleted at"],
        [
            (r.id, r.shard, r.slice, r.subject, _when(r.deleted_at) if r.deleted_at else "")
            for r in rows
        ],
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, sort_keys=True)
    return text if len(text) <= 90 else text[:87] + "..."
