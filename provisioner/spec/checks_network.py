"""Checks of the network section against the topology: gateway, prefix and subnet, the node
address pool, addresses pinned to nodes, and the API endpoint."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from provisioner.spec.schema import (
    API_MODES,
    ROLES,
    VIRTUAL_MODES,
    AddressRange,
    ClusterSpec,
    IPAddress,
    IPNetwork,
)
from provisioner.spec.values import _ip, show


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
