"""Every vkp cluster in a vCenter, from the marks vkp puts on what it makes (ownership.py).

For `list-clusters --all` and `describe-cluster` on a machine without the cluster's local
state. One RetrievePropertiesEx (plus its pages, as govc and CAPV read inventories) collects
the VMs' marks, power state, host and address, the folders' custom values, the DRS rules, the
names and parents that make inventory paths, and the custom field definitions that say which
custom value is ours: no round trip per VM. Read-only.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from provisioner.infra import SeenCluster, SeenNode, SeenRule
from provisioner.vsphere import (
    find,
    guestinfo,  # pure: reads guestinfo the way cloud-init does
    ownership,
    placement,
    specs,
)

_pcq = vmodl.query.PropertyCollector

_PROPS: dict[Any, list[str]] = {
    vim.VirtualMachine: [
        "name",
        "parent",
        "config.extraConfig",
        "runtime.powerState",
        "runtime.host",
        "guest.ipAddress",
    ],
    vim.Folder: ["name", "parent", "customValue"],
    vim.Datacenter: ["name", "parent"],
    vim.ClusterComputeResource: ["name", "parent", "configurationEx"],
    vim.HostSystem: ["name"],
}


def _snapshot(content: Any) -> tuple[dict[Any, dict[str, Any]], list[Any]]:
    """(properties of every object of _PROPS's types, the custom field definitions), read in
    one call: the field definitions ride along as a second object of the same filter."""
    view = content.viewManager.CreateContainerView(content.rootFolder, list(_PROPS), True)
    fields_of = content.customFieldsManager
    try:
        spec = _pcq.FilterSpec(
            objectSet=[
                find.view_object_spec(view),
                _pcq.ObjectSpec(obj=fields_of, skip=False),
            ],
            propSet=[
                *(_pcq.PropertySpec(type=t, pathSet=p) for t, p in _PROPS.items()),
                _pcq.PropertySpec(type=vim.CustomFieldsManager, pathSet=["field"]),
            ],
        )
        out = find.retrieve_pages(content.propertyCollector, spec)
    finally:
        view.Destroy()
    defs = out.pop(fields_of, {}).get("field") or []
    return out, list(defs)


def _folder_keys(defs: list[Any]) -> dict[str, int]:
    return {
        f.name: f.key
        for f in defs
        if f.name in ownership.FOLDER_FIELDS and f.managedObjectType in (None, vim.Folder)
    }


def _address(props: dict[str, Any], extra: dict[str, str], moid: str) -> tuple[str | None, str | None]:
    """The address the guest reports, else the one vkp gave it in its cloud-init metadata."""
    if props.get("guest.ipAddress"):
        return str(props["guest.ipAddress"]), "guest"
    try:
        data = guestinfo.parse(extra, moid)
    except (guestinfo.GuestinfoError, ValueError):
        return None, None  # metadata vkp did not write: nothing to say about the address
    addresses = data.static_addresses() if data else []
    return (addresses[0], "config") if addresses else (None, None)


def survey(content: Any) -> list[SeenCluster]:
    """Each cluster id that VMs or folders carry, sorted by name then id, with its VMs (role,
    power state, address, ESXi host, moid), DRS rules and folders."""
    props, defs = _snapshot(content)
    tree = find.PathTree(props)
    clusters: dict[str, SeenCluster] = {}

    def cluster(name: str, cid: str) -> SeenCluster:
        return clusters.setdefault(cid, SeenCluster(name=name, cluster_id=cid))

    vm_paths: dict[str, list[str]] = {}
    names: dict[Any, str] = {}
    for obj, p in props.items():
        if not isinstance(obj, vim.VirtualMachine):
            continue
        names[obj] = str(p.get("name", obj._moId))
        extra = {o.key: o.value for o in p.get("config.extraConfig") or []}
        mark = specs.read_ownership(extra)
        if mark is None:
            continue
        cid = mark[specs.OWNER_CLUSTER_ID]
        address, source = _address(p, extra, obj._moId)
        host = p.get("runtime.host")
        path = tree.path(obj)
        cluster(mark.get(specs.OWNER_CLUSTER_NAME, "?"), cid).nodes.append(
            SeenNode(
                name=names[obj],
                role=mark.get(specs.OWNER_NODE_ROLE),
                power_state=str(p["runtime.powerState"]) if p.get("runtime.powerState") else None,
                address=address,
                address_source=source,
                host=str(props.get(host, {}).get("name", host._moId)) if host is not None else None,
                machine_id=obj._moId,
                path=path,
            )
        )
        if path is not None:
            vm_paths.setdefault(cid, []).append(path)

    keys = _folder_keys(defs)
    by_key = {k: n for n, k in keys.items()}
    for obj, p in props.items():
        if not isinstance(obj, vim.Folder) or not keys:
            continue
        values = p.get("customValue") or []
        marks = {by_key[v.key]: getattr(v, "value", "") for v in values if v.key in by_key}
        folder_id = marks.get(specs.OWNER_CLUSTER_ID)
        if folder_id:
            at = tree.path(obj) or obj._moId
            cluster(marks.get(specs.OWNER_CLUSTER_NAME) or "?", folder_id).folders.append(at)

    for obj, p in props.items():
        if not isinstance(obj, vim.ClusterComputeResource):
            continue
        config = p.get("configurationEx")
        for rule in getattr(config, "rule", None) or []:
            for c in clusters.values():
                if rule.name in placement.rule_names(c.name, c.cluster_id).values():
                    members = tuple(sorted(names.get(vm, vm._moId) for vm in rule.vm or []))
                    where = tree.path(obj) or str(p.get("name", obj._moId))
                    c.rules.append(SeenRule(name=rule.name, where=where, members=members))

    for cid, c in clusters.items():
        c.nodes.sort(key=lambda n: (_ROLE_ORDER.get(n.role or "", 9), n.name))
        c.rules.sort(key=lambda r: r.name)
        if not c.folders:
            # No marked folder (made by an older vkp, or the VMs were moved): where the VMs are.
            c.folders = sorted({p.rsplit("/", 1)[0] for p in vm_paths.get(cid, [])})
        c.folders.sort()
        every = vm_paths.get(cid, []) + c.folders
        c.datacenters = sorted({p.split("/")[1] for p in every if p.startswith("/") and p.count("/") >= 2})
    return sorted(clusters.values(), key=lambda c: (c.name, c.cluster_id))


_ROLE_ORDER = {"etcd": 0, "master": 1, "worker": 2}
