"""`vkp lab fault` on the running lab: a failed power-on, a guest cut off the network and back."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from provisioner.lab import paths
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle
from tests.lab.test_lab import _plain_clone, _wait_task

pytestmark = pytest.mark.lab

NAME, ADDRESS = "labtest-netfault", "198.18.0.64"


def vkp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, "lab", "fault", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def pings(address: str) -> bool:
    # One echo, not lab.network.answers: a neighbour entry outlives the link it was learnt on.
    r = subprocess.run(
        ["ping", "-c", "1", "-W", "1", "-n", "-q", "-I", paths.BRIDGE, address], capture_output=True
    )
    return r.returncode == 0


def until(cond: Any, timeout: float, what: str) -> float:
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, f"{what} not within {timeout:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - t


def _customize(vm: Any) -> None:
    custom = vim.vm.customization.Specification(
        identity=vim.vm.customization.LinuxPrep(
            hostName=vim.vm.customization.FixedName(name=NAME), domain="lab"
        ),
        globalIPSettings=vim.vm.customization.GlobalIPSettings(),
        nicSettingMap=[
            vim.vm.customization.AdapterMapping(
                adapter=vim.vm.customization.IPSettings(
                    ip=vim.vm.customization.FixedIp(ipAddress=ADDRESS),
                    subnetMask="255.255.255.0",
                    gateway=[paths.GATEWAY],
                )
            )
        ],
    )
    _wait_task(vm.CustomizeVM_Task(custom))


def test_power_on_fault_then_network_drop_and_back(lab: LabHandle) -> None:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        vm = _plain_clone(s.content, NAME)
        try:
            _customize(vm)

            # No guest yet: nothing to cut off, and the command says so.
            r = vkp("network", NAME, "--seconds", "5")
            assert r.returncode == 11, r.stderr
            assert "has no guest" in r.stderr

            r = vkp("vsphere", "PowerOnVM_Task", "-o", "json")
            assert r.returncode == 0, r.stderr
            assert [(p["method"], p["k"]) for p in json.loads(r.stdout)["armed"]] == [("PowerOnVM_Task", 1)]
            with pytest.raises(vmodl.fault.SystemError, match="injected fault"):
                _wait_task_raising(vm.PowerOnVM_Task())
            assert vm.runtime.powerState == "poweredOff"
            _wait_task(vm.PowerOnVM_Task())  # the next one goes through

            until(lambda: pings(ADDRESS), 90, f"{ADDRESS} answering after power-on")

            seconds = 8
            t = time.monotonic()
            r = vkp("network", NAME, "--seconds", str(seconds), "-o", "json")
            assert r.returncode == 0, r.stderr
            assert time.monotonic() - t < seconds, "without --wait the command returns at once"
            result = json.loads(r.stdout)
            assert result["vm"] == NAME and result["moid"] == vm._moId

            until(lambda: not pings(ADDRESS), 3, f"{ADDRESS} silent")
            listed = json.loads(vkp("list", "-o", "json").stdout)["network_down"]
            assert [f["vm"] for f in listed] == [NAME]
            assert not pings(ADDRESS), "still cut off a few seconds in"

            back = until(lambda: pings(ADDRESS), seconds + 30, f"{ADDRESS} answering again")
            print(f"network back {time.monotonic() - t:.1f}s after the drop ({back:.1f}s of waiting)")
            assert time.monotonic() - t >= seconds - 1, "it came back before its time"
            assert json.loads(vkp("list", "-o", "json").stdout)["network_down"] == []
            assert vm.runtime.powerState == "poweredOn", "the VM never noticed"
        finally:
            vkp("clear")
            if vm.runtime.powerState == "poweredOn":
                _wait_task(vm.PowerOffVM_Task())
            _wait_task(vm.Destroy_Task())
    until(lambda: not (paths.GUESTS / vm._moId).exists(), 60, "the guest removed")


def _wait_task_raising(task: Any) -> None:
    deadline = time.monotonic() + 30
    while task.info.state not in ("success", "error"):
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.1)
    if task.info.state == "error":
        raise task.info.error
