"""Pure builders of vSphere spec objects: data in, vim object out, no API calls.

Everything a builder needs is passed in (managed object references and data objects the
caller already read), so each one is unit-tested without a server and a dry run can show
exactly what would be sent.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

# The ownership mark. It lives in each VM's extraConfig, so anyone with read access to
# vCenter can tell which cluster a VM belongs to, and delete-cluster still finds every node
# when the local state directory is gone.
OWNER_CLUSTER_NAME = "vkp.cluster.name"
OWNER_CLUSTER_ID = "vkp.cluster.id"
OWNER_NODE_ROLE = "vkp.node.role"
# Set once the node answered SSH with its pinned host key: a powered-on VM without it was cut
# short in its first boot, and is booted again rather than waited for.
NODE_VERIFIED = "vkp.node.verified"

GUESTINFO_METADATA = "guestinfo.metadata"
GUESTINFO_USERDATA = "guestinfo.userdata"


@dataclass(frozen=True)
class NetworkTarget:
    """What a NIC backing needs to know about a network (read by find.network_target).

    A standard port group is addressed by name; a distributed port group by its switch's
    uuid and its own key, which is why those are carried alongside the reference.
    """

    obj: Any  # vim.Network or vim.dvs.DistributedVirtualPortgroup
    name: str
    switch_uuid: str | None = None
    portgroup_key: str | None = None

    @property
    def distributed(self) -> bool:
        return self.portgroup_key is not None


def option_values(values: Mapping[str, str]) -> list[Any]:
    return [vim.option.OptionValue(key=k, value=v) for k, v in values.items()]


def nic_backing(network: NetworkTarget) -> Any:
    if not isinstance(network, NetworkTarget):
        # A bare vim.Network would need property reads (name, switch uuid) to build a backing;
        # builders stay pure, so the caller reads them once with find.network_target.
        raise TypeError(
            f"network must be a specs.NetworkTarget, not {type(network).__name__}: "
            "pass find.network_target(content, find.network(...))"
        )
    if network.distributed:
        if not network.switch_uuid:
            raise ValueError(f"distributed port group {network.name!r} needs its switch uuid")
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=network.switch_uuid, portgroupKey=network.portgroup_key)
        )
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name, network=network.obj)


def nic_edit(nic: Any, network: NetworkTarget) -> Any:
    """A device change that moves the template's NIC onto network with a fresh MAC.

    The template's NIC is copied, not edited in place: the caller's object stays what it read.
    An empty MAC with addressType "generated" is how vCenter is told to assign a new one;
    without it every clone would share the template's MAC.
    """
    if not isinstance(nic, vim.vm.device.VirtualEthernetCard):
        raise ValueError(f"expected a virtual ethernet card, got {type(nic).__name__}")
    device = copy.copy(nic)
    device.backing = nic_backing(network)
    device.macAddress = None
    device.addressType = "generated"
    return vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=device
    )


def clone_spec(
    *,
    cpus: int,
    memory_mb: int,
    snapshot: Any,
    pool: Any,
    host: Any,
    datastore: Any,
    nic: Any,
    network: NetworkTarget,
    extra_config: Mapping[str, str],
    linked: bool,
) -> Any:
    """A CloneSpec for one node: placed on pool/host/datastore, resized, NIC re-homed, off.

    linked=True makes a linked clone (a child disk on the snapshot: seconds instead of
    minutes, and far less datastore space); it needs the snapshot. With linked=False the
    snapshot is optional and, when given, the clone copies that snapshot's state.
    The clone is never powered on by the spec: powering on is a separate, awaited step.
    """
    if cpus < 1 or memory_mb < 4:
        raise ValueError(f"invalid size: {cpus} CPU(s), {memory_mb} MB")
    if linked and snapshot is None:
        raise ValueError("a linked clone needs the template's snapshot")
    location = vim.vm.RelocateSpec(pool=pool, host=host, datastore=datastore)
    if linked:
        location.diskMoveType = "createNewChildDiskBacking"
    config = vim.vm.ConfigSpec(
        numCPUs=cpus,
        memoryMB=memory_mb,
        extraConfig=option_values(extra_config),
        deviceChange=[nic_edit(nic, network)],
    )
    return vim.vm.CloneSpec(
        location=location, config=config, snapshot=snapshot, powerOn=False, template=False
    )


def resize_spec(cpus: int, memory_mb: int) -> Any:
    """A ConfigSpec setting CPUs and memory (for a VM made before the size changed, or where
    the clone's own config was not applied)."""
    return vim.vm.ConfigSpec(numCPUs=cpus, memoryMB=memory_mb)


def guestinfo_extra_config(metadata: str, userdata: str) -> dict[str, str]:
    """cloud-init data as its VMware datasource reads it (guestinfo.* with .encoding keys).

    base64 because extraConfig values are strings in a VMX file: newlines and quotes in
    YAML would not survive every path a value takes through vCenter.
    """

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        GUESTINFO_METADATA: b64(metadata),
        f"{GUESTINFO_METADATA}.encoding": "base64",
        GUESTINFO_USERDATA: b64(userdata),
        f"{GUESTINFO_USERDATA}.encoding": "base64",
    }


def redact_userdata_spec(*, verified: bool) -> Any:
    """A ConfigSpec that empties guestinfo.userdata: once the guest has consumed it, or when
    the run fails or is stopped before it could check that.

    User data may carry keys and tokens, and extraConfig is readable by anyone who can read
    the VM; an empty value removes the key from the VM's configuration. verified also marks
    the node as having answered SSH with its pinned host key.
    """
    values = {GUESTINFO_USERDATA: "", f"{GUESTINFO_USERDATA}.encoding": ""}
    if verified:
        values[NODE_VERIFIED] = "TRUE"
    return vim.vm.ConfigSpec(extraConfig=option_values(values))


def ownership_extra_config(cluster_name: str, cluster_id: str, role: str | None = None) -> dict[str, str]:
    """The ownership mark a node carries in its extraConfig (role omitted when not given)."""
    mark = {OWNER_CLUSTER_NAME: cluster_name, OWNER_CLUSTER_ID: cluster_id}
    if role is not None:
        mark[OWNER_NODE_ROLE] = role
    return mark


def read_ownership(extra_config: Mapping[str, str]) -> dict[str, str] | None:
    """The ownership mark in a VM's extraConfig, or None when the VM carries none."""
    if OWNER_CLUSTER_ID not in extra_config:
        return None
    keys = (OWNER_CLUSTER_NAME, OWNER_CLUSTER_ID, OWNER_NODE_ROLE)
    return {k: extra_config[k] for k in keys if k in extra_config}


def anti_affinity_rule_spec(name: str, vms: Iterable[Any], existing_rule: Any = None) -> Any:
    """Add a VM anti-affinity rule, or edit existing_rule (same key) to hold exactly vms.

    Not mandatory: DRS spreads the VMs where it can but may still place two on one host
    (for example while a host is in maintenance) rather than refuse to power a node on.
    """
    vm_list = list(vms)
    info = vim.cluster.AntiAffinityRuleSpec(name=name, enabled=True, mandatory=False, vm=vm_list)
    if existing_rule is None:
        op = vim.option.ArrayUpdateSpec.Operation.add
    else:
        op = vim.option.ArrayUpdateSpec.Operation.edit
        info.key = existing_rule.key
    return vim.cluster.ConfigSpecEx(rulesSpec=[vim.cluster.RuleSpec(operation=op, info=info)])


def remove_rule_spec(rule_key: int) -> Any:
    op = vim.option.ArrayUpdateSpec.Operation.remove
    return vim.cluster.ConfigSpecEx(rulesSpec=[vim.cluster.RuleSpec(operation=op, removeKey=rule_key)])
