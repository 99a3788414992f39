"""The SSH layer and the cloud-init documents against a real lab guest (systemd, sshd, cloud-init).

What a node gets here is exactly what vkp hands a VM: the metadata and user-data rendered by
cloud_init_documents, keys from the cluster state, known_hosts written before the first
connection. Only the NIC translation is the lab's (as its hypervisor does for every VM).
"""

from __future__ import annotations

import socket

import pytest
import yaml

from provisioner.bootstrap.cloudinit import cloud_init_documents
from provisioner.errors import CommandFailed, HostKeyMismatch
from provisioner.lab import guest as lab_guest
from provisioner.lab import guestinfo, paths
from provisioner.ssh.commands import Cmd, sudo
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState

pytestmark = pytest.mark.lab

GID, NAME, MAC, IP = "vkp-test-ssh61", "ssh-node-1", "00:50:56:18:00:61", "198.18.0.61"


def _answers(ip: str) -> bool:
    # Any answer on port 22, even a refusal, means a machine holds the address.
    try:
        with socket.create_connection((ip, 22), timeout=1):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@pytest.fixture
def node(lab_image, lab_bridge, tmp_path):
    lab_guest.destroy_guest(GID, guests_dir=tmp_path / "guests")
    assert not _answers(IP), f"{IP} is already in use on the lab bridge"
    st = ClusterState.create_or_load("sshtest", home=tmp_path / "state")
    _, login_pub = st.ssh_keypair()
    host_priv, host_pub = st.host_key(NAME)
    meta, user = cloud_init_documents(
        NAME, IP, paths.PREFIX, paths.GATEWAY, [paths.GATEWAY], MAC, "vkp", login_pub,
        host_priv, host_pub, f"{st.cluster_id}-{NAME}",
    )
    st.write_known_hosts([(NAME, IP)])
    data = guestinfo.parse({"guestinfo.metadata": meta, "guestinfo.userdata": user}, GID)
    assert data is not None and data.network is not None
    seed = lab_guest.NoCloudSeed(
        meta_data=guestinfo.meta_data_document(data),
        user_data=data.user_data,
        network_config=yaml.safe_dump(lab_guest.translate_network_config(data.network, mac=MAC)),
    )
    lab_guest.start_guest(GID, hostname=NAME, mac=MAC, image_root=lab_image,
                          guests_dir=tmp_path / "guests", seed=seed)
    try:
        yield st, host_pub
    finally:
        lab_guest.destroy_guest(GID, guests_dir=tmp_path / "guests")


def test_node_from_cloud_init_documents(node):
    st, host_pub = node
    key_path, _ = st.ssh_keypair()
    with Connection(NAME, IP, "vkp", key_path, st.known_hosts_path, connect_deadline=120) as c:
        assert c.run(Cmd("hostname")).stdout.strip() == NAME
        assert c.run(Cmd("cat", "/sys/class/net/eth0/address")).stdout.strip() == MAC
        route = c.run(Cmd("ip", "-4", "route", "show", "default")).stdout
        assert f"via {paths.GATEWAY}" in route
        # The pinned key is the node's only host key: nothing else was generated or kept.
        keys = c.run(sudo(Cmd.shell("ls /etc/ssh/ssh_host_*"))).stdout.split()
        assert keys == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"]
        served = c.run(sudo(Cmd("cat", "/etc/ssh/ssh_host_ed25519_key.pub"))).stdout.split()[:2]
        assert served == host_pub.split()[:2]
        sshd = c.run(sudo(Cmd("sshd", "-T"))).stdout.lower().splitlines()
        assert "passwordauthentication no" in sshd
        assert c.run(sudo(Cmd("id", "-u"))).stdout.strip() == "0"

        target = "/etc/vkp test/secret.conf"
        c.run(sudo(Cmd("mkdir", "-p", "/etc/vkp test")))
        assert c.put(b"token: abc\n", target, mode=0o600, owner="root:root") is True
        assert c.put(b"token: abc\n", target, mode=0o600, owner="root:root") is False
        st_out = c.run(sudo(Cmd("stat", "-c", "%a %U:%G", target))).stdout.strip()
        assert st_out == "600 root:root"
        assert c.get(target) == b"token: abc\n"
        with pytest.raises(CommandFailed):
            c.run(Cmd("cat", target))  # the login user cannot read it
        listing = c.run(sudo(Cmd("ls", "-a", "/etc/vkp test"))).stdout.split()
        assert listing == [".", "..", "secret.conf"]


def test_another_nodes_key_is_refused(node, tmp_path):
    st, _ = node
    # Pin a different key for the same address: the real node must be refused, not retried.
    st.host_key("impostor-check")
    st.write_known_hosts([("impostor-check", IP)])
    key_path, _ = st.ssh_keypair()
    c = Connection(NAME, IP, "vkp", key_path, st.known_hosts_path, connect_deadline=120)
    with pytest.raises(HostKeyMismatch):
        # The guest may still be booting: connection refusals are retried, the mismatch is not.
        c.open()
