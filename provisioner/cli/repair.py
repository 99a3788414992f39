"""vkp repair: a broken node replaced in place (provisioner/day2/repair.py)."""

from __future__ import annotations

from typing import Any

import click

from provisioner.cli.completers import complete_cluster
from provisioner.cli.lifecycle import _confirm, _drykeep_run_log, _echo_dry_run, _locked, _shown
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured

WHAT = {
    "etcd": "remove its etcd member (the others must keep quorum), then add the new one",
    "master": "take it out of Kubernetes and kubeadm's ClusterStatus, then bring it back as a master",
    "worker": "delete its Node from Kubernetes, then join the new one as a worker",
}


@main.command("repair")
@click.argument("name", shell_complete=complete_cluster)
@click.argument("node")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option(
    "--dry-run", is_flag=True, help="List what would be done, the VM to destroy included; change nothing."
)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=8, show_default=True,
    help="vCenter operations in flight at once.",
)  # fmt: skip
@TIMEOUT_OPTION
@OUTPUT_OPTION
def repair_cmd(
    name: str, node: str, yes: bool, dry_run: bool, concurrency: int, timeout: float | None, output: str
) -> None:
    """Replace a broken node of a cluster with a new VM of the same name, address and host key.

    Its VM is destroyed if it is still there (only the one the cluster owns), a new one is
    cloned and booted with the node's cloud-init, and the node is set up again and put back:
    an etcd member is removed and added again while the other members keep quorum (refused
    if they cannot); a worker's or master's old Node is deleted before the new one joins.
    The pinned host key is the same, so nothing that trusts the node changes. A run that
    stops midway is resumed by the next one.

    \b
    Examples:
      vkp repair demo demo-worker-2
      vkp repair demo demo-etcd-3 --yes -o json
      vkp repair demo demo-master-1 --dry-run
    """
    steps: list[str] = []

    def body() -> dict[str, Any]:
        from provisioner.day2 import repair

        if dry_run:
            return repair.repair_node(name, node, _drykeep_run_log(output, steps), dry_run=True)
        with _locked(name) as progress:
            t = repair.target(name, node)
            _confirm(
                f"Repair {node} ({t.node.role}, {t.node.address}) of cluster {name}: destroy its VM if it "
                f"is still there, clone a new one with the same name, address and host key, and "
                f"{WHAT[t.node.role]}?",
                yes,
            )
            with _shown(output) as recap:
                repaired = repair.repair_node(name, node, progress, concurrency=concurrency)
            return {**repaired, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        _echo_dry_run(result["actions"], steps)
    else:
        stages = ", ".join(f"{s['name']} {s['seconds']:.0f}s" for s in result["stages"])
        click.echo(f"cluster {name}: {node} repaired in {result['seconds']:.0f}s ({stages})")
