"""The lab's simulator answers like the vCenter vkp provisions against (real SOAP, real pyvmomi)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from provisioner.errors import LabError
from provisioner.lab import simulator
from provisioner.vsphere.session import Session, connect

pytestmark = pytest.mark.vcsim


def objects(content: Any, kind: Any) -> list[Any]:
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def one(content: Any, kind: Any, name: str) -> Any:
    hits = [o for o in objects(content, kind) if o.name == name]
    assert len(hits) == 1, f"{len(hits)} {kind.__name__} named {name!r}"
    return hits[0]


def wait(task: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while task.info.state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
        assert time.monotonic() < deadline, "task did not finish"
        time.sleep(0.05)
    if task.info.state == vim.TaskInfo.State.error:
        raise task.info.error
    return task.info.result


def nics(vm: Any) -> list[Any]:
    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]


def linked_clone(content: Any, name: str, host: Any) -> Any:
    template = one(content, vim.VirtualMachine, "debian-12")
    dc = one(content, vim.Datacenter, "DC0")
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(
            pool=host.parent.resourcePool, host=host, diskMoveType="createNewChildDiskBacking"
        ),
        snapshot=template.snapshot.currentSnapshot,
        powerOn=False,
    )
    return template.CloneVM_Task(folder=dc.vmFolder, name=name, spec=spec)


@pytest.fixture(scope="module")
def session(vcsim: Any) -> Iterator[Session]:
    with connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=vcsim.thumbprint) as s:
        yield s


def test_inventory_is_what_the_lab_promises(session: Session, vcsim: Any) -> None:
    content = session.content
    (dc,) = objects(content, vim.Datacenter)
    assert dc.name == "DC0"
    (cluster,) = objects(content, vim.ClusterComputeResource)
    assert cluster.configurationEx.drsConfig.enabled is True
    hosts = cluster.host
    assert len(hosts) == vcsim.hosts
    (ds,) = objects(content, vim.Datastore)
    assert sorted(m.key.name for m in ds.host) == sorted(h.name for h in hosts)
    for h in hosts:
        assert ds in h.datastore
    net = one(content, vim.Network, "VM Network")
    assert not isinstance(net, vim.dvs.DistributedVirtualPortgroup)
    assert sorted(h.name for h in net.host) == sorted(h.name for h in hosts)

    template = one(content, vim.VirtualMachine, "debian-12")
    assert template.config.template is True
    assert template.parent == dc.vmFolder
    assert template.config.hardware.numCPU == 2
    assert template.config.hardware.memoryMB == 2048
    assert template.snapshot.currentSnapshot is not None
    assert [s.name for s in template.snapshot.rootSnapshotList] == ["base"]
    disks = [d for d in template.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    assert len(disks) == 1
    (nic,) = nics(template)
    assert isinstance(nic, vim.vm.device.VirtualVmxnet3)
    assert getattr(nic.backing, "deviceName", None) == "VM Network" and nic.macAddress


def test_linked_clone_gets_a_new_mac_and_the_requested_host(session: Session) -> None:
    content = session.content
    template = one(content, vim.VirtualMachine, "debian-12")
    template_mac = nics(template)[0].macAddress
    template_disk = [
        d.backing.fileName for d in template.config.hardware.device if hasattr(d.backing, "fileName")
    ]
    cluster = objects(content, vim.ClusterComputeResource)[0]
    target = next(h for h in cluster.host if h != template.runtime.host)

    vms = [wait(linked_clone(content, f"mac-{i}", target)) for i in range(2)]
    macs = [nics(vm)[0].macAddress for vm in vms]
    assert template_mac not in macs
    assert len(set(macs)) == 2
    for vm in vms:
        assert vm.runtime.host == target
        assert vm in target.vm
        assert vm.config.template is False
    # The source is untouched by the clones.
    assert nics(template)[0].macAddress == template_mac
    assert [
        d.backing.fileName for d in template.config.hardware.device if hasattr(d.backing, "fileName")
    ] == (template_disk)


def test_unset_properties_read_as_none_and_the_connection_survives(session: Session) -> None:
    content = session.content
    cluster = objects(content, vim.ClusterComputeResource)[0]
    vm = wait(linked_clone(content, "nosnap", cluster.host[0]))
    assert vm.snapshot is None  # pyvmomi reads it with Fetch
    assert vm.parentVApp is None
    assert vm.name == "nosnap"  # same connection, still answering

    pc = content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot", "name"])
        ],
    )
    (obj,) = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions()).objects
    props = {p.name: p.val for p in obj.propSet}
    assert props["name"] == "nosnap" and props.get("snapshot") is None

    collector = pc.CreatePropertyCollector()
    try:
        collector.CreateFilter(spec, partialUpdates=False)
        update = collector.WaitForUpdatesEx("", vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=1))
        changes = {c.name: c.val for fs in update.filterSet for o in fs.objectSet for c in o.changeSet}
        assert changes["name"] == "nosnap" and changes.get("snapshot") is None
    finally:
        collector.DestroyPropertyCollector()


def test_guest_ip_from_extra_config_shows_like_vmware_tools(session: Session) -> None:
    content = session.content
    cluster = objects(content, vim.ClusterComputeResource)[0]
    vm = wait(linked_clone(content, "guest", cluster.host[1]))
    assert vm.guest.ipAddress is None and not vm.guest.net

    def reconfigure(**values: str) -> None:
        opts = [vim.option.OptionValue(key=f"SET.guest.{k}", value=v) for k, v in values.items()]
        wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=opts)))

    wait(vm.PowerOnVM_Task())
    reconfigure(ipAddress="198.18.0.10", hostName="node-1")
    assert vm.guest.ipAddress == "198.18.0.10"
    assert vm.guest.hostName == "node-1"
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    (net,) = vm.guest.net
    assert net.macAddress == nics(vm)[0].macAddress
    assert net.network == "VM Network" and net.connected
    assert list(net.ipAddress) == ["198.18.0.10"]

    reconfigure(ipAddress="")
    assert vm.guest.ipAddress is None and not vm.guest.net

    reconfigure(ipAddress="198.18.0.11")
    wait(vm.PowerOffVM_Task())
    assert vm.guest.ipAddress is None and not vm.guest.net
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"


@pytest.fixture(scope="module")
def slow_and_flaky(start_vcsim: Callable[..., Any]) -> Iterator[Session]:
    sim = start_vcsim(hosts=2, delays={"CloneVM_Task": 1500}, fails=[("CloneVM_Task", 2)])
    with connect(sim.server, sim.user, sim.password, thumbprint=sim.thumbprint) as s:
        yield s


def test_delay_and_injected_fault(slow_and_flaky: Session) -> None:
    content = slow_and_flaky.content
    cluster = objects(content, vim.ClusterComputeResource)[0]
    assert len(cluster.host) == 2

    t = time.monotonic()
    first = wait(linked_clone(content, "first", cluster.host[0]))
    assert time.monotonic() - t >= 1.5
    assert first.name == "first"

    with pytest.raises(vmodl.fault.SystemError) as err:
        wait(linked_clone(content, "second", cluster.host[0]))
    assert "vkp lab: injected fault: CloneVM_Task call 2" in err.value.msg  # type: ignore[attr-defined]
    assert not [vm for vm in objects(content, vim.VirtualMachine) if vm.name == "second"]

    third = wait(linked_clone(content, "third", cluster.host[1]))
    assert third.runtime.host == cluster.host[1]


def test_port_in_use_is_a_lab_error_and_leaves_nothing_behind(
    vcsim: Any, vcsim_binary: Any, tmp_path: Any
) -> None:
    with pytest.raises(LabError, match=f"port {vcsim.port} on 127.0.0.1 is in use"):
        simulator.start(
            vcsim_binary,
            tmp_path,
            port=vcsim.port,
            hosts=1,
            username="u",
            password="p",
            delays={},
            fails=[],
        )
    # The running simulator is unaffected.
    with socket.create_connection(("127.0.0.1", vcsim.port), timeout=2):
        pass
