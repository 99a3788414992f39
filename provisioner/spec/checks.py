"""Validation of a built spec: pure (no files, no network), every problem as (field path, what
to do). validate runs every check in a fixed order; the cluster's own settings (name, topology
sizes, placement, ssh) are checked here, vsphere in checks_vsphere, the network in
checks_network, and Kubernetes, etcd and pki in checks_kubernetes."""

from __future__ import annotations

import re

from provisioner.errors import SpecError
from provisioner.spec.checks_kubernetes import _check_etcd, _check_kubernetes, _check_pki
from provisioner.spec.checks_network import _check_network
from provisioner.spec.checks_vsphere import _check_vsphere, vsphere_name_problem
from provisioner.spec.schema import (
    _ROLE_NEEDS,
    HOSTNAME_MAX,
    LIMITS,
    ROLE_MINIMUMS,
    ROLES,
    ClusterSpec,
    Topology,
)
from provisioner.spec.values import SHOW_MAX, show

_DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ROLE_PLURAL = {"etcd": "etcd members", "master": "masters", "worker": "workers"}


def validate(spec: ClusterSpec) -> None:
    """Raise SpecError listing every problem in spec, each as (field path, what to do)."""
    problems = _check(spec)
    if problems:
        raise SpecError(_dedupe(problems))


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


def _check(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    p += _check_name(spec)
    p += _check_topology(spec.topology)
    p += _check_vsphere(spec.vsphere)
    p += _check_network(spec)
    p += _check_placement(spec)
    p += _check_ssh(spec)
    p += _check_kubernetes(spec)
    p += _check_etcd(spec.etcd)
    p += _check_pki(spec.pki)
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


def host_name_problem(name: str) -> str | None:
    """Why name cannot be an ESXi host's name in vCenter (placement.hosts, --hosts), or None."""
    if not name:
        return "is empty; give the ESXi host's name as vCenter shows it"
    return vsphere_name_problem(name, path=False)


def _check_placement(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    hosts = spec.placement.hosts
    for i, h in enumerate(hosts):
        if (why := host_name_problem(h)) is not None:
            p.append((f"placement.hosts[{i}]", why))
    dup = sorted({h for h in hosts if hosts.count(h) > 1})
    for h in dup:
        shown = h if len(h) <= SHOW_MAX else show(h)
        p.append(("placement.hosts", f"{shown} is listed more than once; list each ESXi host once"))
    return p


def _check_ssh(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if not _USER_NAME.fullmatch(spec.ssh.user):
        p.append(("ssh.user", f"must be a Linux user name (lowercase, e.g. vkp); got {show(spec.ssh.user)}"))
    if not 1 <= spec.ssh.port <= 65535:
        p.append(("ssh.port", f"must be a TCP port (1-65535); got {spec.ssh.port}"))
    return p
