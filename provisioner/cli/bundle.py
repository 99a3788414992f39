"""`vkp support-bundle`: what a bug report attaches, secrets scrubbed (library: day2/bundle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner import logs
from provisioner.cli.completers import complete_cluster
from provisioner.cli.root import main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured


@main.command("support-bundle")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--file",
    "dest",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the bundle (a new file; an existing one is never overwritten). "
    "Default: vkp-support-NAME-<UTC time>.tar.gz in the current directory.",
)
@click.option(
    "--lines",
    type=click.IntRange(10, 100000),
    default=2000,
    show_default=True,
    help="Journal lines per service and node (this boot's last ones; each excerpt is also capped at 2 MiB).",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def support_bundle_cmd(dest: Path | None, name: str, output: str, lines: int, timeout: float | None) -> None:
    """Collect what a bug report needs into one tar.gz (mode 0600), every secret scrubbed.

    It holds vkp's run logs of the cluster, the saved spec and state (never a key or
    certificate file), `describe-cluster -o json`, the certificates' expiries, and from every
    node it reaches over SSH (the cluster's key, pinned host keys) journal excerpts of etcd,
    containerd and kubelet, the end of cloud-init's output, and what kubeadm left on Kubernetes
    nodes; from the first master, `kubectl get` of nodes, pods (all namespaces) and events.
    index.json lists every file with where it came from, and what could not be collected and
    why: an unreachable node is written down there, not an error. Works on a cluster whose
    create failed half way: it collects what exists. Changes nothing anywhere.

    Scrubbed from every file: the vCenter password, bootstrap tokens, PEM private keys, the
    secret fields of kubeconfigs and kubeadm configurations (client-key-data, token, ...), and
    every line of the private keys in the cluster's state. Look through it before you share it
    all the same: it names hosts, addresses and your vCenter inventory.

    \b
    Examples:
      vkp support-bundle demo
      vkp support-bundle demo --file /tmp/demo-bundle.tar.gz -o json
      tar -xOzf vkp-support-demo-*.tar.gz --wildcards '*/index.json' | jq .failed
    """

    def body() -> dict[str, Any]:
        from provisioner.day2.bundle import support_bundle

        # No run log of its own: opening one would rotate the oldest run log out of the state
        # directory just before the bundle reads it, and that may be the failed run's.
        return support_bundle(name, logs.progress(), output=dest, lines=lines)

    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    click.echo(f"wrote {result['path']} ({result['bytes']} bytes, {result['files']} files)")
    for node in result["unreachable"]:
        click.echo(f"  {node}: not collected ({result['nodes'][node]})")
    for f in result["failed"]:
        click.echo(f"  not collected: {f['what']}: {f['reason'].splitlines()[0] if f['reason'] else ''}")
    click.echo("attach it to the bug report; secrets are scrubbed, but look it over before sharing", err=True)
