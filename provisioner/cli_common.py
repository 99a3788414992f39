"""Shared CLI glue: the --output option and the one place errors become exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from provisioner import stop
from provisioner.errors import ProvisionerError
from provisioner.output import emit_json

T = TypeVar("T")

OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json prints one machine-readable document on stdout (progress stays on stderr).",
)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return stop.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


TIMEOUT_OPTION = click.option(
    "--timeout",
    metavar="DURATION",
    callback=_duration,
    help="Stop the whole run after this long (e.g. 30m, 1h30m) with exit code 13, naming what it "
    "was waiting for; a re-run resumes. Without it, each wait still has its own deadline.",
)


def run(
    fn: Callable[[], T], output: str = "text", *, stoppable: bool = False, timeout: float | None = None
) -> T:
    """Run a command body; turn domain errors into a message (or JSON) and a named exit code.

    stoppable: a long run that changes things. SIGINT and SIGTERM then stop it cleanly (the
    phase is recorded as interrupted, exit 130 / 143) and timeout bounds the whole run.
    """
    if stoppable:
        stop.install_signal_handlers()
        if timeout is not None:
            stop.arm_deadline(timeout)
    try:
        return fn()
    except ProvisionerError as exc:
        if output == "json":
            emit_json({"ok": False, "error": exc.to_dict(), "exit_code": exc.exit_code})
        click.echo(f"error: {exc}", err=True)
        point_at_run_log(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        point_at_run_log("interrupted")
        sys.exit(130)


def point_at_run_log(outcome: str) -> None:
    """After a failed run: record how it ended in its log file, and say on stderr where that is."""
    from provisioner import logs

    path = logs.failed(outcome)
    if path is not None:
        click.echo(f"full log: {path}", err=True)
