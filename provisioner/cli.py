"""vkp: Kubernetes on VMware vSphere. Thin click glue: parse, call one library function, map errors.

Every command maps ProvisionerError subclasses to the exit codes documented in errors.ExitCode
in one place (cli_common.run), so scripts can rely on them.
"""

from __future__ import annotations

import click

from provisioner.cli_common import OUTPUT_OPTION, run  # noqa: F401 - used by commands below


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
