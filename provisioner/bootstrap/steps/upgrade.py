"""`vkp upgrade`'s steps (playbooks/upgrade.yaml): the cluster checked, then one node at a time
drained, given the new version's binaries and images, upgraded by kubeadm, its kubelet
restarted, and given back to the scheduler once it is Ready again.

The run's spec is the saved one with kubernetes.version set to the version asked for
(day2/upgrade.py), so kubernetes.binaries and kubernetes.images install that version's verified
artifacts from the same source create-cluster used. The run parameters are version (the one
asked for, X.Y.Z), from (the cluster's version when the upgrade started) and drain-timeout
(seconds kubectl may take to evict a node's pods).

Cordon, drain and uncordon run on the first master with the admin kubeconfig kubeadm wrote
there, as kubectl would be run by hand (like kubernetes.drain): kubectl evicts through the
eviction API, so a PodDisruptionBudget holds a pod where it is, and what kubectl refuses is
never forced. They go through a connection of their own to that master, since the step runs on
the node being upgraded.

kubeadm, on the first master: `kubeadm upgrade apply vX.Y.Z --yes --etcd-upgrade=false` (etcd
is external: vkp's). `kubeadm upgrade plan` is not run: with a version given it needs no
internet (an offline version getter) but decides nothing vkp has not checked already (the
version range and kubeadm's skew rule, the artifacts), and `apply` enforces the same version
policy itself before it changes anything; without a version, plan asks dl.k8s.io, which nodes
may not reach. kubeadm 1.20's `upgrade apply` pre-pulls the control-plane images through crictl
and has no phase to skip that, so a site that sets kubernetes.node.skip_preflight (no crictl)
re-applies its version with `kubeadm upgrade node --skip-phases=preflight` on the first master
too: the cluster's kubeadm configuration already holds that version, and `upgrade node` renders
the master's control plane from it. A change of version there is refused before anything runs
(day2/upgrade.py). `upgrade apply` of kubeadm 1.20 installs CoreDNS whatever init skipped; with
kubernetes.dns: none vkp deletes what it added again, right after.

Other masters and workers: `kubeadm upgrade node` (on masters it upgrades the control plane's
static pods; on every node it writes the kubelet configuration of the new version).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from provisioner.bootstrap import etcd_client, kube_api
from provisioner.bootstrap.engine import Cluster, Facts, Local, Restart, Run, StepGen, Warn, run_param, step
from provisioner.bootstrap.steps.etcd import client_endpoints
from provisioner.bootstrap.steps.health import check_health
from provisioner.bootstrap.steps.kubernetes.control_plane import KUBEADM_TIMEOUT, others_ready, wait_ready
from provisioner.bootstrap.steps.kubernetes.settings import (
    KUBEADM,
    POLL,
    is_first_master,
    kubectl_cmd,
    masters,
    node_api_url,
    settings,
)
from provisioner.errors import CommandFailed, ProvisionerError, Timeout
from provisioner.plan import NodePlan
from provisioner.retry import retry_call
from provisioner.spec import ClusterSpec
from provisioner.ssh.commands import Cmd, Result, sudo

NODE_READY_DEADLINE = 300.0  # a kubelet registers and reports Ready within a minute of a restart
# What kubeadm 1.20's upgrade apply adds for CoreDNS (phases/addons/dns), whatever init skipped.
COREDNS_OBJECTS = (
    "deployment/coredns",
    "configmap/coredns",
    "service/kube-dns",
    "serviceaccount/coredns",
    "clusterrole/system:coredns",
    "clusterrolebinding/system:coredns",
)


class NotHealthy(ProvisionerError):
    """The cluster is not healthy enough to be upgraded one node at a time."""


# -- the run's parameters ---------------------------------------------------------------------


def target_version(cluster: Cluster) -> str:
    """The version the run installs (X.Y.Z); the run's spec must say the same."""
    version = run_param(cluster, "version", str)
    if cluster.spec.kubernetes.version != version:
        raise ProvisionerError(
            f"the run upgrades to {version} but its spec says kubernetes.version "
            f"{cluster.spec.kubernetes.version}: run it through day2/upgrade.py, which sets both"
        )
    return version


def from_version(cluster: Cluster) -> str:
    return run_param(cluster, "from", str)


def drain_timeout(cluster: Cluster) -> int:
    return run_param(cluster, "drain-timeout", int)


def applies_with_upgrade_node(spec: ClusterSpec) -> bool:
    """Whether the first master re-applies with `kubeadm upgrade node` (see the module doc)."""
    return spec.kubernetes.node.skip_preflight


# -- kubectl on the first master ---------------------------------------------------------------


def first_master(cluster: Cluster) -> NodePlan:
    return masters(cluster)[0]


def on_first_master(cluster: Cluster, cmd: Cmd, timeout: float) -> Result:
    """cmd run as root on the first master, over a connection of its own (closed after)."""
    # Late: phases imports the step modules.
    from provisioner.bootstrap.phases import connect_all

    if cluster.state is None:
        raise ProvisionerError("kubectl on the first master needs the cluster's state (its SSH key)")
    master = first_master(cluster)
    conns = connect_all(cluster.spec, cluster.state, [master])
    try:
        conn = conns[master.name]
        return conn.run(sudo(cmd) if conn.become else cmd, check=False, timeout=timeout)
    finally:
        for c in conns.values():
            c.close()


def drain_cmd(name: str, seconds: int) -> Cmd:
    # As kubernetes.drain: --ignore-daemonsets (their pods come back anyway), emptyDir data goes.
    # No --force and no --disable-eviction: a pod no controller recreates and a budget that
    # allows no disruption stop the drain.
    return kubectl_cmd(
        "drain", name, "--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={seconds}s"
    )


def uncordon_cmd(name: str) -> Cmd:
    return kubectl_cmd("uncordon", name)


def _drain(cluster: Cluster, node: NodePlan) -> str:
    seconds = drain_timeout(cluster)
    cmd = drain_cmd(node.name, seconds)
    res = on_first_master(cluster, cmd, seconds + 60.0)
    if not res.ok:
        failed = CommandFailed(
            first_master(cluster).name, cmd.masked(), res.exit_status, res.stdout, res.stderr
        )
        # kubectl's own words (the pod a disruption budget protects, a pod without a
        # controller) stay in the message; vkp forced nothing.
        failed.message = f"draining {node.name} failed: {failed.message}"
        failed.hint = (
            f"nothing was forced, and {node.name} stays cordoned: let the pods kubectl names be "
            "evicted (scale the workload up so its PodDisruptionBudget allows one disruption, or "
            "delete a pod that has no controller), then run the same `vkp upgrade` again: it "
            f"resumes at {node.name}'s drain (`kubectl uncordon {node.name}` gives the node back "
            "without upgrading it)"
        )
        raise failed
    return "drained"


def _uncordon(cluster: Cluster, node: NodePlan) -> str:
    cmd = uncordon_cmd(node.name)
    res = on_first_master(cluster, cmd, 120.0)
    if not res.ok:
        raise CommandFailed(first_master(cluster).name, cmd.masked(), res.exit_status, res.stdout, res.stderr)
    return "schedulable"


# -- waits from this machine ---------------------------------------------------------------------


def _ready(item: dict[str, Any]) -> tuple[bool, str]:
    conds = (item.get("status") or {}).get("conditions") or []
    cond = next((c for c in conds if c.get("type") == "Ready"), None)
    if cond is not None and cond.get("status") == "True":
        return True, "Ready"
    return False, str((cond or {}).get("message") or (cond or {}).get("reason") or "no Ready condition yet")


def kubelet_version(item: dict[str, Any]) -> str:
    return str(((item.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or "")


def wait_node(
    cluster: Cluster, name: str, version: str, deadline: float = NODE_READY_DEADLINE
) -> dict[str, Any]:
    """Poll the node through the endpoint until it is Ready with a kubelet of version."""
    url = cluster.plan.api_endpoint.url
    last = ["no answer yet"]

    def attempt() -> dict[str, Any]:
        try:
            item = kube_api.client(cluster.pki, url).get(f"/api/v1/nodes/{name}")
        except kube_api.KubeAPIError as exc:
            last[0] = exc.message
            raise _NotYet() from None
        ready, why = _ready(item)
        have = kubelet_version(item)
        if not ready:
            last[0] = f"NotReady: {why}"
            raise _NotYet()
        if have != f"v{version}":
            last[0] = f"Ready, but its kubelet reports {have or 'no version'}"
            raise _NotYet()
        return {"ready": True, "kubelet": have}

    try:
        return retry_call(
            attempt,
            retry_on=lambda e: isinstance(e, _NotYet),
            deadline=deadline,
            initial=1.0,
            maximum=POLL,
            what=f"node {name} Ready with kubelet v{version}",
        )
    except _NotYet:
        raise Timeout(
            f"node {name} is not Ready with kubelet v{version} after {deadline:.0f}s: {last[0]}",
            hint=f"look at its kubelet (`vkp ssh CLUSTER {name} -- sudo journalctl -u kubelet`); the "
            "same `vkp upgrade` run again resumes here",
        ) from None


class _NotYet(Exception):
    pass


def cluster_ready(cluster: Cluster) -> dict[str, Any]:
    """Before anything changes: etcd healthy (a write read back), every master's /readyz, and
    through the endpoint every master and worker Ready with the system pods running. NotHealthy
    naming what is not. Reports each node's kubelet version and which are cordoned."""
    expected = [n.name for n in cluster.plan.by_role("etcd")]
    try:
        etcd = etcd_client.check_cluster(client_endpoints(cluster), expected, cluster.pki)  # type: ignore[arg-type]
    except ProvisionerError as exc:
        raise NotHealthy(
            f"etcd is not healthy, so nothing was upgraded: {exc.message}",
            hint="bring the named members back (`vkp ssh CLUSTER MEMBER -- sudo journalctl -u etcd`), "
            "then run the upgrade again",
        ) from None
    problems: list[str] = []
    for m in masters(cluster):
        ok, detail = kube_api.client(cluster.pki, node_api_url(m, cluster)).readyz()
        if not ok:
            problems.append(f"{m.name}'s API server: /readyz: {detail.splitlines()[-1] if detail else '?'}")
    try:
        health = check_health(cluster)
        problems += health.problems
    except kube_api.KubeAPIError as exc:
        problems.append(exc.message)
    if problems:
        raise NotHealthy(
            "the cluster is not healthy, so nothing was upgraded:\n  " + "\n  ".join(problems),
            hint="an upgrade drains one node at a time and needs the others to take its pods: fix "
            "what is named (`vkp describe-cluster`, `kubectl describe node`), then run it again",
        )
    items = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url).get("/api/v1/nodes").get("items", [])
    nodes = {
        str(i.get("metadata", {}).get("name")): {
            "kubelet": kubelet_version(i),
            "cordoned": bool((i.get("spec") or {}).get("unschedulable")),
        }
        for i in items
    }
    return {"etcd": etcd.to_dict(), "nodes": nodes}


# -- steps ------------------------------------------------------------------------------------


@step("upgrade.check", local=True)
def check(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """From this machine, before anything changes: etcd healthy, every API server ready, every
    master and worker Ready, the system pods running."""
    version = target_version(cluster)
    yield Local(
        f"before upgrading to v{version}: every etcd member healthy, every master's /readyz, "
        "every master and worker Ready, the system pods running",
        lambda: cluster_ready(cluster),
        report="check",
    )


@step("upgrade.drain")
def drain(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Cordon the node and evict its pods (kubectl drain on the first master, PodDisruptionBudgets
    respected, nothing forced); a node drained already drains again at once."""
    if node.role == "master" and len(masters(cluster)) > 1:
        yield Local(
            f"the API servers other than {node.name}'s answer /readyz",
            lambda: others_ready(node, cluster, "its upgrade"),
        )
    cmd = drain_cmd(node.name, drain_timeout(cluster))
    yield Local(
        f"on {first_master(cluster).name}: {cmd.masked()}", lambda: _drain(cluster, node), changes=True
    )


def upgrade_command(node: NodePlan, cluster: Cluster) -> Cmd:
    version = target_version(cluster)
    ignored = cluster.spec.kubernetes.node.ignore_preflight_errors
    ignore = [f"--ignore-preflight-errors={','.join(ignored)}"] if ignored else []
    skip = ["--skip-phases=preflight"] if cluster.spec.kubernetes.node.skip_preflight else []
    if is_first_master(node, cluster) and not applies_with_upgrade_node(cluster.spec):
        return Cmd(KUBEADM, "upgrade", "apply", f"v{version}", "--yes", "--etcd-upgrade=false", *ignore)
    return Cmd(KUBEADM, "upgrade", "node", *skip, *ignore)


@step("upgrade.kubeadm")
def kubeadm(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm upgrade apply on the first master, kubeadm upgrade node on every other node."""
    version = target_version(cluster)
    first = is_first_master(node, cluster)
    if first and applies_with_upgrade_node(cluster.spec):
        if version != from_version(cluster):
            raise ProvisionerError(
                f"kubernetes.node.skip_preflight is set: kubeadm upgrade apply (which pre-pulls through "
                f"crictl) cannot run on {node.name}, so the cluster stays at {from_version(cluster)}",
                hint="install crictl on the masters and unset kubernetes.node.skip_preflight, then "
                "run it again",
            )
        yield Warn(
            f"kubernetes.node.skip_preflight: `kubeadm upgrade node` re-applies v{version} on {node.name} "
            "(kubeadm 1.20's upgrade apply pre-pulls through crictl and cannot skip it)"
        )
    yield Run(upgrade_command(node, cluster), timeout=KUBEADM_TIMEOUT)
    if first and not applies_with_upgrade_node(cluster.spec) and settings(cluster).dns == "none":
        # kubeadm 1.20's apply ensures CoreDNS whatever init skipped (kubernetes.dns: none).
        yield Run(kubectl_cmd("delete", "-n", "kube-system", *COREDNS_OBJECTS, "--ignore-not-found"))


@step("upgrade.kubelet")
def kubelet(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The kubelet restarted on its new binary and configuration; a master's API server ready,
    then the node Ready with the new version's kubelet."""
    version = target_version(cluster)
    restarted = yield Restart("kubelet", always=True)
    if facts.known and not restarted:
        # It was not running: start it, which is what the restart was for.
        yield Run(Cmd("systemctl", "start", "kubelet"), retry_safe=True)
    if node.role == "master":
        url = node_api_url(node, cluster)
        yield Local(
            f"wait for {url}/readyz ({node.name}'s API server)",
            lambda: wait_ready(url, cluster, f"{node.name}'s API server after its upgrade"),
        )
    yield Local(
        f"wait for node {node.name} Ready with kubelet v{version}",
        lambda: wait_node(cluster, node.name, version),
        report=f"upgraded:{node.name}",
    )


@step("upgrade.uncordon")
def uncordon(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The node given back to the scheduler (kubectl uncordon on the first master)."""
    cmd = uncordon_cmd(node.name)
    yield Local(
        f"on {first_master(cluster).name}: {cmd.masked()}", lambda: _uncordon(cluster, node), changes=True
    )
