"""`vkp certs renew`'s steps on the operator's machine (playbooks/certs-renew.yaml): the cluster
checked healthy before anything is issued, then vkp's leaves issued again from the existing CAs.

The run parameter parts says what is renewed: "etcd" (the members' server and peer
certificates, vkp's etcd client), "kubernetes" (the API server's etcd client, vkp's admin; the
masters then renew kubeadm's own with kubeadm, steps/kubernetes/certs.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.engine import Cluster, Local, StepGen, run_param, step
from provisioner.bootstrap.etcd_client import check_cluster
from provisioner.bootstrap.pki_renew import RENEW_PARTS, renew_leaves, renewable
from provisioner.bootstrap.steps.etcd import client_endpoints
from provisioner.bootstrap.steps.kubernetes.settings import masters, node_api_url
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan


class NotHealthy(ProvisionerError):
    """The cluster is not healthy enough to renew certificates one node at a time."""


def renew_parts(cluster: Cluster) -> list[str]:
    """The run parameter parts: some of RENEW_PARTS."""
    parts = run_param(cluster, "parts", list)
    if not parts or not set(parts) <= set(RENEW_PARTS):
        raise ProvisionerError(
            f"the run parameter 'parts' must list some of {', '.join(RENEW_PARTS)}; got {parts!r}"
        )
    return [str(p) for p in parts]


def _masters_ready(cluster: Cluster) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in masters(cluster):
        ok, detail = kube_api.client(cluster.pki, node_api_url(m, cluster)).readyz()
        out[m.name] = "ready" if ok else f"not ready: {detail.splitlines()[-1] if detail else '?'}"
    return out


def cluster_ready(cluster: Cluster, parts: list[str]) -> dict[str, object]:
    """Every etcd member healthy (a write read back), and with "kubernetes" every master's API
    server ready; NotHealthy naming what is not, before anything is issued or restarted."""
    expected = [n.name for n in cluster.plan.by_role("etcd")]
    try:
        etcd = check_cluster(client_endpoints(cluster), expected, cluster.pki)  # type: ignore[arg-type]
    except ProvisionerError as exc:
        raise NotHealthy(
            f"etcd is not healthy, so no certificate was renewed: {exc.message}",
            hint="renewal restarts one member at a time and needs the others healthy while it does: "
            "bring the named members back (`vkp ssh CLUSTER MEMBER -- sudo journalctl -u etcd`), then "
            "run it again",
        ) from None
    result: dict[str, object] = {"etcd": etcd.to_dict()}
    if "kubernetes" in parts:
        apis = _masters_ready(cluster)
        down = {k: v for k, v in apis.items() if v != "ready"}
        if down:
            raise NotHealthy(
                "API servers not ready, so no certificate was renewed: "
                + "; ".join(f"{k} {v}" for k, v in down.items()),
                hint="renewal restarts one API server at a time and needs the others up: look at the "
                "named masters (`crictl ps -a`, `journalctl -u kubelet`), then run it again",
            )
        result["api_servers"] = apis
    return result


@step("certs.preflight", local=True)
def preflight(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """From this machine: etcd healthy, and for a Kubernetes renewal every API server ready;
    otherwise the run stops before it issues or restarts anything."""
    parts = renew_parts(cluster)
    what = "every etcd member healthy" + (", every master's /readyz" if "kubernetes" in parts else "")
    yield Local(what, lambda: cluster_ready(cluster, parts), report="preflight")


@step("certs.issue", local=True)
def issue(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """vkp's leaves of the parts renewed, issued again from the existing CAs (new keys and
    serials, valid for a year; the CAs are not changed), in the state's pki directory."""
    names = renewable(cluster.plan, renew_parts(cluster))
    state = cluster.state

    def renew() -> object:
        if state is None:
            raise ProvisionerError("certificate renewal needs the cluster's state directory")
        return renew_leaves(state, cluster.plan, cluster.spec.pki, names)

    yield Local(
        f"issue again from the existing CAs: {', '.join(names)}", renew, changes=True, report="renewed"
    )
