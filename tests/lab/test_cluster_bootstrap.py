"""create-cluster's bootstrap phases end to end on inventory/lab.yaml: etcd over mTLS, containerd.

One cluster for the module, taken through what a user meets: a broken template stopped before
anything is uploaded, a run killed mid-phase that resumes, a re-run that changes nothing, an
etcd member brought back after its VM went down, a node whose host key changed refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from provisioner.bootstrap.etcd_client import check_cluster
from provisioner.bootstrap.pki import load_pki
from provisioner.errors import ExitCode
from provisioner.state import ClusterState
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "inventory" / "lab.yaml")
ETCD = ["lab-etcd-1", "lab-etcd-2", "lab-etcd-3"]
RUNTIME_NODES = ["lab-master-1", "lab-worker-1", "lab-worker-2"]


@pytest.fixture(scope="module")
def env(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    e = {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    yield e
    subprocess.run([VKP, "delete-cluster", "lab", "--yes"], env=e, capture_output=True)


def vkp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, *args], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def state(env: dict[str, str]) -> ClusterState:
    os.environ["VKP_STATE_DIR"] = env["VKP_STATE_DIR"]
    try:
        return ClusterState.load("lab")
    finally:
        del os.environ["VKP_STATE_DIR"]


def etcd_report(env: dict[str, str]) -> Any:
    st = state(env)
    endpoints = [f"https://{st.nodes[n].address}:2379" for n in ETCD]
    return check_cluster(endpoints, ETCD, load_pki(st))


def on_node(env: dict[str, str], node: str, command: str) -> subprocess.CompletedProcess[str]:
    return vkp(env, "ssh", "lab", node, "--", command)


def test_1_vms_then_broken_template_uploads_nothing(env: dict[str, str], tmp_path: Path) -> None:
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "vms")
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "templates"
    shutil.copytree(REPO / "templates", broken)
    conf = broken / "etcd" / "etcd.conf.yml.j2"
    conf.write_text(conf.read_text() + "\n# {{ no_such_variable }}\n")
    r = vkp(
        {**env, "VKP_TEMPLATES": str(broken)}, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime"
    )
    assert r.returncode != 0
    assert "etcd/etcd.conf.yml.j2" in r.stderr and "no_such_variable" in r.stderr, r.stderr
    for node in ETCD:
        assert on_node(env, node, "test -e /etc/etcd/pki").returncode == 1, f"{node}: something was uploaded"


def test_2_killed_run_resumes(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [VKP, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "play etcd [" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [(p["name"], p["status"]) for p in result["phases"]] == [
        ("vms", "done"),
        ("etcd", "done"),
        ("runtime", "done"),
    ]
    report = etcd_report(env)
    assert sorted(m.name for m in report.members) == ETCD
    assert report.ok and report.round_trip
    for node in RUNTIME_NODES:
        r = on_node(env, node, "systemctl is-active containerd && sudo ctr version")
        assert r.returncode == 0 and "active" in r.stdout and "Server:" in r.stdout, (
            node,
            r.stdout,
            r.stderr,
        )
    for node in ETCD:
        mode = on_node(env, node, "sudo stat -c %a:%U /var/lib/etcd").stdout.strip()
        assert mode == "700:etcd", (node, mode)


def test_3_rerun_changes_nothing(env: dict[str, str]) -> None:
    before = {n: on_node(env, n, "systemctl show -p ExecMainStartTimestamp etcd").stdout for n in ETCD}
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["changed"] == 0 and result["bootstrap"]["changed"] == 0
    assert result["bootstrap"]["restarts"] == []
    assert {
        n: on_node(env, n, "systemctl show -p ExecMainStartTimestamp etcd").stdout for n in ETCD
    } == before


def test_4_without_kubernetes_artifacts_the_phase_stops_clearly(env: dict[str, str]) -> None:
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "-o", "json")
    assert r.returncode == ExitCode.ARTIFACTS, r.stderr
    error = json.loads(r.stdout)["error"]
    assert (
        "kubeadm" in error["message"] and env["VKP_K8S_ARTIFACTS"].removeprefix("local:") in error["message"]
    )
    assert "--up-to runtime" in error["hint"]
    phases = {
        p["name"]: p["status"]
        for p in json.loads(vkp(env, "describe-cluster", "lab", "-o", "json").stdout)["phases"]
    }
    assert phases == {"vms": "done", "etcd": "done", "runtime": "done", "kubernetes": "failed"}
    assert etcd_report(env).ok  # nothing before the phase was undone
    assert on_node(env, "lab-master-1", "test -e /usr/local/bin/kubeadm").returncode == 1


def test_5_etcd_member_whose_vm_went_down_comes_back(env: dict[str, str], lab: LabHandle) -> None:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        vm = next(v for v in view.view if v.name == "lab-etcd-2")
        view.Destroy()
        task = vm.PowerOffVM_Task()
        while task.info.state not in ("success", "error"):
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            etcd_report(env)
        except Exception as exc:  # noqa: BLE001 - any failure naming the member will do
            assert "198.18.0.21" in str(exc) or "lab-etcd-2" in str(exc), exc
            break
        time.sleep(0.5)
    else:
        raise AssertionError("etcd still reported 3 healthy members with lab-etcd-2's VM off")
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime")
    assert r.returncode == 0, r.stderr
    report = etcd_report(env)
    assert sorted(m.name for m in report.members) == ETCD and report.ok


def test_6_resize_adds_and_removes_workers(env: dict[str, str], lab: LabHandle) -> None:
    r = vkp(env, "resize", "lab", "--workers", "3", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == ["lab-worker-3"]
    r = on_node(env, "lab-worker-3", "systemctl is-active containerd")
    assert r.stdout.strip() == "active", "a new worker goes through every phase the cluster reached"
    r = vkp(env, "resize", "lab", "--workers", "2", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] == ["lab-worker-3"]
    assert "lab-worker-3" not in state(env).nodes
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        names = {v.name for v in view.view}
        view.Destroy()
    assert "lab-worker-3" not in names and "lab-worker-2" in names


def test_7_changed_host_key_is_refused(env: dict[str, str]) -> None:
    swap = (
        "sudo ssh-keygen -q -t ed25519 -N '' -f /tmp/other && "
        "sudo cp /tmp/other /etc/ssh/ssh_host_ed25519_key && "
        "sudo cp /tmp/other.pub /etc/ssh/ssh_host_ed25519_key.pub && "
        "sudo systemctl restart ssh"
    )
    assert on_node(env, "lab-worker-2", swap).returncode == 0
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime")
    assert r.returncode == ExitCode.HOST_KEY, r.stderr
    assert "lab-worker-2" in r.stderr
    r = on_node(env, "lab-worker-2", "true")
    assert r.returncode == ExitCode.HOST_KEY, "vkp ssh must refuse the node too"
