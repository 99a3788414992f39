"""The cluster spec: what a user asks for, merged from a plan, a YAML file and the environment.

Everything here is pure (no network, no vSphere): a spec is loaded and validated before any
call is made, and every problem is reported at once with its field path and what to do.

Merge order, later wins: plan defaults <- spec file <- explicit name/plan arguments.
Environment variables (VKP_VSPHERE_*, VKP_NETWORK_*, VKP_API_ENDPOINT, VKP_K8S_ARTIFACTS) fill
vsphere, network and artifact settings the file leaves out, so `vkp create-cluster NAME --plan
small` works from the environment alone. Credentials are never part of the spec: it records
only the names of the environment variables to read at connect time.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import SpecError

ROLES = ("etcd", "master", "worker")
CNIS = ("calico", "flannel")
# auto: the only master's address with one master, a kube-vip virtual address with several.
API_MODES = ("auto", "direct", "kube-vip", "haproxy-keepalived")
KEY_TYPES = ("rsa", "ecdsa")
RSA_SIZES = (2048, 3072, 4096)
HOSTNAME_MAX = 63  # node names become VM names and host names: one DNS label each
# Kubernetes minors vkp's kubeadm configuration is written for (kubeadm.k8s.io/v1beta3 and
# v1beta4 both exist across them; the templates choose by minor).
K8S_MINORS = (28, 31)
DEFAULT_K8S_VERSION = "1.30.4"
DEFAULT_IMAGE_REPOSITORY = "registry.k8s.io"
DEFAULT_ETCD_VERSION = "3.5.16"
# etcd.artifact's value for the distribution's etcd-server package (the default).
ETCD_PACKAGE = "package"
# The pause image kubeadm 1.30 expects (kubeadm config images list); containerd's sandbox image.
PAUSE_VERSION = "3.9"

DEFAULT_PLANS_FILE = Path(__file__).resolve().parent.parent / "inventory" / "plans.yaml"
PLANS_FILE_ENV = "VKP_PLANS_FILE"

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
# The spec


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
    image_tarballs: a directory on the operator's machine of *.tar images to import into
    containerd on every node, for sites that cannot pull from any registry.
    sandbox_image: None means <image_repository>/pause:<PAUSE_VERSION>.
    """

    source: str = "upstream"
    image_repository: str = DEFAULT_IMAGE_REPOSITORY
    image_tarballs: str | None = None
    sandbox_image: str | None = None


@dataclass(frozen=True)
class KubernetesSpec:
    version: str = DEFAULT_K8S_VERSION
    pod_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    cni: str = "calico"
    cni_version: str | None = None  # None: the version vkp pins for the CNI
    vsphere_csi: bool = False  # vSphere cloud provider (CPI) and CSI driver
    artifacts: ArtifactsSpec = field(default_factory=ArtifactsSpec)

    @property
    def sandbox_image(self) -> str:
        a = self.artifacts
        return a.sandbox_image or f"{a.image_repository}/pause:{PAUSE_VERSION}"

    @property
    def image_repository(self) -> str:
        return self.artifacts.image_repository

    @property
    def artifact_source(self) -> str:
        """The old name of artifacts.source, for readers written before it moved."""
        return self.artifacts.source

    @property
    def minor(self) -> int:
        """1.30.4 -> 30 (0 when the version is malformed, which validation reports)."""
        m = _K8S_VERSION.fullmatch(self.version)
        return int(m.group(1)) if m else 0


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
        return out


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_lists(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class PlanPreset:
    name: str
    description: str
    topology: Topology


def load_plans(path: Path | str | None = None) -> dict[str, PlanPreset]:
    """The plans file (inventory/plans.yaml unless VKP_PLANS_FILE names another), checked."""
    p = Path(path) if path else DEFAULT_PLANS_FILE
    raw = _read_yaml(p)
    r = _Reader(p.name)
    r.check_keys(raw, "", {"plans"})
    plans_raw = raw.get("plans")
    if not isinstance(plans_raw, dict) or not plans_raw:
        raise SpecError([(f"{p}: plans", "must map plan names to their sizes (see inventory/plans.yaml)")])
    out: dict[str, PlanPreset] = {}
    for pname, body in plans_raw.items():
        ppath = f"plans.{pname}"
        if not isinstance(body, dict):
            r.add(ppath, "must be a mapping with description, etcd, master and worker")
            continue
        r.check_keys(body, ppath, {"description", *ROLES})
        roles = {}
        for role in ROLES:
            rpath = f"{ppath}.{role}"
            rd = r.section(body, role, ppath, {"count", "cpus", "memory_mb", "disk_gb"})
            vals = {
                k: r.get_int(rd, k, rpath, None, required=True)
                for k in ("count", "cpus", "memory_mb", "disk_gb")
            }
            roles[role] = RoleSpec(
                count=vals["count"] or 0,
                cpus=vals["cpus"] or 0,
                memory_mb=vals["memory_mb"] or 0,
                disk_gb=vals["disk_gb"] or 0,
            )
        topo = Topology(**roles)
        r.problems += _check_topology(topo, path_prefix=f"{ppath}.")
        out[str(pname)] = PlanPreset(str(pname), str(body.get("description") or ""), topo)
    if r.problems:
        raise SpecError([(f"{p}: {fp}", m) for fp, m in r.problems])
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec(
    path: Path | None,
    *,
    name: str | None = None,
    plan: str | None = None,
    env: Mapping[str, str],
    check: bool = True,
    plans: Mapping[str, PlanPreset] | None = None,
) -> ClusterSpec:
    """Read, merge and (unless check=False) validate a spec; raise SpecError with every problem.

    path None builds the spec from name/plan and the environment alone. Problems in values
    that came from the environment name the variable that set them.
    """
    raw: dict[str, Any] = _read_yaml(path) if path is not None else {}
    if name is not None:
        raw["name"] = name
    if plan is not None:
        raw["plan"] = plan
    r = _Reader(str(path) if path else None)
    legacy = _migrate_artifact_source(raw, r)
    if path is not None:
        _resolve_ca_file(raw, path.parent)
        _resolve_artifact_paths(raw, path.parent)
        _resolve_etcd_artifact(raw, path.parent)
    origins = _fill_from_env(raw, env)
    if legacy:
        origins.update(legacy)
    if plans is None:
        plans = load_plans(env.get(PLANS_FILE_ENV) or None)

    spec = _build(raw, r, plans)
    problems = list(r.problems)
    if check:
        broken = [p for p, _ in problems] + r.unknown
        for p, m in _check(spec):
            if not any(p == b or p.startswith(b + ".") or p.startswith(b + "[") for b in broken):
                problems.append((p, m))
    if problems:
        raise SpecError(_annotate(_dedupe(problems), origins))
    return spec


def spec_from_dict(data: Mapping[str, Any]) -> ClusterSpec:
    """A spec back from ClusterSpec.to_dict() (the state's spec.yaml), without re-validating it
    or reading the environment: it is what the cluster was built from, not a new request."""
    raw = {k: v for k, v in dict(data).items() if k not in ("source", "plan")}
    r = _Reader(str(data.get("source") or "spec.yaml in the cluster state"))
    _migrate_artifact_source(raw, r)
    spec = _build(raw, r, {})
    if r.problems:
        raise SpecError(r.problems)
    plan = data.get("plan")
    return dataclasses.replace(spec, plan=str(plan) if plan else None)


def validate(spec: ClusterSpec) -> None:
    """Raise SpecError listing every problem in spec, each as (field path, what to do)."""
    problems = _check(spec)
    if problems:
        raise SpecError(_dedupe(problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML silently keeps the last of two equal keys; in a spec that hides a mistake."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        if isinstance(key, str):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([(str(path), "no such file; check the path given to -f")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([(str(path), f"cannot be read: {exc}")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark and exc.context_mark.line != (mark.line if mark else -1):
            # The parser notices a missing ']' or quote lines later; point at where it began too.
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise SpecError([(where, f"YAML syntax error: {what}; fix the file at that line")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([(str(path), f"YAML error: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            [(str(path), f"must be a YAML mapping (name:, plan:, vsphere: ...), got {type(data).__name__}")]
        )
    return data


def _fill_from_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Fill settings the file leaves out from the environment; return {field path: variable}."""
    origins: dict[str, str] = {}
    vs = raw.get("vsphere")
    tls = vs.get("tls") if isinstance(vs, dict) else None
    # TLS verification is one choice: a file that makes it must not be contradicted by env.
    file_chose_tls = isinstance(tls, dict) and any(v is not None for v in tls.values())
    for keys, var in ENV_SETTINGS:
        value = env.get(var)
        if value is None or value.strip() == "":
            continue
        if keys[:2] == ("vsphere", "tls") and file_chose_tls:
            continue
        d: Any = raw
        for k in keys[:-1]:
            if d.get(k) is None:
                d[k] = {}
            d = d[k]
            if not isinstance(d, dict):
                break
        else:
            if d.get(keys[-1]) is None:
                d[keys[-1]] = _env_value(keys[-1], value.strip())
                origins[".".join(keys)] = var
    return origins


def _env_value(key: str, value: str) -> Any:
    if key == "prefix" and value.isdigit():
        return int(value)
    if key == "insecure":
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    if key == "dns":
        return [s.strip() for s in value.split(",") if s.strip()]
    return value


def _annotate(problems: list[tuple[str, str]], origins: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for p, m in problems:
        var = origins.get(p) or next((v for o, v in origins.items() if p.startswith(o + "[")), None)
        out.append((p, f"{m} (the value came from {var})" if var else m))
    return out


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


class _Reader:
    """Reads raw YAML into typed values, collecting problems instead of stopping at the first."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []
        self.unknown: list[str] = []  # fields left without a value because of another problem

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    @staticmethod
    def join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def check_keys(self, d: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in d:
            if k in allowed:
                continue
            kp = self.join(path, str(k))
            if str(k).lower() in _CREDENTIAL_KEYS:
                self.add(
                    kp,
                    "credentials never go in the spec: export VKP_VSPHERE_USER and VKP_VSPHERE_PASSWORD "
                    "(`vkp lab env` does for the lab), or name other variables in "
                    "vsphere.credentials.user_env / password_env",
                )
                continue
            close = difflib.get_close_matches(str(k), sorted(allowed), n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(sorted(allowed))}"
            )
            self.add(kp, f"unknown key; {hint}")

    def section(self, d: dict[str, Any], key: str, path: str, allowed: set[str]) -> dict[str, Any]:
        value = d.get(key)
        if value is None:
            return {}
        kp = self.join(path, key)
        if not isinstance(value, dict):
            self.add(kp, f"must be a mapping with keys {', '.join(sorted(allowed))}; got {value!r}")
            return {}
        self.check_keys(value, kp, allowed)
        return value

    def get_str(self, d: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = d.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(self.join(path, key), f"must be a string; got {value!r}")
            return default
        s = str(value).strip()
        return s if s else default

    def get_int(
        self, d: dict[str, Any], key: str, path: str, default: int | None, *, required: bool = False
    ) -> int | None:
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            if required and default is None:
                self.add(kp, "required")
            return default
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            unit = {"memory_mb": " of MiB, e.g. 4096", "disk_gb": " of GiB, e.g. 40"}.get(key, "")
            self.add(kp, f"must be a whole number{unit}; got {value!r}")
            return default
        return value

    def get_bool(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = d.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(self.join(path, key), f"must be true or false; got {value!r}")
            return default
        return value

    def get_str_list(self, d: dict[str, Any], key: str, path: str) -> tuple[list[str], bool]:
        """(items, was_a_list); a comma-separated string is accepted too."""
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            return [], False
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()], False
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                if isinstance(item, str | int) and not isinstance(item, bool):
                    out.append(str(item).strip())
                else:
                    self.add(f"{kp}[{i}]", f"must be a string; got {item!r}")
            return out, True
        self.add(kp, f"must be a list (or a comma-separated string); got {value!r}")
        return [], False


_CREDENTIAL_KEYS = {"user", "username", "password", "pass", "passwd", "secret"}
_TOP_KEYS = {
    "name",
    "plan",
    "vsphere",
    "topology",
    "network",
    "placement",
    "ssh",
    "kubernetes",
    "etcd",
    "pki",
}
_VSPHERE_KEYS = {
    "server", "port", "datacenter", "cluster", "datastore", "network", "template", "folder",
    "resource_pool", "linked_clone", "credentials", "tls",
}  # fmt: skip
_ROLE_KEYS = {"count", "cpus", "memory_mb", "disk_gb", "addresses"}
_K8S_KEYS = {"version", "pod_cidr", "service_cidr", "cni", "cni_version", "vsphere_csi", "artifacts"}
_ARTIFACT_KEYS = {"source", "image_repository", "image_tarballs", "sandbox_image"}


def _build(raw: dict[str, Any], r: _Reader, plans: Mapping[str, PlanPreset]) -> ClusterSpec:
    r.check_keys(raw, "", _TOP_KEYS)
    name = r.get_str(raw, "name", "") or ""
    plan_name = r.get_str(raw, "plan", "")
    preset = None
    if plan_name is not None:
        preset = plans.get(plan_name)
        if preset is None:
            close = difflib.get_close_matches(plan_name, list(plans), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            r.add(
                "plan", f"unknown plan {plan_name!r}; {hint}known plans: {', '.join(plans)} (see `vkp plans`)"
            )

    # vsphere
    vs = r.section(raw, "vsphere", "", _VSPHERE_KEYS)
    server = r.get_str(vs, "server", "vsphere")
    port = r.get_int(vs, "port", "vsphere", 443) or 443
    if server:
        server, port = _split_server(server, port, "port" in vs, r)
    cred = r.section(vs, "credentials", "vsphere", {"user_env", "password_env"})
    tls_raw = r.section(vs, "tls", "vsphere", {"ca_file", "thumbprint", "insecure"})
    ca_file = r.get_str(tls_raw, "ca_file", "vsphere.tls")
    thumb = r.get_str(tls_raw, "thumbprint", "vsphere.tls")
    vsphere = VSphereSpec(
        server=server,
        port=port,
        datacenter=r.get_str(vs, "datacenter", "vsphere"),
        cluster=r.get_str(vs, "cluster", "vsphere"),
        datastore=r.get_str(vs, "datastore", "vsphere"),
        network=r.get_str(vs, "network", "vsphere"),
        template=r.get_str(vs, "template", "vsphere"),
        folder=(r.get_str(vs, "folder", "vsphere") or "").strip("/") or None,
        resource_pool=r.get_str(vs, "resource_pool", "vsphere"),
        linked_clone=r.get_bool(vs, "linked_clone", "vsphere", True),
        credentials=Credentials(
            user_env=r.get_str(cred, "user_env", "vsphere.credentials") or Credentials.user_env,
            password_env=r.get_str(cred, "password_env", "vsphere.credentials") or Credentials.password_env,
        ),
        tls=TLS(
            ca_file=ca_file,
            thumbprint=(normalize_thumbprint(thumb) or thumb) if thumb else None,
            insecure=r.get_bool(tls_raw, "insecure", "vsphere.tls", False),
        ),
    )

    # topology: the plan's sizes, overridden field by field by the file
    topo_raw = r.section(raw, "topology", "", set(ROLES))
    roles = {}
    for role in ROLES:
        rpath = f"topology.{role}"
        rd = r.section(topo_raw, role, "topology", _ROLE_KEYS)
        base = preset.topology.role(role) if preset else None
        vals: dict[str, int] = {}
        for k in ("count", "cpus", "memory_mb", "disk_gb"):
            v = r.get_int(rd, k, rpath, getattr(base, k) if base else None)
            if v is None:
                v = 0
                if plan_name is not None:
                    r.unknown.append(f"{rpath}.{k}")  # the unknown-plan problem already covers it
                else:
                    r.add(
                        f"{rpath}.{k}",
                        f"required when no plan is named; set it, or name a plan ({', '.join(plans)})",
                    )
            vals[k] = v
        addrs, is_list = r.get_str_list(rd, "addresses", rpath)
        for i, a in enumerate(addrs):
            ap = f"{rpath}.addresses[{i}]" if is_list else f"{rpath}.addresses"
            if _ip(a) is None:
                r.add(ap, f"{a!r} is not an IP address")
        roles[role] = RoleSpec(
            count=vals["count"],
            cpus=vals["cpus"],
            memory_mb=vals["memory_mb"],
            disk_gb=vals["disk_gb"],
            addresses=tuple(a for a in addrs if _ip(a) is not None),
        )
    topology = Topology(**roles)

    # network
    net = r.section(raw, "network", "", {"pool", "prefix", "gateway", "dns", "api_endpoint"})
    pool_entries, pool_is_list = r.get_str_list(net, "pool", "network")
    pool: list[AddressRange] = []
    for i, entry in enumerate(pool_entries):
        pp = f"network.pool[{i}]" if pool_is_list else "network.pool"
        for part in [p.strip() for p in entry.split(",") if p.strip()]:
            rng = _parse_range(part)
            if rng is None:
                r.add(pp, f"{part!r} is neither an address nor a range like 198.18.0.10-198.18.0.50")
            else:
                pool.append(rng)
    gateway = r.get_str(net, "gateway", "network")
    if gateway is not None and _ip(gateway) is None:
        r.add("network.gateway", f"{gateway!r} is not an IP address")
        gateway = None
    dns, dns_is_list = r.get_str_list(net, "dns", "network")
    for i, a in enumerate(dns):
        if _ip(a) is None:
            r.add(f"network.dns[{i}]" if dns_is_list else "network.dns", f"{a!r} is not an IP address")
    api_raw = net.get("api_endpoint")
    if isinstance(api_raw, str):
        api_raw = {"address": api_raw}  # the short form: api_endpoint: 10.0.0.5
    api = r.section({"api_endpoint": api_raw}, "api_endpoint", "network", {"address", "port", "mode"})
    api_addr = r.get_str(api, "address", "network.api_endpoint")
    if api_addr is not None and _ip(api_addr) is None:
        r.add("network.api_endpoint.address", f"{api_addr!r} is not an IP address")
        api_addr = None
    network = NetworkSpec(
        pool=tuple(pool),
        prefix=r.get_int(net, "prefix", "network", None),
        gateway=gateway,
        dns=tuple(a for a in dns if _ip(a) is not None),
        api_endpoint=ApiEndpointSpec(
            address=api_addr,
            port=r.get_int(api, "port", "network.api_endpoint", 6443) or 0,
            mode=r.get_str(api, "mode", "network.api_endpoint", "auto") or "auto",
        ),
    )

    pl = r.section(raw, "placement", "", {"hosts", "anti_affinity"})
    hosts, _ = r.get_str_list(pl, "hosts", "placement")
    placement = PlacementSpec(
        hosts=tuple(hosts), anti_affinity=r.get_bool(pl, "anti_affinity", "placement", True)
    )

    sd = r.section(raw, "ssh", "", {"user", "port"})
    ssh = SSHSpec(
        user=r.get_str(sd, "user", "ssh", SSHSpec.user) or "", port=r.get_int(sd, "port", "ssh", 22) or 0
    )

    kd = r.section(raw, "kubernetes", "", _K8S_KEYS)
    kdef, adef = KubernetesSpec(), ArtifactsSpec()
    ad = r.section(kd, "artifacts", "kubernetes", _ARTIFACT_KEYS)
    cni_version = r.get_str(kd, "cni_version", "kubernetes")
    kubernetes = KubernetesSpec(
        version=(r.get_str(kd, "version", "kubernetes", kdef.version) or "").removeprefix("v"),
        pod_cidr=r.get_str(kd, "pod_cidr", "kubernetes", kdef.pod_cidr) or "",
        service_cidr=r.get_str(kd, "service_cidr", "kubernetes", kdef.service_cidr) or "",
        cni=r.get_str(kd, "cni", "kubernetes", kdef.cni) or "",
        cni_version=cni_version.removeprefix("v") if cni_version else None,
        vsphere_csi=r.get_bool(kd, "vsphere_csi", "kubernetes", False),
        artifacts=ArtifactsSpec(
            source=r.get_str(ad, "source", "kubernetes.artifacts", adef.source) or adef.source,
            image_repository=(
                r.get_str(ad, "image_repository", "kubernetes.artifacts", adef.image_repository) or ""
            ).rstrip("/"),
            image_tarballs=r.get_str(ad, "image_tarballs", "kubernetes.artifacts"),
            sandbox_image=r.get_str(ad, "sandbox_image", "kubernetes.artifacts"),
        ),
    )

    ed = r.section(raw, "etcd", "", {"heartbeat_interval", "election_timeout", "artifact", "version"})
    etcd = EtcdSpec(
        heartbeat_interval=r.get_int(ed, "heartbeat_interval", "etcd", 100) or 0,
        election_timeout=r.get_int(ed, "election_timeout", "etcd", 1000) or 0,
        artifact=(r.get_str(ed, "artifact", "etcd", ETCD_PACKAGE) or ETCD_PACKAGE).strip(),
        version=(r.get_str(ed, "version", "etcd", DEFAULT_ETCD_VERSION) or "").removeprefix("v"),
    )
    pk = r.section(raw, "pki", "", {"key_type", "rsa_bits"})
    pki = PKISpec(
        key_type=r.get_str(pk, "key_type", "pki", "rsa") or "",
        rsa_bits=r.get_int(pk, "rsa_bits", "pki", 2048) or 0,
    )
    return ClusterSpec(
        name=name,
        plan=plan_name,
        topology=topology,
        vsphere=vsphere,
        network=network,
        placement=placement,
        ssh=ssh,
        kubernetes=kubernetes,
        etcd=etcd,
        pki=pki,
        source=r.source,
    )


def _resolve_ca_file(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, so an inventory directory can carry its CA and still be moved.
    tls = raw.get("vsphere", {}).get("tls") if isinstance(raw.get("vsphere"), dict) else None
    if isinstance(tls, dict) and isinstance(tls.get("ca_file"), str) and tls["ca_file"].strip():
        ca = Path(tls["ca_file"].strip()).expanduser()
        if not ca.is_absolute():
            tls["ca_file"] = str((base / ca).resolve())


def _migrate_artifact_source(raw: dict[str, Any], r: _Reader) -> dict[str, str]:
    """kubernetes.artifact_source (before artifacts: existed) becomes kubernetes.artifacts.source.

    Done before the environment is read, so the file's value keeps winning over VKP_K8S_ARTIFACTS.
    """
    kd = raw.get("kubernetes")
    if not isinstance(kd, dict) or "artifact_source" not in kd:
        return {}
    old = kd.pop("artifact_source")
    ad = kd.get("artifacts")
    if ad is None:
        ad = kd["artifacts"] = {}
    if not isinstance(ad, dict):
        return {}  # the section's own problem is reported when it is read
    if ad.get("source") is not None:
        r.add(
            "kubernetes.artifact_source",
            "is the old name of kubernetes.artifacts.source, which is set too; keep only artifacts.source",
        )
        return {}
    ad["source"] = old
    return {"kubernetes.artifacts.source": "kubernetes.artifact_source, the old name of this field"}


def _resolve_artifact_paths(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, like ca_file, so an inventory directory can carry its artifacts.
    kd = raw.get("kubernetes")
    ad = kd.get("artifacts") if isinstance(kd, dict) else None
    if not isinstance(ad, dict):
        return
    src = ad.get("source")
    if isinstance(src, str) and src.strip().startswith("local:"):
        rest = src.strip()[len("local:") :].strip()
        if rest and not Path(rest).expanduser().is_absolute():
            ad["source"] = f"local:{(base / rest).resolve()}"
    tarballs = ad.get("image_tarballs")
    if isinstance(tarballs, str) and tarballs.strip():
        t = Path(tarballs.strip()).expanduser()
        if not t.is_absolute():
            ad["image_tarballs"] = str((base / t).resolve())


def _resolve_etcd_artifact(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, like kubernetes.artifacts.source.
    ed = raw.get("etcd")
    if not isinstance(ed, dict):
        return
    src = ed.get("artifact")
    if isinstance(src, str) and src.strip().startswith("local:"):
        rest = src.strip()[len("local:") :].strip()
        if rest and not Path(rest).expanduser().is_absolute():
            ed["artifact"] = f"local:{(base / rest).resolve()}"


def _split_server(server: str, port: int, port_given: bool, r: _Reader) -> tuple[str, int]:
    """Accept "host", "host:port", "[v6]:port" or a URL such as https://vc.example.com/sdk."""
    s = re.sub(r"^[a-z]+://", "", server.strip(), flags=re.I).split("/", 1)[0]
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", s) or re.fullmatch(r"([^:]+):(\d+)", s)
    if not m:
        return s, port
    host, p = m.group(1), m.group(2)
    if p is not None and port_given and int(p) != port:
        r.add("vsphere.port", f"is {port} but vsphere.server says port {p}; keep one of them")
    return host, int(p) if p is not None else port


def _ip(s: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _parse_range(s: str) -> AddressRange | None:
    if "-" in s and _ip(s) is None:  # IPv6 addresses never contain '-', so this split is safe
        a, _, b = s.partition("-")
        a, b = a.strip(), b.strip()
        if _ip(a) is None or _ip(b) is None:
            return None
        return AddressRange(str(_ip(a)), str(_ip(b)))
    ip = _ip(s)
    return AddressRange(str(ip), str(ip)) if ip is not None else None


_THUMB_HEX = re.compile(r"[0-9A-Fa-f]+")


def normalize_thumbprint(s: str) -> str | None:
    """'ab:cd..' / 'ABCD..' / 'ab cd ..' -> 'AB:CD:..' for a SHA-256 thumbprint, else None."""
    h = re.sub(r"[\s:]", "", s)
    if len(h) != 64 or not _THUMB_HEX.fullmatch(h):
        return None
    h = h.upper()
    return ":".join(h[i : i + 2] for i in range(0, 64, 2))


# ---------------------------------------------------------------------------------------------
# Validation (pure: no files, no network)

_DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_K8S_VERSION = re.compile(r"1\.(\d+)\.(\d+)")
_SEMVER = re.compile(r"\d+\.\d+\.\d+")
# A registry host (with optional port) and optional path, as kubeadm's imageRepository takes it.
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)?")
# registry/path/name:tag or @sha256:digest (lower-case repository, as the distribution spec says).
_IMAGE_REF = re.compile(
    r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"
)
_THUMB = re.compile(r"([0-9A-F]{2}:){31}[0-9A-F]{2}")
_ROLE_PLURAL = {"etcd": "etcd members", "master": "masters", "worker": "workers"}
_REQUIRED_VSPHERE = ("server", "datacenter", "cluster", "datastore", "network", "template")


def _check(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    p += _check_name(spec)
    p += _check_topology(spec.topology)
    p += _check_vsphere(spec.vsphere)
    p += _check_network(spec)
    p += _check_misc(spec)
    return p


def node_name(cluster: str, role: str, n: int) -> str:
    """The VM and host name of the n-th (from 1) node of a role."""
    return f"{cluster}-{role}-{n}"


def _check_name(spec: ClusterSpec) -> list[tuple[str, str]]:
    name = spec.name
    if not name:
        return [("name", "required: set name in the spec or pass NAME on the command line")]
    if not _DNS_LABEL.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        fixed = fixed if fixed and fixed[0].isalpha() else f"k8s-{fixed}".rstrip("-")
        return [
            (
                "name",
                f"must be a DNS label (lowercase letters, digits and '-', starting with a letter, not "
                f"ending with '-'), since it becomes VM and host names; got {name!r}, try {fixed!r}",
            )
        ]
    longest = max(
        (
            node_name(name, role, spec.topology.role(role).count)
            for role in ROLES
            if spec.topology.role(role).count > 0
        ),
        key=len,
        default=name,
    )
    if len(longest) > HOSTNAME_MAX:
        room = HOSTNAME_MAX - (len(longest) - len(name))
        return [
            (
                "name",
                f"too long: node name {longest!r} has {len(longest)} characters, over the {HOSTNAME_MAX} "
                f"a host name allows; shorten the name to at most {room} characters",
            )
        ]
    return []


def _check_topology(topo: Topology, path_prefix: str = "topology.") -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    etcd, master, worker = topo.etcd, topo.master, topo.worker
    if etcd.count < 1 or etcd.count % 2 == 0:
        p.append(
            (f"{path_prefix}etcd.count", f"must be odd (1, 3, 5) so etcd keeps quorum; got {etcd.count}")
        )
    elif etcd.count > 7:
        p.append(
            (
                f"{path_prefix}etcd.count",
                f"must be at most 7: every write goes to all members; got {etcd.count}",
            )
        )
    if master.count < 1:
        p.append(
            (
                f"{path_prefix}master.count",
                f"at least one master is needed to run the Kubernetes API; got {master.count}",
            )
        )
    if worker.count < 1:
        p.append(
            (
                f"{path_prefix}worker.count",
                f"at least one worker is needed (masters are tainted NoSchedule, so workloads run on "
                f"workers); got {worker.count}",
            )
        )
    for role in ROLES:
        rs, mins, rp = topo.role(role), ROLE_MINIMUMS[role], f"{path_prefix}{role}"
        what = "an etcd member" if role == "etcd" else f"a {role}"
        if rs.cpus < mins.cpus:
            p.append((f"{rp}.cpus", f"{what} needs at least {mins.cpus} vCPU(s); got {rs.cpus}"))
        if rs.memory_mb < mins.memory_mb:
            p.append(
                (
                    f"{rp}.memory_mb",
                    f"{what} needs at least {mins.memory_mb} MB ({_ROLE_NEEDS[role]}); got {rs.memory_mb}; "
                    f"raise it or pick a larger plan",
                )
            )
        elif rs.memory_mb % 4:
            p.append(
                (
                    f"{rp}.memory_mb",
                    f"must be a multiple of 4 (vSphere sizes memory in 4 MB steps); got {rs.memory_mb}",
                )
            )
        if rs.disk_gb < mins.disk_gb:
            p.append((f"{rp}.disk_gb", f"{what} needs at least {mins.disk_gb} GB of disk; got {rs.disk_gb}"))
        if len(rs.addresses) > max(rs.count, 0):
            p.append(
                (
                    f"{rp}.addresses",
                    f"lists {len(rs.addresses)} addresses for {rs.count} {_ROLE_PLURAL[role]}; "
                    f"remove the extra ones or raise {rp}.count",
                )
            )
    return p


def _check_vsphere(vs: VSphereSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    for k in _REQUIRED_VSPHERE:
        if not getattr(vs, k):
            p.append(
                (f"vsphere.{k}", f"required: set vsphere.{k} in the spec or export {ENV_FOR[f'vsphere.{k}']}")
            )
    if not 1 <= vs.port <= 65535:
        p.append(("vsphere.port", f"must be a TCP port (1-65535); got {vs.port}"))
    tls = vs.tls
    if tls.insecure and (tls.thumbprint or tls.ca_file):
        p.append(
            (
                "vsphere.tls.insecure",
                "contradicts vsphere.tls.thumbprint/ca_file; remove insecure and the certificate is verified",
            )
        )
    elif not (tls.insecure or tls.thumbprint or tls.ca_file):
        p.append(
            (
                "vsphere.tls",
                "say how to verify vCenter's certificate: thumbprint (SHA-256; VKP_VSPHERE_THUMBPRINT), "
                "ca_file (VKP_VSPHERE_CA_FILE), or insecure: true (VKP_VSPHERE_INSECURE=1) to skip it",
            )
        )
    if tls.thumbprint and not _THUMB.fullmatch(tls.thumbprint):
        h = re.sub(r"[\s:]", "", tls.thumbprint)
        sha1 = " (that looks like a SHA-1 thumbprint)" if len(h) == 40 else ""
        p.append(
            (
                "vsphere.tls.thumbprint",
                f"must be a SHA-256 fingerprint, 32 hex bytes{sha1}; get it with `openssl s_client -connect "
                f"{vs.server or 'VCENTER'}:{vs.port} </dev/null | openssl x509 -noout -fingerprint -sha256`",
            )
        )
    for k in ("user_env", "password_env"):
        v = getattr(vs.credentials, k)
        if not _ENV_NAME.fullmatch(v):
            p.append(
                (
                    f"vsphere.credentials.{k}",
                    f"must name an environment variable (e.g. VKP_VSPHERE_USER); got {v!r}",
                )
            )
    return p


def _check_network(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    net, topo = spec.network, spec.topology
    if net.gateway is None:
        p.append(
            ("network.gateway", "required: set network.gateway in the spec or export VKP_NETWORK_GATEWAY")
        )
    if net.prefix is None:
        p.append(
            (
                "network.prefix",
                "required: set network.prefix (e.g. 24) in the spec or export VKP_NETWORK_PREFIX",
            )
        )
    if not net.pool:
        p.append(
            (
                "network.pool",
                "required: set network.pool (a range like 10.0.0.10-10.0.0.50, or a list) "
                "or export VKP_NETWORK_POOL",
            )
        )
    subnet: IPNetwork | None = None
    gw = _ip(net.gateway) if net.gateway else None
    if gw is not None and net.prefix is not None:
        limit = 30 if gw.version == 4 else 126
        if not 1 <= net.prefix <= limit:
            p.append(
                (
                    "network.prefix",
                    f"must be between 1 and {limit} so the subnet has room for nodes; got {net.prefix}",
                )
            )
        else:
            subnet = ipaddress.ip_network(f"{gw}/{net.prefix}", strict=False)
            if gw in (subnet.network_address, subnet.broadcast_address):
                p.append(
                    (
                        "network.gateway",
                        f"{gw} is the network or broadcast address of {subnet}; use a host address",
                    )
                )
    where = f"the subnet {subnet} (network.gateway/network.prefix)" if subnet else "the subnet"

    def outside(a: str) -> bool:
        ip = _ip(a)
        return subnet is not None and ip is not None and (ip.version != subnet.version or ip not in subnet)

    def unusable(a: str) -> str | None:
        ip = _ip(a)
        if ip is None or subnet is None or ip not in subnet:
            return None
        if ip == gw:
            return "the gateway"
        if subnet.version == 4 and ip in (subnet.network_address, subnet.broadcast_address):
            return "the network or broadcast address"
        return None

    # the pool
    pool_bad = False
    for i, rng in enumerate(net.pool):
        rp = f"network.pool[{i}]" if len(net.pool) > 1 else "network.pool"
        if not rng.well_formed:
            p.append((rp, f"{rng} is not a range from low to high; write it as low-high"))
            pool_bad = True
            continue
        if outside(rng.first) or outside(rng.last):
            p.append((rp, f"{rng} is outside {where}; use addresses inside it or fix the gateway/prefix"))
            pool_bad = True
        specials: list[tuple[IPAddress, str]] = [(gw, "the gateway")] if gw is not None else []
        if subnet is not None and subnet.version == 4:
            specials += [
                (subnet.network_address, "the network address"),
                (subnet.broadcast_address, "the broadcast address"),
            ]
        for special, label in specials:
            if str(special) in rng:
                p.append((rp, f"{rng} includes {label} {special}; leave it out of the pool"))
                pool_bad = True
    for i, j, addr in _overlaps(net.pool):
        p.append(("network.pool", f"{addr} appears in entries {i} and {j}; list each address once"))
        pool_bad = True

    # pinned addresses
    seen: dict[str, str] = {}
    for role in ROLES:
        for i, a in enumerate(topo.role(role).addresses):
            ap = f"topology.{role}.addresses[{i}]"
            if a in seen:
                p.append((ap, f"{a} is also given to {seen[a]}; every node needs its own address"))
            seen.setdefault(a, ap)
            if outside(a):
                p.append((ap, f"{a} is outside {where}; use an address inside it"))
            elif (u := unusable(a)) is not None:
                p.append((ap, f"{a} is {u}; pick another address"))

    # the pool must cover what is not pinned
    pinned_total = sum(min(len(topo.role(r).addresses), max(topo.role(r).count, 0)) for r in ROLES)
    needed = sum(max(topo.role(r).count, 0) for r in ROLES) - pinned_total
    if net.pool and not pool_bad and needed > 0:
        available = sum(rng.size for rng in net.pool) - sum(1 for a in seen if net.in_pool(a))
        if available < needed:
            counts = " + ".join(f"{topo.role(r).count} {r}" for r in ROLES)
            p.append(
                (
                    "network.pool",
                    f"has {available} free address(es) but the topology needs {needed} ({counts}); "
                    f"widen the pool or lower the counts",
                )
            )

    # the API endpoint
    api = net.api_endpoint
    ap = "network.api_endpoint"
    masters = topo.master.count
    if api.mode not in API_MODES:
        p.append((f"{ap}.mode", f"unknown mode {api.mode!r}; use one of {', '.join(API_MODES)}"))
    elif api.mode == "direct" and masters > 1:
        p.append(
            (
                f"{ap}.mode",
                f"direct serves the API from the only master, but there are {masters}; use kube-vip or "
                "haproxy-keepalived with a virtual address",
            )
        )
    vip = api.mode in ("kube-vip", "haproxy-keepalived") or (api.mode == "auto" and masters > 1)
    if api.address is None:
        if vip and api.mode in API_MODES:
            p.append(
                (
                    f"{ap}.address",
                    f"required with {masters} master(s) ({'kube-vip' if api.mode == 'auto' else api.mode} "
                    f"moves a virtual address between them): pick a free address in {where} outside "
                    "network.pool, or export VKP_API_ENDPOINT",
                )
            )
    else:
        first_master = topo.master.addresses[0] if topo.master.addresses else None
        direct_to_master = api.address == first_master and masters == 1 and api.mode in ("auto", "direct")
        if net.in_pool(api.address):
            p.append(
                (
                    f"{ap}.address",
                    f"{api.address} is inside the node pool network.pool, so a node could be given it; "
                    f"pick an address outside the pool (but inside {where})",
                )
            )
        elif outside(api.address):
            p.append((f"{ap}.address", f"{api.address} is outside {where}; the nodes must reach it directly"))
        elif (u := unusable(api.address)) is not None:
            p.append((f"{ap}.address", f"{api.address} is {u}; pick another address"))
        elif api.address in seen and not direct_to_master:
            p.append(
                (f"{ap}.address", f"{api.address} is also a node address ({seen[api.address]}); pick another")
            )
        if api.mode == "direct" and not direct_to_master:
            p.append(
                (
                    f"{ap}.address",
                    "with mode direct the endpoint is the master's own address; leave address unset, or pin "
                    "the same address in topology.master.addresses",
                )
            )
    if not 1 <= api.port <= 65535:
        p.append((f"{ap}.port", f"must be a TCP port (1-65535); got {api.port}"))
    return p


def _overlaps(pool: tuple[AddressRange, ...]) -> Iterator[tuple[int, int, str]]:
    """(entry i, entry j, first shared address) for each entry that overlaps an earlier-starting one."""
    spans = []
    for i, r in enumerate(pool):
        if r.well_formed:
            lo, hi = r._bounds()
            spans.append((ipaddress.ip_address(r.first).version, lo, hi, i))
    spans.sort()
    reach: tuple[int, int, int] | None = None  # (version, highest end so far, its entry)
    for version, lo, hi, j in spans:
        if reach is not None and reach[0] == version and lo <= reach[1]:
            shared = ipaddress.IPv4Address(lo) if version == 4 else ipaddress.IPv6Address(lo)
            yield min(reach[2], j), max(reach[2], j), str(shared)
        if reach is None or reach[0] != version or hi > reach[1]:
            reach = (version, hi, j)


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return (
        a.version == b.version
        and int(a.network_address) <= int(b.broadcast_address)
        and int(b.network_address) <= int(a.broadcast_address)
    )


def _check_artifacts(a: ArtifactsSpec) -> list[tuple[str, str]]:
    from provisioner.bootstrap.artifacts import ArtifactSource

    p: list[tuple[str, str]] = []
    ap = "kubernetes.artifacts"
    try:
        ArtifactSource.parse(a.source)
    except ValueError as exc:
        p.append((f"{ap}.source", str(exc)))
    if not _REGISTRY.fullmatch(a.image_repository):
        p.append(
            (
                f"{ap}.image_repository",
                f"must be a registry and path without a scheme, like {DEFAULT_IMAGE_REPOSITORY} or "
                f"mirror.example.com:5000/k8s; got {a.image_repository!r}",
            )
        )
    if a.sandbox_image is not None and not _IMAGE_REF.fullmatch(a.sandbox_image):
        p.append(
            (
                f"{ap}.sandbox_image",
                f"must be an image with a tag or digest, like {DEFAULT_IMAGE_REPOSITORY}/pause:"
                f"{PAUSE_VERSION}; got {a.sandbox_image!r}",
            )
        )
    return p


def _check_etcd_artifact(e: EtcdSpec) -> list[tuple[str, str]]:
    from provisioner.bootstrap.artifacts import ETCD, ArtifactSource

    p: list[tuple[str, str]] = []
    if not e.from_package:
        try:
            ArtifactSource.parse(e.artifact, layout=ETCD)
        except ValueError as exc:
            msg = str(exc)
            if msg.startswith("must be "):
                msg = f"must be {ETCD_PACKAGE} (the distribution's etcd-server), {msg[len('must be ') :]}"
            p.append(("etcd.artifact", msg))
    if not _SEMVER.fullmatch(e.version):
        p.append(
            ("etcd.version", f"must be a release like {DEFAULT_ETCD_VERSION} (X.Y.Z); got {e.version!r}")
        )
    elif not e.from_package and not e.version.startswith("3."):
        p.append(("etcd.version", f"vkp's etcd configuration is for etcd 3.x; got {e.version}"))
    return p


def _check_misc(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    # placement
    dup = sorted({h for h in spec.placement.hosts if spec.placement.hosts.count(h) > 1})
    for h in dup:
        p.append(("placement.hosts", f"{h} is listed more than once; list each ESXi host once"))
    # ssh
    if not _USER_NAME.fullmatch(spec.ssh.user):
        p.append(("ssh.user", f"must be a Linux user name (lowercase, e.g. vkp); got {spec.ssh.user!r}"))
    if not 1 <= spec.ssh.port <= 65535:
        p.append(("ssh.port", f"must be a TCP port (1-65535); got {spec.ssh.port}"))
    # kubernetes
    k = spec.kubernetes
    lo, hi = K8S_MINORS
    if not _K8S_VERSION.fullmatch(k.version):
        p.append(
            ("kubernetes.version", f"must be a release like {DEFAULT_K8S_VERSION} (X.Y.Z); got {k.version!r}")
        )
    elif not lo <= k.minor <= hi:
        p.append(
            (
                "kubernetes.version",
                f"{k.version} is outside the versions vkp supports (1.{lo} to 1.{hi}); pick a release "
                f"in that range, e.g. {DEFAULT_K8S_VERSION}",
            )
        )
    if k.cni not in CNIS:
        p.append(("kubernetes.cni", f"unknown CNI {k.cni!r}; use one of {', '.join(CNIS)}"))
    nets: dict[str, IPNetwork] = {}
    for key, default in (("pod_cidr", "10.244.0.0/16"), ("service_cidr", "10.96.0.0/12")):
        value = getattr(k, key)
        try:
            nets[key] = ipaddress.ip_network(value, strict=True)
        except ValueError:
            try:
                fixed = ipaddress.ip_network(value, strict=False)
                p.append((f"kubernetes.{key}", f"{value} has host bits set; use {fixed}"))
            except ValueError:
                p.append((f"kubernetes.{key}", f"{value!r} is not a CIDR like {default}"))
    node_subnet = spec.network.subnet()
    for key, n in nets.items():
        if node_subnet is not None and _overlap(n, node_subnet):
            p.append(
                (
                    f"kubernetes.{key}",
                    f"{n} overlaps the node subnet {node_subnet}; pick a range that does not",
                )
            )
    pod, svc = nets.get("pod_cidr"), nets.get("service_cidr")
    if pod is not None and svc is not None and _overlap(pod, svc):
        p.append(
            ("kubernetes.service_cidr", f"{svc} overlaps kubernetes.pod_cidr {pod}; pick separate ranges")
        )
    if svc is not None and svc.version == 4 and svc.prefixlen < 12:
        p.append(
            (
                "kubernetes.service_cidr",
                f"kube-apiserver accepts at most a /12 for services; got /{svc.prefixlen}",
            )
        )
    if pod is not None and pod.version == 4:
        nodes = max(spec.topology.master.count, 0) + max(spec.topology.worker.count, 0)
        # Each node gets a /24 out of the pod CIDR (kube-controller-manager's default mask).
        if pod.prefixlen > 24 or 2 ** (24 - pod.prefixlen) < nodes:
            p.append(
                (
                    "kubernetes.pod_cidr",
                    f"{pod} is too small: every master and worker takes a /24 from it ({nodes} needed); "
                    "use a shorter prefix such as /16",
                )
            )
    if k.cni_version is not None and not _SEMVER.fullmatch(k.cni_version):
        p.append(("kubernetes.cni_version", f"must be a release like 3.28.1; got {k.cni_version!r}"))
    p += _check_artifacts(k.artifacts)
    # etcd tuning
    e = spec.etcd
    if e.heartbeat_interval < 1:
        p.append(
            (
                "etcd.heartbeat_interval",
                f"must be a positive number of milliseconds; got {e.heartbeat_interval}",
            )
        )
    elif e.election_timeout < 5 * e.heartbeat_interval:
        p.append(
            (
                "etcd.election_timeout",
                f"must be at least 5 x etcd.heartbeat_interval ({5 * e.heartbeat_interval} ms) or etcd "
                f"refuses to start; got {e.election_timeout}",
            )
        )
    if e.election_timeout > 50000:
        p.append(("etcd.election_timeout", f"etcd allows at most 50000 ms; got {e.election_timeout}"))
    p += _check_etcd_artifact(e)
    # pki
    if spec.pki.key_type not in KEY_TYPES:
        p.append(("pki.key_type", f"unknown key type {spec.pki.key_type!r}; use rsa or ecdsa"))
    if spec.pki.rsa_bits not in RSA_SIZES:
        p.append(
            ("pki.rsa_bits", f"must be one of {', '.join(map(str, RSA_SIZES))}; got {spec.pki.rsa_bits}")
        )
    return p
