"""Day-2 steps of vkp repair (playbooks/repair.yaml): what the cluster keeps about a node that is
replaced in place, taken out before its new VM exists and put back for the new one.

All of them run from this machine (local steps), since the node being repaired may not answer:

- kubernetes.forget_node: its Node object deleted (it may be NotReady), and for a master its
  entry in kubeadm's ClusterStatus (the kubeadm-config ConfigMap of v1.20), so the new one
  joins as a new node of the same name. With the only master, the API is down with it: there
  is nothing to forget, and kubeadm init on the new VM brings the API back on the same etcd.
- etcd.remove_member: refused unless the other members keep quorum without it; the old
  member's id is written in the repair record before it is removed, so a re-run never takes
  the new member (same name, same peer URL) for the old one.
- etcd.add_member: the new member added with its peer URL before it starts with
  initial-cluster-state existing (steps/etcd.py renders that for the repaired node).
- kubernetes.rejoin_master: kubeadm init when it is the only master (its certificates are
  vkp's, its state is in the external etcd, so the cluster comes back as it was), else a
  control-plane join like any other master's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.engine import Cluster, Facts, Local, StepGen, Warn, run_param, step
from provisioner.bootstrap.etcd_client import EtcdClient, EtcdError, Member
from provisioner.bootstrap.steps.etcd import CLIENT_PORT, PEER_PORT, url
from provisioner.bootstrap.steps.kubernetes import control_plane
from provisioner.bootstrap.steps.kubernetes.settings import masters
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.plan import NodePlan

KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"


class QuorumAtRisk(ProvisionerError):
    """Replacing the member would leave etcd without a quorum; nothing was changed."""

    exit_code = ExitCode.PREFLIGHT


def repaired(cluster: Cluster) -> str:
    """The run's parameter repair: the name of the node being replaced."""
    return run_param(cluster, "repair", str)


def _client(cluster: Cluster, node: NodePlan) -> EtcdClient:
    pki: Any = cluster.pki
    return EtcdClient(
        url(node.address, CLIENT_PORT),
        pki.path("etcd-ca"),
        pki.path("vkp-etcd-client"),
        pki.key_path("vkp-etcd-client"),
    )


def healthy_peers(cluster: Cluster, node: NodePlan) -> tuple[list[Member], EtcdClient]:
    """The members as the healthy others see them, and a client of one of them, if the members
    other than node keep quorum on their own; QuorumAtRisk naming each unhealthy one otherwise.

    Quorum is counted over the member list as it is (the old member included while it is
    listed): the new member is added before it starts, so for that moment too the others alone
    must be a majority. With 3 members, both others must be healthy.
    """
    others = [n for n in cluster.plan.by_role("etcd") if n.name != node.name]
    healthy: list[EtcdClient] = []
    problems: list[str] = []
    for other in others:
        client = _client(cluster, other)
        try:
            if client.health():
                healthy.append(client)
                continue
            problems.append(f"{other.name}: reports unhealthy (no leader or not serving)")
        except EtcdError as exc:
            problems.append(f"{other.name}: {exc.message}")
    members: list[Member] = []
    if healthy:
        members = healthy[0].members()
    need = len(members) // 2 + 1 if members else len(others) // 2 + 1
    if len(healthy) < need or not healthy:
        raise QuorumAtRisk(
            f"replacing etcd member {node.name} needs {need} healthy other member(s) to keep quorum; "
            f"{len(healthy)} of {len(others)} are healthy:\n  " + "\n  ".join(problems),
            hint="bring the unhealthy members back first (vkp repair each, one at a time); "
            "nothing was changed",
        )
    return members, healthy[0]


def _old_member(members: Sequence[Member], node: NodePlan) -> Member | None:
    peer = url(node.address, PEER_PORT)
    for m in members:
        if m.name == node.name or peer in m.peer_urls:
            return m
    return None


@step("etcd.remove_member", local=True)
def remove_member(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """With the other members healthy enough to keep quorum: the old member of the node being
    repaired removed by its id (recorded first; a re-run removes that id only, if still there)."""
    if not nodes:
        return
    node = nodes[0]
    state = cluster.state

    def remove() -> str:
        members, client = healthy_peers(cluster, node)
        record = (state.repair(node.name) if state is not None else None) or {}
        if "etcd_member_id" in record:
            # Decided by an earlier attempt: that one member, never one found by name now,
            # which may be the new member this repair added.
            member_id = record["etcd_member_id"]
        else:
            old = _old_member(members, node)
            member_id = old.id if old is not None else None
            if state is not None:
                state.update_repair(node.name, etcd_member_id=member_id)
        if member_id is None or member_id not in {m.id for m in members}:
            return f"no member of {node.name} to remove"
        client.member_remove(member_id)
        return f"member {member_id} ({node.name}) removed"

    yield Local(
        f"etcd: check that the members other than {node.name} keep quorum, then remove "
        f"{node.name}'s member by its id",
        remove,
        changes=True,
    )


@step("etcd.add_member", local=True)
def add_member(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """The new member of the node being repaired added with its peer URL (once: a member with
    that URL already listed is it), before it starts and joins the running cluster."""
    if not nodes:
        return
    node = nodes[0]
    peer = url(node.address, PEER_PORT)

    def add() -> str:
        members, client = healthy_peers(cluster, node)
        if cluster.state is not None:
            cluster.state.mark_etcd_rejoined(node.name)
        if any(peer in m.peer_urls for m in members):
            return f"member with {peer} already added"
        added = client.member_add(peer)
        return f"member {added.id} added at {peer}"

    yield Local(f"etcd: add a member for {node.name} at {peer} (joins with initial-cluster-state existing)",
                add, changes=True)  # fmt: skip


@step("kubernetes.forget_node", local=True)
def forget_node(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """The repaired node's Node object deleted and, for a master, its API endpoint taken out of
    kubeadm's ClusterStatus; nothing to do with the only master down (kubeadm init redoes both)."""
    if not nodes:
        return
    node = nodes[0]
    api_url = cluster.plan.api_endpoint.url
    sole_master = node.role == "master" and len(masters(cluster)) == 1
    if sole_master:
        ready = yield Local(f"is {api_url} up without {node.name}?", lambda: _api(cluster).readyz()[0])
        if ready is False:
            yield Warn(
                f"the API server is down with {node.name}, the only master: kubeadm init on the new VM "
                "brings it back with the cluster's state from etcd"
            )
            return
    yield Local(
        f"delete node {node.name} from Kubernetes (if it is there)",
        lambda: _api(cluster).delete(f"/api/v1/nodes/{node.name}"),
        changes=True,
    )
    if node.role == "master":
        yield Local(
            f"remove {node.name}'s API endpoint from kubeadm's ClusterStatus (kubeadm-config)",
            lambda: forget_api_endpoint(_api(cluster), node.name),
            changes=True,
        )


def _api(cluster: Cluster) -> kube_api.KubeAPI:
    return kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)


def forget_api_endpoint(api: kube_api.KubeAPI, name: str) -> bool:
    """Take name out of ClusterStatus.apiEndpoints in kubeadm-config; False if it was not there.

    The write carries the resourceVersion read, so a concurrent change makes it fail (409)
    rather than be overwritten.
    """
    cm = api.find(KUBEADM_CONFIG)
    if cm is None:
        return False
    status = yaml.safe_load((cm.get("data") or {}).get("ClusterStatus") or "") or {}
    endpoints = status.get("apiEndpoints") or {}
    if name not in endpoints:
        return False
    del endpoints[name]
    status["apiEndpoints"] = endpoints
    cm["data"]["ClusterStatus"] = yaml.safe_dump(status, sort_keys=False)
    code, data = api.request("PUT", KUBEADM_CONFIG, cm)
    if code != 200:
        raise kube_api.KubeAPIError(f"PUT {api.server}{KUBEADM_CONFIG}: HTTP {code}: {str(data)[:300]}")
    return True


def _rejoin_probes(node: NodePlan, cluster: Cluster) -> list[Any]:
    if len(masters(cluster)) == 1:
        return control_plane._init_probes(node, cluster)
    return control_plane._join_probes(node, cluster)


@step("kubernetes.rejoin_master", probes=_rejoin_probes)
def rejoin_master(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The repaired master back in the control plane: kubeadm init when it is the only master
    (same CAs, the cluster's state in the external etcd), else a control-plane join."""
    if node.role != "master":
        raise ProvisionerError(f"kubernetes.rejoin_master runs on masters, not on {node.name}")
    if len(masters(cluster)) == 1:
        yield from control_plane.init(node, cluster, facts)
    else:
        yield from control_plane._join(node, cluster, facts)
