"""The lab's network: one bridge for all guests, and a NIC per guest with its VM's MAC.

Guests must reach nothing beyond the bridge. No NAT is set up and, in case something else on
this machine turns on IP forwarding, packets arriving from the bridge for anywhere but this
machine are refused by a policy rule, not merely left unanswered.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from provisioner.errors import LabError
from provisioner.lab import paths

# A routing table and rule priority of our own: the RFC 2544 range read as a number.
_ISOLATION_TABLE = "19818"
_ISOLATION_PRIORITY = "19818"
_NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError:
        raise LabError("the lab network needs the `ip` tool", hint="apt-get install iproute2") from None
    if check and res.returncode != 0:
        raise LabError(
            f"`ip {' '.join(args)}` failed: {res.stderr.strip()}",
            hint="the lab network needs root (CAP_NET_ADMIN); run as root",
        )
    return res


def _link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["-n", netns] if netns else []
    return _ip(*prefix, "link", "show", "dev", name, check=False).returncode == 0


def _link_info(name: str, netns: str | None = None) -> dict | None:
    prefix = ["-n", netns] if netns else []
    res = _ip(*prefix, "-j", "link", "show", "dev", name, check=False)
    if res.returncode != 0:
        return None
    links = json.loads(res.stdout or "[]")
    return links[0] if links else None


def _sysctl(path: str, value: str) -> None:
    try:
        Path("/proc/sys", path).write_text(value)
    except OSError as e:
        raise LabError(f"cannot set {path}={value}: {e}", hint="run as root") from None


def ensure_bridge() -> None:
    """Bridge paths.BRIDGE with GATEWAY/PREFIX, up, isolated from everything beyond it."""
    br = paths.BRIDGE
    if not _link_exists(br):
        _ip("link", "add", br, "type", "bridge")
    addrs = _ip("-j", "addr", "show", "dev", br).stdout
    want = (paths.GATEWAY, paths.PREFIX)
    have = [
        (a.get("local"), a.get("prefixlen"))
        for link in json.loads(addrs or "[]")
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    if want not in have:
        _ip("addr", "add", f"{paths.GATEWAY}/{paths.PREFIX}", "dev", br)
    # IPv6 would give the guests a second, unfenced path off the bridge; nothing in the lab uses it.
    _sysctl(f"net/ipv6/conf/{br}/disable_ipv6", "1")
    _sysctl(f"net/ipv4/conf/{br}/forwarding", "0")
    _ip("link", "set", br, "up")
    # Local delivery (the local table, priority 0) is decided before this rule, so guests still
    # reach this machine; anything that would be forwarded is answered "unreachable".
    _ip("route", "replace", "unreachable", "default", "table", _ISOLATION_TABLE)
    if _ISOLATION_TABLE not in _ip("rule", "show", "iif", br).stdout:
        _ip("rule", "add", "iif", br, "lookup", _ISOLATION_TABLE, "priority", _ISOLATION_PRIORITY)


def remove_bridge() -> None:
    """Remove the bridge and its isolation rule; a missing bridge is fine."""
    br = paths.BRIDGE
    while _ISOLATION_TABLE in _ip("rule", "show", "iif", br).stdout:
        _ip("rule", "del", "iif", br, "lookup", _ISOLATION_TABLE, "priority", _ISOLATION_PRIORITY)
    _ip("route", "flush", "table", _ISOLATION_TABLE, check=False)
    if _link_exists(br):
        _ip("link", "del", br)


def nic_names(guest_id: str) -> tuple[str, str]:
    """(netns name, host interface name) for a guest: deterministic, <= 15 characters."""
    h = hashlib.sha256(guest_id.encode()).hexdigest()[:10]
    return f"vkp-{h}", f"vkh{h}"


def add_guest_nic(guest_id: str, mac: str) -> tuple[str, str]:
    """A network namespace whose eth0 has `mac`, its peer on the bridge. Returns (netns, host ifname)."""
    netns, host_if = nic_names(guest_id)
    mac = mac.lower()
    guest = _link_info("eth0", netns) if (_NETNS_DIR / netns).exists() else None
    host = _link_info(host_if)
    if not (guest and host and guest.get("address") == mac):
        remove_guest_nic(guest_id)
        _ip("netns", "add", netns)
        try:
            # Creating the peer straight inside the namespace lets it be called eth0 from the
            # start, without clashing with this machine's own eth0.
            _ip(
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", netns
            )
        except LabError:
            remove_guest_nic(guest_id)
            raise
    _ip("link", "set", host_if, "master", paths.BRIDGE)
    _sysctl(f"net/ipv6/conf/{host_if}/disable_ipv6", "1")
    _ip("link", "set", host_if, "up")
    return netns, host_if


def remove_guest_nic(guest_id: str) -> None:
    """Remove a guest's veth pair and namespace; whatever is already gone is fine."""
    netns, host_if = nic_names(guest_id)
    if _link_exists(host_if):
        _ip("link", "del", host_if, check=False)  # takes the peer with it
    if (_NETNS_DIR / netns).exists():
        _ip("netns", "del", netns)


def answers(address: str) -> bool:
    """Whether anything on the lab bridge answers address (one ping; a neighbour entry)."""
    res = subprocess.run(
        ["ping", "-c", "1", "-W", "1", "-n", "-q", "-I", paths.BRIDGE, address],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if res.returncode == 0:
        return True
    neigh = _ip("neigh", "show", "to", address, "dev", paths.BRIDGE, check=False).stdout
    return "lladdr" in neigh and "FAILED" not in neigh and "INCOMPLETE" not in neigh
