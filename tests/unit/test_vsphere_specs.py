"""The pure spec builders: what they would send to vCenter, checked without a server."""

from __future__ import annotations

import base64

import pytest
from pyVmomi import vim

from provisioner.vsphere import guestinfo, specs

TEMPLATE_MAC = "00:50:56:aa:bb:cc"


def template_nic() -> vim.vm.device.VirtualVmxnet3:
    return vim.vm.device.VirtualVmxnet3(
        key=4000,
        controllerKey=100,
        unitNumber=7,
        macAddress=TEMPLATE_MAC,
        addressType="assigned",
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="Template Net", network=vim.Network("network-1")
        ),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=False),
    )


STANDARD = specs.NetworkTarget(obj=vim.Network("network-7"), name="VM Network")
DISTRIBUTED = specs.NetworkTarget(
    obj=vim.dvs.DistributedVirtualPortgroup("dvportgroup-9"),
    name="DC0_DVPG0",
    switch_uuid="50 36 1a 2b-3c 4d 5e 6f",
    portgroup_key="dvportgroup-9",
)


def build(*, linked: bool = True, network: specs.NetworkTarget = STANDARD, nic=None, snapshot="default"):
    return specs.clone_spec(
        cpus=4,
        memory_mb=8192,
        snapshot=vim.vm.Snapshot("snapshot-3") if snapshot == "default" else snapshot,
        pool=vim.ResourcePool("resgroup-8"),
        host=vim.HostSystem("host-21"),
        datastore=vim.Datastore("datastore-12"),
        nic=nic if nic is not None else template_nic(),
        network=network,
        extra_config={"vkp.cluster.name": "demo", "guestinfo.metadata": "e30="},
        linked=linked,
    )


def test_linked_clone_builds_a_child_disk_on_the_snapshot() -> None:
    spec = build(linked=True)
    assert spec.location.diskMoveType == "createNewChildDiskBacking"
    assert spec.snapshot._moId == "snapshot-3"
    assert spec.location.host._moId == "host-21"
    assert spec.location.pool._moId == "resgroup-8"
    assert spec.location.datastore._moId == "datastore-12"
    assert spec.powerOn is False and spec.template is False


def test_full_clone_copies_disks_and_needs_no_snapshot() -> None:
    spec = build(linked=False, snapshot=None)
    assert spec.location.diskMoveType is None  # vCenter's default: copy every disk
    assert spec.snapshot is None


def test_linked_clone_without_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="snapshot"):
        build(linked=True, snapshot=None)


def test_size_and_extra_config() -> None:
    spec = build()
    assert spec.config.numCPUs == 4
    assert spec.config.memoryMB == 8192
    assert {o.key: o.value for o in spec.config.extraConfig} == {
        "vkp.cluster.name": "demo",
        "guestinfo.metadata": "e30=",
    }


def test_nic_moves_to_the_standard_port_group_and_gets_a_new_mac() -> None:
    nic = template_nic()
    (change,) = build(nic=nic).config.deviceChange
    assert change.operation == "edit"
    dev = change.device
    assert dev.key == 4000 and dev.controllerKey == 100 and dev.unitNumber == 7
    assert isinstance(dev, vim.vm.device.VirtualVmxnet3)
    assert isinstance(dev.backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo)
    assert dev.backing.deviceName == "VM Network"
    assert dev.backing.network._moId == "network-7"
    assert dev.macAddress is None and dev.addressType == "generated"
    assert dev.connectable.startConnected is True
    # The caller's device (read from the template) is left as it was.
    assert nic.macAddress == TEMPLATE_MAC and nic.backing.deviceName == "Template Net"


def test_nic_on_a_distributed_port_group_uses_the_switch_uuid_and_key() -> None:
    (change,) = build(network=DISTRIBUTED).config.deviceChange
    backing = change.device.backing
    assert isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert backing.port.switchUuid == "50 36 1a 2b-3c 4d 5e 6f"
    assert backing.port.portgroupKey == "dvportgroup-9"
    assert change.device.macAddress is None and change.device.addressType == "generated"


def test_a_device_that_is_not_a_nic_is_refused() -> None:
    with pytest.raises(ValueError, match="ethernet"):
        build(nic=vim.vm.device.VirtualDisk(key=2000))


def test_a_bare_network_object_is_refused_with_the_way_out() -> None:
    with pytest.raises(TypeError, match="network_target"):
        build(network=vim.Network("network-7"))  # type: ignore[arg-type]


def test_resize() -> None:
    spec = specs.resize_spec(2, 3072)
    assert (spec.numCPUs, spec.memoryMB) == (2, 3072)
    assert spec.extraConfig == []


def test_guestinfo_round_trips_through_the_lab_decoder() -> None:
    metadata = '{"instance-id": "demo-etcd-1", "local-hostname": "demo-etcd-1"}'
    userdata = "#cloud-config\nssh_authorized_keys:\n  - 'ssh-ed25519 AAAA key'\n"
    extra = specs.guestinfo_extra_config(metadata, userdata)
    assert extra["guestinfo.metadata.encoding"] == "base64"
    assert extra["guestinfo.userdata.encoding"] == "base64"
    assert base64.b64decode(extra["guestinfo.userdata"]).decode() == userdata
    data = guestinfo.parse(extra, "fallback-id")
    assert data is not None
    assert data.instance_id == "demo-etcd-1"
    assert data.hostname == "demo-etcd-1"
    assert data.user_data == userdata


def test_redacting_empties_the_user_data_only() -> None:
    spec = specs.redact_userdata_spec(verified=False)
    assert {o.key: o.value for o in spec.extraConfig} == {
        "guestinfo.userdata": "",
        "guestinfo.userdata.encoding": "",
    }
    assert spec.deviceChange == [] and spec.numCPUs is None


def test_redacting_after_the_ssh_check_also_marks_the_node_verified() -> None:
    spec = specs.redact_userdata_spec(verified=True)
    values = {o.key: o.value for o in spec.extraConfig}
    assert values["guestinfo.userdata"] == "" and values["vkp.node.verified"] == "TRUE"


def test_ownership_mark_round_trip() -> None:
    mark = specs.ownership_extra_config("demo", "1f2e3d", "etcd")
    assert mark == {"vkp.cluster.name": "demo", "vkp.cluster.id": "1f2e3d", "vkp.node.role": "etcd"}
    assert specs.read_ownership({**mark, "guestinfo.metadata": "x"}) == mark
    assert specs.read_ownership({"guestinfo.metadata": "x"}) is None
    assert "vkp.node.role" not in specs.ownership_extra_config("demo", "1f2e3d")


def test_new_anti_affinity_rule() -> None:
    vms = [vim.VirtualMachine("vm-1"), vim.VirtualMachine("vm-2"), vim.VirtualMachine("vm-3")]
    spec = specs.anti_affinity_rule_spec("vkp-demo-etcd", vms)
    (rule_spec,) = spec.rulesSpec
    assert rule_spec.operation == "add"
    info = rule_spec.info
    assert isinstance(info, vim.cluster.AntiAffinityRuleSpec)
    assert info.name == "vkp-demo-etcd"
    assert info.enabled is True and info.mandatory is False
    assert info.key is None
    assert [v._moId for v in info.vm] == ["vm-1", "vm-2", "vm-3"]


def test_editing_a_rule_keeps_its_key() -> None:
    old = vim.cluster.AntiAffinityRuleSpec(key=17, name="vkp-demo-etcd", vm=[vim.VirtualMachine("vm-1")])
    spec = specs.anti_affinity_rule_spec(
        "vkp-demo-etcd", [vim.VirtualMachine("vm-4"), vim.VirtualMachine("vm-5")], old
    )
    (rule_spec,) = spec.rulesSpec
    assert rule_spec.operation == "edit"
    assert rule_spec.info.key == 17
    assert [v._moId for v in rule_spec.info.vm] == ["vm-4", "vm-5"]


def test_removing_a_rule() -> None:
    (rule_spec,) = specs.remove_rule_spec(17).rulesSpec
    assert rule_spec.operation == "remove"
    assert rule_spec.removeKey == 17
