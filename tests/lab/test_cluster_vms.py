"""create-cluster / delete-cluster, the vSphere half, end to end on the lab through the CLI.

What a user checks: the VMs exist where the plan put them, each answers SSH with the host key
vkp pinned, nothing secret lingers in VM properties, a re-run changes nothing, delete leaves
nothing, bad input and faults fail clearly and a re-run recovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from provisioner.lab import lab as lab_mod
from provisioner.ssh.commands import Cmd
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
LAB_SPEC = REPO / "inventory" / "lab.yaml"


def vkp(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture()
def env(lab: LabHandle, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path / "state")}


def owned(lab: LabHandle, name: str) -> dict[str, Any]:
    """What vCenter holds for a cluster, read independently of vkp's own delete logic."""
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        c = s.content
        view = c.viewManager.CreateContainerView(c.rootFolder, [vim.VirtualMachine], True)
        vms = []
        for vm in view.view:
            extra = {o.key: o.value for o in vm.config.extraConfig or []}
            if extra.get("vkp.cluster.name") == name:
                vms.append(
                    {
                        "name": vm.name,
                        "host": vm.runtime.host.name,
                        "power": str(vm.runtime.powerState),
                        "ip": vm.guest.ipAddress,
                        "userdata": extra.get("guestinfo.userdata", ""),
                        "role": extra.get("vkp.node.role"),
                        "folder": vm.parent.name,
                        "cpus": vm.config.hardware.numCPU,
                        "memory_mb": vm.config.hardware.memoryMB,
                    }
                )
        view.Destroy()
        cl = c.rootFolder.childEntity[0].hostFolder.childEntity[0]
        rules = {
            r.name: sorted(v.name for v in r.vm) for r in cl.configurationEx.rule or [] if name in r.name
        }
        fview = c.viewManager.CreateContainerView(c.rootFolder, [vim.Folder], True)
        folders = [f.name for f in fview.view if f.name == name]
        fview.Destroy()
    return {"vms": sorted(vms, key=lambda v: v["name"]), "rules": rules, "folders": folders}


def ssh_hostnames(state_dir: str, name: str) -> dict[str, str]:
    os.environ["VKP_STATE_DIR"] = state_dir
    try:
        st = ClusterState.load(name)
        key, _ = st.ssh_keypair()
        out = {}
        for node in st.nodes.values():
            with Connection(
                node.name, node.address, "vkp", key, st.known_hosts_path, connect_deadline=30
            ) as c:
                out[node.name] = c.run(Cmd("hostname")).stdout.strip()
        return out
    finally:
        del os.environ["VKP_STATE_DIR"]


def test_create_rerun_delete(lab: LabHandle, env: dict[str, str]) -> None:
    r = vkp(env, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    nodes = result["nodes"]
    assert [n["name"] for n in nodes] == [
        "lab-etcd-1", "lab-etcd-2", "lab-etcd-3", "lab-master-1", "lab-worker-1", "lab-worker-2",
    ]  # fmt: skip
    assert all(set(n) >= {"name", "role", "address", "esxi_host"} for n in nodes)
    assert [p["name"] for p in result["phases"]] == ["vms"]
    assert "lab-etcd-1: cloned" in r.stderr and "answers SSH" in r.stderr  # progress per VM

    held = owned(lab, "lab")
    assert [v["name"] for v in held["vms"]] == [n["name"] for n in nodes]
    etcd_hosts = [v["host"] for v in held["vms"] if v["role"] == "etcd"]
    assert len(set(etcd_hosts)) == 3, f"etcd members must be on distinct ESXi hosts: {etcd_hosts}"
    assert {n["name"]: n["esxi_host"] for n in nodes} == {v["name"]: v["host"] for v in held["vms"]}
    cid = result["cluster_id"]
    assert held["rules"] == {f"vkp-lab-etcd-{cid}": ["lab-etcd-1", "lab-etcd-2", "lab-etcd-3"]}
    assert held["folders"] == ["lab"] and {v["folder"] for v in held["vms"]} == {"lab"}
    assert all(v["power"] == "poweredOn" and v["ip"] for v in held["vms"])
    assert all(v["userdata"] == "" for v in held["vms"]), "userdata (host keys) must not linger on the VM"
    sizes = {v["name"]: (v["cpus"], v["memory_mb"]) for v in held["vms"]}
    assert sizes["lab-master-1"] == (2, 4096) and sizes["lab-worker-1"] == (2, 2048)

    assert ssh_hostnames(env["VKP_STATE_DIR"], "lab") == {n["name"]: n["name"] for n in nodes}
    state_dir = Path(env["VKP_STATE_DIR"]) / "lab"
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / "hosts.yaml").exists()
    secret_files = [
        p for p in state_dir.rglob("*") if p.is_file() and "PRIVATE KEY" in p.read_text(errors="ignore")
    ]
    assert secret_files and all(p.stat().st_mode & 0o077 == 0 for p in secret_files)
    assert env["VKP_VSPHERE_PASSWORD"] not in "".join(
        p.read_text(errors="ignore") for p in state_dir.rglob("*") if p.is_file()
    )

    again = vkp(env, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms", "-o", "json")
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["created"] == 0 and rerun["changed"] == 0
    assert owned(lab, "lab")["vms"] == held["vms"]

    described = json.loads(vkp(env, "describe-cluster", "lab", "-o", "json").stdout)
    assert [n["name"] for n in described["nodes"]] == [n["name"] for n in nodes]
    listed = json.loads(vkp(env, "list-clusters", "-o", "json").stdout)
    assert [c["name"] for c in listed["clusters"]] == ["lab"]

    d = vkp(env, "delete-cluster", "lab", "--yes", "-o", "json")
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout)["deleted"] == {"vms": 6, "rules": 1, "folders": 1}
    assert owned(lab, "lab") == {"vms": [], "rules": {}, "folders": []}
    assert not state_dir.exists()
    second = vkp(env, "delete-cluster", "lab", "--yes")
    assert second.returncode == 0 and "nothing to delete" in second.stdout


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"topology": {"etcd": {"count": 2}}}, "topology.etcd.count", "odd"),
        ({"topology": {"master": {"count": 0}}}, "topology.master.count", "at least one master"),
        ({"network": {"pool": "198.18.0.20-198.18.0.22"}}, "network.pool", "6"),
        ({"network": {"pool": "198.18.1.20-198.18.1.59"}}, "network.pool", "198.18.0.0/24"),
        ({"network": {"api_endpoint": {"address": "198.18.0.30"}}}, "network.api_endpoint.address", "pool"),
        ({"plan": "huge"}, "plan", "dev"),
        ({"topology": {"master": {"memory_mb": 512}}}, "topology.master.memory_mb", "2048"),
    ],
)
def test_bad_spec_fails_before_anything(
    lab: LabHandle, env: dict[str, str], tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    import yaml

    spec = yaml.safe_load(LAB_SPEC.read_text())
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            for k, v in value.items():
                spec[key][k] = {**spec[key].get(k, {}), **v} if isinstance(v, dict) else v
        else:
            spec[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = vkp(env, "create-cluster", "-f", str(path), "--yes", "--up-to", "vms")
    assert r.returncode == 3, r.stderr
    assert field in r.stderr and message in r.stderr, r.stderr
    assert owned(lab, "lab")["vms"] == []


def test_several_problems_reported_together(lab: LabHandle, env: dict[str, str]) -> None:
    r = vkp(env, "create-cluster", "bad_name!", "--plan", "nope", "--yes")
    assert r.returncode == 3
    assert "name" in r.stderr and "plan" in r.stderr


def test_wrong_password_and_thumbprint(lab: LabHandle, env: dict[str, str]) -> None:
    r = vkp(
        {**env, "VKP_VSPHERE_PASSWORD": "not-the-password"}, "create-cluster", "-f", str(LAB_SPEC), "--yes"
    )
    assert r.returncode == 10, r.stderr
    assert "not-the-password" not in r.stderr + r.stdout
    wrong = ":".join(["AB"] * 32)
    r = vkp({**env, "VKP_VSPHERE_THUMBPRINT": wrong}, "create-cluster", "-f", str(LAB_SPEC), "--yes")
    assert r.returncode == 9, r.stderr
    assert lab.thumbprint in r.stderr  # says what the server presented, so the user can compare
    assert owned(lab, "lab")["vms"] == []


@pytest.fixture()
def lab_with(lab: LabHandle) -> Iterator[Any]:
    """Restart the lab with fault options for one test, and restore a plain lab afterwards."""

    def restart(**options: Any) -> None:
        lab_mod.down(print)
        lab_mod.up(lab_mod.LabOptions(**options), print)

    yield restart
    lab_mod.down(print)
    lab_mod.up(lab_mod.LabOptions(), print)


def test_killed_create_converges(lab: LabHandle, lab_with: Any, tmp_path: Path) -> None:
    lab_with(delays={"CloneVM_Task": 3000, "PowerOnVM_Task": 1000})
    env = {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path / "state")}
    args = [VKP, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms"]
    # Killed while the clones are in flight, then again while VMs power on and boot.
    for kill_after in (1.5, 4.5):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(3.5)  # vCenter finishes what it was asked before the kill
    r = vkp(env, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms", "-o", "json")
    assert r.returncode == 0, r.stderr
    held = owned(lab, "lab")
    assert [v["name"] for v in held["vms"]] == sorted(n["name"] for n in json.loads(r.stdout)["nodes"])
    assert len(held["vms"]) == 6, "no duplicates"
    assert all(v["power"] == "poweredOn" for v in held["vms"])
    assert set(ssh_hostnames(env["VKP_STATE_DIR"], "lab").values()) == {v["name"] for v in held["vms"]}
    assert vkp(env, "delete-cluster", "lab", "--yes").returncode == 0
    assert owned(lab, "lab") == {"vms": [], "rules": {}, "folders": []}


def test_clone_fault_fails_cleanly_and_rerun_completes(lab: LabHandle, lab_with: Any, tmp_path: Path) -> None:
    lab_with(fails=[("CloneVM_Task", 2)])
    env = {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path / "state")}
    r = vkp(env, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms", "-o", "json")
    assert r.returncode == 6, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and "injected fault" in doc["error"]["message"]
    assert "run create-cluster again" in r.stderr
    assert len(owned(lab, "lab")["vms"]) == 5  # the others went on; nothing half-made
    r = vkp(env, "create-cluster", "-f", str(LAB_SPEC), "--yes", "--up-to", "vms", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] == 1
    assert len(owned(lab, "lab")["vms"]) == 6
    assert vkp(env, "delete-cluster", "lab", "--yes").returncode == 0
