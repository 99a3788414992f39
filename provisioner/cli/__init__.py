"""vkp: Kubernetes on VMware vSphere. Thin click glue: parse, call one library function, map errors.

Every command maps ProvisionerError subclasses to the exit codes documented in errors.ExitCode
in one place (cli_common.run), so scripts can rely on them. The group is in root.py; each module
here adds the commands of one concern to it when imported.
"""

from provisioner.cli import (  # noqa: F401  (they register their commands)
    access,
    bundle,
    certs,
    completion,
    etcd,
    info,
    lifecycle,
    repair,
    sample_app,
    state,
    upgrade,
)
from provisioner.cli.root import main
from provisioner.lab import cli as lab_cli

main.add_command(lab_cli.lab)

__all__ = ["main"]
