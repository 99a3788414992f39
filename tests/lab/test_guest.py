"""Lab guests as a user of the lab sees them: a VM's cloud-init data in, a reachable machine out."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioner.lab import guest as lab_guest
from provisioner.lab import network, paths
from provisioner.retry import retry_call

pytestmark = pytest.mark.lab

SSH_DEADLINE = 120.0


def _keypair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return private, public


def _seed(
    name: str, mac: str, ip: str, client_pub: str, host_priv: str, host_pub: str
) -> lab_guest.NoCloudSeed:
    # What a real VM receives: the NIC named by MAC (as Cluster API vSphere writes it); the lab
    # translates it for the guest, as the lab hypervisor does.
    vm_netcfg = {
        "version": 2,
        "ethernets": {
            "id0": {
                "match": {"macaddress": mac},
                "set-name": "eth0",
                "dhcp4": False,
                "addresses": [f"{ip}/24"],
            }
        },
    }
    user_data = "#cloud-config\n" + yaml.safe_dump(
        {
            "users": [
                {
                    "name": "vkp",
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "shell": "/bin/bash",
                    "ssh_authorized_keys": [client_pub],
                }
            ],
            "ssh_keys": {"ed25519_private": host_priv, "ed25519_public": host_pub},
        }
    )
    return lab_guest.NoCloudSeed(
        meta_data=f"instance-id: {name}\nlocal-hostname: {name}\n",
        user_data=user_data,
        network_config=yaml.safe_dump(lab_guest.translate_network_config(vm_netcfg)),
    )


def _connect(ip: str, host_pub: str, client_priv: str, deadline: float = SSH_DEADLINE) -> paramiko.SSHClient:
    """SSH in trusting only the host key we handed the guest; retry only while it is booting."""
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(client_priv))
    keytype, b64 = host_pub.split()[:2]

    def attempt() -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(ip, keytype, paramiko.PKey.from_type_string(keytype, _b64(b64)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                ip, username="vkp", pkey=pkey, timeout=3, banner_timeout=5, auth_timeout=5,
                allow_agent=False, look_for_keys=False,
            )
        except BaseException:
            client.close()
            raise
        return client

    def booting(e: BaseException) -> bool:
        if isinstance(e, paramiko.BadHostKeyException):
            return False
        if isinstance(e, paramiko.SSHException) and "known_hosts" in str(e):
            return False
        # Authentication fails while cloud-init is still writing authorized_keys.
        return isinstance(e, OSError | EOFError | paramiko.SSHException)

    return retry_call(attempt, retry_on=booting, deadline=deadline, initial=0.1, maximum=0.5, attempts=10_000)


def _b64(s: str) -> bytes:
    import base64

    return base64.b64decode(s)


def _run(client: paramiko.SSHClient, cmd: str) -> str:
    _, stdout, stderr = client.exec_command(cmd, timeout=30)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"{cmd!r} exited {status}: {stderr.read().decode()}"
    return out.strip()


def _ssh_port_open(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=3):
            return True
    except OSError:
        return False


def _assert_nothing_left(g: lab_guest.Guest) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert g.netns not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert g.host_ifname not in links
    mounts = Path("/proc/self/mounts").read_text()
    assert str(g.dir) not in mounts and g.netns not in mounts
    assert lab_guest.guest_pids(g.id) == set()
    if g.pid:
        assert not _alive(g.pid)
    assert not g.dir.exists()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def guests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guests")


def test_guest_boots_from_vm_cloud_init_data_and_keeps_its_disk(lab_image, lab_bridge, guests_dir):
    gid, name, mac, ip = "vkp-test-g50", "lab-g50", "00:50:56:18:00:50", "198.18.0.50"
    lab_guest.destroy_guest(gid, guests_dir=guests_dir)  # clean slate after an interrupted run
    client_priv, client_pub = _keypair()
    host_priv, host_pub = _keypair()
    seed = _seed(name, mac, ip, client_pub, host_priv, host_pub)

    started = time.monotonic()
    def start() -> lab_guest.Guest:
        return lab_guest.start_guest(
            gid, hostname=name, mac=mac, image_root=lab_image, guests_dir=guests_dir, seed=seed
        )

    g = start()
    try:
        assert g.state == "running" and g.pid
        assert start().pid == g.pid, "starting a running guest must be a no-op"

        with _connect(ip, host_pub, client_priv) as ssh:
            print(f"\n[figure] start_guest -> SSH (cold): {time.monotonic() - started:.1f} s")
            assert _run(ssh, "hostname") == name
            assert _run(ssh, "cat /sys/class/net/eth0/address") == mac
            assert f"{ip}/24" in _run(ssh, "ip -4 -o addr show dev eth0")
            assert _run(ssh, "systemctl is-enabled etcd || true") == "disabled"
            _run(ssh, "echo kept | sudo tee /root/disk-marker")
        mem = lab_guest.guest_memory(gid)
        print(f"[figure] idle guest: {mem['processes']} processes, RSS {mem['rss'] / 2**20:.0f} MiB, "
              f"PSS {mem['pss'] / 2**20:.0f} MiB")

        assert [x.id for x in lab_guest.list_guests(guests_dir) if x.state == "running"] == [gid]

        lab_guest.stop_guest(gid, timeout=60, guests_dir=guests_dir)
        assert not _alive(g.pid)
        assert lab_guest.guest_pids(gid) == set()
        assert not _ssh_port_open(ip)
        stopped = lab_guest.list_guests(guests_dir)
        assert [(x.id, x.state) for x in stopped] == [(gid, "stopped")]
        assert (g.dir / "upper").is_dir(), "power-off keeps the disk"

        started = time.monotonic()
        g2 = start()
        assert g2.pid != g.pid
        with _connect(ip, host_pub, client_priv) as ssh:
            print(f"[figure] start_guest -> SSH (warm, same disk): {time.monotonic() - started:.1f} s")
            assert _run(ssh, "sudo cat /root/disk-marker") == "kept"
            assert _run(ssh, "hostname") == name
    finally:
        lab_guest.destroy_guest(gid, guests_dir=guests_dir)
    _assert_nothing_left(g2 if "g2" in locals() else g)
    assert json.dumps([x.id for x in lab_guest.list_guests(guests_dir)]) == "[]"


def test_two_guests_share_the_image_and_the_bridge(lab_image, lab_bridge, guests_dir):
    client_priv, client_pub = _keypair()
    specs = [("vkp-test-g51", "lab-g51", "00:50:56:18:00:51", "198.18.0.51"),
             ("vkp-test-g52", "lab-g52", "00:50:56:18:00:52", "198.18.0.52")]
    keys = {gid: _keypair() for gid, *_ in specs}
    guests = []
    try:
        for gid, name, mac, ip in specs:
            lab_guest.destroy_guest(gid, guests_dir=guests_dir)
            hpriv, hpub = keys[gid]
            guests.append(lab_guest.start_guest(
                gid, hostname=name, mac=mac, image_root=lab_image, guests_dir=guests_dir,
                seed=_seed(name, mac, ip, client_pub, hpriv, hpub),
            ))
        for (gid, name, _mac, ip), (_, _, _, other_ip) in zip(specs, reversed(specs), strict=True):
            with _connect(ip, keys[gid][1], client_priv) as ssh:
                assert _run(ssh, "hostname") == name
                assert "1 received" in _run(ssh, f"ping -c1 -W2 {other_ip}")
        # Powering one guest off must leave the other's services alone (each has its own
        # cgroup tree; a shared one would let one systemd's shutdown reach the other's units).
        lab_guest.stop_guest(specs[0][0], guests_dir=guests_dir)
        gid, name, _mac, ip = specs[1]
        with _connect(ip, keys[gid][1], client_priv, deadline=10) as ssh:
            assert _run(ssh, "systemctl is-active ssh systemd-networkd containerd").split() == ["active"] * 3
    finally:
        for gid, *_ in specs:
            lab_guest.destroy_guest(gid, guests_dir=guests_dir)
    for g in guests:
        _assert_nothing_left(g)


def test_the_bridge_forwards_nothing_beyond_itself(lab_bridge):
    # Asks the kernel's routing decision; sends no packet anywhere.
    res = subprocess.run(
        ["ip", "route", "get", "192.0.2.1", "from", "198.18.0.50", "iif", paths.BRIDGE],
        capture_output=True, text=True,
    )
    assert res.returncode != 0 or "unreachable" in res.stdout, res.stdout
    local = subprocess.run(
        ["ip", "route", "get", paths.GATEWAY, "from", "198.18.0.50", "iif", paths.BRIDGE],
        capture_output=True, text=True, check=True,
    )
    assert local.stdout.startswith("local "), local.stdout
    network.ensure_bridge()  # idempotent
    rules = subprocess.run(["ip", "rule", "show", "iif", paths.BRIDGE], capture_output=True, text=True).stdout
    assert len(rules.strip().splitlines()) == 1


def test_a_failed_image_build_says_why_and_leaves_nothing_that_looks_built(tmp_path):
    from provisioner.errors import LabError
    from provisioner.lab import image

    recipe = image.Recipe(suite="vkp-no-such-suite", mirror=image.apt_mirror())
    # What a killed build leaves behind: removed by the next build, never taken for an image.
    (tmp_path / ".build-0123-999999" / "root" / "etc").mkdir(parents=True)
    with pytest.raises(LabError) as err:
        image.build_image(tmp_path, log=print, recipe=recipe)
    print(err.value)
    assert "debootstrap" in str(err.value) and err.value.hint
    assert not image.image_dir(tmp_path, recipe).exists()
    assert not list(tmp_path.glob(".build-*"))
