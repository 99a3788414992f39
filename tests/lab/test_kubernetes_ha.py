"""The prod plan on the lab, from the environment alone: three masters behind a virtual address.

What a user does: `eval "$(vkp lab env)"` (which offers a free virtual address) and
`vkp create-cluster NAME --plan prod`. Then the master holding the address loses its VM,
powered off through vSphere, and the API answers again through the same address.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

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


def holder(env: dict[str, str], vip: str) -> list[str]:
    """The masters that have the virtual address on an interface."""
    out = []
    for m in MASTERS:
        r = vkp(env, "ssh", NAME, m, "--", "ip", "-o", "-4", "addr", "show", timeout=30)
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
    power_off(lab, first)
    started = time.monotonic()
    failures: list[str] = []
    answered: Any = None
    while time.monotonic() - started < 120:
        r = kubectl(env, "get", "--raw", "/readyz")
        if r.returncode == 0 and r.stdout.strip() == "ok":
            answered = time.monotonic() - started
            break
        failures.append(r.stderr.strip()[-120:])
        time.sleep(1)
    assert answered is not None, f"the API did not answer through {vip}: {failures[-3:]}"
    print(f"API through {vip} answered again {answered:.1f}s after {first} was powered off "
          f"({len(failures)} failed request(s) before)")  # fmt: skip
    others = [m for m in MASTERS if m != first]
    assert holder(env, vip)[0] in others
    # kubectl keeps working: a write and a read through the address.
    r = kubectl(env, "create", "configmap", "vkp-ha-probe", "--from-literal=k=v")
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "get", "configmap", "vkp-ha-probe", "-o", "jsonpath={.data.k}")
    assert r.stdout == "v", r.stderr
