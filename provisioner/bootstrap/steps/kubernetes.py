"""Kubernetes with kubeadm: vkp's PKI on the masters, the kubelet, the API endpoint, init on the
first master, control-plane joins one at a time, workers in parallel, and the optional vSphere
drivers. The cluster network is steps/cni.py's, the health check steps/health.py's.

Choices, and why:

- The cluster CA, front-proxy CA, service-account keys and the etcd client certificate are
  vkp's (provisioner/bootstrap/pki.py) and placed on every master before kubeadm runs. kubeadm
  signs everything else with them, vkp can build an admin kubeconfig itself, and the other
  masters join with --control-plane without a certificate key or the kubeadm-certs Secret.
- etcd is external (the etcd play's members, with the apiserver-etcd-client certificate).
- kubeadm's configuration API follows the version: v1beta4 from 1.31 (where it became the
  current one), v1beta3 from 1.22 to 1.30, v1beta2 for 1.20 and 1.21 (the embedded lab's).
  Whatever else differs by minor is a table keyed by minor, here or in the spec, never a
  separate flow.
- The endpoint: with one master its address; with several a virtual address, held by kube-vip
  (a static pod, ARP, leader election) or by keepalived with haproxy. Those two run as systemd
  services from the distribution rather than static pods: they must hold the address before
  kubeadm init (which reaches the API through it), they do not depend on the kubelet or on
  pulling an image, and they do not trip join's check that the manifests directory is empty.
- The run's bootstrap token is made by vkp (secrets module), lives only in this process's
  memory (a Secret in every command and log line), expires after TOKEN_TTL, and reaches nodes
  only inside 0600 configuration files that are removed as soon as kubeadm has read them. It is
  created through the API from this machine (kube_api), so any join step can make sure it
  exists, which is what lets a failed join resume at that node in a new run.
- Done-markers in /etc/kubernetes/vkp record a completed init or join: admin.conf and
  kubelet.conf are written early by kubeadm, so their presence does not mean it finished. A node
  with kubeadm's files but no marker is adopted when the cluster shows it is complete, else
  reset with `kubeadm reset -f`, given its files back, and initialised or joined again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import string
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Restart,
    Run,
    Service,
    StepGen,
    Upload,
    Warn,
    step,
)
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import Fetch, fetch_manifest, pinned_manifest
from provisioner.bootstrap.steps.etcd import client_endpoints
from provisioner.errors import CommandFailed, PreflightError, ProvisionerError, Timeout
from provisioner.plan import NodePlan
from provisioner.retry import retry_call
from provisioner.ssh.commands import MASK, Cmd, Result, Secret

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
VSPHERE_DIR = f"{VKP_DIR}/vsphere"
VSPHERE_MARKER = f"{VSPHERE_DIR}/applied"
KUBELET_UNIT = "/etc/systemd/system/kubelet.service"
KUBELET_DROPIN = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
NONLOCAL_BIND_FILE = "/etc/sysctl.d/99-vkp-nonlocal-bind.conf"
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
APISERVER_PORT = 6443
# The API servers' own port on masters whose haproxy serves the endpoint on 6443.
APISERVER_PORT_BEHIND_HAPROXY = 6444

# -- pinned versions -------------------------------------------------------------------------

KUBE_VIP_VERSION = "v0.8.9"
KUBE_VIP_IMAGE = f"ghcr.io/kube-vip/kube-vip:{KUBE_VIP_VERSION}"
CALICO_VERSION = "3.28.2"
FLANNEL_VERSION = "0.25.6"
FLANNEL_CNI_PLUGIN = "v1.5.1-flannel2"  # the plugin image upstream's kube-flannel.yml of FLANNEL_VERSION uses
CSI_VERSION = "3.3.1"
# The CPI release follows the Kubernetes minor (its compatibility matrix).
CPI_VERSIONS = {28: "1.28.0", 29: "1.29.0", 30: "1.30.1", 31: "1.31.0"}
CPI_IMAGE = "registry.k8s.io/cloud-pv-vsphere/cloud-provider-vsphere:v{version}"
CSI_NAMESPACE = "vmware-system-csi"
CPI_SECRET = "vsphere-cloud-secret"
STORAGE_CLASS = "vsphere-csi"

# -- timings ---------------------------------------------------------------------------------

TOKEN_TTL = dt.timedelta(minutes=30)
TOKEN_MIN_LEFT = dt.timedelta(minutes=5)  # a join may take minutes; never start one on a dying token
KUBEADM_TIMEOUT = 900.0
READY_DEADLINE = 300.0  # an API server answers /readyz within a minute or two of kubeadm finishing
POLL = 3.0

# kubeadm.k8s.io config API by minor: v1beta2 (the newest 1.20 and 1.21 have), v1beta3 from
# 1.22, v1beta4 from 1.31 (where it became the current one). Below KUBEADM_API_MIN vkp's
# templates have not been checked against kubeadm's types.
KUBEADM_API_MIN = (1, 20)
V1BETA3_FROM = 22
V1BETA4_FROM = 31
# From 1.27 the kubelet takes the CRI endpoint from its config; before, kubeadm passes
# nodeRegistration.criSocket as a flag (kubeadm-flags.env).
RUNTIME_ENDPOINT_IN_CONFIG_FROM = 27
CNI_PINNED = {"calico": CALICO_VERSION, "flannel": FLANNEL_VERSION}


# -- settings from the spec ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    version: str
    minor: int
    pod_cidr: str
    service_cidr: str
    cni: str
    cni_version: str  # for bridge: cni_plugins_version
    image_repository: str | None
    artifact_source: str
    vsphere: bool
    cni_plugins_version: str = ""
    dns: str = "coredns"


def settings(cluster: Cluster) -> Settings:
    """The Kubernetes settings this module reads; the version as the spec parsed it."""
    k = cluster.spec.kubernetes
    if k.minor == 0:
        raise ProvisionerError(f"kubernetes.version {k.version!r} is not a release like 1.30.4")
    if (1, k.minor) < KUBEADM_API_MIN:
        raise ProvisionerError(
            f"kubernetes.version {k.version}: vkp writes kubeadm.k8s.io/v1beta2 to v1beta4 configuration, "
            f"checked for Kubernetes {KUBEADM_API_MIN[0]}.{KUBEADM_API_MIN[1]} or later"
        )
    pinned = CNI_PINNED.get(k.cni, k.cni_plugins_version)
    return Settings(
        version=k.version,
        minor=k.minor,
        pod_cidr=k.pod_cidr,
        service_cidr=k.service_cidr,
        cni=k.cni,
        cni_version=(k.cni_version or pinned).removeprefix("v"),
        image_repository=k.image_repository,
        artifact_source=k.artifacts.source,
        vsphere=k.vsphere_csi,
        cni_plugins_version=k.cni_plugins_version,
        dns=k.dns,
    )


def kubeadm_api_version(minor: int) -> str:
    if minor >= V1BETA4_FROM:
        return "v1beta4"
    return "v1beta3" if minor >= V1BETA3_FROM else "v1beta2"


# -- the cluster's shape ---------------------------------------------------------------------


def masters(cluster: Cluster) -> list[NodePlan]:
    return cluster.plan.by_role("master")


def is_first_master(node: NodePlan, cluster: Cluster) -> bool:
    return node.name == masters(cluster)[0].name


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def endpoint_hostport(cluster: Cluster) -> str:
    ep = cluster.plan.api_endpoint
    return f"{_host(ep.address)}:{ep.port}"


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
    return f"https://{_host(node.address)}:{apiserver_port(cluster)}"


def vip_prefix(address: str) -> int:
    return 128 if ipaddress.ip_address(address).version == 6 else 32


def cert_sans(cluster: Cluster) -> list[str]:
    """The endpoint, then every master's address and name (kubeadm adds its own defaults)."""
    out = [cluster.plan.api_endpoint.address]
    for m in masters(cluster):
        out += [m.address, m.name]
    return list(dict.fromkeys(out))


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's discovery hash: sha256 of the CA certificate's DER SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _ca_hash_or_placeholder(cluster: Cluster, facts: Facts) -> str:
    try:
        return ca_cert_hash(cluster.pki.cert_pem("ca"))
    except ValueError:
        if facts.known:
            raise
        return "sha256:(the cluster CA's hash, computed on the real run)"


# -- the run's bootstrap token ---------------------------------------------------------------

_ALPHABET = string.ascii_lowercase + string.digits


class BootstrapToken:
    """A kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}); only ever handed out as a Secret."""

    def __init__(self, ttl: dt.timedelta = TOKEN_TTL) -> None:
        self._id = "".join(secrets.choice(_ALPHABET) for _ in range(6))
        self._secret = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        self.expires = dt.datetime.now(dt.UTC) + ttl
        self.ttl = ttl
        self.created = False  # exists in the cluster (made by init or by ensure_token)

    @property
    def value(self) -> Secret:
        return Secret(f"{self._id}.{self._secret}")

    def remaining(self) -> dt.timedelta:
        return self.expires - dt.datetime.now(dt.UTC)

    def scrub(self, text: str) -> str:
        """text with the token, its secret half and its id masked (for error output)."""
        for part in (f"{self._id}.{self._secret}", self._secret, self._id):
            text = text.replace(part, MASK)
        return text

    def secret_object(self) -> dict[str, Any]:
        """The Secret `kubeadm token create` makes (bootstrap.kubernetes.io/token)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{self._id}", "namespace": "kube-system"},
            "stringData": {
                "description": "vkp: nodes joining during this run",
                "token-id": self._id,
                "token-secret": self._secret,
                "expiration": self.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            },
        }

    def __repr__(self) -> str:
        return f"BootstrapToken({MASK}, expires {self.expires:%H:%M:%S}Z)"


_TOKENS: dict[int, tuple[weakref.ReferenceType[Cluster], BootstrapToken]] = {}
_TOKENS_LOCK = threading.Lock()


def run_token(cluster: Cluster) -> BootstrapToken:
    """This run's token (one per Cluster object, in memory only); a fresh one near expiry."""
    key = id(cluster)
    with _TOKENS_LOCK:
        entry = _TOKENS.get(key)
        if entry is not None and entry[0]() is cluster and entry[1].remaining() > TOKEN_MIN_LEFT:
            return entry[1]
        token = BootstrapToken()
        _TOKENS[key] = (weakref.ref(cluster, lambda _ref: _TOKENS.pop(key, None)), token)
        return token


def ensure_token(cluster: Cluster) -> BootstrapToken:
    """The run's token, created in the cluster through the API if this run has not yet."""
    token = run_token(cluster)
    with _TOKENS_LOCK:
        if token.created:
            return token
        api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
        api.create("/api/v1/namespaces/kube-system/secrets", token.secret_object())
        token.created = True
        return token


def _token_for(token: Any, facts: Facts) -> BootstrapToken | None:
    # A dry run does not run Local actions: the configuration then shows a masked placeholder.
    if isinstance(token, BootstrapToken):
        return token
    if facts.known:
        raise ProvisionerError("no bootstrap token for this run (the token step returned nothing)")
    return None


def _scrubbed_failure(node: NodePlan, cmd: Cmd, r: Result, token: BootstrapToken | None) -> CommandFailed:
    out, err = r.stdout, r.stderr
    if token is not None:
        out, err = token.scrub(out), token.scrub(err)
    return CommandFailed(node.name, f"sudo -n -- {cmd.masked()}", r.exit_status, out, err)


# -- rendering (pure) ------------------------------------------------------------------------


def _node_registration(node: NodePlan, cluster: Cluster, *, joining_master: bool) -> dict[str, Any]:
    s = settings(cluster)
    ep = cluster.plan.api_endpoint
    kubelet_args = {"node-ip": node.address}
    if s.vsphere:
        kubelet_args["cloud-provider"] = "external"
    ignore: list[str] = []
    if joining_master and ep.mode == "kube-vip":
        # kube-vip's static pod is placed before the join so the endpoint never loses a holder.
        ignore.append("DirAvailable--etc-kubernetes-manifests")
    ignore += cluster.spec.kubernetes.node.ignore_preflight_errors
    return {
        "node_name": node.name,
        "cri_socket": CRI_SOCKET,
        "kubelet_args": kubelet_args,
        "ignore_preflight": list(dict.fromkeys(ignore)),
    }


def render_init_config(node: NodePlan, cluster: Cluster, token: Secret) -> str:
    """kubeadm-init.yaml for the first master. Pure (the token is revealed into the text)."""
    s = settings(cluster)
    return render(
        "kubernetes/kubeadm-init.yaml.j2",
        cluster=cluster.plan.cluster,
        version=s.version,
        api_version=kubeadm_api_version(s.minor),
        token=token.reveal(),
        token_ttl=f"{int(TOKEN_TTL.total_seconds() // 60)}m0s",
        node_address=node.address,
        bind_port=apiserver_port(cluster),
        control_plane_endpoint=endpoint_hostport(cluster),
        pki_dir=PKI_DIR,
        image_repository=s.image_repository,
        pod_cidr=s.pod_cidr,
        service_cidr=s.service_cidr,
        etcd_endpoints=client_endpoints(cluster),
        etcd_ca_file=f"{PKI_DIR}/etcd/ca.crt",
        etcd_cert_file=f"{PKI_DIR}/apiserver-etcd-client.crt",
        etcd_key_file=f"{PKI_DIR}/apiserver-etcd-client.key",
        cert_sans=cert_sans(cluster),
        runtime_endpoint_in_config=s.minor >= RUNTIME_ENDPOINT_IN_CONFIG_FROM,
        cgroup_driver=cluster.spec.kubernetes.node.cgroup_driver,
        conntrack_max_per_core=cluster.spec.kubernetes.node.conntrack_max_per_core,
        **_node_registration(node, cluster, joining_master=False),
    )


def render_join_config(node: NodePlan, cluster: Cluster, token: Secret, ca_hash: str) -> str:
    """kubeadm-join.yaml for a master (control plane) or a worker. Pure."""
    s = settings(cluster)
    control_plane = node.role == "master"
    return render(
        "kubernetes/kubeadm-join.yaml.j2",
        cluster=cluster.plan.cluster,
        version=s.version,
        api_version=kubeadm_api_version(s.minor),
        node_address=node.address,
        bind_port=apiserver_port(cluster),
        api_server_endpoint=endpoint_hostport(cluster),
        token=token.reveal(),
        ca_cert_hash=ca_hash,
        control_plane=control_plane,
        **_node_registration(node, cluster, joining_master=control_plane),
    )


def render_kubelet_units() -> tuple[str, str]:
    return (
        render("kubernetes/kubelet.service.j2", kubelet_binary=KUBELET),
        render("kubernetes/10-kubeadm.conf.j2", kubelet_binary=KUBELET),
    )


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
        vip_bind=_host(ep.address),
        port=ep.port,
        masters=[
            {"name": m.name, "endpoint": f"{_host(m.address)}:{apiserver_port(cluster)}"}
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


def csi_driver(cluster: Cluster) -> Fetch:
    return pinned_manifest(
        cluster,
        f"vSphere CSI driver v{CSI_VERSION}",
        f"https://raw.githubusercontent.com/kubernetes-sigs/vsphere-csi-driver/v{CSI_VERSION}"
        "/manifests/vanilla/vsphere-csi-driver.yaml",
        f"vsphere-csi-driver/v{CSI_VERSION}/vsphere-csi-driver.yaml",
        f"{VSPHERE_DIR}/vsphere-csi-driver.yaml",
    )


def kubectl_cmd(*args: str) -> Cmd:
    return Cmd(KUBECTL, "--kubeconfig", ADMIN_CONF, *args)


# -- waiting ---------------------------------------------------------------------------------


def wait_ready(url: str, cluster: Cluster, what: str, deadline: float = READY_DEADLINE) -> str:
    """Poll url/readyz from this machine until it says ok; Timeout naming the last answer."""
    last = ["no answer yet"]

    def attempt() -> str:
        ok, detail = kube_api.client(cluster.pki, url).readyz()
        last[0] = detail
        if not ok:
            raise _NotYet(detail)
        return detail

    try:
        return retry_call(
            attempt,
            retry_on=lambda e: isinstance(e, _NotYet),
            deadline=deadline,
            initial=1.0,
            maximum=POLL,
            what=f"{url}/readyz ({what})",
        )
    except _NotYet:
        raise Timeout(
            f"{what}: {url}/readyz not ready after {deadline:.0f}s: {last[0]}",
            hint="look at the API server on that master: `crictl ps -a`, `journalctl -u kubelet`",
        ) from None


class _NotYet(Exception):
    pass


# -- kubeadm reset of a half-done node -------------------------------------------------------

_RESTORE_SCRIPT = r"""
set -eu
umask 077
for d in "$@"; do mkdir -p -- "$d"; done
list=$(mktemp)
trap 'rm -f -- "$list"' EXIT
awk -v list="$list" '/^#vkp-file /{f=$2; print $2, $3 > list; printf "" > f; next} {print > f}'
while read -r path mode; do chown root:root -- "$path"; chmod -- "$mode" "$path"; done < "$list"
"""


_STOP_KUBEADM = (
    "pkill -x kubeadm || exit 0; "
    "for _ in $(seq 50); do pgrep -x kubeadm > /dev/null || exit 0; sleep 0.2; done; "
    "pkill -9 -x kubeadm; exit 0"
)
_REMOVE_POD_CONTAINERS = (
    "command -v ctr > /dev/null || exit 0; "
    'for id in $(ctr -n k8s.io containers list -q); do '
    'ctr -n k8s.io tasks delete --force "$id" > /dev/null 2>&1; ctr -n k8s.io containers delete "$id"; '
    "done"
)


def _bundle(files: Sequence[tuple[str, bytes, int]]) -> bytes:
    out = b""
    for path, data, mode in files:
        out += f"#vkp-file {path} {mode:o}\n".encode() + data + (b"" if data.endswith(b"\n") else b"\n")
    return out


def _reset_and_restore(node: NodePlan, cluster: Cluster, interface: str | None) -> StepGen:
    """kubeadm reset -f, then put back what vkp placed that reset removes (PKI, kube-vip)."""
    # A run killed mid-init or mid-join can leave its kubeadm running on the node, and it would
    # go on writing the files the reset removes.
    yield Run(Cmd.shell(_STOP_KUBEADM), timeout=60, retry_safe=True)
    yield Run(Cmd(KUBEADM, "reset", "-f"), timeout=300, retry_safe=True)
    # kubeadm reset removes the pods' containers through crictl, and only warns where there is
    # none: a half-started API server would keep its port from the next init or join.
    yield Run(Cmd.shell(_REMOVE_POD_CONTAINERS), timeout=300, retry_safe=True)
    files: list[tuple[str, bytes, int]] = []
    if node.role == "master":
        files += [(path, data, mode) for path, data, mode, _ in pki_files(cluster)]
        if cluster.plan.api_endpoint.mode == "kube-vip" and interface is not None:
            files.append(
                (
                    KUBE_VIP_MANIFEST,
                    render_kube_vip(node, cluster, interface, initialised=False).encode(),
                    0o600,
                )
            )
    if files:
        dirs = sorted({os.path.dirname(p) for p, _, _ in files})
        yield Run(Cmd.shell(_RESTORE_SCRIPT, *dirs), stdin=_bundle(files), retry_safe=True)


# -- kubernetes.pki --------------------------------------------------------------------------


def pki_files(cluster: Cluster) -> list[tuple[str, bytes, int, bool]]:
    """(path, content, mode, secret) for /etc/kubernetes/pki, with kubeadm's names and modes.

    Not the etcd CA's key: kubeadm needs only the etcd CA certificate and its client pair.
    """
    p = cluster.pki
    out: list[tuple[str, bytes, int, bool]] = []
    for name, base in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca")):
        out.append((f"{PKI_DIR}/{base}.crt", p.cert_pem(name), 0o644, False))
        out.append((f"{PKI_DIR}/{base}.key", p.key_pem(name), 0o600, True))
    out.append((f"{PKI_DIR}/sa.key", p.key_pem("sa"), 0o600, True))
    out.append((f"{PKI_DIR}/sa.pub", _sa_public(cluster), 0o644, False))
    out.append((f"{PKI_DIR}/apiserver-etcd-client.crt", p.cert_pem("apiserver-etcd-client"), 0o644, False))
    out.append((f"{PKI_DIR}/apiserver-etcd-client.key", p.key_pem("apiserver-etcd-client"), 0o600, True))
    out.append((f"{PKI_DIR}/etcd/ca.crt", p.cert_pem("etcd-ca"), 0o644, False))
    return out


def _sa_public(cluster: Cluster) -> bytes:
    public = getattr(cluster.pki, "public_pem", None)
    if callable(public):
        data: bytes = public("sa")
        return data
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(cluster.pki.key_pem("sa"), password=None)
    except (ValueError, TypeError):
        return b"-----BEGIN PUBLIC KEY-----\n(sa.pub, derived from sa.key on the real run)\n"
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pki_probes(node: NodePlan, cluster: Cluster) -> list[File]:
    return [
        File(K8S_DIR),
        File(PKI_DIR),
        File(f"{PKI_DIR}/etcd"),
        File(VKP_DIR),
        File(INIT_DONE),
        File(JOIN_DONE),
    ] + [File(path) for path, _, _, _ in pki_files(cluster)]


@step("kubernetes.pki", probes=_pki_probes)
def pki(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """vkp's CAs, service-account keys and etcd client certificate in /etc/kubernetes/pki, before
    kubeadm runs (every master gets the same, so the others join without a certificate key)."""
    files = pki_files(cluster)
    yield EnsureDir(K8S_DIR, 0o755, "root:root")
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield EnsureDir(PKI_DIR, 0o755, "root:root")
    yield EnsureDir(f"{PKI_DIR}/etcd", 0o755, "root:root")
    changed = []
    for path, data, mode, secret in files:
        if (yield Upload(data, path, mode, "root:root", secret=secret)):
            changed.append(path)
    running = facts.file(INIT_DONE).kind == "file" or facts.file(JOIN_DONE).kind == "file"
    if changed and running and facts.known:
        # The static pods read these only when they start; kubeadm's own renewal has the same rule.
        yield Warn(
            f"{', '.join(os.path.basename(c) for c in changed)} changed on a running control plane: "
            f"restart its static pods (move {MANIFESTS_DIR}/kube-*.yaml out and back) to use them"
        )


# -- kubernetes.kubelet ----------------------------------------------------------------------


@step(
    "kubernetes.kubelet",
    probes=lambda node, cluster: [
        File(os.path.dirname(KUBELET_DROPIN)),
        File(KUBELET_UNIT),
        File(KUBELET_DROPIN),
        Service("kubelet"),
    ],
)
def kubelet(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The kubelet's systemd unit and kubeadm drop-in, enabled (kubeadm init/join starts it)."""
    unit, dropin = render_kubelet_units()
    yield EnsureDir(os.path.dirname(KUBELET_DROPIN), 0o755, "root:root")
    a = yield Upload(unit, KUBELET_UNIT, 0o644, "root:root")
    b = yield Upload(dropin, KUBELET_DROPIN, 0o644, "root:root")
    svc = facts.service("kubelet")
    if a or b or svc.need_reload:
        yield Run(Cmd("systemctl", "daemon-reload"), retry_safe=True)
    if not svc.is_enabled:
        yield Run(Cmd("systemctl", "enable", "kubelet"), retry_safe=True)
    yield Restart("kubelet")


# -- the API endpoint ------------------------------------------------------------------------

_VIP_ANSWERS = r"""
vip=$1 port=$2 found=""
if command -v ping > /dev/null 2>&1 && ping -c 2 -W 1 -- "$vip" > /dev/null 2>&1; then found="$found ping"; fi
if timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$vip" "$port" 2> /dev/null; then found="$found tcp/$port"; fi
if ip neigh show to "$vip" 2> /dev/null | grep -q lladdr; then found="$found arp"; fi
echo "answers:${found:- none}"
"""


def _route_probe(cluster: Cluster) -> Check:
    return Check(Cmd("ip", "-o", "route", "get", cluster.plan.api_endpoint.address))


def interface_from_route(text: str) -> str | None:
    m = re.search(r"\bdev\s+(\S+)", text)
    return m.group(1) if m else None


def _interface(node: NodePlan, cluster: Cluster, facts: Facts) -> str:
    r = facts.check(_route_probe(cluster).cmd)
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
        return [File(MANIFESTS_DIR), File(KUBE_VIP_MANIFEST), File(INIT_DONE), _route_probe(cluster)]
    if mode == "haproxy-keepalived":
        sysctl = nonlocal_bind_sysctl(cluster.plan.api_endpoint.address)
        return [
            _route_probe(cluster),
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
        iface = _interface(node, cluster, facts)
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
    iface = _interface(node, cluster, facts)
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


# -- kubernetes.init -------------------------------------------------------------------------


def _init_probes(node: NodePlan, cluster: Cluster) -> list[File | Check]:
    out: list[File | Check] = [
        File(INIT_DONE),
        File(ADMIN_CONF),
        File(KUBELET_CONF),
        File(APISERVER_MANIFEST),
        File(KUBE_VIP_MANIFEST),
    ]
    if cluster.plan.api_endpoint.mode == "kube-vip":
        out.append(_route_probe(cluster))
    return out


def _kubeadm_files_present(facts: Facts, paths: Sequence[str]) -> bool:
    return facts.known and any(facts.file(p).kind != "absent" for p in paths)


@step("kubernetes.init", probes=_init_probes)
def init(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm init on the first master, once: skipped when vkp's marker says it completed; a
    node with kubeadm's files but no marker is adopted if the cluster is complete, else reset and
    initialised again. Then waits for /readyz through the endpoint."""
    if not is_first_master(node, cluster):
        raise ProvisionerError(f"kubernetes.init runs on the first master only, not on {node.name}")
    kube_vip = cluster.plan.api_endpoint.mode == "kube-vip"
    iface = _interface(node, cluster, facts) if kube_vip else None
    if facts.file(INIT_DONE).kind == "file":
        if kube_vip and iface is not None:
            yield Upload(
                render_kube_vip(node, cluster, iface, initialised=True), KUBE_VIP_MANIFEST, 0o600, "root:root"
            )
        return
    if _kubeadm_files_present(facts, (ADMIN_CONF, KUBELET_CONF, APISERVER_MANIFEST)):
        adopted = yield Local(
            "adopt the control plane if an earlier run finished kubeadm init",
            lambda: _cluster_initialised(cluster),
        )
        if adopted:
            # The interrupted run's configuration holds its bootstrap token.
            yield Run(Cmd("rm", "-f", "--", INIT_CONFIG), retry_safe=True, changes=False)
            yield from _after_init(node, cluster, iface)
            return
        yield from _reset_and_restore(node, cluster, iface)
    token = run_token(cluster)
    config = render_init_config(node, cluster, token.value)
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield Upload(config, INIT_CONFIG, 0o600, "root:root", secret=True)
    cmd = init_command(cluster)
    r = yield Run(cmd, check=False, timeout=KUBEADM_TIMEOUT)
    yield Run(Cmd("rm", "-f", "--", INIT_CONFIG), retry_safe=True, changes=False)
    if facts.known:
        if not r.ok:
            raise _scrubbed_failure(node, cmd, r, token)
        # Only a real init made it: the check run before every run is a dry run of this step.
        token.created = True
    yield from _after_init(node, cluster, iface)


def _skip_phases(cluster: Cluster, *, init: bool) -> list[str]:
    # A flag, not the config: skipPhases only came with v1beta3, and every kubeadm vkp supports
    # takes --skip-phases beside --config.
    phases = []
    if cluster.spec.kubernetes.node.skip_preflight:
        phases.append("preflight")
    if init and settings(cluster).dns == "none":
        phases.append("addon/coredns")
    return [f"--skip-phases={','.join(phases)}"] if phases else []


def init_command(cluster: Cluster) -> Cmd:
    args = ["init", "--config", INIT_CONFIG, "--skip-token-print", "--skip-certificate-key-print"]
    return Cmd(KUBEADM, *args, *_skip_phases(cluster, init=True))


def join_command(cluster: Cluster) -> Cmd:
    return Cmd(KUBEADM, "join", "--config", JOIN_CONFIG, *_skip_phases(cluster, init=False))


def _cluster_initialised(cluster: Cluster) -> bool:
    api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
    if not api.readyz()[0]:
        return False
    try:
        api.get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
        api.get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
    except kube_api.KubeAPIError:
        return False
    return True


def _after_init(node: NodePlan, cluster: Cluster, iface: str | None) -> StepGen:
    if iface is not None:
        yield Upload(
            render_kube_vip(node, cluster, iface, initialised=True), KUBE_VIP_MANIFEST, 0o600, "root:root"
        )
    url = cluster.plan.api_endpoint.url
    yield Local(f"wait for {url}/readyz (the endpoint)", lambda: wait_ready(url, cluster, "the first master"))
    yield Upload(f"kubeadm init completed for {cluster.plan.cluster}\n", INIT_DONE, 0o644, "root:root")


# -- kubernetes.token ------------------------------------------------------------------------


@step("kubernetes.token", local=True)
def token_step(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """This run's bootstrap token (TTL 30 min), created through the API only when a master or
    worker is not registered yet; kept in memory, masked everywhere."""

    def needed() -> list[str]:
        api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
        doc = api.get("/api/v1/nodes")
        present = {str(i.get("metadata", {}).get("name")) for i in doc.get("items", [])}
        want = [n.name for n in cluster.plan.nodes if n.role in ("master", "worker")]
        return [n for n in want if n not in present]

    missing = yield Local("nodes not registered yet", needed)
    if missing == []:
        return
    yield Local(
        f"create this run's bootstrap token (expires in {int(TOKEN_TTL.total_seconds() // 60)} min)",
        lambda: ensure_token(cluster),
        changes=True,
    )


# -- joins -----------------------------------------------------------------------------------


def _join_probes(node: NodePlan, cluster: Cluster) -> list[File | Check]:
    out: list[File | Check] = [
        File(VKP_DIR),
        File(JOIN_DONE),
        File(KUBELET_CONF),
        File(BOOTSTRAP_KUBELET_CONF),
        File(APISERVER_MANIFEST),
    ]
    if node.role == "master" and cluster.plan.api_endpoint.mode == "kube-vip":
        out.append(_route_probe(cluster))
    return out


def _node_joined(cluster: Cluster, node: NodePlan) -> bool:
    api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
    try:
        obj = api.get(f"/api/v1/nodes/{node.name}")
    except kube_api.KubeAPIError:
        return False
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    if node.role == "master":
        return (
            "node-role.kubernetes.io/control-plane" in labels
            and kube_api.client(cluster.pki, node_api_url(node, cluster)).readyz()[0]
        )
    return True


def _join(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    if facts.file(JOIN_DONE).kind == "file":
        return
    master = node.role == "master"
    iface = (
        _interface(node, cluster, facts) if master and cluster.plan.api_endpoint.mode == "kube-vip" else None
    )
    if _kubeadm_files_present(facts, (KUBELET_CONF, BOOTSTRAP_KUBELET_CONF, APISERVER_MANIFEST)):
        adopted = yield Local(
            f"adopt {node.name} if an earlier run finished its join", lambda: _node_joined(cluster, node)
        )
        if adopted:
            # The interrupted run's configuration holds its bootstrap token.
            yield Run(Cmd("rm", "-f", "--", JOIN_CONFIG), retry_safe=True, changes=False)
            yield Upload(
                f"kubeadm join completed for {cluster.plan.cluster}\n", JOIN_DONE, 0o644, "root:root"
            )
            return
        yield from _reset_and_restore(node, cluster, iface)
    got = yield Local(
        "this run's bootstrap token (created if this run has not yet)", lambda: ensure_token(cluster)
    )
    token = _token_for(got, facts)
    shown = token.value if token is not None else Secret("(this run's bootstrap token)")
    config = render_join_config(node, cluster, shown, _ca_hash_or_placeholder(cluster, facts))
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield Upload(config, JOIN_CONFIG, 0o600, "root:root", secret=True)
    cmd = join_command(cluster)
    r = yield Run(cmd, check=False, timeout=KUBEADM_TIMEOUT)
    yield Run(Cmd("rm", "-f", "--", JOIN_CONFIG), retry_safe=True, changes=False)
    if facts.known and not r.ok:
        raise _scrubbed_failure(node, cmd, r, token)
    if master:
        url = node_api_url(node, cluster)
        yield Local(
            f"wait for {url}/readyz ({node.name}'s API server)", lambda: wait_ready(url, cluster, node.name)
        )
    yield Upload(f"kubeadm join completed for {cluster.plan.cluster}\n", JOIN_DONE, 0o644, "root:root")


@step("kubernetes.join_control_plane", probes=_join_probes)
def join_control_plane(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm join --control-plane (run one master at a time), then wait for that master's own
    API server; skipped once vkp's marker says the join completed."""
    if node.role != "master" or is_first_master(node, cluster):
        raise ProvisionerError(
            f"kubernetes.join_control_plane runs on the masters after the first, not on {node.name}"
        )
    yield from _join(node, cluster, facts)


@step("kubernetes.join_worker", probes=_join_probes)
def join_worker(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm join of a worker with this run's bootstrap token; skipped once joined."""
    if node.role != "worker":
        raise ProvisionerError(f"kubernetes.join_worker runs on workers, not on {node.name}")
    yield from _join(node, cluster, facts)


# -- kubernetes.vsphere ----------------------------------------------------------------------


def vsphere_credentials(cluster: Cluster, env: Any = None) -> tuple[str, Secret]:
    creds = cluster.spec.vsphere.credentials
    env = os.environ if env is None else env
    user, password = creds.lookup(env)
    if not user or not password:
        raise ProvisionerError(
            f"the vSphere drivers need vCenter credentials: export {creds.user_env} and {creds.password_env}",
            hint="they are stored only in Secrets in the cluster (kube-system and vmware-system-csi)",
        )
    return user, Secret(password)


def render_vsphere_secrets(cluster: Cluster, user: str, password: Secret) -> str:
    vs = cluster.spec.vsphere
    return render(
        "kubernetes/vsphere-secrets.yaml.j2",
        cluster=cluster.plan.cluster,
        cluster_id=f"{cluster.plan.cluster}-{cluster.cluster_id}",
        cpi_secret_name=CPI_SECRET,
        csi_namespace=CSI_NAMESPACE,
        server=vs.server,
        port=vs.port,
        datacenter=vs.datacenter,
        insecure=vs.tls.insecure,
        thumbprint=vs.tls.thumbprint,
        user=user,
        password=password.reveal(),
    )


def render_vsphere_manifests(cluster: Cluster) -> list[tuple[str, str]]:
    s = settings(cluster)
    vs = cluster.spec.vsphere
    cpi = CPI_VERSIONS.get(s.minor, CPI_VERSIONS[max(CPI_VERSIONS)])
    return [
        (
            f"{VSPHERE_DIR}/vsphere-cpi.yaml",
            render(
                "kubernetes/vsphere-cpi.yaml.j2",
                cluster=cluster.plan.cluster,
                cpi_version=f"v{cpi}",
                cpi_image=CPI_IMAGE.format(version=cpi),
                secret_name=CPI_SECRET,
                secret_namespace="kube-system",
                server=vs.server,
                port=vs.port,
                datacenter=vs.datacenter,
                insecure=vs.tls.insecure,
                thumbprint=vs.tls.thumbprint,
            ),
        ),
        (
            f"{VSPHERE_DIR}/vsphere-csi-setup.yaml",
            render(
                "kubernetes/vsphere-csi-setup.yaml.j2",
                csi_version=f"v{CSI_VERSION}",
                namespace=CSI_NAMESPACE,
                storage_class=STORAGE_CLASS,
            ),
        ),
    ]


@step("kubernetes.vsphere", probes=lambda node, cluster: [File(VSPHERE_DIR), File(VSPHERE_MARKER)])
def vsphere(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """With kubernetes.vsphere_csi: the vSphere cloud provider and CSI driver at pinned versions,
    vCenter credentials in Secrets piped to kubectl (never on a node's disk); re-applied only on
    change."""
    if not settings(cluster).vsphere:
        return
    vs = cluster.spec.vsphere
    if vs.tls.ca_file and not vs.tls.thumbprint and not vs.tls.insecure:
        raise ProvisionerError(
            "the in-cluster vSphere drivers verify vCenter by thumbprint: set vsphere.tls.thumbprint",
            hint="vsphere.tls.ca_file is a file on this machine, which drivers in the cluster cannot read",
        )
    user, password = vsphere_credentials(cluster)
    secrets_doc = render_vsphere_secrets(cluster, user, password)
    manifests = render_vsphere_manifests(cluster)
    driver = csi_driver(cluster)
    # A keyed digest: the marker (0600, root) must not let anyone test guesses of the password.
    mac = hmac.new(hashlib.sha256(cluster.pki.key_pem("ca")).digest(), digestmod=hashlib.sha256)
    mac.update(secrets_doc.encode())
    mac.update(f"{driver.url or driver.local}\n".encode())
    for path, text in manifests:
        mac.update(f"{path}\n{text}".encode())
    marker = f"vsphere cpi+csi v{CSI_VERSION} hmac-sha256:{mac.hexdigest()}\n"
    if facts.file(VSPHERE_MARKER).sha256 == hashlib.sha256(marker.encode()).hexdigest():
        return
    yield EnsureDir(VSPHERE_DIR, 0o700, "root:root")
    setup = manifests[1][0]
    for path, text in manifests:
        yield Upload(text, path, 0o600, "root:root")
    yield Run(kubectl_cmd("apply", "-f", setup), timeout=300, retry_safe=True)
    yield Run(kubectl_cmd("apply", "-f", "-"), stdin=secrets_doc.encode(), timeout=120, retry_safe=True)
    yield Run(kubectl_cmd("apply", "-f", manifests[0][0]), timeout=300, retry_safe=True)
    yield from fetch_manifest(driver)
    yield Run(kubectl_cmd("apply", "-f", driver.dest), timeout=300, retry_safe=True)
    yield Upload(marker, VSPHERE_MARKER, 0o600, "root:root")


def manifest_documents(text: str) -> list[dict[str, Any]]:
    """The YAML documents of a rendered manifest (for tests and dry-run readers)."""
    return [d for d in yaml.safe_load_all(text) if d]
