"""kubernetes.cni: bridge. No network add-on at all, only the standard CNI plugins
(containernetworking/plugins, kubernetes.cni_plugins) and routes. Each node puts its pods on a
bridge (cni0) with addresses from the pod CIDR Kubernetes gave it (spec.podCIDR: the controller
manager splits the cluster's pod CIDR into one per node, since kubeadm sets podSubnet), and
every node routes each other node's pod CIDR to that node's address. Pods then reach each other
across nodes by their own addresses, with nothing but the kernel's forwarding in between; it
needs the nodes on one network segment (the routes' next hops are the nodes' own addresses),
which is how vkp lays them out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap import kube_api
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Probe,
    Run,
    Service,
    StepGen,
    Upload,
    step,
)
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import Release, arch_of, install_release, release_probes
from provisioner.bootstrap.steps.cni.base import CNI
from provisioner.bootstrap.steps.containerd import CNI_BIN_DIR
from provisioner.bootstrap.steps.kubernetes.settings import POLL, kubelet_nodes, settings
from provisioner.errors import ProvisionerError, Timeout
from provisioner.plan import NodePlan
from provisioner.retry import retry_call
from provisioner.ssh.commands import Cmd

BRIDGE = CNI("bridge", pinned=None)  # no add-on: the steps below are the network

CNI_CONF_DIR = "/etc/cni/net.d"
BRIDGE_CONFLIST = f"{CNI_CONF_DIR}/10-vkp-bridge.conflist"
BRIDGE_IF = "cni0"
ROUTES_SERVICE = "vkp-pod-routes.service"
ROUTES_UNIT = f"/etc/systemd/system/{ROUTES_SERVICE}"
ROUTES = Check(Cmd("ip", "-4", "route", "show"))
POD_CIDR_DEADLINE = 120.0  # the controller manager allocates a node's pod CIDR as it registers
# What the installed plugins came from (etcd's release record has the same form).
CNI_PLUGINS_RELEASE_FILE = "/var/lib/vkp/cni-plugins-release"
CNI_PLUGINS_RELEASE = Check(Cmd("cat", CNI_PLUGINS_RELEASE_FILE))


def is_bridge(cluster: Cluster) -> bool:
    return cluster.spec.kubernetes.cni == BRIDGE.name


# -- kubernetes.cni_plugins ------------------------------------------------------------------


def _cni_plugins_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    if not is_bridge(cluster):
        return []
    return release_probes(CNI_BIN_DIR, CNI_PLUGINS_RELEASE, art.CNI_PLUGINS)


@step("kubernetes.cni_plugins", probes=_cni_plugins_probes)
def cni_plugins(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """With kubernetes.cni: bridge, the standard CNI plugins it runs on (bridge, host-local,
    portmap, loopback) in /opt/cni/bin, from the release tarball verified against its published
    .sha256; nothing for Calico or Flannel, which bring their own."""
    if not is_bridge(cluster):
        return
    k8s = cluster.spec.kubernetes
    version = k8s.cni_plugins_version
    arch = arch_of(facts)
    rel = Release(
        art.cni_plugins_source(k8s),
        version,
        art.cni_plugins_tarball(version, arch),
        tuple(art.cni_plugins_members()),
        CNI_BIN_DIR,
        CNI_PLUGINS_RELEASE,
        make_dir=True,
    )
    yield from install_release(node, facts, rel, arch)


# -- kubernetes.cni_bridge -------------------------------------------------------------------


class _NoCIDR(Exception):
    pass


def pod_cidrs(
    cluster: Cluster, wait_for: Sequence[str], deadline: float = POD_CIDR_DEADLINE
) -> dict[str, str]:
    """{node name: spec.podCIDR} of the cluster's node objects, read through the API from this
    machine once every node in wait_for has one; Timeout naming those without one."""
    last: dict[str, str] = {}

    def attempt() -> dict[str, str]:
        api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
        doc = api.get("/api/v1/nodes")
        got = {
            str(item.get("metadata", {}).get("name")): str(cidr)
            for item in doc.get("items", [])
            if (cidr := (item.get("spec") or {}).get("podCIDR"))
        }
        last.clear()
        last.update(got)
        if any(n not in got for n in wait_for):
            raise _NoCIDR()
        return got

    try:
        return retry_call(
            attempt,
            retry_on=lambda e: isinstance(e, _NoCIDR | kube_api.KubeAPIError),
            deadline=deadline,
            initial=1.0,
            maximum=POLL,
            what="a pod CIDR for every node",
        )
    except _NoCIDR:
        missing = [n for n in wait_for if n not in last]
        raise Timeout(
            f"no pod CIDR (spec.podCIDR) for node {', '.join(missing)} after {deadline:.0f}s",
            hint="the controller manager gives each node one from the cluster's pod CIDR "
            "(kubeadm's networking.podSubnet); see its log on the first master, and whether the node "
            "is registered (`kubectl get nodes`)",
        ) from None


def _pod_network(cluster: Cluster) -> ipaddress.IPv4Network:
    net = ipaddress.ip_network(settings(cluster).pod_cidr, strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ProvisionerError(
            f"kubernetes.cni: bridge routes IPv4 pod networks; kubernetes.pod_cidr is {net}",
            hint="use calico for IPv6 pod networks",
        )
    return net


def render_bridge_conflist(subnet: str) -> str:
    return render("cni/bridge/cni-bridge.conflist.j2", name="vkp", bridge=BRIDGE_IF, subnet=subnet)


def _bridge_probes(node: NodePlan, cluster: Cluster) -> list[File]:
    return [File(CNI_CONF_DIR), File(BRIDGE_CONFLIST)] if is_bridge(cluster) else []


@step("kubernetes.cni_bridge", probes=_bridge_probes)
def cni_bridge(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """With kubernetes.cni: bridge, this node's CNI configuration: a bridge (cni0) with pod
    addresses from the node's own pod CIDR, as Kubernetes allocated it (waits for it, 120 s)."""
    if not is_bridge(cluster):
        return
    _pod_network(cluster)
    cidrs = yield Local(
        f"{node.name}'s pod CIDR (spec.podCIDR of its node object, waiting up to {POD_CIDR_DEADLINE:.0f}s)",
        lambda: pod_cidrs(cluster, [node.name]),
    )
    subnet = cidrs[node.name] if cidrs else f"(the pod CIDR of {node.name}, read from the API)"
    yield EnsureDir(CNI_CONF_DIR, 0o755, "root:root")
    # containerd watches the directory: the node turns Ready once the file is there.
    yield Upload(render_bridge_conflist(subnet), BRIDGE_CONFLIST, 0o644, "root:root")


def wanted_routes(node: NodePlan, cluster: Cluster, cidrs: dict[str, str] | None) -> list[dict[str, str]]:
    """A route to each other node's pod CIDR via that node's address (placeholders in a dry run)."""
    out = []
    for other in kubelet_nodes(cluster):
        if other.name == node.name:
            continue
        if cidrs is None:
            cidr = f"(pod CIDR of {other.name})"
        else:
            cidr = str(ipaddress.ip_network(cidrs[other.name], strict=False))
        out.append({"node": other.name, "cidr": cidr, "via": other.address})
    return out


def routes_via(text: str) -> dict[str, str]:
    """{destination: next hop} of the gateway routes in `ip -4 route show` output."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] == "default" or "via" not in parts[1:-1]:
            continue
        try:
            dst = str(ipaddress.ip_network(parts[0], strict=False))
        except ValueError:
            continue  # a route type first (unreachable, blackhole...): not one of vkp's
        out[dst] = parts[parts.index("via") + 1]
    return out


def render_routes_unit(cluster: Cluster, routes: list[dict[str, str]]) -> str:
    return render("cni/bridge/vkp-pod-routes.service.j2", cluster=cluster.plan.cluster, routes=routes)


def _routes_probes(node: NodePlan, cluster: Cluster) -> list[Any]:
    if not is_bridge(cluster):
        return []
    return [File(ROUTES_UNIT), Service(ROUTES_SERVICE), ROUTES]


@step("kubernetes.pod_routes", probes=_routes_probes)
def pod_routes(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """With kubernetes.cni: bridge, a route to every other node's pod CIDR via that node's
    address: applied now, kept across reboots by vkp-pod-routes.service, and routes into the pod
    CIDR towards nodes that are gone (a resize shrank the cluster) removed."""
    if not is_bridge(cluster):
        return
    pod_net = _pod_network(cluster)
    names = [n.name for n in kubelet_nodes(cluster)]
    cidrs = yield Local(
        f"pod CIDRs of {', '.join(names)} (spec.podCIDR, waiting up to {POD_CIDR_DEADLINE:.0f}s)",
        lambda: pod_cidrs(cluster, names),
    )
    routes = wanted_routes(node, cluster, cidrs)
    svc = facts.service(ROUTES_SERVICE)
    changed = yield Upload(render_routes_unit(cluster, routes), ROUTES_UNIT, 0o644, "root:root")
    if changed or svc.need_reload:
        yield Run(Cmd("systemctl", "daemon-reload"), retry_safe=True)
    if not svc.is_enabled:
        yield Run(Cmd("systemctl", "enable", ROUTES_SERVICE), retry_safe=True)
    present = routes_via(facts.check(ROUTES.cmd).stdout) if facts.known else {}
    for r in routes:
        if present.get(r["cidr"]) != r["via"]:
            yield Run(Cmd("ip", "route", "replace", r["cidr"], "via", r["via"]), retry_safe=True)
    wanted = {r["cidr"] for r in routes}
    for dst, via in present.items():
        net = ipaddress.ip_network(dst)
        if dst not in wanted and isinstance(net, ipaddress.IPv4Network) and net.subnet_of(pod_net):
            yield Run(Cmd("ip", "route", "del", dst, "via", via), retry_safe=True)
