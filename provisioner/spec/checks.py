"""Validation of a built spec: pure (no files, no network), every problem as (field path, what
to do)."""

from __future__ import annotations

import ipaddress
import re
import reprlib
from collections.abc import Iterator

from provisioner.bootstrap.artifacts import ETCD, ArtifactSource
from provisioner.errors import SpecError
from provisioner.spec.schema import (
    _K8S_VERSION,
    _ROLE_NEEDS,
    API_MODES,
    CGROUP_DRIVERS,
    CNIS,
    DEFAULT_CNI_PLUGINS_VERSION,
    DEFAULT_ETCD_VERSION,
    DEFAULT_IMAGE_REPOSITORY,
    DEFAULT_K8S_VERSION,
    DNS_ADDONS,
    ENV_FOR,
    ETCD_PACKAGE,
    HOSTNAME_MAX,
    K8S_MINORS,
    K8S_SUPPORTED_FROM,
    KEY_TYPES,
    LIMITS,
    ROLE_MINIMUMS,
    ROLES,
    RSA_SIZES,
    VIRTUAL_MODES,
    AddressRange,
    ArtifactsSpec,
    ClusterSpec,
    EtcdSpec,
    IPAddress,
    IPNetwork,
    NodeSettingsSpec,
    Topology,
    VSphereSpec,
    k8s_minor,
)
from provisioner.vsphere import endpoint

# ---------------------------------------------------------------------------------------------
# Validation (pure: no files, no network)

_DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SEMVER = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
# A registry host (with optional port) and optional path, as kubeadm's imageRepository takes it.
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)?")
# registry/path/name:tag or @sha256:digest (lower-case repository, as the distribution spec says).
_IMAGE_REF = re.compile(
    r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"
)
# kubeadm's check names: Port-6443, DirAvailable--etc-kubernetes-manifests, FileExisting-crictl.
_PREFLIGHT_CHECK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_THUMB = re.compile(r"([0-9A-F]{2}:){31}[0-9A-F]{2}")
_ROLE_PLURAL = {"etcd": "etcd members", "master": "masters", "worker": "workers"}
_REQUIRED_VSPHERE = ("server", "datacenter", "cluster", "datastore", "network", "template")
# Settings that name a vSphere inventory object; each is a name or an inventory path.
_VSPHERE_OBJECT_FIELDS = (
    "datacenter",
    "cluster",
    "datastore",
    "network",
    "template",
    "resource_pool",
    "folder",
)
# vCenter's address once vsphere.server's scheme, port and path are taken off (or an IP address).
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


# ---------------------------------------------------------------------------------------------
# Values from the user, shown and parsed safely

SHOW_MAX = 80
# Bounded at every level, so showing a value costs little however large or deep it is.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOW_MAX


def show(value: object) -> str:
    """A value from the user as a message quotes it: its repr, cut to SHOW_MAX characters.

    Every message that quotes user input goes through this: a value may be a megabyte string,
    a list behind YAML aliases or a number too long to print (str() refuses past 4300 digits).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    text = _REPR.repr(value)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


def key_text(key: object) -> str:
    """A mapping key as a field path names it: itself when it is short plain text, else shown."""
    if isinstance(key, str) and len(key) <= SHOW_MAX and _BAD_CHARACTER.search(key) is None:
        return key
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() < 64:
        return str(key)
    return show(key)


# ASCII digits only: str.isdigit() is also true of '²', which int() refuses, and int() takes
# other scripts' digits, which a spec must not. As many digits as a YAML int may have.
_DIGITS = re.compile(r"[0-9]{1,100}")


def parse_int(value: object) -> int | None:
    """The one parser of whole numbers in a spec (YAML ints, or digits in a string as the
    environment gives them); None for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    return None


# Characters no setting may hold: control characters (Unicode's Cc), line and paragraph
# separators, lone surrogates. They break output, logs and vCenter's names, and a lone
# surrogate cannot even be written to a UTF-8 terminal.
_BAD_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _bad_character(text: str) -> str | None:
    """What is wrong with the first character no setting may hold, or None."""
    m = _BAD_CHARACTER.search(text)
    return f"holds the control character U+{ord(m.group()):04X} at position {m.start() + 1}" if m else None


def host_name_problem(name: str) -> str | None:
    """Why name cannot be an ESXi host's name in vCenter (placement.hosts, --hosts), or None."""
    if not name:
        return "is empty; give the ESXi host's name as vCenter shows it"
    return vsphere_name_problem(name, path=False)


def text_problem(text: str) -> str | None:
    """Why a string cannot be a setting's value (with what to do), or None."""
    bad = _bad_character(text)
    return f"{bad}; remove it (a setting is one line of text)" if bad else None


def k8s_version_problem(version: str) -> str | None:
    """Why version cannot be kubernetes.version (not a 1.Y.Z release, or a minor outside
    K8S_MINORS), or None: the one range check, over schema.k8s_minor's parse."""
    lo, hi = K8S_MINORS
    if not _K8S_VERSION.fullmatch(version):
        return f"must be a release like {DEFAULT_K8S_VERSION} (X.Y.Z); got {show(version)}"
    if not lo <= k8s_minor(version) <= hi:
        return (
            f"{version} is outside the versions vkp supports (1.{K8S_SUPPORTED_FROM} to 1.{hi}; "
            f"1.{lo} to 1.{K8S_SUPPORTED_FROM - 1} for the embedded lab only); pick a release in that "
            f"range, e.g. {DEFAULT_K8S_VERSION}"
        )
    return None


def vsphere_name_problem(value: str, *, path: bool) -> str | None:
    """Why value cannot name a vSphere object, or None. path: a name or an inventory path
    ("templates/debian-12", "/DC0/host/C0"), where '/' separates levels and each level must be
    a valid name (a '/' inside a name is written %2f, as vSphere does); otherwise one name."""
    limit = LIMITS["inventory_name"]
    bad = _bad_character(value)
    if bad:
        return f"{bad}; use the name exactly as vCenter shows it"
    if path:
        levels = value.strip("/").split("/")
        if any(not level for level in levels):
            return f"has an empty level ('//') in {show(value)}; separate levels with one '/'"
    else:
        if "/" in value:
            return f"{show(value)} holds '/', which no name may; write a '/' inside a name as %2f"
        levels = [value]
    for level in levels:
        if len(level) > limit.maximum:
            what = "a level of the path" if path else "the name"
            return (
                f"{what} {show(level)} has {len(level)} characters; {limit.why}, so shorten it to "
                f"the name vCenter shows"
            )
    return None


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
                f"ending with '-'), since it becomes VM and host names; got {show(name)}, try {show(fixed)}",
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
                f"too long: node name {show(longest)} has {len(longest)} characters, over the {HOSTNAME_MAX} "
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
        over = set()
        for k in ("count", "cpus", "memory_mb", "disk_gb"):
            limit, value = LIMITS[f"{role}.count" if k == "count" else k], getattr(rs, k)
            if value > limit.maximum:
                p.append((f"{rp}.{k}", f"must be at most {limit.maximum} ({limit.why}); got {show(value)}"))
                over.add(k)
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
        elif rs.memory_mb % 4 and "memory_mb" not in over:
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
        p.append(("vsphere.port", f"must be a TCP port (1-65535); got {show(vs.port)}"))
    if vs.server and not (_HOST_NAME.fullmatch(vs.server) or _ip(vs.server) is not None):
        p.append(
            (
                "vsphere.server",
                f"must be vCenter's host name or IP address (host:port and https://host/sdk work too); "
                f"got {show(vs.server)}",
            )
        )
    for k in _VSPHERE_OBJECT_FIELDS:
        value = getattr(vs, k)
        if value and (why := vsphere_name_problem(value, path=True)) is not None:
            p.append((f"vsphere.{k}", why))
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
    cred = vs.credentials
    for k in ("user_env", "password_env"):
        v = getattr(cred, k)
        if not _ENV_NAME.fullmatch(v):
            p.append(
                (
                    f"vsphere.credentials.{k}",
                    f"must name an environment variable (e.g. VKP_VSPHERE_USER); got {show(v)}",
                )
            )
    if cred.user_env == cred.password_env:
        # One variable for both would print the password wherever the user name is shown.
        p.append(
            (
                "vsphere.credentials.password_env",
                f"is the same variable as user_env ({show(cred.user_env)}), so the password would be "
                "shown as the user name; name two different variables",
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
    if api.virtual not in VIRTUAL_MODES:
        p.append((f"{ap}.virtual", f"unknown {show(api.virtual)}; use one of {', '.join(VIRTUAL_MODES)}"))
    if api.mode not in API_MODES:
        p.append((f"{ap}.mode", f"unknown mode {show(api.mode)}; use one of {', '.join(API_MODES)}"))
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
                    f"required with {masters} master(s) ({api.virtual if api.mode == 'auto' else api.mode} "
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
    p: list[tuple[str, str]] = []
    ap = "kubernetes.artifacts"
    try:
        ArtifactSource.parse(a.source)
    except ValueError as exc:
        p.append((f"{ap}.source", _quoting(str(exc), a.source)))
    except RuntimeError:
        p.append((f"{ap}.source", _no_home(a.source)))
    if a.image_repository is not None and not _REGISTRY.fullmatch(a.image_repository):
        p.append(
            (
                f"{ap}.image_repository",
                f"must be a registry and path without a scheme, like {DEFAULT_IMAGE_REPOSITORY} or "
                f"mirror.example.com:5000/k8s; got {show(a.image_repository)}",
            )
        )
    if a.sandbox_image is not None and not _IMAGE_REF.fullmatch(a.sandbox_image):
        p.append(
            (
                f"{ap}.sandbox_image",
                f"must be an image with a tag or digest, like {DEFAULT_IMAGE_REPOSITORY}/pause:3.9; "
                f"got {show(a.sandbox_image)}",
            )
        )
    return p


def _quoting(message: str, value: str) -> str:
    # The artifact parser quotes the whole value; cut it like every other quoted value.
    return message.replace(repr(value.strip()), show(value.strip()))


def _no_home(value: str) -> str:
    # Path.expanduser() raises RuntimeError for ~name when there is no such user.
    return f"{show(value)} starts with ~ but names no user's home directory; give the full path"


def _check_etcd_artifact(e: EtcdSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if not e.from_package:
        try:
            ArtifactSource.parse(e.artifact, layout=ETCD)
        except ValueError as exc:
            msg = _quoting(str(exc), e.artifact)
            if msg.startswith("must be "):
                msg = f"must be {ETCD_PACKAGE} (the distribution's etcd-server), {msg[len('must be ') :]}"
            p.append(("etcd.artifact", msg))
        except RuntimeError:
            p.append(("etcd.artifact", _no_home(e.artifact)))
    if not _SEMVER.fullmatch(e.version):
        p.append(
            ("etcd.version", f"must be a release like {DEFAULT_ETCD_VERSION} (X.Y.Z); got {show(e.version)}")
        )
    elif not e.from_package and not e.version.startswith("3."):
        p.append(("etcd.version", f"vkp's etcd configuration is for etcd 3.x; got {e.version}"))
    return p


def _check_node_settings(n: NodeSettingsSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    np = "kubernetes.node"
    if n.cgroup_driver not in CGROUP_DRIVERS:
        p.append(
            (
                f"{np}.cgroup_driver",
                f"unknown cgroup driver {show(n.cgroup_driver)}; use systemd (where systemd manages the "
                "node's cgroups) or cgroupfs",
            )
        )
    limit = LIMITS["conntrack_max_per_core"]
    if n.conntrack_max_per_core is not None and n.conntrack_max_per_core < 0:
        p.append(
            (
                f"{np}.conntrack_max_per_core",
                "must be 0 (leave the host's conntrack table size alone) or more, or unset for "
                f"kube-proxy's default; got {n.conntrack_max_per_core}",
            )
        )
    elif n.conntrack_max_per_core is not None and n.conntrack_max_per_core > limit.maximum:
        p.append(
            (
                f"{np}.conntrack_max_per_core",
                f"must be at most {limit.maximum} ({limit.why}); got {show(n.conntrack_max_per_core)}",
            )
        )
    for i, name in enumerate(n.ignore_preflight_errors):
        if not _PREFLIGHT_CHECK.fullmatch(name):
            p.append(
                (
                    f"{np}.ignore_preflight_errors[{i}]",
                    f"must be a kubeadm preflight check name like Swap or FileExisting-crictl (or all); "
                    f"got {show(name)}",
                )
            )
    return p


def _check_misc(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    # placement
    hosts = spec.placement.hosts
    for i, h in enumerate(hosts):
        if (why := host_name_problem(h)) is not None:
            p.append((f"placement.hosts[{i}]", why))
    dup = sorted({h for h in hosts if hosts.count(h) > 1})
    for h in dup:
        shown = h if len(h) <= SHOW_MAX else show(h)
        p.append(("placement.hosts", f"{shown} is listed more than once; list each ESXi host once"))
    # ssh
    if not _USER_NAME.fullmatch(spec.ssh.user):
        p.append(("ssh.user", f"must be a Linux user name (lowercase, e.g. vkp); got {show(spec.ssh.user)}"))
    if not 1 <= spec.ssh.port <= 65535:
        p.append(("ssh.port", f"must be a TCP port (1-65535); got {spec.ssh.port}"))
    # kubernetes
    k = spec.kubernetes
    if (why := k8s_version_problem(k.version)) is not None:
        p.append(("kubernetes.version", why))
    if k.cni not in CNIS:
        p.append(("kubernetes.cni", f"unknown CNI {show(k.cni)}; use one of {', '.join(CNIS)}"))
    if k.dns not in DNS_ADDONS:
        p.append(
            (
                "kubernetes.dns",
                f"unknown cluster DNS {show(k.dns)}; use coredns, or none to install no cluster DNS",
            )
        )
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
                p.append((f"kubernetes.{key}", f"{show(value)} is not a CIDR like {default}"))
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
        p.append(("kubernetes.cni_version", f"must be a release like 3.28.1; got {show(k.cni_version)}"))
    elif k.cni_version is not None and k.cni == "bridge":
        p.append(
            (
                "kubernetes.cni_version",
                "does not apply to cni: bridge; the CNI plugins' release is kubernetes.cni_plugins_version",
            )
        )
    if not _SEMVER.fullmatch(k.cni_plugins_version):
        p.append(
            (
                "kubernetes.cni_plugins_version",
                f"must be a release of the CNI plugins like {DEFAULT_CNI_PLUGINS_VERSION} (X.Y.Z); "
                f"got {show(k.cni_plugins_version)}",
            )
        )
    p += _check_node_settings(k.node)
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
        p.append(("pki.key_type", f"unknown key type {show(spec.pki.key_type)}; use rsa or ecdsa"))
    if spec.pki.rsa_bits not in RSA_SIZES:
        p.append(
            ("pki.rsa_bits", f"must be one of {', '.join(map(str, RSA_SIZES))}; got {spec.pki.rsa_bits}")
        )
    return p


def validate(spec: ClusterSpec) -> None:
    """Raise SpecError listing every problem in spec, each as (field path, what to do)."""
    problems = _check(spec)
    if problems:
        raise SpecError(_dedupe(problems))


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


def _ip(s: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def normalize_thumbprint(s: str) -> str | None:
    """'ab:cd..' / 'ABCD..' / 'ab cd ..' -> 'AB:CD:..' for a SHA-256 thumbprint, else None."""
    digits = endpoint.thumbprint_hex(s)
    return endpoint.format_thumbprint(digits) if digits else None
