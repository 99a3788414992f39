"""Finders over a ServiceContent: every lookup resolves to exactly one object or raises.

Zero hits raise NotFound (with the names that do exist, so a typo is obvious), several raise
Ambiguous (with their inventory paths). The one exception is folder(), where "not there
yet" is a normal answer for a folder the provisioner is about to create.

A name may be given three ways:
  - a bare name ("DC0_C0"), which must then be unique within the datacenter;
  - a path relative to the datacenter ("host/DC0_C0") or to the datacenter's folder for
    that kind of object ("templates/debian-12" under vm/);
  - an absolute inventory path ("/DC0/host/DC0_C0"), as govc prints them.

Inventory reads go through the PropertyCollector (RetrievePropertiesEx over a
ContainerView): one round trip for the names and parents of a whole datacenter instead of
one per object, which matters on a vCenter with thousands of VMs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from provisioner.errors import Ambiguous, NotFound
from provisioner.vsphere.specs import NetworkTarget

_pcq = vmodl.query.PropertyCollector

# Containers that can appear in an inventory path between the root and an object.
_PATH_TYPES = [vim.Folder, vim.Datacenter, vim.ComputeResource, vim.ClusterComputeResource, vim.ResourcePool]
_HINT_LIMIT = 10


@dataclass(frozen=True)
class Located:
    """An object with its name and absolute inventory path."""

    obj: Any
    name: str
    path: str


# -- the PropertyCollector ----------------------------------------------------------------------


def view_object_spec(view: Any) -> Any:
    """An ObjectSpec for every object in a ContainerView (the view itself skipped)."""
    return _pcq.ObjectSpec(
        obj=view,
        skip=True,
        selectSet=[_pcq.TraversalSpec(path="view", skip=False, type=vim.view.ContainerView)],
    )


def view_filter_spec(view: Any, types: Sequence[Any], props: Sequence[str]) -> Any:
    """A FilterSpec for props of every object in a ContainerView (the view itself skipped)."""
    return _pcq.FilterSpec(
        objectSet=[view_object_spec(view)],
        propSet=[_pcq.PropertySpec(type=t, pathSet=list(props)) for t in types],
    )


def retrieve(
    content: Any, container: Any, types: Sequence[Any], props: Sequence[str], *, recursive: bool = True
) -> dict[Any, dict[str, Any]]:
    """props of every object of types under container, in one RetrievePropertiesEx (plus pages).

    Unset properties are absent from an object's dict rather than None, as vCenter omits them.
    """
    view = content.viewManager.CreateContainerView(container, list(types), recursive)
    try:
        return retrieve_pages(content.propertyCollector, view_filter_spec(view, types, props))
    finally:
        view.Destroy()


def retrieve_pages(collector: Any, spec: Any) -> dict[Any, dict[str, Any]]:
    """Every object spec selects with its properties, all pages of the answer read."""
    out: dict[Any, dict[str, Any]] = {}
    result = collector.RetrievePropertiesEx([spec], _pcq.RetrieveOptions())
    while result is not None:
        for oc in result.objects or []:
            out.setdefault(oc.obj, {}).update({p.name: p.val for p in oc.propSet or []})
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(result.token)
    return out


def content_of(obj: Any) -> Any:
    """The ServiceContent of the connection obj came from (one call; lets finders take just obj)."""
    return vim.ServiceInstance("ServiceInstance", obj._stub).RetrieveContent()


# -- inventory paths ----------------------------------------------------------------------------


def inventory_path(obj: Any) -> str:
    """Absolute inventory path of obj, e.g. "/DC0/vm/vkp/demo" (the root folder is "/").

    Walks the parents one read at a time; the bulk finders below compute paths from one
    snapshot instead.
    """
    names: list[str] = []
    cur = obj
    while cur is not None:
        parent = cur.parent
        if parent is None:  # the root folder ("Datacenters") is not part of a path
            break
        names.append(cur.name)
        cur = parent
    return "/" + "/".join(reversed(names))


class PathTree:
    """Names and parents of a set of entities, read at once, from which paths are computed."""

    def __init__(self, props: dict[Any, dict[str, Any]]) -> None:
        self.props = props
        self._paths: dict[Any, str | None] = {}

    def path(self, obj: Any) -> str | None:
        """obj's path; None when an ancestor vanished while reading (obj is being deleted)."""
        if obj in self._paths:
            return self._paths[obj]
        p = self.props.get(obj)
        path: str | None
        if p is None:
            # An ancestor of a type the snapshot did not read (e.g. a vApp), or one deleted
            # since the snapshot was taken.
            try:
                path = inventory_path(obj)
            except vmodl.fault.ManagedObjectNotFound:
                path = None
        elif p.get("parent") is None:
            path = "/"
        else:
            parent_path = self.path(p["parent"])
            path = None if parent_path is None else parent_path.rstrip("/") + "/" + p["name"]
        self._paths[obj] = path
        return path


def _located(content: Any, container: Any, types: Sequence[Any]) -> tuple[list[Located], str]:
    """Every object of types under container with its path, and container's path (one round trip)."""
    wanted = list(types)
    props = retrieve(content, content.rootFolder, _unique(wanted + _PATH_TYPES), ["name", "parent"])
    tree = PathTree(props)
    container_path = tree.path(container)
    if container_path is None:
        raise vmodl.fault.ManagedObjectNotFound(obj=container, msg="the container was deleted")
    within = container_path.rstrip("/") + "/"
    out = []
    for obj, p in props.items():
        if not isinstance(obj, tuple(wanted)) or obj == container:
            continue
        path = tree.path(obj)
        if path is not None and path.startswith(within):
            out.append(Located(obj, p.get("name", ""), path))
    return sorted(out, key=lambda loc: loc.path), container_path


def paths(content: Any, types: Sequence[Any]) -> dict[Any, str]:
    """The inventory path of every object of types, from one snapshot (not a read per parent)."""
    located, _root = _located(content, content.rootFolder, types)
    return {loc.obj: loc.path for loc in located}


def _unique(types: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for t in types:
        if t not in seen:
            seen.append(t)
    return seen


# -- the one matching rule ------------------------------------------------------------------


def find_one(objs: Iterable[Located], kind: str, path: str, *, bases: Sequence[str] = ("/",)) -> Any:
    """The one object among objs that path names; NotFound or Ambiguous otherwise.

    path is absolute ("/DC0/host/DC0_C0"), relative to any of bases ("host/DC0_C0" with base
    "/DC0"), or a bare name (no "/"), which must be unique among objs.
    """
    candidates = list(objs)
    wanted = path.strip()
    if not wanted:
        raise NotFound(kind, path, hint="an empty name matches nothing")
    if wanted.startswith("/"):
        targets = {wanted.rstrip("/") or "/"}
        hits = [c for c in candidates if c.path in targets]
    elif "/" not in wanted:
        hits = [c for c in candidates if c.name == wanted]
    else:
        rel = wanted.rstrip("/")
        targets = {b.rstrip("/") + "/" + rel for b in bases}
        hits = [c for c in candidates if c.path in targets]
    if not hits:
        raise NotFound(kind, path, hint=_hint(kind, wanted, candidates))
    if len(hits) > 1:
        raise Ambiguous(kind, path, [f"{c.path} ({c.obj._moId})" for c in hits])
    return hits[0].obj


def _hint(kind: str, wanted: str, candidates: list[Located]) -> str:
    if not candidates:
        return f"there is no {kind} at all here"
    close = difflib.get_close_matches(wanted.rsplit("/", 1)[-1], [c.name for c in candidates], n=3)
    guess = "did you mean " + " or ".join(repr(c) for c in close) + "? " if close else ""
    shown = [c.path for c in candidates[:_HINT_LIMIT]]
    more = f" and {len(candidates) - _HINT_LIMIT} more" if len(candidates) > _HINT_LIMIT else ""
    return f"{guess}existing {kind}s: {', '.join(shown)}{more}"


def _in_datacenter(content: Any, dc: Any, types: Sequence[Any], kind: str, name: str, folder: str) -> Any:
    located, dc_path = _located(content, dc, types)
    return find_one(located, kind, name, bases=(dc_path, f"{dc_path}/{folder}"))


# -- finders --------------------------------------------------------------------------------


def datacenter(content: Any, name: str) -> Any:
    """A datacenter by name or path ("DC0", "/DC0", "folder/DC0")."""
    located, _root = _located(content, content.rootFolder, [vim.Datacenter])
    return find_one(located, "datacenter", name)


def cluster(content: Any, dc: Any, name: str) -> Any:
    """A cluster (ClusterComputeResource) of dc: "DC0_C0", "host/DC0_C0" or "/DC0/host/DC0_C0"."""
    return _in_datacenter(content, dc, [vim.ClusterComputeResource], "cluster", name, "host")


def datastore(content: Any, dc: Any, name: str) -> Any:
    return _in_datacenter(content, dc, [vim.Datastore], "datastore", name, "datastore")


def network(content: Any, dc: Any, name: str) -> Any:
    """A standard port group (vim.Network) or a distributed port group of dc.

    A standard and a distributed port group with the same name are Ambiguous by bare name;
    the path tells them apart only if they sit in different network folders.
    """
    return _in_datacenter(
        content, dc, [vim.Network, vim.dvs.DistributedVirtualPortgroup], "network", name, "network"
    )


def network_target(content: Any, net: Any) -> Any:
    """What specs.clone_spec needs to back a NIC with net (name; switch uuid and key for a DVPG)."""
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        props = props_of(content, net, ["name", "key", "config.distributedVirtualSwitch"])
        switch = props["config.distributedVirtualSwitch"]
        uuid = props_of(content, switch, ["uuid"])["uuid"]
        return NetworkTarget(obj=net, name=props["name"], switch_uuid=uuid, portgroup_key=props["key"])
    return NetworkTarget(obj=net, name=props_of(content, net, ["name"])["name"])


def resource_pool(content: Any, dc: Any, cluster_obj: Any, path: str | None) -> Any:
    """A resource pool of cluster_obj; None means the cluster's root pool ("Resources").

    Relative paths are taken from the root pool ("vkp/lab") or from the cluster
    ("Resources/vkp/lab"); a bare name must be unique within the cluster.
    """
    if path is None:
        return props_of(content, cluster_obj, ["resourcePool"])["resourcePool"]
    located, cluster_path = _located(content, cluster_obj, [vim.ResourcePool])
    return find_one(located, "resource pool", path, bases=(cluster_path, f"{cluster_path}/Resources"))


def template(content: Any, dc: Any, name: str) -> Any:
    """A VM of dc to clone from (by name, "templates/debian-12" under vm/, or absolute path).

    Whether it is marked as a template or has a snapshot is for preflight to judge.
    """
    return _in_datacenter(content, dc, [vim.VirtualMachine], "template VM", name, "vm")


def vm(content: Any, dc: Any, name: str) -> Any:
    """A VM of dc, by the same rules as template()."""
    return _in_datacenter(content, dc, [vim.VirtualMachine], "VM", name, "vm")


def vm_names(content: Any, dc: Any) -> set[str]:
    """The names of every VM (and template) in dc, for preflight's "name already taken" check."""
    located, _dc_path = _located(content, dc, [vim.VirtualMachine])
    return {loc.name for loc in located}


def folder(content: Any, dc: Any, path: str) -> Any | None:
    """The VM folder at path, or None when there is none (yet): absence is a normal answer.

    path is relative to dc's VM folder ("vkp/demo"; a bare name is a top-level folder there,
    not a search), relative to dc ("vm/vkp/demo") or absolute ("/DC0/vm/vkp/demo"). "" or
    "/" means the VM folder itself. Only a path both relative readings resolve (a folder
    literally named "vm" under vm/) is Ambiguous.
    """
    vm_folder = props_of(content, dc, ["vmFolder"])["vmFolder"]
    rel = path.strip().strip("/")
    if not rel:
        return vm_folder
    located, base = _located(content, vm_folder, [vim.Folder])
    dc_path = base.rsplit("/", 1)[0]
    absolute = path.strip().startswith("/")
    targets = {"/" + rel} if absolute else {f"{base}/{rel}", f"{dc_path}/{rel}"}
    hits = [loc for loc in located if loc.path in targets]
    if len(hits) > 1:
        raise Ambiguous("folder", path, [f"{h.path} ({h.obj._moId})" for h in hits])
    return hits[0].obj if hits else None


def vms_in_folder(folder: Any, *, recursive: bool = False) -> list[Any]:
    """The VMs in folder (not in its sub-folders unless recursive), sorted by name."""
    content = content_of(folder)
    props = retrieve(content, folder, [vim.VirtualMachine], ["name"], recursive=recursive)
    return [obj for obj, _p in sorted(props.items(), key=lambda kv: kv[1].get("name", ""))]


def all_vm_guest_ips(content: Any) -> dict[str, dict[str, str]]:
    """Every guest IP address VMware Tools reports, mapped to {VM moid: VM name} (one round trip).

    For the preflight "address already in use" check. By moid, not name: VMs of the same name
    (two clusters of one name, in two folders) are different VMs.
    """
    props = retrieve(
        content, content.rootFolder, [vim.VirtualMachine], ["name", "guest.ipAddress", "guest.net"]
    )
    out: dict[str, dict[str, str]] = {}
    for vm, p in props.items():
        name = p.get("name", "?")
        addresses = {p["guest.ipAddress"]} if p.get("guest.ipAddress") else set()
        for nic in p.get("guest.net") or []:
            addresses.update(a for a in nic.ipAddress or [] if a)
        for addr in sorted(addresses):
            out.setdefault(addr, {})[vm._moId] = name
    return out


def hosts(cluster: Any) -> list[Any]:
    """The cluster's hosts that can take VMs (connected, not in maintenance), sorted by name."""
    return [h for _name, h in named_hosts(cluster)]


def named_hosts(cluster: Any) -> list[tuple[str, Any]]:
    """hosts(), each with its name (read in the same round trip)."""
    content = content_of(cluster)
    props = retrieve(
        content,
        cluster,
        [vim.HostSystem],
        ["name", "runtime.connectionState", "runtime.inMaintenanceMode"],
    )
    usable = [
        (p.get("name", ""), h)
        for h, p in props.items()
        if str(p.get("runtime.connectionState")) == "connected" and not p.get("runtime.inMaintenanceMode")
    ]
    return sorted(usable, key=lambda t: t[0])


# -- helpers --------------------------------------------------------------------------------


def props_of(content: Any, obj: Any, props: Sequence[str]) -> dict[str, Any]:
    """Several properties of one object in one round trip."""
    spec = _pcq.FilterSpec(
        objectSet=[_pcq.ObjectSpec(obj=obj, skip=False)],
        propSet=[_pcq.PropertySpec(type=type(obj), pathSet=list(props))],
    )
    result = content.propertyCollector.RetrievePropertiesEx([spec], _pcq.RetrieveOptions())
    if result is None or not result.objects:
        return {}
    return {p.name: p.val for p in result.objects[0].propSet or []}
