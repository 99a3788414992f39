"""`vkp upgrade NAME --version V`: a cluster's Kubernetes upgraded one node at a time."""

from __future__ import annotations

from typing import Any

import click

from provisioner.cli.completers import complete_cluster
from provisioner.cli.lifecycle import _confirm, _drykeep_run_log, _echo_dry_run, _locked, _shown
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured

DRAIN_TIMEOUT = 300  # provisioner.day2.upgrade.DRAIN_TIMEOUT, without importing the library here


@main.command("upgrade")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--version",
    "version",
    required=True,
    metavar="V",
    help="The Kubernetes release to take the cluster to (v1.30.4 or 1.30.4): at most one minor "
    "above the cluster's, never below; the cluster's own version re-applies it.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--dry-run", is_flag=True, help="List what would be done, node by node; change nothing.")
@click.option(
    "--drain-timeout",
    type=click.IntRange(min=1),
    default=DRAIN_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long kubectl drain may take to evict a node's pods before the run stops there.",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def upgrade_cmd(
    name: str,
    version: str,
    yes: bool,
    dry_run: bool,
    drain_timeout: int,
    timeout: float | None,
    output: str,
) -> None:
    """Upgrade a cluster's Kubernetes to V, one node at a time.

    First the cluster is checked (etcd healthy, every API server ready, every node Ready): if it
    is not, nothing changes. Then the first master: drained, V's verified kubeadm, kubelet and
    kubectl and its images (from the cluster's artifact source), `kubeadm upgrade apply`, the
    kubelet restarted, Ready, uncordoned. The other masters the same way one at a time with
    `kubeadm upgrade node`, each while the others' API servers answer; then the workers one at a
    time: drained (PodDisruptionBudgets respected, nothing forced, --drain-timeout), upgraded,
    restarted, Ready, uncordoned. etcd is not touched. Refused: a downgrade, a jump of more than
    one minor, a cluster not taken to its kubernetes phase. V equal to the cluster's version
    re-applies it through the same path. A failed or interrupted run resumes where it stopped
    when run again with the same --version and --drain-timeout; the new version is saved in the
    cluster's state only once every node is done.

    \b
    Examples:
      vkp upgrade demo --version v1.30.5 --dry-run
      vkp upgrade demo --version v1.30.5
      vkp upgrade demo --version v1.30.5 --yes -o json
    """
    steps: list[str] = []

    def body() -> dict[str, Any]:
        from provisioner.day2.upgrade import prepare, upgrade_cluster

        # Refusals come before the question: nothing to confirm for an upgrade vkp does not make.
        up = prepare(name, version, drain_timeout=drain_timeout)
        if dry_run:
            return upgrade_cluster(
                name, version, _drykeep_run_log(output, steps), dry_run=True, drain_timeout=drain_timeout
            )
        with _locked(name) as progress:
            change = "" if up.same_version else f" from v{up.current}"
            _confirm(
                f"{'Re-apply' if up.same_version else 'Upgrade'} cluster {name}{change} to v{up.target}: "
                "drain, upgrade, restart and uncordon its masters, then its workers, one node at a time?",
                yes,
            )
            with _shown(output) as recap:
                done = upgrade_cluster(name, version, progress, drain_timeout=drain_timeout)
            return {**done, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    if dry_run:
        click.echo("\n".join(result["plan"]))
        _echo_dry_run(result["actions"], steps)
        return
    for node, entry in result["nodes"].items():
        done = sum(1 for s in entry["stages"].values() if s in ("ok", "changed"))
        click.echo(f"{node}: {done}/{len(entry['stages'])} steps in {entry['seconds']:.0f}s")
    for note in result["notes"]:
        click.echo(f"note: {note}")
    click.echo(
        f"cluster {name}: Kubernetes v{result['to_version']} "
        + ("re-applied" if result["same_version"] else f"(from v{result['from_version']})")
        + f" in {result['seconds']:.0f}s"
    )
