"""Faults armed while the simulator runs (what `vkp lab fault vsphere` does), seen from pyvmomi."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from provisioner.errors import LabError
from provisioner.lab import faults
from provisioner.vsphere.session import Session, connect
from tests.vcsim.conftest import Vcsim
from tests.vcsim.test_vcsim_behaviour import linked_clone, objects, one, wait

pytestmark = pytest.mark.vcsim


@pytest.fixture(scope="module")
def sim(start_vcsim: Callable[..., Vcsim]) -> Vcsim:
    # A simulator of this module's own: the faults armed here must not reach other tests.
    return start_vcsim(hosts=2)


@pytest.fixture(scope="module")
def session(sim: Vcsim) -> Iterator[Session]:
    with connect(sim.server, sim.user, sim.password, thumbprint=sim.thumbprint) as s:
        yield s


def _names(content: Any) -> set[str]:
    return {vm.name for vm in objects(content, vim.VirtualMachine)}


def test_armed_clone_fault_fails_the_next_clone_only(sim: Vcsim, session: Session) -> None:
    content = session.content
    host = objects(content, vim.ClusterComputeResource)[0].host[0]
    wait(linked_clone(content, "before", host))  # calls made before arming do not count

    state = faults.arm_vsphere(sim.run_dir, [("CloneVM_Task", 1)])
    assert [(p["method"], p["call"]) for p in state["pending"]] == [("CloneVM_Task", 2)]

    with pytest.raises(vmodl.fault.SystemError) as err:
        wait(linked_clone(content, "victim", host))
    assert "vkp lab: injected fault: CloneVM_Task call 2" in err.value.msg  # type: ignore[attr-defined]
    assert "victim" not in _names(content)

    wait(linked_clone(content, "after", host))
    assert {"before", "after"} <= _names(content)
    state = faults.vsphere_state(sim.run_dir)
    assert state["pending"] == []
    assert [(f["method"], f["call"]) for f in state["fired"]] == [("CloneVM_Task", 2)]


def test_kth_power_on_from_now_fails_and_clear_disarms(sim: Vcsim, session: Session) -> None:
    content = session.content
    host = objects(content, vim.ClusterComputeResource)[0].host[1]
    vms = [wait(linked_clone(content, f"p{i}", host)) for i in range(4)]

    faults.arm_vsphere(sim.run_dir, [("PowerOnVM_Task", 2)])
    wait(vms[0].PowerOnVM_Task())
    with pytest.raises(vmodl.fault.SystemError):
        wait(vms[1].PowerOnVM_Task())
    assert vms[1].runtime.powerState == "poweredOff"
    wait(vms[1].PowerOnVM_Task())  # the fault fired once; the retry goes through

    faults.arm_vsphere(sim.run_dir, [("PowerOnVM_Task", 1)])
    assert faults.vsphere_state(sim.run_dir)["pending"], "armed"
    assert faults.clear_vsphere(sim.run_dir)["pending"] == []
    wait(vms[2].PowerOnVM_Task())
    assert one(content, vim.VirtualMachine, "p2").runtime.powerState == "poweredOn"


def test_tools_reports_are_neither_counted_nor_failed(sim: Vcsim, session: Session) -> None:
    content = session.content
    host = objects(content, vim.ClusterComputeResource)[0].host[0]
    vm = wait(linked_clone(content, "tools", host))
    wait(vm.PowerOnVM_Task())
    faults.arm_vsphere(sim.run_dir, [("ReconfigVM_Task", 1)])
    # What the lab hypervisor sends as VMware Tools would: not an API client's call.
    report = vim.vm.ConfigSpec(
        extraConfig=[vim.option.OptionValue(key="SET.guest.ipAddress", value="198.18.0.9")]
    )
    wait(vm.ReconfigVM_Task(report))
    assert vm.guest.ipAddress == "198.18.0.9"
    with pytest.raises(vmodl.fault.SystemError):
        wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(numCPUs=1)))


def test_fault_files_are_private_and_a_dead_simulator_arms_nothing(sim: Vcsim, tmp_path: Any) -> None:
    d = faults.faults_dir(sim.run_dir)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700

    # A run directory whose simulator is gone: the command fails and leaves no file to fire later.
    (tmp_path / "faults").mkdir()
    with pytest.raises(LabError, match="did not take the fault"):
        faults.arm_vsphere(tmp_path, [("CloneVM_Task", 1)], timeout=0.5)
    assert list((tmp_path / "faults").iterdir()) == []
