"""Commands that reach into a cluster: ssh, etcdctl, get-credentials."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from provisioner.cli.completers import complete_cluster, complete_node
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.output import emit, structured

# -- vkp ssh / vkp etcdctl (provisioner/bootstrap/tools.py) ----------------------------------


def _after_dashes(args: tuple[str, ...]) -> tuple[str, ...]:
    # With interspersed args off, click hands the "--" separator through with what follows it.
    return args[1:] if args[:1] == ("--",) else args


@main.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@OUTPUT_OPTION
@click.argument("name", shell_complete=complete_cluster)
@click.argument("node", shell_complete=complete_node)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh_cmd(name: str, node: str, command: tuple[str, ...], output: str) -> None:
    """Open a shell on NODE of cluster NAME, or run COMMAND there (after --).

    Uses the cluster's SSH key and accepts only the host key vkp pinned for the node. With a
    command, its output is streamed and vkp exits with the command's exit status; standard input
    is passed on when it is not a terminal. Options go before NAME.

    \b
    Examples:
      vkp ssh demo demo-etcd-1
      vkp ssh demo demo-worker-1 -- sudo ctr version
      vkp ssh demo demo-etcd-1 -- 'sudo journalctl -u etcd | tail -20'
    """
    from provisioner.bootstrap.tools import ssh

    keep_run_log(name)
    sys.exit(run(lambda: ssh(name, node, _after_dashes(command)), output))


@main.command("etcdctl", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@OUTPUT_OPTION
@click.argument("name", shell_complete=complete_cluster)
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
def etcdctl_cmd(name: str, args: tuple[str, ...], output: str) -> None:
    """Run etcdctl (API v3) against the etcd members of cluster NAME.

    Runs on the first etcd node, with every member as an endpoint and vkp's own etcd client
    certificate; the certificate and key reach the node on standard input, live in a private
    temporary directory while etcdctl runs, and are removed when it exits. Exits with etcdctl's
    exit status.

    \b
    Examples:
      vkp etcdctl demo -- endpoint health
      vkp etcdctl demo -- member list -w table
    """
    from provisioner.bootstrap.tools import etcdctl

    args = _after_dashes(args)

    keep_run_log(name)
    sys.exit(run(lambda: etcdctl(name, args), output))


# -- vkp get-credentials (provisioner/bootstrap/kubeconfig.py) -------------------------------


@main.command("get-credentials")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--merge",
    is_flag=True,
    help="Merge into ~/.kube/config (or $KUBECONFIG's first file) as context NAME and make it current.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Merge into PATH instead (implies --merge; created 0600, and its directories 0700, if missing).",
)
@click.option(
    "--switch/--no-switch",
    default=True,
    show_default=True,
    help="Make NAME the current context. --no-switch keeps the current one (NAME becomes current "
    "only in a file that has none).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a cluster, user or context of the same name that differs (without it, vkp refuses "
    "and changes nothing).",
)
@OUTPUT_OPTION
def get_credentials_cmd(
    name: str, merge: bool, file: Path | None, switch: bool, overwrite: bool, output: str
) -> None:
    """Write cluster NAME's admin kubeconfig and print its path, or merge it into your kubeconfig.

    The kubeconfig is built on this machine from the cluster's own PKI: a client certificate for
    kubernetes-admin (group system:masters) signed by the cluster CA, the CA embedded, and the
    API endpoint as the server. It is written to <state>/admin.conf with mode 0600. It exists
    as soon as the PKI does; until the kubernetes phase is done, vkp says so (the API does not
    answer yet).

    With --merge, as `az aks get-credentials` and `gcloud container clusters get-credentials`
    do, the cluster NAME, the user NAME-admin and the context NAME go into ~/.kube/config, or
    the first file of $KUBECONFIG, or PATH with --file:

    \b
    - NAME becomes the current context, so plain `kubectl` talks to it; --no-switch keeps the
      current context (kubectl --context NAME reaches the cluster).
    - Other entries and settings in the file are kept.
    - A cluster, user or context of the same name that differs is not replaced: vkp names the
      entries, changes nothing and exits 2. --overwrite replaces them. Entries identical to
      vkp's are no conflict: running the command again changes nothing ("already in").
    - The write holds <file>.lock, the lock kubectl itself takes, and is atomic (a temporary
      file renamed over the old one), mode 0600: the file holds a private key.

    With -o json the document has cluster, server, path, context, user and warnings; a merge
    adds merged_into, changed, switched (NAME became the current context), previous_context
    (the current context before, or null) and replaced (the entries --overwrite replaced).

    \b
    Examples:
      vkp get-credentials demo                       # prints the admin.conf path
      kubectl --kubeconfig "$(vkp get-credentials demo)" get nodes
      vkp get-credentials demo --merge && kubectl get nodes
      vkp get-credentials demo --merge --no-switch && kubectl --context demo get nodes
      vkp get-credentials demo --merge --overwrite   # after re-creating cluster demo
      vkp get-credentials demo --file ~/.kube/lab.yaml && KUBECONFIG=~/.kube/lab.yaml kubectl get nodes
      vkp get-credentials demo --merge -o json
    """
    from provisioner.bootstrap.kubeconfig import default_kubeconfig_path, get_credentials

    merge = merge or file is not None
    if not merge and (overwrite or not switch):
        flag = "--overwrite" if overwrite else "--no-switch"
        raise click.UsageError(f"{flag} applies to a merge: add --merge (or --file PATH)")

    def body() -> dict[str, Any]:
        target = (file or default_kubeconfig_path(os.environ)) if merge else None
        return get_credentials(name, merge_into=target, switch=switch, overwrite=overwrite)

    keep_run_log(name)
    result = run(body, output)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    for w in result["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if not merge:
        click.echo(result["path"])
        return
    context, target = result["context"], result["merged_into"]
    for entry in result["replaced"]:
        click.echo(f"replaced {entry} (--overwrite)", err=True)
    previous, server = result["previous_context"], result["server"]
    what = "merged into" if result["changed"] else "already in"
    click.echo(f"context {context} {what} {target} (server {server})")
    if result["switched"]:
        click.echo(f"current context: {context}" + (f" (was {previous})" if previous else ""))
    elif previous == context:
        click.echo(f"current context: {context}")
    else:
        click.echo(f"current context stays {previous}; use kubectl --context {context}")
