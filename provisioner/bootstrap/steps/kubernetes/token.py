"""The run's bootstrap token: made by vkp (provisioner/bootstrap/bootstrap_token.py), kept on
the run's Cluster, and created through the API from this machine (kube_api), so any join step
can make sure it exists, which is what lets a failed join resume at that node in a new run. It
reaches nodes only inside 0600 configuration files removed as soon as kubeadm has read them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.bootstrap_token import TOKEN_TTL, BootstrapToken
from provisioner.bootstrap.engine import Cluster, Facts, Local, StepGen, step
from provisioner.bootstrap.steps.kubernetes.settings import kubelet_nodes
from provisioner.errors import CommandFailed, ProvisionerError
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd, Result

TOKEN_MIN_LEFT = dt.timedelta(minutes=5)  # a join may take minutes; never start one on a dying token


def run_token(cluster: Cluster) -> BootstrapToken:
    """This run's token (one per Cluster object, in memory only); a fresh one near expiry."""
    with cluster.token_lock:
        if cluster.token is None or cluster.token.remaining() <= TOKEN_MIN_LEFT:
            cluster.token = BootstrapToken()
        return cluster.token


def ensure_token(cluster: Cluster) -> BootstrapToken:
    """The run's token, created in the cluster through the API if this run has not yet."""
    token = run_token(cluster)
    with cluster.token_lock:
        if token.created:
            return token
        api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
        api.create("/api/v1/namespaces/kube-system/secrets", token.secret_object())
        token.created = True
        return token


def token_for(token: Any, facts: Facts) -> BootstrapToken | None:
    """What a Local that returned the token gave back: in a dry run (Local actions do not run)
    None, and the configuration shows a masked placeholder."""
    if isinstance(token, BootstrapToken):
        return token
    if facts.known:
        raise ProvisionerError("no bootstrap token for this run (the token step returned nothing)")
    return None


def scrubbed_failure(node: NodePlan, cmd: Cmd, r: Result, token: BootstrapToken | None) -> CommandFailed:
    out, err = r.stdout, r.stderr
    if token is not None:
        out, err = token.scrub(out), token.scrub(err)
    return CommandFailed(node.name, f"sudo -n -- {cmd.masked()}", r.exit_status, out, err)


@step("kubernetes.token", local=True)
def token_step(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """This run's bootstrap token (TTL 30 min), created through the API only when a master or
    worker is not registered yet; kept in memory, masked everywhere."""

    def needed() -> list[str]:
        api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
        doc = api.get("/api/v1/nodes")
        present = {str(i.get("metadata", {}).get("name")) for i in doc.get("items", [])}
        return [n.name for n in kubelet_nodes(cluster) if n.name not in present]

    missing = yield Local("nodes not registered yet", needed)
    if missing == []:
        return
    yield Local(
        f"create this run's bootstrap token (expires in {int(TOKEN_TTL.total_seconds() // 60)} min)",
        lambda: ensure_token(cluster),
        changes=True,
    )
