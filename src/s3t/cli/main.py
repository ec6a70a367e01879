"""The `s3t` command: a table of typed library calls. Heavy imports happen inside the
commands, so `s3t --help` and the pure commands stay fast."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.markup import escape

from s3t.cli import experiments, serve, simulation, system, train
from s3t.cli.output import err_console
from s3t.errors import S3TError

app = typer.Typer(
    name="s3t",
    help="Exact machine unlearning for fine-tuned transformers (S3T).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _each_command(ctx: typer.Context) -> None:
    """Exact machine unlearning for fine-tuned transformers (S3T)."""
    ctx.call_on_close(system.close_opened)  # whatever the command opened, however it ends


app.command()(simulation.simulate)
app.command()(simulation.sequences)
app.command()(train.train)
app.command()(experiments.demo)
app.command()(experiments.experiment)
app.command()(serve.serve)
app.add_typer(serve.tokens, name="token")
for command in (
    system.forget,
    system.predict,
    system.status,
    system.verify,
    system.retrain,
    system.export,
    system.audit,
    system.samples,
    system.receipt,
    system.reference,
):
    app.command()(command)


def main() -> None:
    """Console-script entry point: run the app, turning s3t errors into a one-line message."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("S3T_LOG", "WARNING").upper())
    try:
        app()
    except S3TError as exc:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
