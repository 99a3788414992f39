"""The cluster's health, checked from this machine through the API endpoint: /readyz, every
master and worker Ready, the system pods running, and what serves cluster DNS.

DNS is reported as it is: CoreDNS when kubernetes.dns is coredns and its pods run in
kube-system (kubeadm's addon, label k8s-app=kube-dns); "not installed" when it is none, with how
workloads find Services without it. Never a DNS that is not there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.engine import Cluster, Local, StepGen, step
from provisioner.bootstrap.steps.cni import cni_of
from provisioner.bootstrap.steps.kubernetes.settings import POLL, kubelet_nodes, settings
from provisioner.bootstrap.steps.kubernetes.vsphere import CSI_NAMESPACE
from provisioner.errors import Timeout
from provisioner.plan import NodePlan
from provisioner.retry import retry_call

HEALTH_DEADLINE = 900.0  # CNI and system pods pull images on every node
COREDNS_LABEL = ("k8s-app", "kube-dns")  # kubeadm's CoreDNS keeps kube-dns's label
NO_DNS = (
    "not installed (kubernetes.dns: none): workloads find Services through their "
    "{NAME}_SERVICE_HOST/PORT variables or ClusterIP"
)


def system_namespaces(cluster: Cluster) -> list[str]:
    s = settings(cluster)
    out = ["kube-system"]
    namespace = cni_of(cluster).namespace  # none for a network that runs no pods of its own
    if namespace is not None:
        out.append(namespace)
    if s.vsphere:
        out.append(CSI_NAMESPACE)
    return out


def check_health(cluster: Cluster) -> kube_api.Health:
    url = cluster.plan.api_endpoint.url
    api = kube_api.client(cluster.pki, url)
    readyz = api.readyz()
    expected = [n.name for n in kubelet_nodes(cluster)]
    namespaces = system_namespaces(cluster)
    if not readyz[0]:
        return kube_api.assess(readyz, None, [], expected, namespaces)
    nodes = api.get("/api/v1/nodes")
    pods = [api.get(f"/api/v1/namespaces/{ns}/pods") for ns in namespaces]
    health = kube_api.assess(readyz, nodes, pods, expected, namespaces)
    if settings(cluster).dns == "coredns" and not _has_coredns(pods[0]):
        health.problems.append(
            "CoreDNS: no pod labelled k8s-app=kube-dns in kube-system (kubernetes.dns: coredns)"
        )
    return health


def _has_coredns(kube_system_pods: dict[str, Any]) -> bool:
    key, value = COREDNS_LABEL
    return any(
        ((p.get("metadata") or {}).get("labels") or {}).get(key) == value
        for p in kube_system_pods.get("items", [])
    )


def dns_report(cluster: Cluster) -> str:
    """What serves cluster DNS, for the health result (checked by check_health when CoreDNS)."""
    return "coredns" if settings(cluster).dns == "coredns" else NO_DNS


class ClusterNotReady(Timeout):
    def __init__(self, health: kube_api.Health, seconds: float) -> None:
        self.health = health
        super().__init__(
            f"the cluster is not ready after {seconds:.0f}s:\n  " + "\n  ".join(health.problems),
            hint="`vkp ssh MASTER -- sudo kubectl --kubeconfig /etc/kubernetes/admin.conf describe ...` "
            "on what is named; a re-run checks again without repeating what is done",
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["health"] = self.health.to_dict()
        return d


def wait_healthy(cluster: Cluster, deadline: float = HEALTH_DEADLINE) -> dict[str, Any]:
    started = time.monotonic()
    last: list[kube_api.Health] = []

    def attempt() -> kube_api.Health:
        try:
            h = check_health(cluster)
        except kube_api.KubeAPIError as exc:
            h = kube_api.Health(problems=[exc.message])
        last[:] = [h]
        if not h.ok:
            raise _NotYet()
        return h

    try:
        return retry_call(
            attempt,
            retry_on=lambda e: isinstance(e, _NotYet),
            deadline=deadline,
            initial=1.0,
            maximum=POLL * 3,
            what="the cluster to be healthy",
        ).to_dict() | {"dns": dns_report(cluster)}
    except _NotYet:
        raise ClusterNotReady(last[0], time.monotonic() - started) from None


@step("kubernetes.health", local=True)
def health(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """From this machine through the endpoint: /readyz, every master and worker Ready, the system
    pods running; with a deadline, and a report of what is not ready."""
    url = cluster.plan.api_endpoint.url
    yield Local(
        f"health through {url}: /readyz, nodes Ready, "
        f"pods in {', '.join(system_namespaces(cluster))} running"
        + (", CoreDNS among them" if settings(cluster).dns == "coredns" else "; DNS: not installed"),
        lambda: wait_healthy(cluster),
        report="health",
    )


class _NotYet(Exception):
    pass
