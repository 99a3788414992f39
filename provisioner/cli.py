"""vkp: Kubernetes on VMware vSphere. Thin click glue: parse, call one library function, map errors.

Every command maps ProvisionerError subclasses to the exit codes documented in errors.ExitCode
in one place (`run`), so scripts can rely on them.
"""

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vkp")
def main() -> None:
    """vkp stands up Kubernetes clusters on VMware vSphere.

    It clones etcd, master and worker VMs from a template through the vSphere API, bootstraps
    them over SSH (etcd with mutual TLS, containerd, kubeadm) and hands back a kubeconfig.
    `vkp lab up` starts an embedded lab (a vCenter simulator whose VMs boot as real Linux
    guests) to try everything on one machine.

    \b
    Quick start on the embedded lab:
      vkp lab up
      eval "$(vkp lab env)"
      vkp create-cluster demo --plan dev --yes
    """


def _register() -> None:
    # Sub-command modules attach themselves to `main`; imported here so `vkp --help` lists them.
    from provisioner.lab import cli as lab_cli

    main.add_command(lab_cli.lab)


_register()
