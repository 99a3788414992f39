"""Shared CLI glue: the --output option and the one place errors become exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

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


def run(fn: Callable[[], T], output: str = "text") -> T:
    """Run a command body; turn domain errors into a message (or JSON) and a named exit code."""
    try:
        return fn()
    except ProvisionerError as exc:
        if output == "json":
            emit_json({"ok": False, "error": exc.to_dict(), "exit_code": exc.exit_code})
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
