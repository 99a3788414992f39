"""`vkp state export / import`: hand a cluster's local state to another machine (handover.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner import logs
from provisioner.cli.completers import complete_cluster
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.output import emit, structured


@main.group("state")
def state_group() -> None:
    """Move a cluster's local state (keys, PKI, kubeconfig) between machines.

    \b
    CI creates a cluster, a person takes it over:
      VKP_STATE_PASSPHRASE=... vkp state export demo --file demo.vkpstate   # on the CI runner
      vkp state import demo.vkpstate                                        # on your machine
      vkp ssh demo demo-master-1 && vkp delete-cluster demo
    """


@state_group.command("export")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT",
    help="Where to write it (default ./NAME.vkpstate); an existing file is never replaced.",
)
@OUTPUT_OPTION
def export_cmd(name: str, file: Path | None, output: str) -> None:
    """Write cluster NAME's local state to one file, encrypted with a passphrase.

    The file holds the whole state directory: the cluster id, the saved spec, the SSH login
    key and pinned host keys, the PKI (CAs and their keys), the admin kubeconfig and the
    resume records; not the run logs. Whoever has the file and the passphrase has the cluster,
    so it is written 0600, and the key is derived from the passphrase with scrypt and the
    content sealed with AES-256-GCM.

    The passphrase comes from VKP_STATE_PASSPHRASE, else it is asked twice on the terminal
    without echo; never from the command line. At least 12 characters. With -o json and no
    variable, exit 3 naming it. The cluster's run lock is held while the state is read, so a
    run in progress is not copied halfway (exit 15 while one runs). The cluster is not changed.

    \b
    Examples:
      vkp state export demo                      # asks for the passphrase, writes ./demo.vkpstate
      read -rs VKP_STATE_PASSPHRASE && export VKP_STATE_PASSPHRASE
      vkp state export demo --file /tmp/demo.vkpstate -o json
    """
    from provisioner.handover import export_state

    keep_run_log(name)
    result: dict[str, Any] = run(lambda: export_state(name, file, logs.progress()), output)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    click.echo(result["file"])


@state_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the local state of a cluster of that name that is here already (its logs are kept).",
)
@OUTPUT_OPTION
def import_cmd(file: Path, overwrite: bool, output: str) -> None:
    """Take over a cluster: unpack a file `vkp state export` wrote into this machine's state.

    The cluster's name comes from the file; its state lands in $VKP_STATE_DIR/NAME (default
    ~/.vkp/clusters/NAME), files 0600 and directories 0700, whole or not at all (unpacked
    into a temporary directory, then renamed into place). Afterwards every command works here
    as on the machine that made it: ssh, etcdctl, get-credentials, resize, delete-cluster.

    The passphrase comes from VKP_STATE_PASSPHRASE or a prompt without echo. A wrong one, or a
    file changed or cut short on the way, is refused with exit 16 and nothing is written. A
    cluster of that name that has state here already is refused (exit 2) unless --overwrite.

    \b
    Examples:
      vkp state import demo.vkpstate
      VKP_STATE_DIR=~/.vkp/ci vkp state import demo.vkpstate -o json
      vkp state import demo.vkpstate --overwrite
    """
    from provisioner.handover import import_state

    result: dict[str, Any] = run(lambda: import_state(file, logs.progress(), overwrite=overwrite), output)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    replaced = f" (replaced the state of cluster id {result['replaced']})" if result["replaced"] else ""
    who = f"cluster {result['cluster']} (id {result['cluster_id']})"
    click.echo(f"{who} imported into {result['state_dir']}{replaced}")
