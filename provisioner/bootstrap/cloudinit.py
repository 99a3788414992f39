"""The cloud-init documents each cloned VM receives through guestinfo (pure).

cloud-init's VMware datasource reads guestinfo.metadata (instance id, host name and the
network config) and guestinfo.userdata (#cloud-config). The node's SSH host key is made by
vkp and delivered here, so it is pinned before the first connection and is the VM's only
host key.
"""

from __future__ import annotations

import ipaddress
import re

from provisioner.bootstrap.render import render
from provisioner.errors import ProvisionerError

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# The name the NIC gets in the guest (set-name), so templates and steps can rely on it.
GUEST_NIC = "eth0"


def cloud_init_documents(
    node_name: str,
    address: str,
    prefix: int,
    gateway: str,
    dns: list[str],
    mac: str,
    ssh_user: str,
    ssh_public_key: str,
    host_key_private: str,
    host_key_public: str,
    instance_id: str,
) -> tuple[str, str]:
    """(metadata, userdata) for one node: static network matched by MAC, login user, host key."""
    mac = mac.strip().lower()
    if not _MAC.fullmatch(mac):
        raise ProvisionerError(f"{node_name}: {mac!r} is not a MAC address (expected 00:50:56:xx:xx:xx)")
    try:
        iface = ipaddress.ip_interface(f"{address}/{prefix}")
        gw = ipaddress.ip_address(gateway)
        nameservers = [str(ipaddress.ip_address(d)) for d in dns]
    except ValueError as exc:
        raise ProvisionerError(f"{node_name}: bad network settings: {exc}") from exc
    if gw.version != iface.version:
        raise ProvisionerError(f"{node_name}: gateway {gw} is not in the address family of {iface}")
    if not host_key_public.startswith("ssh-ed25519 ") or "OPENSSH PRIVATE KEY" not in host_key_private:
        raise ProvisionerError(f"{node_name}: the host key must be an ed25519 key in OpenSSH format")
    metadata = render(
        "cloud-init/metadata.yaml.j2",
        instance_id=instance_id,
        hostname=node_name,
        mac=mac,
        nic=GUEST_NIC,
        address=str(iface.with_prefixlen),
        # An explicit default destination reads the same to every cloud-init and netplan version,
        # unlike the newer `to: default` or the deprecated gateway4.
        default_route="0.0.0.0/0" if iface.version == 4 else "::/0",
        gateway=str(gw),
        nameservers=nameservers,
    )
    userdata = render(
        "cloud-init/userdata.yaml.j2",
        hostname=node_name,
        ssh_user=ssh_user,
        ssh_public_key=ssh_public_key.strip(),
        host_key_private=host_key_private,
        host_key_public=host_key_public.strip(),
    )
    return metadata, userdata
