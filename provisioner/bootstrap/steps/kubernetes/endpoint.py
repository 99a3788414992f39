"""The API endpoint: with one master its address; with several a virtual address, held by
kube-vip (a static pod, ARP, leader election) or by keepalived with haproxy. Those two run as
systemd services from the distribution rather than static pods: they must hold the address
before kubeadm init (which reaches the API through it), they do not depend on the kubelet or on
pulling an image, and they do not trip join's check that the manifests directory is empty.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Run,
    Service,
    StepGen,
    Upload,
    step,
)
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.kubernetes.settings import (
    ADMIN_CONF,
    INIT_DONE,
    KUBE_VIP_MANIFEST,
    MANIFESTS_DIR,
    SUPER_ADMIN_CONF,
    apiserver_port,
    is_first_master,
    masters,
    settings,
    url_host,
)
from provisioner.errors import PreflightError, ProvisionerError
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

KUBE_VIP_VERSION = "v0.8.9"
KUBE_VIP_IMAGE = f"ghcr.io/kube-vip/kube-vip:{KUBE_VIP_VERSION}"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
NONLOCAL_BIND_FILE = "/etc/sysctl.d/99-vkp-nonlocal-bind.conf"


def vip_prefix(address: str) -> int:
    return 128 if ipaddress.ip_address(address).version == 6 else 32


# -- rendering (pure) ------------------------------------------------------------------------


def kube_vip_kubeconfig(cluster: Cluster, node: NodePlan, initialised: bool) -> str:
    # From 1.29 admin.conf is bound to cluster-admin by kubeadm during init, so the first
    # master's kube-vip needs super-admin.conf until then (kube-vip's documented workaround).
    if is_first_master(node, cluster) and not initialised and settings(cluster).minor >= 29:
        return SUPER_ADMIN_CONF
    return ADMIN_CONF


def render_kube_vip(node: NodePlan, cluster: Cluster, interface: str, *, initialised: bool) -> str:
    ep = cluster.plan.api_endpoint
    return render(
        "kubernetes/kube-vip.yaml.j2",
        cluster=cluster.plan.cluster,
        node_name=node.name,
        kube_vip_version=KUBE_VIP_VERSION,
        image=KUBE_VIP_IMAGE,
        vip=ep.address,
        vip_cidr=vip_prefix(ep.address),
        port=ep.port,
        interface=interface,
        kubeconfig=kube_vip_kubeconfig(cluster, node, initialised),
    )


def vrrp_router_id(cluster_name: str) -> int:
    # Stable per cluster, so two clusters on one network segment do not share a VRRP group.
    return 1 + int(hashlib.sha256(cluster_name.encode()).hexdigest(), 16) % 255


def render_haproxy(node: NodePlan, cluster: Cluster) -> str:
    ep = cluster.plan.api_endpoint
    return render(
        "kubernetes/haproxy.cfg.j2",
        cluster=cluster.plan.cluster,
        node_name=node.name,
        vip=ep.address,
        vip_bind=url_host(ep.address),
        port=ep.port,
        masters=[
            {"name": m.name, "endpoint": f"{url_host(m.address)}:{apiserver_port(cluster)}"}
            for m in masters(cluster)
        ],
    )


def render_keepalived(node: NodePlan, cluster: Cluster, interface: str) -> str:
    ep = cluster.plan.api_endpoint
    ms = masters(cluster)
    index = [m.name for m in ms].index(node.name)
    return render(
        "kubernetes/keepalived.conf.j2",
        cluster=cluster.plan.cluster,
        node_name=node.name,
        instance="VI_VKP_API",
        state="MASTER" if index == 0 else "BACKUP",
        interface=interface,
        router_id=vrrp_router_id(cluster.plan.cluster),
        priority=150 - index,
        node_address=node.address,
        peers=[m.address for m in ms if m.name != node.name],
        vip=ep.address,
        vip_cidr=vip_prefix(ep.address),
    )


def nonlocal_bind_sysctl(address: str) -> str:
    v6 = ipaddress.ip_address(address).version == 6
    return "net.ipv6.ip_nonlocal_bind" if v6 else "net.ipv4.ip_nonlocal_bind"


# -- the API endpoint ------------------------------------------------------------------------

_VIP_ANSWERS = r"""
vip=$1 port=$2 found=""
if command -v ping > /dev/null 2>&1 && ping -c 2 -W 1 -- "$vip" > /dev/null 2>&1; then found="$found ping"; fi
if timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$vip" "$port" 2> /dev/null; then found="$found tcp/$port"; fi
if ip neigh show to "$vip" 2> /dev/null | grep -q lladdr; then found="$found arp"; fi
echo "answers:${found:- none}"
"""


def route_probe(cluster: Cluster) -> Check:
    return Check(Cmd("ip", "-o", "route", "get", cluster.plan.api_endpoint.address))


def interface_from_route(text: str) -> str | None:
    m = re.search(r"\bdev\s+(\S+)", text)
    return m.group(1) if m else None


def endpoint_interface(node: NodePlan, cluster: Cluster, facts: Facts) -> str:
    r = facts.check(route_probe(cluster).cmd)
    iface = interface_from_route(r.stdout) if r.ok else None
    if iface is not None:
        return iface
    if not facts.known:
        return "(the interface of the route to the endpoint, found on the node)"
    raise ProvisionerError(
        f"{node.name}: no route to the API endpoint {cluster.plan.api_endpoint.address} "
        f"(`ip -o route get` said {r.stdout.strip() or r.stderr.strip() or r.exit_status!r}); "
        "the virtual address must be on the masters' own network"
    )


@step(
    "kubernetes.endpoint_preflight",
    probes=lambda node, cluster: [File(INIT_DONE), File(KUBE_VIP_MANIFEST), File(KEEPALIVED_CONF)],
)
def endpoint_preflight(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Before the first run claims it: the virtual API address must not answer already (ping,
    TCP on the port, ARP from the first master) and must lie outside the node pool."""
    ep = cluster.plan.api_endpoint
    if ep.mode == "direct":
        return
    if cluster.spec.network.in_pool(ep.address):
        raise PreflightError(
            [f"the API endpoint {ep.address} is inside network.pool: a node could be given it"]
        )
    ours = any(facts.file(p).kind == "file" for p in (INIT_DONE, KUBE_VIP_MANIFEST, KEEPALIVED_CONF))
    if ours:
        return  # held by this cluster's own kube-vip or keepalived since an earlier run
    r = yield Run(
        Cmd.shell(_VIP_ANSWERS, ep.address, str(ep.port)), changes=False, check=False, retry_safe=True
    )
    answers = r.stdout.strip().removeprefix("answers:").split()
    if facts.known and answers and answers != ["none"]:
        raise PreflightError(
            [
                f"the API endpoint {ep.address} already answers ({', '.join(answers)}), seen from "
                f"{node.name}: "
                "another machine uses it; pick a free address for network.api_endpoint.address"
            ]
        )


def _endpoint_probes(node: NodePlan, cluster: Cluster) -> list[File | Check | Service]:
    mode = cluster.plan.api_endpoint.mode
    if mode == "kube-vip":
        return [File(MANIFESTS_DIR), File(KUBE_VIP_MANIFEST), File(INIT_DONE), route_probe(cluster)]
    if mode == "haproxy-keepalived":
        sysctl = nonlocal_bind_sysctl(cluster.plan.api_endpoint.address)
        return [
            route_probe(cluster),
            _lb_missing_probe(),
            Check(Cmd("sysctl", "-n", sysctl)),
            File(NONLOCAL_BIND_FILE),
            File(HAPROXY_CFG),
            File(KEEPALIVED_CONF),
            Service("haproxy"),
            Service("keepalived"),
        ]
    return []


def _lb_missing_probe() -> Check:
    return Check(
        Cmd.shell('for c in "$@"; do command -v "$c" > /dev/null || echo "$c"; done', "haproxy", "keepalived")
    )


@step("kubernetes.endpoint", probes=_endpoint_probes)
def endpoint(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """What holds the API endpoint on this master: nothing (one master, its own address),
    kube-vip's static pod, or haproxy with keepalived as system services."""
    mode = cluster.plan.api_endpoint.mode
    if mode == "kube-vip":
        iface = endpoint_interface(node, cluster, facts)
        initialised = facts.file(INIT_DONE).kind == "file"
        yield EnsureDir(MANIFESTS_DIR, 0o755, "root:root")
        yield Upload(
            render_kube_vip(node, cluster, iface, initialised=initialised),
            KUBE_VIP_MANIFEST,
            0o600,
            "root:root",
        )
    elif mode == "haproxy-keepalived":
        yield from _haproxy_keepalived(node, cluster, facts)


def _haproxy_keepalived(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    iface = endpoint_interface(node, cluster, facts)
    address = cluster.plan.api_endpoint.address
    missing = facts.check(_lb_missing_probe().cmd).stdout.split()
    if missing or not facts.known:
        apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")
        yield Run(Cmd(*apt, "update", "-q"), retry_safe=True, timeout=600)
        yield Run(
            Cmd(*apt, "install", "-y", "-q", "--no-install-recommends", "haproxy", "keepalived"),
            retry_safe=True,
            timeout=900,
        )
    sysctl = nonlocal_bind_sysctl(address)
    yield Upload(
        render("kubernetes/nonlocal-bind.conf.j2", vip=address, sysctl=sysctl),
        NONLOCAL_BIND_FILE,
        0o644,
        "root:root",
    )
    if facts.check(Cmd("sysctl", "-n", sysctl)).stdout.strip() != "1":
        yield Run(Cmd("sysctl", "-w", f"{sysctl}=1"), retry_safe=True)
    for service, path, text in (
        ("haproxy", HAPROXY_CFG, render_haproxy(node, cluster)),
        ("keepalived", KEEPALIVED_CONF, render_keepalived(node, cluster, iface)),
    ):
        changed = yield Upload(text, path, 0o644, "root:root")
        svc = facts.service(service)
        if not svc.is_enabled:
            yield Run(Cmd("systemctl", "enable", service), retry_safe=True)
        if not svc.is_active:
            yield Run(Cmd("systemctl", "restart", service), timeout=120)
        elif changed:
            # reload keeps established API connections through haproxy; keepalived re-reads too.
            yield Run(Cmd("systemctl", "reload", service), timeout=120)
