"""The SSH layer and the cloud-init documents against a real lab guest (systemd, sshd, cloud-init).

What a node gets here is exactly what vkp hands a VM: the metadata and user-data rendered by
cloud_init_documents, keys from the cluster state, known_hosts written before the first
connection. Only the NIC translation is the lab's (as its hypervisor does for every VM).
"""

from __future__ import annotations

import time

import pytest

from provisioner.errors import CommandFailed, HostKeyMismatch
from provisioner.lab import guest as lab_guest
from provisioner.lab import paths
from provisioner.ssh.commands import Cmd, sudo
from provisioner.state import ClusterState
from tests.lab import guests

pytestmark = pytest.mark.lab

GID, NAME, MAC, IP = "vkp-test-ssh61", "ssh-node-1", "00:50:56:18:00:61", "198.18.0.61"


@pytest.fixture
def node(lab_image, lab_bridge, tmp_path):
    guests.free_address(GID, IP, tmp_path / "guests")
    st = ClusterState.create_or_load("sshtest", home=tmp_path / "state")
    host_pub = guests.boot_node(st, GID, NAME, IP, MAC, image_root=lab_image, guests_dir=tmp_path / "guests")
    st.write_known_hosts([(NAME, IP)])
    try:
        yield st, host_pub
    finally:
        lab_guest.destroy_guest(GID, guests_dir=tmp_path / "guests")


def test_node_from_cloud_init_documents(node):
    st, host_pub = node
    with guests.connect_node(st, NAME, IP, connect_deadline=120) as c:
        assert c.run(Cmd("hostname")).stdout.strip() == NAME
        assert c.run(Cmd("cat", "/sys/class/net/eth0/address")).stdout.strip() == MAC
        route = c.run(Cmd("ip", "-4", "route", "show", "default")).stdout
        assert f"via {paths.GATEWAY}" in route
        # The pinned key is the node's only host key: nothing else was generated or kept.
        keys = c.run(sudo(Cmd.shell("ls /etc/ssh/ssh_host_*"))).stdout.split()
        assert keys == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"]
        served = c.run(sudo(Cmd("cat", "/etc/ssh/ssh_host_ed25519_key.pub"))).stdout.split()[:2]
        assert served == host_pub.split()[:2]
        # cloud-init turns password logins off in a later stage than the one that starts sshd.
        guests.wait_booted(c, deadline=time.monotonic() + 120, status_timeout=60)
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
    c = guests.connect_node(st, NAME, IP, connect_deadline=120)
    with pytest.raises(HostKeyMismatch):
        # The guest may still be booting: connection refusals are retried, the mismatch is not.
        c.open()
