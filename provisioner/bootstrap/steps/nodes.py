"""Day-2 steps on the cluster's nodes as Kubernetes knows them (playbooks/remove-workers.yaml).

kubernetes.drain runs on the first master with the admin kubeconfig kubeadm wrote there, as
`kubectl` would be run by hand: what it may evict, and what it refuses, is kubectl's decision.
"""

from __future__ import annotations

from provisioner.bootstrap.engine import Check, Cluster, Facts, Run, StepGen, run_param, step
from provisioner.bootstrap.steps.kubernetes.settings import kubectl_cmd as kubectl
from provisioner.errors import CommandFailed, ProvisionerError
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

DRAIN_WAIT = "300s"  # kubectl's own limit on evictions
DRAIN_TIMEOUT = 360.0  # the command's: kubectl's wait, and time to start and give up cleanly


def membership(name: str) -> Cmd:
    """Prints node/NAME while the node is in the cluster, nothing once it is gone; exits
    non-zero only when the API server cannot say (then the drain runs and reports why)."""
    return kubectl("get", "node", name, "--ignore-not-found", "-o", "name")


def drain_cmd(name: str) -> Cmd:
    # --ignore-daemonsets: their pods would come back anyway; emptyDir data goes with the node.
    return kubectl("drain", name, "--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={DRAIN_WAIT}")


def nodes_to_remove(cluster: Cluster) -> list[str]:
    """The run's parameter nodes: names of the Kubernetes nodes to drain and delete."""
    names = run_param(cluster, "nodes", list)
    if not all(isinstance(n, str) and n for n in names):
        raise ProvisionerError(f"the run parameter 'nodes' must list node names; got {names!r}")
    return [str(n) for n in names]


def _probes(node: NodePlan, cluster: Cluster) -> list[Check]:
    return [Check(membership(n)) for n in nodes_to_remove(cluster)]


@step("kubernetes.drain", probes=_probes)
def drain(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Drain each of the run's nodes (kubectl cordons it first) and delete it from Kubernetes."""
    for name in nodes_to_remove(cluster):
        seen = facts.check(membership(name))
        if seen.ok and not seen.stdout.strip():
            # Deleted by an earlier run (this one's resume, or a resize repeated): nothing to do.
            continue
        cmd = drain_cmd(name)
        res = yield Run(cmd, timeout=DRAIN_TIMEOUT, check=False)
        if not res.ok:
            failed = CommandFailed(node.name, cmd.masked(), res.exit_status, res.stdout, res.stderr)
            # kubectl's own words (a pod no controller would recreate, a disruption budget)
            # stay in the message; the hint says what vkp did about it: nothing forced.
            failed.message = f"draining {name} failed: {failed.message}"
            failed.hint = (
                "nothing was forced: move or delete what kubectl names (a pod without a "
                "controller is never evicted), then run the resize again; it resumes at the drain"
            )
            raise failed
        yield Run(kubectl("delete", "node", name, "--ignore-not-found"))
