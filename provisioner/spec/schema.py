"""The spec's schema: each section a frozen dataclass with its defaults, and the constants the
rest of vkp reads (roles, supported versions, the settings the environment may supply)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner import resources

ROLES = ("etcd", "master", "worker")
CNIS = ("calico", "flannel", "bridge")
# auto: the only master's address with one master, a kube-vip virtual address with several.
API_MODES = ("auto", "direct", "kube-vip", "haproxy-keepalived")
# What holds a virtual address: network.api_endpoint.virtual, auto's choice when it needs one.
VIRTUAL_MODES = ("kube-vip", "haproxy-keepalived")
KEY_TYPES = ("rsa", "ecdsa")
RSA_SIZES = (2048, 3072, 4096)
HOSTNAME_MAX = 63  # node names become VM names and host names: one DNS label each
# Kubernetes minors vkp configures. 1.28 and later are what real sites run; 1.20 to 1.27 are
# past upstream end of life and accepted for the embedded lab, which can build only v1.20.2
# (ClusterSpec.warnings() says so). Everything that differs by minor is a table keyed by minor.
K8S_MINORS = (20, 31)
K8S_SUPPORTED_FROM = 28  # older minors validate with a warning
DEFAULT_K8S_VERSION = "1.30.4"
DEFAULT_IMAGE_REPOSITORY = "registry.k8s.io"
DEFAULT_ETCD_VERSION = "3.5.16"
DEFAULT_CNI_PLUGINS_VERSION = "1.1.1"  # containernetworking/plugins, for cni: bridge
# etcd.artifact's value for the distribution's etcd-server package (the default).
ETCD_PACKAGE = "package"


@dataclass(frozen=True)
class KubeadmImages:
    """What kubeadm of one minor names by default (`kubeadm config images list`)."""

    repository: str
    pause: str  # the pause image's tag: containerd's sandbox image must be the one kubeadm expects


# k8s.gcr.io until 1.24; kubeadm names registry.k8s.io from 1.25.
KUBEADM_IMAGES: dict[int, KubeadmImages] = {
    20: KubeadmImages("k8s.gcr.io", "3.2"),
    21: KubeadmImages("k8s.gcr.io", "3.4.1"),
    22: KubeadmImages("k8s.gcr.io", "3.5"),
    23: KubeadmImages("k8s.gcr.io", "3.6"),
    24: KubeadmImages("k8s.gcr.io", "3.7"),
    25: KubeadmImages(DEFAULT_IMAGE_REPOSITORY, "3.8"),
    **{m: KubeadmImages(DEFAULT_IMAGE_REPOSITORY, "3.9") for m in range(26, 31)},
    31: KubeadmImages(DEFAULT_IMAGE_REPOSITORY, "3.10"),
}

CGROUP_DRIVERS = ("systemd", "cgroupfs")
DNS_ADDONS = ("coredns", "none")

DEFAULT_PLANS_FILE = resources.PLANS
PLANS_FILE_ENV = "VKP_PLANS_FILE"
# A spec-shaped YAML file of site-wide settings, merged under every spec (provisioner.spec).
SITE_DEFAULTS_ENV = "VKP_SITE_DEFAULTS"
# kubernetes.version: 1.<minor>.<patch>; the one parser of it. ASCII digits only (\d also
# matches other scripts' digits, which no release uses), and few, so int() of a group is cheap.
_K8S_VERSION = re.compile(r"1\.([0-9]{1,4})\.([0-9]{1,6})")


def k8s_minor(version: str) -> int:
    """1.30.4 -> 30; 0 when version is not a 1.Y.Z release (k8s_version_problem says why)."""
    m = _K8S_VERSION.fullmatch(version)
    return int(m.group(1)) if m else 0


def k8s_release(version: str) -> tuple[int, int] | None:
    """1.30.4 -> (30, 4), for ordering releases (vkp upgrade); None when version is not 1.Y.Z."""
    m = _K8S_VERSION.fullmatch(version)
    return (int(m.group(1)), int(m.group(2))) if m else None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Size:
    cpus: int
    memory_mb: int
    disk_gb: int


# What each role needs to run at all; plans and specs below these are rejected.
ROLE_MINIMUMS: dict[str, Size] = {
    "etcd": Size(cpus=1, memory_mb=1024, disk_gb=10),
    "master": Size(cpus=2, memory_mb=2048, disk_gb=20),
    "worker": Size(cpus=1, memory_mb=1024, disk_gb=20),
}


@dataclass(frozen=True)
class Limit:
    """The largest value vkp accepts for a setting, and why (the message says both)."""

    maximum: int
    why: str


# Every upper bound in one table. Per-VM sizes are vSphere 8.0's configuration maximums
# ("Virtual Machine Maximums", configmax.broadcom.com); the counts per role are vkp's own. A
# value past these is a typo or an attack, and is refused before anything is asked of vCenter.
LIMITS: dict[str, Limit] = {
    "cpus": Limit(768, "vSphere 8 gives a VM at most 768 vCPUs"),
    "memory_mb": Limit(24 * 1024 * 1024, "vSphere 8 gives a VM at most 24 TB of memory"),
    "disk_gb": Limit(62 * 1024, "a VMDK is at most 62 TB"),
    "etcd.count": Limit(7, "every write goes to all members, so more members only slow etcd down"),
    "master.count": Limit(7, "more API servers add load on etcd, not availability; 3 or 5 is usual"),
    "worker.count": Limit(1000, "vkp builds every worker in one run from one address pool"),
    # vSphere's limit for the name of an inventory object (VM, folder, datastore, host, ...).
    "inventory_name": Limit(80, "vSphere allows at most 80 characters in an inventory name"),
    "conntrack_max_per_core": Limit(2**31 - 1, "kube-proxy reads it as a 32-bit integer"),
    # Reading spec, site defaults and plans files: a spec is a few KB.
    "file_bytes": Limit(1024 * 1024, "a spec is a few KB; this is not one"),
    "yaml_depth": Limit(32, "a spec nests at most 4 levels deep"),
    # Values YAML aliases (*name) may stand for in all, each scalar counting its length: enough
    # to reuse a section a few times, far too little for a "billion laughs" document.
    "yaml_alias_expansion": Limit(10_000, "YAML aliases may stand for that much at most"),
}

_ROLE_NEEDS = {
    "etcd": "etcd",
    "master": "kube-apiserver, controller-manager and scheduler",
    "worker": "kubelet, containerd and the workloads",
}

# (path in the spec, environment variable) for settings the environment may supply.
ENV_SETTINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("vsphere", "server"), "VKP_VSPHERE_SERVER"),
    (("vsphere", "datacenter"), "VKP_VSPHERE_DATACENTER"),
    (("vsphere", "cluster"), "VKP_VSPHERE_CLUSTER"),
    (("vsphere", "datastore"), "VKP_VSPHERE_DATASTORE"),
    (("vsphere", "network"), "VKP_VSPHERE_NETWORK"),
    (("vsphere", "template"), "VKP_VSPHERE_TEMPLATE"),
    (("vsphere", "folder"), "VKP_VSPHERE_FOLDER"),
    (("vsphere", "resource_pool"), "VKP_VSPHERE_RESOURCE_POOL"),
    (("vsphere", "tls", "thumbprint"), "VKP_VSPHERE_THUMBPRINT"),
    (("vsphere", "tls", "ca_file"), "VKP_VSPHERE_CA_FILE"),
    (("vsphere", "tls", "insecure"), "VKP_VSPHERE_INSECURE"),
    (("network", "pool"), "VKP_NETWORK_POOL"),
    (("network", "prefix"), "VKP_NETWORK_PREFIX"),
    (("network", "gateway"), "VKP_NETWORK_GATEWAY"),
    (("network", "dns"), "VKP_NETWORK_DNS"),
    (("network", "api_endpoint", "address"), "VKP_API_ENDPOINT"),
    (("kubernetes", "artifacts", "source"), "VKP_K8S_ARTIFACTS"),
)
ENV_FOR = {".".join(p): var for p, var in ENV_SETTINGS}


# ---------------------------------------------------------------------------------------------
# The sections


@dataclass(frozen=True)
class Credentials:
    """Which environment variables hold the vCenter user and password (read at connect time)."""

    user_env: str = "VKP_VSPHERE_USER"
    password_env: str = "VKP_VSPHERE_PASSWORD"

    def lookup(self, env: Mapping[str, str]) -> tuple[str | None, str | None]:
        """(user, password) from env; None where unset, so the caller can prompt."""
        return env.get(self.user_env) or None, env.get(self.password_env) or None


@dataclass(frozen=True)
class TLS:
    """How vCenter's certificate is verified: a CA file, a pinned SHA-256 thumbprint, or not at all.

    thumbprint is normalised to upper-case colon-separated hex ("AB:CD:..."); insecure is an
    explicit opt-in and makes ClusterSpec.warnings() say so.
    """

    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class VSphereSpec:
    server: str | None = None
    port: int = 443
    datacenter: str | None = None
    cluster: str | None = None
    datastore: str | None = None
    network: str | None = None
    template: str | None = None
    folder: str | None = None  # parent of the cluster's own folder <name>; None: vkp
    resource_pool: str | None = None  # None: the cluster's root resource pool
    linked_clone: bool = True
    credentials: Credentials = field(default_factory=Credentials)
    tls: TLS = field(default_factory=TLS)


@dataclass(frozen=True)
class RoleSpec:
    count: int
    cpus: int
    memory_mb: int
    disk_gb: int
    # Pinned addresses for the first nodes of the role; the rest come from network.pool.
    addresses: tuple[str, ...] = ()

    @property
    def size(self) -> Size:
        return Size(self.cpus, self.memory_mb, self.disk_gb)


@dataclass(frozen=True)
class Topology:
    etcd: RoleSpec
    master: RoleSpec
    worker: RoleSpec

    def role(self, name: str) -> RoleSpec:
        if name not in ROLES:
            raise KeyError(name)
        rs: RoleSpec = getattr(self, name)
        return rs

    def total(self) -> int:
        return sum(self.role(r).count for r in ROLES)


@dataclass(frozen=True)
class AddressRange:
    """An inclusive range of addresses; a single address has first == last."""

    first: str
    last: str

    def __str__(self) -> str:
        return self.first if self.first == self.last else f"{self.first}-{self.last}"

    def _bounds(self) -> tuple[int, int]:
        return int(ipaddress.ip_address(self.first)), int(ipaddress.ip_address(self.last))

    @property
    def size(self) -> int:
        lo, hi = self._bounds()
        return max(0, hi - lo + 1)

    def __contains__(self, address: object) -> bool:
        try:
            a = ipaddress.ip_address(str(address))
        except ValueError:
            return False
        lo, hi = self._bounds()
        return a.version == ipaddress.ip_address(self.first).version and lo <= int(a) <= hi

    @property
    def well_formed(self) -> bool:
        a, b = ipaddress.ip_address(self.first), ipaddress.ip_address(self.last)
        return a.version == b.version and int(a) <= int(b)

    def addresses(self) -> Iterator[str]:
        lo, hi = self._bounds()
        version = ipaddress.ip_address(self.first).version
        for i in range(lo, hi + 1):
            yield str(ipaddress.ip_address(i) if version == 4 else ipaddress.IPv6Address(i))


@dataclass(frozen=True)
class ApiEndpointSpec:
    address: str | None = None
    port: int = 6443
    mode: str = "auto"
    virtual: str = "kube-vip"  # what auto uses when the endpoint is a virtual address


@dataclass(frozen=True)
class NetworkSpec:
    pool: tuple[AddressRange, ...] = ()
    prefix: int | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    api_endpoint: ApiEndpointSpec = field(default_factory=ApiEndpointSpec)

    def subnet(self) -> IPNetwork | None:
        """The nodes' subnet (gateway/prefix), or None while either is missing or malformed."""
        if self.gateway is None or self.prefix is None:
            return None
        try:
            return ipaddress.ip_network(f"{self.gateway}/{self.prefix}", strict=False)
        except ValueError:
            return None

    def pool_addresses(self) -> Iterator[str]:
        """Pool addresses in the order written (lazily: a pool may be a /16)."""
        for r in self.pool:
            yield from r.addresses()

    def in_pool(self, address: str) -> bool:
        return any(address in r for r in self.pool)


@dataclass(frozen=True)
class PlacementSpec:
    hosts: tuple[str, ...] = ()  # restrict to these ESXi hosts; empty: every host of the cluster
    anti_affinity: bool = True  # a DRS VM anti-affinity rule per role


@dataclass(frozen=True)
class SSHSpec:
    user: str = "vkp"
    port: int = 22


@dataclass(frozen=True)
class ArtifactsSpec:
    """Where the Kubernetes binaries and control-plane images come from.

    source: "upstream" (dl.k8s.io), a mirror base URL with the same layout, or local:/dir on
    the operator's machine (provisioner/bootstrap/artifacts.py has the layouts).
    image_repository: None means the registry kubeadm of the version names (KUBEADM_IMAGES).
    image_tarballs: a directory on the operator's machine of *.tar images to import into
    containerd on every node, for sites that cannot pull from any registry.
    sandbox_image: None means <image_repository>/pause:<the tag kubeadm of the version expects>.
    """

    source: str = "upstream"
    image_repository: str | None = None
    image_tarballs: str | None = None
    sandbox_image: str | None = None


@dataclass(frozen=True)
class NodeSettingsSpec:
    """How the kubelet, containerd and kube-proxy are set up on each master and worker.

    The defaults suit a VM with systemd as PID 1. The other values exist for hosts where the
    kernel or the container a node runs in refuses what those defaults need.
    cgroup_driver: the kubelet's and containerd's (runc) cgroup driver; they must agree.
    restrict_oom_score_adj: containerd never sets an oom_score_adj below its own, for hosts
    where even root cannot lower it (no CAP_SYS_RESOURCE).
    conntrack_max_per_core: kube-proxy's conntrack.maxPerCore; None leaves kube-proxy's
    default, 0 leaves the host's conntrack table size alone (for when it is not writable).
    ignore_preflight_errors: kubeadm preflight checks to ignore on init and join, besides those
    vkp ignores itself.
    skip_preflight: kubeadm init and join skip the preflight phase altogether, for nodes where a
    check that cannot be ignored fails (kubeadm 1.20 requires crictl, which some sites lack).
    """

    cgroup_driver: str = "systemd"
    restrict_oom_score_adj: bool = False
    conntrack_max_per_core: int | None = None
    ignore_preflight_errors: tuple[str, ...] = ()
    skip_preflight: bool = False


@dataclass(frozen=True)
class KubernetesSpec:
    version: str = DEFAULT_K8S_VERSION
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    cni: str = "calico"
    cni_version: str | None = None  # None: the version vkp pins for the CNI
    cni_plugins_version: str = DEFAULT_CNI_PLUGINS_VERSION
    dns: str = "coredns"  # none: kubeadm installs no cluster DNS
    vsphere_csi: bool = False  # vSphere cloud provider (CPI) and CSI driver
    node: NodeSettingsSpec = field(default_factory=NodeSettingsSpec)
    artifacts: ArtifactsSpec = field(default_factory=ArtifactsSpec)

    @property
    def minor(self) -> int:
        """1.30.4 -> 30 (0 when the version is malformed, which validation reports)."""
        return k8s_minor(self.version)

    @property
    def kubeadm_images(self) -> KubeadmImages:
        """What kubeadm of this version names; for a version outside the table (which
        validation reports), the default version's."""
        default = KUBEADM_IMAGES[k8s_minor(DEFAULT_K8S_VERSION)]
        return KUBEADM_IMAGES.get(self.minor, default)

    @property
    def image_repository(self) -> str:
        return self.artifacts.image_repository or self.kubeadm_images.repository

    @property
    def sandbox_image(self) -> str:
        return self.artifacts.sandbox_image or f"{self.image_repository}/pause:{self.kubeadm_images.pause}"

    @property
    def artifact_source(self) -> str:
        """The old name of artifacts.source, for readers written before it moved."""
        return self.artifacts.source

    @property
    def end_of_life(self) -> bool:
        """A minor vkp accepts for the embedded lab only."""
        return 0 < self.minor < K8S_SUPPORTED_FROM


@dataclass(frozen=True)
class EtcdSpec:
    """etcd's tuning, and where its binaries come from.

    artifact: "package" (the distribution's etcd-server), or an artifact source for the release
    tarball of version: "upstream" (GitHub releases), a mirror base URL with the same layout, or
    local:/dir on the operator's machine (provisioner/bootstrap/artifacts.py has the layouts).
    """

    heartbeat_interval: int = 100  # ms, etcd's default
    election_timeout: int = 1000  # ms, etcd's default
    artifact: str = ETCD_PACKAGE
    version: str = DEFAULT_ETCD_VERSION

    @property
    def from_package(self) -> bool:
        return self.artifact == ETCD_PACKAGE


@dataclass(frozen=True)
class PKISpec:
    key_type: str = "rsa"
    rsa_bits: int = 2048  # kubeadm's default


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    plan: str | None
    topology: Topology
    vsphere: VSphereSpec = field(default_factory=VSphereSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    ssh: SSHSpec = field(default_factory=SSHSpec)
    kubernetes: KubernetesSpec = field(default_factory=KubernetesSpec)
    etcd: EtcdSpec = field(default_factory=EtcdSpec)
    pki: PKISpec = field(default_factory=PKISpec)
    source: str | None = None  # the file it was read from, for messages

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["network"]["pool"] = [str(r) for r in self.network.pool]
        return _lists(d)

    def warnings(self) -> list[str]:
        out = []
        if self.vsphere.tls.insecure:
            out.append(
                "vsphere.tls.insecure is set: vCenter's certificate is NOT verified, so anyone on "
                "the path can read the credentials; pin it with vsphere.tls.thumbprint or ca_file"
            )
        k = self.kubernetes
        if k.end_of_life:
            out.append(
                f"kubernetes.version {k.version} is past upstream end of life and meant only for the "
                f"embedded lab (vkp lab builds v1.20.2); use 1.{K8S_SUPPORTED_FROM} or later anywhere else"
            )
        return out


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_lists(x) for x in v]
    return v


@dataclass(frozen=True)
class SizePreset:
    """A named size from plans.yaml (what `--plan` and a spec's plan: pick); not plan.Plan."""

    name: str
    description: str
    topology: Topology
