"""What a cluster owns in vCenter, found by its id, and the marks that say so.

A cluster gets a unique id at its first create. Names are not enough: a CI pipeline of another
team may run a cluster of the same name in another folder or datacenter of the same vCenter,
and deleting by name would destroy it. So every object vkp makes carries the id:
  - each VM, in its extraConfig (specs.ownership_extra_config);
  - each DRS rule, in its name (placement.rule_names);
  - each folder vkp created for the cluster, in two custom values (vkp.cluster.name and
    vkp.cluster.id), so a cluster is found even when its VMs are gone.
delete, resize and adopt act only on objects that carry the id. A folder is only ever
destroyed when it is empty, so nothing vkp does not own is destroyed with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from provisioner.errors import ExitCode, ProvisionerError
from provisioner.vsphere import find, placement, specs

FOLDER_FIELDS = (specs.OWNER_CLUSTER_NAME, specs.OWNER_CLUSTER_ID)


@dataclass
class Owned:
    """Everything in vCenter that carries one cluster id."""

    vms: list[Any] = field(default_factory=list)
    rules: list[tuple[Any, Any]] = field(default_factory=list)  # (compute cluster, rule)
    folders: list[Any] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"vms": len(self.vms), "rules": len(self.rules), "folders": len(self.folders)}

    def empty(self) -> bool:
        return not (self.vms or self.rules or self.folders)

    def summary(self) -> str:
        return f"{len(self.vms)} VM(s), {len(self.rules)} rule(s), {len(self.folders)} folder(s)"

    def names(self) -> list[str]:
        return (
            [f"VM {vm.name}" for vm in self.vms]
            + [f"rule {r.name}" for _, r in self.rules]
            + [f"folder {f.name}" for f in self.folders]
        )


@dataclass(frozen=True)
class Candidate:
    """One cluster id that carries a name: where it lives and how much of it there is."""

    cluster_id: str
    datacenters: tuple[str, ...]
    folders: tuple[str, ...]
    vm_count: int

    def describe(self) -> str:
        where = ", ".join(self.folders) or "no folder"
        dcs = ", ".join(self.datacenters) or "?"
        return f"id {self.cluster_id}: datacenter {dcs}, {where}, {self.vm_count} VM(s)"


def _field_keys(content: Any) -> dict[str, int]:
    """Key of each of our custom field definitions on folders, by name."""
    fields = getattr(content.customFieldsManager, "field", None) or []
    return {
        f.name: f.key for f in fields if f.name in FOLDER_FIELDS and f.managedObjectType in (None, vim.Folder)
    }


def _folder_marks(custom_values: list[Any] | None, keys: dict[str, int]) -> dict[str, str]:
    by_key = {k: n for n, k in keys.items()}
    return {by_key[v.key]: getattr(v, "value", "") for v in custom_values or [] if v.key in by_key}


def mark_folder(content: Any, folder: Any, cluster_name: str, cluster_id: str) -> None:
    """Give a folder vkp created for the cluster its two custom values (defining them once)."""
    manager = content.customFieldsManager
    keys = _field_keys(content)
    for name in FOLDER_FIELDS:
        if name not in keys:
            try:
                keys[name] = manager.AddCustomFieldDef(name=name, moType=vim.Folder).key
            except vim.fault.DuplicateName:
                # Defined in the meantime by a parallel run.
                keys = _field_keys(content)
    have = _folder_marks(find.props_of(content, folder, ["customValue"]).get("customValue"), keys)
    for name, value in ((specs.OWNER_CLUSTER_NAME, cluster_name), (specs.OWNER_CLUSTER_ID, cluster_id)):
        if have.get(name) != value:
            manager.SetField(entity=folder, key=keys[name], value=value)


def unmark_folder(content: Any, folder: Any) -> None:
    """Clear a folder's cluster mark (it is kept because it holds what the cluster does not own)."""
    keys = _field_keys(content)
    have = _folder_marks(find.props_of(content, folder, ["customValue"]).get("customValue"), keys)
    for name in FOLDER_FIELDS:
        if have.get(name):
            content.customFieldsManager.SetField(entity=folder, key=keys[name], value="")


def folder_owner(content: Any, folder: Any) -> str | None:
    """The cluster id a folder is marked with, or None (a folder vkp did not create)."""
    keys = _field_keys(content)
    if not keys:
        return None
    marks = _folder_marks(find.props_of(content, folder, ["customValue"]).get("customValue"), keys)
    return marks.get(specs.OWNER_CLUSTER_ID) or None


def _vm_marks(content: Any) -> dict[Any, dict[str, str]]:
    out = {}
    for vm, props in find.retrieve(
        content, content.rootFolder, [vim.VirtualMachine], ["config.extraConfig"]
    ).items():
        mark = specs.read_ownership({o.key: o.value for o in props.get("config.extraConfig") or []})
        if mark is not None:
            out[vm] = mark
    return out


def _marked_folders(content: Any) -> dict[Any, dict[str, str]]:
    keys = _field_keys(content)
    if not keys:
        return {}
    out = {}
    for folder, props in find.retrieve(content, content.rootFolder, [vim.Folder], ["customValue"]).items():
        marks = _folder_marks(props.get("customValue"), keys)
        if marks.get(specs.OWNER_CLUSTER_ID):
            out[folder] = marks
    return out


def find_owned(content: Any, cluster_name: str, cluster_id: str) -> Owned:
    """Every VM, DRS rule and folder in vCenter that carries cluster_id."""
    owned = Owned()
    for vm, mark in _vm_marks(content).items():
        if mark.get(specs.OWNER_CLUSTER_ID) == cluster_id:
            owned.vms.append(vm)
    for cl in find.retrieve(content, content.rootFolder, [vim.ClusterComputeResource], ["name"]):
        for rule in placement.find_rules(cl, cluster_name, cluster_id):
            owned.rules.append((cl, rule))
    for folder, marks in _marked_folders(content).items():
        if marks.get(specs.OWNER_CLUSTER_ID) == cluster_id:
            owned.folders.append(folder)
    return owned


def candidates(content: Any, cluster_name: str) -> list[Candidate]:
    """Each cluster id that VMs or folders named cluster_name carry, with where it lives."""
    vms_by_id: dict[str, list[Any]] = {}
    for vm, mark in _vm_marks(content).items():
        if mark.get(specs.OWNER_CLUSTER_NAME) == cluster_name:
            vms_by_id.setdefault(mark[specs.OWNER_CLUSTER_ID], []).append(vm)
    folders_by_id: dict[str, list[Any]] = {}
    for folder, marks in _marked_folders(content).items():
        if marks.get(specs.OWNER_CLUSTER_NAME) == cluster_name:
            folders_by_id.setdefault(marks[specs.OWNER_CLUSTER_ID], []).append(folder)
    out = []
    where = find.paths(content, [vim.VirtualMachine, vim.Folder]) if vms_by_id or folders_by_id else {}
    for cid in sorted(set(vms_by_id) | set(folders_by_id)):
        vm_paths = [where[vm] for vm in vms_by_id.get(cid, []) if vm in where]
        folder_paths = [where[f] for f in folders_by_id.get(cid, []) if f in where]
        if not folder_paths:
            folder_paths = sorted({p.rsplit("/", 1)[0] for p in vm_paths})
        datacenters = sorted({p.split("/")[1] for p in vm_paths + folder_paths if p.count("/") >= 1})
        out.append(Candidate(cid, tuple(datacenters), tuple(sorted(folder_paths)), len(vm_paths)))
    return out


def resolve_id(content: Any, cluster_name: str, wanted: str | None) -> str | None:
    """The one cluster id carrying cluster_name in vCenter (wanted, if given, must be one of
    them); None when none does. Several ids without wanted: refuse and list each."""
    found = candidates(content, cluster_name)
    ids = [c.cluster_id for c in found]
    if wanted is not None:
        return wanted if wanted in ids else None
    if len(found) > 1:
        error = ProvisionerError(
            f"{len(found)} clusters named {cluster_name!r} exist in this vCenter:\n  "
            + "\n  ".join(c.describe() for c in found),
            hint=f"pass --cluster-id ID to say which one (e.g. --cluster-id {ids[0]})",
        )
        error.exit_code = ExitCode.NOT_FOUND  # "matched more than one", as for any other name
        raise error
    return ids[0] if ids else None


def split_folders(content: Any, owned: Owned) -> tuple[dict[Any, str], dict[Any, str]]:
    """The owned folders by path: (empty once what the cluster owns is gone, deepest first;
    holding something the cluster does not own). The same before and after its VMs are
    destroyed, so a dry run of a delete says what the delete will keep."""
    if not owned.folders:
        return {}, {}
    where = find.paths(content, [vim.Folder])
    ours = {o._moId for o in [*owned.vms, *owned.folders]}
    empty: dict[Any, str] = {}
    kept: dict[Any, str] = {}
    for folder in owned.folders:
        children = find.props_of(content, folder, ["childEntity"]).get("childEntity") or []
        foreign = [c for c in children if c._moId not in ours]
        (kept if foreign else empty)[folder] = where.get(folder, folder._moId)
    deepest_first = dict(sorted(empty.items(), key=lambda kv: -kv[1].count("/")))
    return deepest_first, kept
