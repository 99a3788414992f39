"""spec -> plan: the ordered nodes with names, sizes, addresses and ESXi hosts. Pure.

The plan is what `vkp plan` prints and what create-cluster carries out, so everything in it is
deterministic: the same spec and hosts always give the same names, addresses and placement,
which is what lets a re-run adopt what exists instead of duplicating it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from provisioner.errors import NotFound, SpecError
from provisioner.spec import ROLES, ClusterSpec, node_name, validate
from provisioner.spec.checks import host_name_problem

# Losing two etcd members or two masters to one host failure costs quorum or the control
# plane; workers are interchangeable, so their spread is left to DRS.
RULE_ROLES = ("etcd", "master")
FOLDER_ROOT = "vkp"  # under the datacenter's VM folder, unless the spec sets vsphere.folder


@dataclass(frozen=True)
class NodePlan:
    name: str  # VM name and host name: {cluster}-{role}-{index}
    role: str  # etcd | master | worker
    index: int  # from 1 within the role
    cpus: int
    memory_mb: int
    disk_gb: int
    address: str
    esxi_host: str | None = None  # None: unknown until preflight lists the cluster's hosts

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "disk_gb": self.disk_gb,
            "address": self.address,
            "esxi_host": self.esxi_host,
        }


@dataclass(frozen=True)
class ApiEndpoint:
    address: str
    port: int
    mode: str  # direct (the only master's address) | kube-vip | haproxy-keepalived

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"


@dataclass(frozen=True)
class AntiAffinityRule:
    """A DRS VM anti-affinity rule keeping one role's VMs on separate hosts."""

    name: str
    role: str
    vms: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    cluster: str
    plan: str | None  # the named plan the spec started from
    nodes: tuple[NodePlan, ...]  # etcd first, then masters, then workers
    api_endpoint: ApiEndpoint
    folder: str  # VM folder path below the datacenter's vm folder
    anti_affinity_rules: tuple[AntiAffinityRule, ...]
    prefix: int
    gateway: str
    dns: tuple[str, ...]
    datacenter: str
    compute_cluster: str
    datastore: str
    network: str
    template: str
    resource_pool: str | None
    hosts: tuple[str, ...] | None  # the ESXi hosts placed on; None until known

    def by_role(self, role: str) -> list[NodePlan]:
        return [n for n in self.nodes if n.role == role]

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise NotFound("node", name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "plan": self.plan,
            "api_endpoint": {
                "address": self.api_endpoint.address,
                "port": self.api_endpoint.port,
                "mode": self.api_endpoint.mode,
                "url": self.api_endpoint.url,
            },
            "vsphere": {
                "datacenter": self.datacenter,
                "cluster": self.compute_cluster,
                "datastore": self.datastore,
                "network": self.network,
                "template": self.template,
                "resource_pool": self.resource_pool,
                "folder": self.folder,
            },
            "network": {"prefix": self.prefix, "gateway": self.gateway, "dns": list(self.dns)},
            "anti_affinity_rules": [
                {"name": r.name, "role": r.role, "vms": list(r.vms)} for r in self.anti_affinity_rules
            ],
            "hosts": list(self.hosts) if self.hosts is not None else None,
            "nodes": [n.to_dict() for n in self.nodes],
            "totals": {
                "vms": len(self.nodes),
                "cpus": sum(n.cpus for n in self.nodes),
                "memory_mb": sum(n.memory_mb for n in self.nodes),
                "disk_gb": sum(n.disk_gb for n in self.nodes),
            },
        }


def rule_name(cluster: str, role: str) -> str:
    return f"vkp-{cluster}-{role}"


def folder_path(spec: ClusterSpec) -> str:
    # The cluster always gets a folder of its own, named after it, so delete-cluster can remove
    # it whole; vsphere.folder only chooses where that folder lives.
    return f"{spec.vsphere.folder or FOLDER_ROOT}/{spec.name}"


def make_plan(spec: ClusterSpec, hosts: list[str] | None = None) -> Plan:
    """The plan for a spec; hosts are the cluster's ESXi hosts (None: not known yet).

    With placement.hosts in the spec, only those hosts are used, in the order written; hosts
    found in vCenter are otherwise taken in natural name order so placement is stable.
    """
    validate(spec)
    if hosts is not None:
        _check_hosts(hosts)
    candidates = _candidates(spec, hosts)
    nodes = place(_nodes(spec), candidates)
    return Plan(
        cluster=spec.name,
        plan=spec.plan,
        nodes=tuple(nodes),
        api_endpoint=_api_endpoint(spec, nodes),
        folder=folder_path(spec),
        anti_affinity_rules=_rules(spec, nodes, candidates),
        prefix=spec.network.prefix or 0,
        gateway=spec.network.gateway or "",
        dns=spec.network.dns,
        datacenter=spec.vsphere.datacenter or "",
        compute_cluster=spec.vsphere.cluster or "",
        datastore=spec.vsphere.datastore or "",
        network=spec.vsphere.network or "",
        template=spec.vsphere.template or "",
        resource_pool=spec.vsphere.resource_pool,
        hosts=tuple(candidates) if candidates is not None else None,
    )


def _check_hosts(hosts: Sequence[str]) -> None:
    """Refuse a host list nothing can be placed on: empty, or with names vCenter cannot have."""
    if not hosts:
        raise SpecError(
            [("--hosts", "lists no ESXi host; give host names (esx-1,esx-2) or leave --hosts out")]
        )
    problems = [(f"--hosts[{i}]", why) for i, h in enumerate(hosts) if (why := host_name_problem(h))]
    if problems:
        raise SpecError(problems)


def _natural(s: str) -> list[Any]:
    # esx-2 before esx-10: vCenter lists hosts in no promised order, names are what users see.
    # A run of digits sorts by its length, then its text: numeric order without int(), which
    # refuses '²'-like digits and runs past 4300 digits.
    return [(len(t.lstrip("0")), t) if i % 2 else t for i, t in enumerate(re.split(r"([0-9]+)", s))]


def _candidates(spec: ClusterSpec, hosts: list[str] | None) -> list[str] | None:
    wanted = list(spec.placement.hosts)
    if wanted:
        if hosts is not None:
            missing = [h for h in wanted if h not in hosts]
            if missing:
                raise NotFound(
                    "ESXi host",
                    missing[0],
                    hint=f"placement.hosts names host(s) not in cluster {spec.vsphere.cluster}: "
                    f"{', '.join(missing)}; its hosts are {', '.join(sorted(hosts, key=_natural)) or 'none'}",
                )
        return wanted
    if hosts is None:
        return None
    return sorted(set(hosts), key=_natural)


def _nodes(spec: ClusterSpec) -> list[NodePlan]:
    net = spec.network
    pinned = {a for r in ROLES for a in spec.topology.role(r).addresses}
    # An explicit API address is kept off the nodes even though validation already keeps it out
    # of the pool; the gateway likewise. Cheap insurance against a hand-built spec.
    reserved = pinned | {a for a in (net.gateway, net.api_endpoint.address) if a}
    free = (a for a in net.pool_addresses() if a not in reserved)
    out = []
    for role in ROLES:
        rs = spec.topology.role(role)
        for i in range(1, rs.count + 1):
            address = rs.addresses[i - 1] if i <= len(rs.addresses) else next(free)
            out.append(
                NodePlan(
                    name=node_name(spec.name, role, i),
                    role=role,
                    index=i,
                    cpus=rs.cpus,
                    memory_mb=rs.memory_mb,
                    disk_gb=rs.disk_gb,
                    address=address,
                )
            )
    return out


def place(nodes: Sequence[NodePlan], hosts: Sequence[str] | None) -> list[NodePlan]:
    """Assign an ESXi host to each node, deterministically.

    Each node goes to the host holding the fewest nodes of its role, then the fewest nodes in
    all, then the earliest in hosts: members of a role land on distinct hosts whenever there are
    enough (so one host failure costs etcd at most one member), wrap round-robin when there are
    not, and the roles together stay balanced. hosts None leaves esxi_host None.
    """
    if hosts is None:
        return [replace(n, esxi_host=None) for n in nodes]
    if not hosts:
        raise ValueError("place() needs at least one host; preflight reports a cluster without hosts")
    order = {h: i for i, h in enumerate(dict.fromkeys(hosts))}
    total = dict.fromkeys(order, 0)
    per_role: dict[tuple[str, str], int] = {}
    out = []
    for n in nodes:
        host = min(order, key=lambda h: (per_role.get((n.role, h), 0), total[h], order[h]))
        per_role[(n.role, host)] = per_role.get((n.role, host), 0) + 1
        total[host] += 1
        out.append(replace(n, esxi_host=host))
    return out


def _api_endpoint(spec: ClusterSpec, nodes: Sequence[NodePlan]) -> ApiEndpoint:
    api = spec.network.api_endpoint
    masters = [n for n in nodes if n.role == "master"]
    mode = api.mode
    if mode == "auto":
        only = masters[0].address if len(masters) == 1 else None
        mode = "direct" if only is not None and api.address in (None, only) else api.virtual
    address = masters[0].address if mode == "direct" else api.address
    assert address is not None  # validate() requires an address for every virtual-address mode
    return ApiEndpoint(address=address, port=api.port, mode=mode)


def _rules(
    spec: ClusterSpec, nodes: Sequence[NodePlan], hosts: Sequence[str] | None
) -> tuple[AntiAffinityRule, ...]:
    if not spec.placement.anti_affinity:
        return ()
    rules = []
    for role in RULE_ROLES:
        vms = tuple(n.name for n in nodes if n.role == role)
        # vCenter rejects a one-VM rule, and a rule with more VMs than hosts would keep the
        # extra VMs from powering on: then round-robin placement is the best there is.
        if len(vms) < 2 or (hosts is not None and len(hosts) < len(vms)):
            continue
        rules.append(AntiAffinityRule(name=rule_name(spec.name, role), role=role, vms=vms))
    return tuple(rules)


def render_plan(plan: Plan) -> str:
    """The plan as a table a person reads before saying yes."""
    ep = plan.api_endpoint
    res_pool = f", resource pool {plan.resource_pool}" if plan.resource_pool else ""
    dns = f", DNS {', '.join(plan.dns)}" if plan.dns else ""
    mode = {
        "direct": "the only master's address",
        "kube-vip": "virtual address held by kube-vip on the masters",
        "haproxy-keepalived": "virtual address held by keepalived, haproxy on the masters",
    }.get(ep.mode, ep.mode)
    lines = [
        f"Cluster {plan.cluster}" + (f" (plan {plan.plan})" if plan.plan else ""),
        f"  API endpoint   {ep.url}  ({mode})",
        f"  vSphere        datacenter {plan.datacenter}, cluster {plan.compute_cluster}, "
        f"datastore {plan.datastore}, network {plan.network!r}",
        f"  template       {plan.template}",
        f"  folder         {plan.folder}{res_pool}",
        f"  network        /{plan.prefix} via {plan.gateway}{dns}",
        "",
    ]
    header = ("NAME", "ROLE", "CPUS", "MEMORY", "DISK", "ADDRESS", "ESXI HOST")
    rows = [
        (n.name, n.role, str(n.cpus), f"{n.memory_mb} MB", f"{n.disk_gb} GB", n.address, n.esxi_host or "-")
        for n in plan.nodes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4}
    for r in [header, *rows]:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    t = plan.to_dict()["totals"]
    total = f"Total: {t['vms']} VMs, {t['cpus']} vCPUs, {t['memory_mb']} MB memory, {t['disk_gb']} GB disk"
    lines += ["", total]
    if plan.anti_affinity_rules:
        rules = ", ".join(f"{r.name} ({len(r.vms)} VMs)" for r in plan.anti_affinity_rules)
        when = " (each kept only if the cluster has enough hosts)" if plan.hosts is None else ""
        lines.append(f"Anti-affinity rules: {rules}{when}")
    if plan.hosts is None:
        lines.append("ESXi hosts are chosen at preflight (pass --hosts to preview placement).")
    return "\n".join(lines)
