"""Loading a spec: the plans file, a spec file or a saved spec, merged with the site defaults
and the environment (sources), read into a ClusterSpec (_build); then the check. The YAML
reading is yamlfile's, the typed reading reader's, old spellings and paths migrations'."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provisioner.errors import SpecError
from provisioner.spec.checks import _check, _check_topology, _dedupe
from provisioner.spec.migrations import _migrate_artifact_source, _resolve_paths
from provisioner.spec.reader import _Reader
from provisioner.spec.schema import (
    DEFAULT_ETCD_VERSION,
    DEFAULT_PLANS_FILE,
    ETCD_PACKAGE,
    PLANS_FILE_ENV,
    ROLES,
    SITE_DEFAULTS_ENV,
    TLS,
    AddressRange,
    ApiEndpointSpec,
    ArtifactsSpec,
    ClusterSpec,
    Credentials,
    EtcdSpec,
    KubernetesSpec,
    NetworkSpec,
    NodeSettingsSpec,
    PKISpec,
    PlacementSpec,
    RoleSpec,
    SizePreset,
    SSHSpec,
    Topology,
    VSphereSpec,
)
from provisioner.spec.sources import _annotate, _fill_from_env, _merge_under, _site_defaults
from provisioner.spec.values import _ip, key_text, normalize_thumbprint, show
from provisioner.spec.yamlfile import _read_yaml
from provisioner.vsphere import endpoint


def load_size_presets(path: Path | str | None = None) -> dict[str, SizePreset]:
    """The size presets that `--plan` and a spec's plan: name, checked: the plans file
    (inventory/plans.yaml unless VKP_PLANS_FILE names another)."""
    p = Path(path) if path else DEFAULT_PLANS_FILE
    raw = _read_yaml(p)
    r = _Reader(p.name)
    r.check_keys(raw, "", {"plans"})
    plans_raw = raw.get("plans")
    if not isinstance(plans_raw, dict) or not plans_raw:
        raise SpecError([(f"{p}: plans", "must map plan names to their sizes (see inventory/plans.yaml)")])
    out: dict[str, SizePreset] = {}
    for pname, body in plans_raw.items():
        ppath = f"plans.{key_text(pname)}"
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
        out[key_text(pname)] = SizePreset(key_text(pname), str(body.get("description") or ""), topo)
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
    presets: Mapping[str, SizePreset] | None = None,
) -> ClusterSpec:
    """Read, merge and (unless check=False) validate a spec; raise SpecError with every problem.

    path None builds the spec from name/plan, the site defaults and the environment alone.
    Problems in values that came from the environment name the variable that set them, and
    those from the site defaults file name that file.
    """
    r = _Reader(str(path) if path else None)
    raw: dict[str, Any] = _read_yaml(path) if path is not None else {}
    legacy = _migrate_artifact_source(raw, r)
    if path is not None:
        _resolve_paths(raw, path.parent)
    origins: dict[str, str] = {}
    site = _site_defaults(env, r)
    if site is not None:
        site_path, site_raw = site
        origins = _merge_under(raw, site_raw, f"{site_path} ({SITE_DEFAULTS_ENV})")
    if name is not None:
        raw["name"] = name
        origins.pop("name", None)
    if plan is not None:
        raw["plan"] = plan
        origins.pop("plan", None)
    origins.update(_fill_from_env(raw, env))
    if legacy:
        origins.update(legacy)
    if presets is None:
        presets = load_size_presets(env.get(PLANS_FILE_ENV) or None)

    spec = _build(raw, r, presets)
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
_K8S_KEYS = {
    "version", "pod_cidr", "service_cidr", "cni", "cni_version", "cni_plugins_version", "dns",
    "vsphere_csi", "node", "artifacts",
}  # fmt: skip
_NODE_KEYS = {
    "cgroup_driver",
    "restrict_oom_score_adj",
    "conntrack_max_per_core",
    "ignore_preflight_errors",
    "skip_preflight",
}
_ARTIFACT_KEYS = {"source", "image_repository", "image_tarballs", "sandbox_image"}


def _build(raw: dict[str, Any], r: _Reader, presets: Mapping[str, SizePreset]) -> ClusterSpec:
    r.check_keys(raw, "", _TOP_KEYS)
    name = r.get_str(raw, "name", "") or ""
    plan_name = r.get_str(raw, "plan", "")
    preset = None
    if plan_name is not None:
        preset = presets.get(plan_name)
        if preset is None:
            close = difflib.get_close_matches(plan_name, list(presets), n=1, cutoff=0.5)
            hint = f"did you mean {show(close[0])}? " if close else ""
            r.add(
                "plan",
                f"unknown plan {show(plan_name)}; {hint}known plans: {', '.join(presets)} (see `vkp plans`)",
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
                        f"required when no plan is named; set it, or name a plan ({', '.join(presets)})",
                    )
            vals[k] = v
        addrs, is_list = r.get_str_list(rd, "addresses", rpath)
        for i, a in enumerate(addrs):
            ap = f"{rpath}.addresses[{i}]" if is_list else f"{rpath}.addresses"
            if _ip(a) is None:
                r.add(ap, f"{show(a)} is not an IP address")
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
                r.add(pp, f"{show(part)} is neither an address nor a range like 198.18.0.10-198.18.0.50")
            else:
                pool.append(rng)
    gateway = r.get_str(net, "gateway", "network")
    if gateway is not None and _ip(gateway) is None:
        r.add("network.gateway", f"{show(gateway)} is not an IP address")
        gateway = None
    dns, dns_is_list = r.get_str_list(net, "dns", "network")
    for i, a in enumerate(dns):
        if _ip(a) is None:
            r.add(f"network.dns[{i}]" if dns_is_list else "network.dns", f"{show(a)} is not an IP address")
    api_raw = net.get("api_endpoint")
    if isinstance(api_raw, str):
        api_raw = {"address": api_raw}  # the short form: api_endpoint: 10.0.0.5
    api = r.section(
        {"api_endpoint": api_raw}, "api_endpoint", "network", {"address", "port", "mode", "virtual"}
    )
    api_addr = r.get_str(api, "address", "network.api_endpoint")
    if api_addr is not None and _ip(api_addr) is None:
        r.add("network.api_endpoint.address", f"{show(api_addr)} is not an IP address")
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
            virtual=r.get_str(api, "virtual", "network.api_endpoint", "kube-vip") or "kube-vip",
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
    kdef, ndef = KubernetesSpec(), NodeSettingsSpec()
    ad = r.section(kd, "artifacts", "kubernetes", _ARTIFACT_KEYS)
    nd = r.section(kd, "node", "kubernetes", _NODE_KEYS)
    cni_version = r.get_str(kd, "cni_version", "kubernetes")
    image_repository = r.get_str(ad, "image_repository", "kubernetes.artifacts")
    preflight, _ = r.get_str_list(nd, "ignore_preflight_errors", "kubernetes.node")
    kubernetes = KubernetesSpec(
        version=(r.get_str(kd, "version", "kubernetes", kdef.version) or "").removeprefix("v"),
        pod_cidr=r.get_str(kd, "pod_cidr", "kubernetes", kdef.pod_cidr) or "",
        service_cidr=r.get_str(kd, "service_cidr", "kubernetes", kdef.service_cidr) or "",
        cni=r.get_str(kd, "cni", "kubernetes", kdef.cni) or "",
        cni_version=cni_version.removeprefix("v") if cni_version else None,
        cni_plugins_version=(
            r.get_str(kd, "cni_plugins_version", "kubernetes", kdef.cni_plugins_version) or ""
        ).removeprefix("v"),
        dns=r.get_str(kd, "dns", "kubernetes", kdef.dns) or "",
        vsphere_csi=r.get_bool(kd, "vsphere_csi", "kubernetes", False),
        node=NodeSettingsSpec(
            cgroup_driver=r.get_str(nd, "cgroup_driver", "kubernetes.node", ndef.cgroup_driver) or "",
            restrict_oom_score_adj=r.get_bool(
                nd, "restrict_oom_score_adj", "kubernetes.node", ndef.restrict_oom_score_adj
            ),
            conntrack_max_per_core=r.get_int(nd, "conntrack_max_per_core", "kubernetes.node", None),
            ignore_preflight_errors=tuple(preflight),
            skip_preflight=r.get_bool(nd, "skip_preflight", "kubernetes.node", ndef.skip_preflight),
        ),
        artifacts=ArtifactsSpec(
            source=r.get_str(ad, "source", "kubernetes.artifacts") or ArtifactsSpec.source,
            image_repository=(image_repository or "").rstrip("/") or None,
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


def _split_server(server: str, port: int, port_given: bool, r: _Reader) -> tuple[str, int]:
    """Accept "host", "host:port", "[v6]:port", a bare IPv6 address or a URL such as
    https://vc.example.com/sdk (endpoint.split_server, the one parser of a vCenter address)."""
    try:
        host, server_port = endpoint.split_server(server, default_port=0)
    except ValueError as exc:
        r.add("vsphere.server", f"{exc}; e.g. vc.example.com, vc.example.com:8443 or [fd00::10]:8443")
        return server, port
    if server_port == 0:
        return host, port
    if port_given and server_port != port:
        r.add("vsphere.port", f"is {port} but vsphere.server says port {server_port}; keep one of them")
    return host, server_port


def _parse_range(s: str) -> AddressRange | None:
    if "-" in s and _ip(s) is None:  # IPv6 addresses never contain '-', so this split is safe
        a, _, b = s.partition("-")
        a, b = a.strip(), b.strip()
        if _ip(a) is None or _ip(b) is None:
            return None
        return AddressRange(str(_ip(a)), str(_ip(b)))
    ip = _ip(s)
    return AddressRange(str(ip), str(ip)) if ip is not None else None
