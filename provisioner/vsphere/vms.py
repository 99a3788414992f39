"""Effect functions: each makes exactly one vSphere API call and returns its task.

Nothing here waits or retries: waits.py waits (through the PropertyCollector), and the
caller decides what a failure means. Keeping the calls this thin makes every side effect
visible in one place and lets a dry run list them without making them.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from provisioner.vsphere.find import content_of, retrieve
from provisioner.vsphere.find import folder as find_folder


def clone(template: Any, folder: Any, name: str, spec: Any) -> Any:
    """CloneVM_Task of template into folder as name; the task's result is the new VM."""
    return template.CloneVM_Task(folder=folder, name=name, spec=spec)


def power_on(vm: Any) -> Any:
    """PowerOnVM_Task. An already powered-on VM makes the task fail with InvalidPowerState
    (the VM phase looks at the power state first; waits.power_on_and_wait takes it as success)."""
    return vm.PowerOnVM_Task()


def power_off(vm: Any) -> Any:
    """PowerOffVM_Task: a hard power off (no guest shutdown): nodes being deleted hold nothing
    worth a clean shutdown, and a guest without Tools would never answer one."""
    return vm.PowerOffVM_Task()


def destroy(vm: Any) -> Any:
    """Destroy_Task: removes the VM and its files. vCenter refuses while it is powered on."""
    return vm.Destroy_Task()


def reconfigure(vm: Any, spec: Any) -> Any:
    """ReconfigVM_Task with a vim.vm.ConfigSpec."""
    return vm.ReconfigVM_Task(spec=spec)


def reconfigure_cluster(cluster: Any, spec: Any) -> Any:
    """ReconfigureComputeResource_Task with a vim.cluster.ConfigSpecEx, merged into the
    cluster's configuration (modify=True) so settings not in spec are left as they are."""
    return cluster.ReconfigureComputeResource_Task(spec=spec, modify=True)


def create_folder(parent: Any, name: str) -> Any:
    """The folder name under parent, created if needed (not a task: CreateFolder is synchronous).

    A folder that already exists is success, not an error, so re-runs and parallel runs
    converge. vCenter's DuplicateName fault names the object holding the name; where it
    names none usable (or the parent itself, as govmomi's simulator does), the existing
    child is looked up by name: a second call, but only on this path.
    """
    try:
        return parent.CreateFolder(name)
    except vim.fault.DuplicateName as fault:
        holder = fault.object
        if isinstance(holder, vim.Folder) and holder != parent:
            return holder
        existing = _child_folder(parent, name)
        if existing is None:
            raise  # something other than a folder holds that name
        return existing


def ensure_folder_path(content: Any, dc: Any, path: str) -> Any:
    """The VM folder at path (relative to dc's VM folder, e.g. "vkp/demo"), creating what is missing.

    A composition, not one call: one CreateFolder per missing level (existing levels are
    found, not re-created), so a re-run or a parallel run ends with the same single folder.
    """
    existing = find_folder(content, dc, path)
    if existing is not None:
        return existing
    current = find_folder(content, dc, "")
    for name in [p for p in path.strip("/").split("/") if p]:
        current = create_folder(current, name)
    return current


def _child_folder(parent: Any, name: str) -> Any | None:
    props = retrieve(content_of(parent), parent, [vim.Folder], ["name"], recursive=False)
    # vCenter stores "%" and "/" in names escaped; accept either spelling.
    spellings = {name, name.replace("%", "%25").replace("/", "%2f")}
    hits = [f for f, p in props.items() if p.get("name") in spellings]
    return hits[0] if len(hits) == 1 else None


def destroy_folder(folder: Any) -> Any:
    """Destroy_Task of a folder. Everything inside it is destroyed too, so callers empty it
    first (and only ever pass a folder the cluster owns)."""
    return folder.Destroy_Task()
