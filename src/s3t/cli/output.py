"""How the CLI talks: JSON for machines, rich tables and progress bars for people, and one
way to turn an :class:`~s3t.errors.S3TError` into a message and an exit status."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from s3t.core.jsonable import jsonable

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout (NaN becomes null)."""
    typer.echo(json.dumps(jsonable(data), indent=2))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a readable table."""
    out = Table(title=title, title_justify="left")
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*(fmt(v) for v in row))
    console.print(out)


def fmt(value: Any) -> str:
    """Format one table cell."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return escape(str(value))


def parse_ints(text: str, name: str) -> list[int]:
    """Parse ``"1,2,3"`` into ints, failing with a message that names the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{name} needs at least one value, got {text!r}")
    return values


def parse_floats(text: str | None, name: str) -> list[float] | None:
    """Parse ``"0.1,0.2"`` into floats (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated numbers, got {text!r}") from None


class PlainProgress:
    """Progress for a log (stderr is not a terminal): one plain line per task at most every
    ``interval`` seconds, and when a task starts or completes, with its rate and ETA."""

    def __init__(self, interval: float | None = None, write: Callable[[str], None] | None = None):
        self.interval = (
            interval if interval is not None else float(os.environ.get("S3T_PROGRESS_SECONDS", 15))
        )
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._started: dict[str, tuple[float, int]] = {}
        self._last: dict[str, float] = {}

    def __call__(self, task: str, done: int, total: int, info: str = "") -> None:
        now = time.monotonic()
        first = task not in self._started or done < self._started[task][1]
        if first:
            self._started[task] = (now, done)
        finished = total > 0 and done >= total
        if not (first or finished or now - self._last.get(task, 0.0) >= self.interval):
            return
        self._last[task] = now
        began, at = self._started[task]
        rate = (done - at) / (now - began) if now > began else 0.0
        eta = f" · ETA {_duration((total - done) / rate)}" if rate > 0 and not finished else ""
        stamp = time.strftime("%H:%M:%S")
        self.write(f"[{stamp}] {task} {done}/{total}{eta}" + (f" · {info}" if info else ""))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield a progress callback ``update(task, done, total, info)``: rich bars (one per task
    name) on stderr when it is a terminal, plain timestamped lines at a steady interval
    when it is not (a CI log, ``make demo > log``); a no-op when disabled (``--json``)."""
    if not enabled:
        yield lambda *args, **kwargs: None
        return
    if not err_console.is_terminal:
        yield PlainProgress()
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(task: str, done: int, total: int, info: str = "") -> None:
        if task not in tasks:
            tasks[task] = bars.add_task(task, total=total, info=info)
        bars.update(tasks[task], completed=done, total=total, info=info)

    with bars:
        yield update
