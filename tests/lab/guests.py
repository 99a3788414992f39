"""Lab guests booted directly (no simulator, no VMs phase) as vkp's nodes: given what vkp hands
a VM, reached over SSH as vkp reaches them."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml

from provisioner.bootstrap.cloudinit import cloud_init_documents
from provisioner.errors import SSHError
from provisioner.lab import guest as lab_guest
from provisioner.lab import paths
from provisioner.ssh.commands import Cmd
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState
from provisioner.vsphere import guestinfo


def answers(ip: str) -> bool:
    # Any answer on port 22, even a refusal, means a machine holds the address.
    try:
        with socket.create_connection((ip, 22), timeout=1):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def free_address(gid: str, address: str, guests_dir: Path) -> None:
    """Remove what an interrupted run left of guest gid; fail if anything else holds address."""
    lab_guest.destroy_guest(gid, guests_dir=guests_dir)
    assert not answers(address), f"{address} is already in use on the lab bridge"


def boot_node(
    state: ClusterState, gid: str, name: str, address: str, mac: str, *, image_root: Path, guests_dir: Path
) -> str:
    """Start guest gid as node name with the cloud-init documents vkp gives its VM; the node's
    public host key. Only the NIC translation is the lab's, as its hypervisor does for every VM."""
    _, login_pub = state.ssh_keypair()
    host_priv, host_pub = state.host_key(name)
    meta, user = cloud_init_documents(
        name, address, paths.PREFIX, paths.GATEWAY, [paths.GATEWAY], mac, "vkp", login_pub,
        host_priv, host_pub, f"{state.cluster_id}-{name}",
    )  # fmt: skip
    data = guestinfo.parse({"guestinfo.metadata": meta, "guestinfo.userdata": user}, gid)
    assert data is not None and data.network is not None
    seed = lab_guest.NoCloudSeed(
        meta_data=guestinfo.meta_data_document(data),
        user_data=data.user_data,
        network_config=yaml.safe_dump(lab_guest.translate_network_config(data.network, mac=mac)),
    )
    lab_guest.start_guest(
        gid, hostname=name, mac=mac, image_root=image_root, guests_dir=guests_dir, seed=seed
    )
    return host_pub


def connect_node(state: ClusterState, name: str, address: str, *, connect_deadline: float) -> Connection:
    key, _ = state.ssh_keypair()
    return Connection(name, address, "vkp", key, state.known_hosts_path, connect_deadline=connect_deadline)


def wait_booted(conn: Connection, *, deadline: float, status_timeout: float) -> None:
    """What create-cluster's VMs phase guarantees before bootstrap: SSH answers with the pinned
    key and cloud-init is done. cloud-init restarts sshd on first boot, which can drop a
    connection made in that moment, and a busy machine (several guests booting) takes minutes."""
    while True:
        try:
            conn.open()
            conn.run(Cmd("cloud-init", "status", "--wait"), check=False, timeout=status_timeout)
            return
        except (SSHError, EOFError, OSError):
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
