"""The embedded lab end to end, as a vSphere user sees it: clone, cloud-init, power on, SSH."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import time
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyVmomi import vim

from provisioner.lab import guest as guests
from provisioner.lab import lab as lab_mod
from provisioner.lab import paths
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab

ADDRESS = "198.18.0.60"


def _keypair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def _find(content: Any, kind: Any, name: str) -> Any:
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        hits = [o for o in view.view if o.name == name]
    finally:
        view.Destroy()
    assert len(hits) == 1, f"{name}: {len(hits)} hits"
    return hits[0]


def _wait_task(task: Any) -> Any:
    deadline = time.monotonic() + 60
    while task.info.state not in ("success", "error"):
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.1)
    if task.info.state == "error":
        raise AssertionError(task.info.error.msg)
    return task.info.result


def _plain_clone(content: Any, name: str) -> Any:
    """A clone of the template with nothing of vkp's: no cloud-init data, default placement."""
    template = _find(content, vim.VirtualMachine, "debian-12")
    dc = _find(content, vim.Datacenter, "DC0")
    cluster = _find(content, vim.ClusterComputeResource, "DC0_C0")
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=cluster.resourcePool), powerOn=False)
    return _wait_task(template.CloneVM_Task(folder=dc.vmFolder, name=name, spec=spec))


def _wait_ip(vm: Any, deadline_s: float = 120) -> str:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ip = vm.guest.ipAddress
        if ip:
            return str(ip)
        time.sleep(0.5)
    raise AssertionError(f"{vm.name} reported no guest.ipAddress within {deadline_s}s")


def _ssh(address: str, host_key_line: str, client_key: str, user: str = "vkp") -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    kind, b64 = host_key_line.split()[:2]
    client.get_host_keys().add(address, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(client_key))
    deadline = time.monotonic() + 60
    while True:
        try:
            client.connect(
                address, username=user, pkey=pkey, timeout=5, allow_agent=False, look_for_keys=False
            )
            return client
        except paramiko.BadHostKeyException:
            raise
        except (paramiko.ssh_exception.NoValidConnectionsError, OSError, paramiko.SSHException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _guest_processes(moid: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "systemd-nspawn" in line and f"/guests/{moid}/" in line]


def test_clone_boot_ssh_power_off_destroy(lab: LabHandle) -> None:
    client_private, client_public = _keypair()
    host_private, host_public = _keypair()
    metadata = {
        "instance-id": "lab-test-1",
        "local-hostname": "labtest-1",
        "network": {
            "version": 2,
            "ethernets": {
                "id0": {
                    "match": {"macaddress": "placeholder"},
                    "set-name": "eth0",
                    "addresses": [f"{ADDRESS}/24"],
                    # cloud-init 22.4 (Debian 12) rejects "to: default"; 0.0.0.0/0 works everywhere.
                    "routes": [{"to": "0.0.0.0/0", "via": paths.GATEWAY}],
                }
            },
        },
    }
    userdata = (
        "#cloud-config\n"
        + json.dumps(
            {
                "users": [
                    {"name": "vkp", "sudo": "ALL=(ALL) NOPASSWD:ALL", "ssh_authorized_keys": [client_public]}
                ],
                "ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public},
                "ssh_deletekeys": True,
            }
        )
        + "\n"
    )

    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        content = s.content
        template = _find(content, vim.VirtualMachine, "debian-12")
        dc = _find(content, vim.Datacenter, "DC0")
        cluster = _find(content, vim.ClusterComputeResource, "DC0_C0")
        template_mac = next(
            d.macAddress
            for d in template.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        )
        spec = vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(
                pool=cluster.resourcePool,
                host=cluster.host[1],
                diskMoveType="createNewChildDiskBacking",
            ),
            snapshot=template.snapshot.currentSnapshot,
            template=False,
            powerOn=False,
        )
        vm = _wait_task(template.CloneVM_Task(folder=dc.vmFolder, name="labtest-1", spec=spec))
        try:
            mac = next(
                d.macAddress
                for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard)
            )
            assert mac != template_mac, "a clone must get its own MAC address, as on vCenter"
            metadata["network"]["ethernets"]["id0"]["match"]["macaddress"] = mac  # type: ignore[index]
            extra = [
                vim.option.OptionValue(
                    key="guestinfo.metadata", value=base64.b64encode(json.dumps(metadata).encode()).decode()
                ),
                vim.option.OptionValue(key="guestinfo.metadata.encoding", value="base64"),
                vim.option.OptionValue(
                    key="guestinfo.userdata", value=base64.b64encode(userdata.encode()).decode()
                ),
                vim.option.OptionValue(key="guestinfo.userdata.encoding", value="base64"),
            ]
            _wait_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=extra)))

            started = time.monotonic()
            _wait_task(vm.PowerOnVM_Task())
            assert _wait_ip(vm) == ADDRESS
            assert any(ADDRESS in (n.ipAddress or []) and n.macAddress == mac for n in vm.guest.net)

            ssh = _ssh(ADDRESS, host_public, client_private)
            try:
                _, out, _ = ssh.exec_command("hostname; cat /sys/class/net/eth0/address")
                hostname, guest_mac = out.read().decode().split()
            finally:
                ssh.close()
            print(f"power-on to SSH: {time.monotonic() - started:.1f}s")
            assert hostname == "labtest-1"
            assert guest_mac.lower() == mac.lower()

            # A host key other than the pinned one is refused at once, never added.
            _, wrong_host_public = _keypair()
            with pytest.raises(paramiko.BadHostKeyException):
                _ssh(ADDRESS, wrong_host_public, client_private)

            _wait_task(vm.PowerOffVM_Task())

            def guest_states() -> list[str]:
                return [g["state"] for g in lab_mod.status()["guests"] if g["vm"] == vm._moId]

            deadline = time.monotonic() + 60
            while (
                _guest_processes(vm._moId) or guest_states() != ["stopped"]
            ) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not _guest_processes(vm._moId), "powering off must stop the guest"
            assert guest_states() == ["stopped"], "the guest's disk stays, like a powered-off VM's"
        finally:
            if vm.runtime.powerState == "poweredOn":
                _wait_task(vm.PowerOffVM_Task())
            _wait_task(vm.Destroy_Task())
        deadline = time.monotonic() + 30
        while (paths.GUESTS / vm._moId).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not (paths.GUESTS / vm._moId).exists(), "destroying the VM must remove its guest"


def test_customized_vm_is_realized_with_its_fixed_address(lab: LabHandle) -> None:
    """A VM customized the classic way (CustomizeVM_Task with a fixed IP) boots with that address."""
    address = "198.18.0.62"
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        content = s.content
        vm = _plain_clone(content, "labtest-custom")
        try:
            custom = vim.vm.customization.Specification(
                identity=vim.vm.customization.LinuxPrep(
                    hostName=vim.vm.customization.FixedName(name="labtest-custom"), domain="lab"
                ),
                globalIPSettings=vim.vm.customization.GlobalIPSettings(),
                nicSettingMap=[
                    vim.vm.customization.AdapterMapping(
                        adapter=vim.vm.customization.IPSettings(
                            ip=vim.vm.customization.FixedIp(ipAddress=address),
                            subnetMask="255.255.255.0",
                            gateway=[paths.GATEWAY],
                        )
                    )
                ],
            )
            _wait_task(vm.CustomizeVM_Task(custom))
            _wait_task(vm.PowerOnVM_Task())
            deadline = time.monotonic() + 60
            configured = ""
            while time.monotonic() < deadline:
                g = guests.find_guest(vm._moId)
                if g is not None and g.netns:
                    configured = subprocess.run(
                        ["ip", "-n", g.netns, "-4", "-o", "addr", "show", "dev", "eth0"],
                        capture_output=True,
                        text=True,
                    ).stdout
                    if f"{address}/24" in configured:
                        break
                time.sleep(0.5)
            assert f"{address}/24" in configured, f"the guest never configured {address}: {configured!r}"
            # Reachable there: its sshd answers (no key of ours is on it, so no login).
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection((address, 22), timeout=2) as conn:
                        assert conn.recv(4) == b"SSH-"
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            if vm.runtime.powerState == "poweredOn":
                _wait_task(vm.PowerOffVM_Task())
            _wait_task(vm.Destroy_Task())


def test_lab_down_leaves_nothing(lab: LabHandle) -> None:
    """With a guest running, `vkp lab down` stops and removes everything; then the lab comes back."""
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        content = s.content
        vm = _plain_clone(content, "labtest-down")
        _wait_task(vm.PowerOnVM_Task())
        deadline = time.monotonic() + 60
        while not _guest_processes(vm._moId) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _guest_processes(vm._moId), "the powered-on VM should have a running guest"
        # Without cloud-init network data or customization there is nothing to configure (the lab
        # has no DHCP): lab status says so instead of leaving the user to wait.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            errors = [g["error"] for g in lab_mod.status()["guests"] if g["vm"] == vm._moId]
            if errors and errors[0]:
                break
            time.sleep(0.5)
        assert errors == ["no static address configured"]
    g = guests.find_guest(vm._moId)
    assert g is not None and g.netns

    result = subprocess.run([VKP, "lab", "down", "-o", "json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["guests_removed"] == 1

    assert not paths.RUN.exists()
    assert subprocess.run(["ip", "link", "show", paths.BRIDGE], capture_output=True).returncode != 0
    procs = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(paths.RUN) not in procs, "no guest, simulator or hypervisor of the lab may remain"
    assert "provisioner.lab.hypervisor" not in procs
    netns_after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert g.netns not in netns_after
    assert subprocess.run(["ip", "link", "show", g.host_ifname], capture_output=True).returncode != 0
    with open("/proc/mounts") as f:
        mounts = f.read()
    assert str(paths.RUN) not in mounts

    # A second down is a no-op; then bring the lab back for later tests in this session.
    assert subprocess.run([VKP, "lab", "down"], capture_output=True).returncode == 0
    lab_mod.up(lab_mod.LabOptions(), print)
    assert os.path.exists(paths.ENV_FILE)
