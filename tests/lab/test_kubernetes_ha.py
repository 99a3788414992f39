"""The prod plan on the lab, from the environment alone: three masters behind a virtual address.

What a user does: `eval "$(vkp lab env)"` (which offers a free virtual address) and
`vkp create-cluster NAME --plan prod`. Then the master holding the address loses its VM,
powered off through vSphere, and the API answers again through the same address.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from pyVmomi import vim

from provisioner.lab import paths
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab

NAME = "ha"
MASTERS = [f"{NAME}-master-{i}" for i in (1, 2, 3)]
WORKERS = [f"{NAME}-worker-{i}" for i in (1, 2, 3)]


def vkp(env: dict[str, str], *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def env(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # Exactly what the README has a user type: the variables `vkp lab env` exports, evaluated.
    base = {**os.environ, "VKP_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    r = subprocess.run(
        ["bash", "-c", f'eval "$({VKP} lab env)" && env -0'], env=base, capture_output=True, check=True
    )
    e = dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if "=" in item)
    assert e["VKP_API_ENDPOINT"].startswith("198.18.0.2"), e["VKP_API_ENDPOINT"]
    yield e
    r = vkp(e, "delete-cluster", NAME, "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    lab.wait_guests_gone(NAME)


def kubectl(env: dict[str, str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(paths.BIN / "kubectl"), "--kubeconfig", env["KUBECONFIG"], "--request-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ready(env: dict[str, str]) -> list[str]:
    r = kubectl(env, "get", "nodes", "-o", "json")
    if r.returncode != 0:
        return []
    out = []
    for n in json.loads(r.stdout)["items"]:
        if {c["type"]: c["status"] for c in n["status"]["conditions"]}.get("Ready") == "True":
            out.append(n["metadata"]["name"])
    return sorted(out)


def holder(env: dict[str, str], vip: str, masters: list[str] = MASTERS) -> list[str]:
    """The masters that have the virtual address on an interface."""
    out = []
    for m in masters:
        r = vkp(env, "ssh", NAME, m, "--", "ip", "-o", "-4", "addr", "show", timeout=60)
        if r.returncode == 0 and f" {vip}/" in r.stdout:
            out.append(m)
    return out


def test_1_prod_plan_from_the_environment(env: dict[str, str]) -> None:
    r = vkp(env, "create-cluster", NAME, "--plan", "prod", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout)
    assert (result["phases"][-1]["name"], result["phases"][-1]["status"]) == ("kubernetes", "done")
    r = vkp(env, "get-credentials", NAME, "-o", "json")
    assert r.returncode == 0, r.stderr
    creds = json.loads(r.stdout)
    vip = env["VKP_API_ENDPOINT"]
    assert creds["server"] == f"https://{vip}:6443"
    env["KUBECONFIG"] = creds["path"]
    assert ready(env) == sorted(MASTERS + WORKERS)
    r = kubectl(env, "get", "nodes", "-l", "node-role.kubernetes.io/master", "-o", "name")
    assert sorted(r.stdout.split()) == [f"node/{m}" for m in MASTERS]
    assert len(holder(env, vip)) == 1, "exactly one master holds the virtual address"


def answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def power_off(lab: LabHandle, vm_name: str) -> None:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        (vm,) = [v for v in view.view if v.name == vm_name]
        view.Destroy()
        task = vm.PowerOffVM_Task()
        while task.info.state not in ("success", "error"):
            time.sleep(0.2)
        assert task.info.state == "success", task.info.error


def test_2_the_api_survives_the_loss_of_the_master_holding_the_address(
    env: dict[str, str], lab: LabHandle
) -> None:
    vip = env["VKP_API_ENDPOINT"]
    (first,) = holder(env, vip)
    described = json.loads(vkp(env, "describe-cluster", NAME, "-o", "json").stdout)
    first_address = next(n["address"] for n in described["nodes"] if n["name"] == first)
    power_off(lab, first)
    # From the power-off on, the API is asked through the address once a second, as a user's
    # kubectl would; the machine counts as gone once its SSH port stops answering.
    started = time.monotonic()
    gone: float | None = None
    log: list[tuple[float, bool, str]] = []
    while time.monotonic() - started < 240:
        r = kubectl(env, "get", "--raw", "/readyz")
        now = time.monotonic() - started
        log.append((now, r.returncode == 0 and r.stdout.strip() == "ok", r.stderr.strip()[-100:]))
        if gone is None and not answers(first_address, 22):
            gone = now
        if gone is not None and now > gone + 30 and all(ok for _, ok, _ in log[-10:]):
            break
        time.sleep(1)
    assert gone is not None, f"{first} still answers after its VM was powered off"
    failed = [(round(t, 1), err) for t, ok, err in log if not ok]
    print(f"\n{first} powered off; gone after {gone:.1f}s; {len(log)} requests through {vip}, "
          f"{len(failed)} failed: {failed}")  # fmt: skip
    assert all(ok for _, ok, _ in log[-10:]), f"the API through {vip} does not answer steadily: {log[-10:]}"
    others = [m for m in MASTERS if m != first]
    assert len(holder(env, vip, others)) == 1, "another master took the address over"
    # kubectl keeps working: a write and a read through the address.
    r = kubectl(env, "create", "configmap", "vkp-ha-probe", "--from-literal=k=v")
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "get", "configmap", "vkp-ha-probe", "-o", "jsonpath={.data.k}")
    assert r.stdout == "v", r.stderr
