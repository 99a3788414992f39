"""What every Kubernetes step reads: where things are on a node, the settings the spec gives,
and the cluster's shape (masters, the endpoint, the API servers' port).

kubeadm's configuration API follows the version: v1beta4 from 1.31 (where it became the current
one), v1beta3 from 1.22 to 1.30, v1beta2 for 1.20 and 1.21 (the embedded lab's). Whatever else
differs by minor is a table keyed by minor, here or in the spec, never a separate flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.bootstrap.engine import Cluster
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan
from provisioner.spec import k8s_version_problem
from provisioner.ssh.commands import Cmd

# -- where things are ------------------------------------------------------------------------

BIN_DIR = "/usr/local/bin"  # where kubernetes.binaries installs them
KUBEADM = f"{BIN_DIR}/kubeadm"
KUBECTL = f"{BIN_DIR}/kubectl"
KUBELET = f"{BIN_DIR}/kubelet"
K8S_DIR = "/etc/kubernetes"
PKI_DIR = f"{K8S_DIR}/pki"
MANIFESTS_DIR = f"{K8S_DIR}/manifests"
ADMIN_CONF = f"{K8S_DIR}/admin.conf"
SUPER_ADMIN_CONF = f"{K8S_DIR}/super-admin.conf"
KUBELET_CONF = f"{K8S_DIR}/kubelet.conf"
BOOTSTRAP_KUBELET_CONF = f"{K8S_DIR}/bootstrap-kubelet.conf"
APISERVER_MANIFEST = f"{MANIFESTS_DIR}/kube-apiserver.yaml"
KUBE_VIP_MANIFEST = f"{MANIFESTS_DIR}/kube-vip.yaml"
VKP_DIR = f"{K8S_DIR}/vkp"  # vkp's own files on a node: 0700, root only
INIT_CONFIG = f"{VKP_DIR}/kubeadm-init.yaml"
JOIN_CONFIG = f"{VKP_DIR}/kubeadm-join.yaml"
INIT_DONE = f"{VKP_DIR}/init.done"
JOIN_DONE = f"{VKP_DIR}/join.done"
KUBELET_UNIT = "/etc/systemd/system/kubelet.service"
KUBELET_DROPIN = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
APISERVER_PORT = 6443
# The API servers' own port on masters whose haproxy serves the endpoint on 6443.
APISERVER_PORT_BEHIND_HAPROXY = 6444

POLL = 3.0  # between two looks at the API while waiting for it

# kubeadm.k8s.io config API by minor: v1beta2 (the newest 1.20 and 1.21 have), v1beta3 from
# 1.22, v1beta4 from 1.31 (where it became the current one). The templates are checked against
# kubeadm's types for every minor the spec accepts (spec.K8S_MINORS), and for no other.
V1BETA3_FROM = 22
V1BETA4_FROM = 31
# From 1.27 the kubelet takes the CRI endpoint from its config; before, kubeadm passes
# nodeRegistration.criSocket as a flag (kubeadm-flags.env).
RUNTIME_ENDPOINT_IN_CONFIG_FROM = 27


# -- settings from the spec ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    version: str
    minor: int
    pod_cidr: str
    service_cidr: str
    cni: str
    image_repository: str | None
    artifact_source: str
    vsphere: bool
    dns: str = "coredns"


def settings(cluster: Cluster) -> Settings:
    """The Kubernetes settings the steps read; the version as the spec parsed it."""
    k = cluster.spec.kubernetes
    # A spec made by hand (tests, bench) may skip validate(); the steps must still refuse it.
    if (why := k8s_version_problem(k.version)) is not None:
        raise ProvisionerError(f"kubernetes.version: {why}")
    return Settings(
        version=k.version,
        minor=k.minor,
        pod_cidr=k.pod_cidr,
        service_cidr=k.service_cidr,
        cni=k.cni,
        image_repository=k.image_repository,
        artifact_source=k.artifacts.source,
        vsphere=k.vsphere_csi,
        dns=k.dns,
    )


def kubeadm_api_version(minor: int) -> str:
    if minor >= V1BETA4_FROM:
        return "v1beta4"
    return "v1beta3" if minor >= V1BETA3_FROM else "v1beta2"


def kubectl_cmd(*args: str) -> Cmd:
    return Cmd(KUBECTL, "--kubeconfig", ADMIN_CONF, *args)


# -- the cluster's shape ---------------------------------------------------------------------


def masters(cluster: Cluster) -> list[NodePlan]:
    return cluster.plan.by_role("master")


def kubelet_nodes(cluster: Cluster) -> list[NodePlan]:
    return [n for n in cluster.plan.nodes if n.role in ("master", "worker")]


def is_first_master(node: NodePlan, cluster: Cluster) -> bool:
    return node.name == masters(cluster)[0].name


def url_host(address: str) -> str:
    """An address as the host part of a URL or host:port (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


def endpoint_hostport(cluster: Cluster) -> str:
    ep = cluster.plan.api_endpoint
    return f"{url_host(ep.address)}:{ep.port}"


def apiserver_port(cluster: Cluster) -> int:
    """The port the API servers listen on: the endpoint's, unless haproxy on the masters holds it.

    haproxy binds the endpoint's port on the virtual address on every master (non-local bind),
    so the API servers there listen on another port, on every address. Binding them to their
    own address instead would not do: kubeadm keeps the API server's arguments cluster-wide,
    and the first master's address would reach every other master's manifest.
    """
    ep = cluster.plan.api_endpoint
    if ep.mode != "haproxy-keepalived":
        return ep.port
    return APISERVER_PORT if ep.port != APISERVER_PORT else APISERVER_PORT_BEHIND_HAPROXY


def node_api_url(node: NodePlan, cluster: Cluster) -> str:
    return f"https://{url_host(node.address)}:{apiserver_port(cluster)}"
