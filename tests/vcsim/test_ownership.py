"""Ownership by cluster id against the simulator: two clusters of one name never touch each other.

What a platform team sharing a vCenter checks: deleting our "demo" leaves every VM, rule and
folder of their "demo" in its own folder, and a VM of theirs put in our folder survives our
delete, with the folder kept.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from provisioner.errors import ProvisionerError
from provisioner.vsphere import find, ownership, placement, specs, vms, waits
from provisioner.vsphere.provider import destroy as _destroy
from provisioner.vsphere.session import Session
from tests.vcsim import test_vsphere_layer as layer
from tests.vcsim.test_vsphere_layer import Inventory, node_spec, soon, unique

pytestmark = pytest.mark.vcsim

# The vSphere layer suite's simulator fixtures, shared (module-scoped there, so one login here).
session, inv, workdir = layer.session, layer.inv, layer.workdir


def make_cluster(inv: Inventory, parent: Any, name: str, cid: str, *, vm_count: int = 3) -> Any:
    """What create-cluster leaves in vCenter: a marked folder, marked VMs, a rule."""
    folder = vms.create_folder(vms.create_folder(parent, "vkp"), name)
    ownership.mark_folder(inv.content, folder, name, cid)
    tasks = [
        vms.clone(
            inv.template,
            folder,
            f"{name}-etcd-{i}",
            node_spec(inv, inv.hosts[i % len(inv.hosts)], specs.ownership_extra_config(name, cid, "etcd")),
        )
        for i in range(1, vm_count + 1)
    ]
    made = waits.wait_for_tasks(inv.content, tasks, deadline=soon())
    waits.wait_for_tasks(
        inv.content, placement.ensure_rules(inv.cluster, name, cid, {"etcd": made}), deadline=soon()
    )
    return folder


def test_same_named_clusters_are_told_apart_by_id(inv: Inventory, session: Session, workdir: Any) -> None:
    content = inv.content
    name = unique("twin")
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    folder_a = make_cluster(inv, vms.create_folder(workdir, "team-a"), name, ours)
    folder_b = make_cluster(inv, vms.create_folder(workdir, "team-b"), name, theirs)

    found = {c.cluster_id: c for c in ownership.candidates(content, name)}
    assert set(found) == {ours, theirs}
    assert found[ours].vm_count == 3 and found[ours].folders == (find.inventory_path(folder_a),)
    assert found[ours].datacenters == ("DC0",)
    # Without local state and without --cluster-id, the name alone is refused, listing both.
    with pytest.raises(ProvisionerError) as refused:
        ownership.resolve_id(content, name, None)
    assert (
        ours in str(refused.value) and theirs in str(refused.value) and "--cluster-id" in str(refused.value)
    )
    assert ownership.resolve_id(content, name, theirs) == theirs
    assert ownership.resolve_id(content, name, str(uuid.uuid4())) is None

    # A VM of someone else in our folder: it must survive, and so must the folder.
    foreign = waits.wait_for_tasks(
        content,
        [vms.clone(inv.template, folder_a, unique("foreign"), node_spec(inv, inv.hosts[0]))],
        deadline=soon(),
    )[0]

    owned = ownership.find_owned(content, name, ours)
    assert owned.counts() == {"vms": 3, "rules": 1, "folders": 1}
    messages: list[str] = []
    kept = _destroy(session, owned, messages.append)
    assert kept == [find.inventory_path(folder_a)]
    assert any("keep folder" in m for m in messages)

    assert ownership.find_owned(content, name, ours).empty()  # the kept folder lost our mark
    assert ownership.folder_owner(content, folder_a) is None
    assert find.vms_in_folder(folder_a) == [foreign]
    theirs_owned = ownership.find_owned(content, name, theirs)
    assert theirs_owned.counts() == {"vms": 3, "rules": 1, "folders": 1}
    assert ownership.candidates(content, name)[0].cluster_id == theirs

    # Their delete, later, removes their folder, empty by then.
    path_b = find.inventory_path(folder_b)
    assert _destroy(session, theirs_owned, messages.append) == []
    assert ownership.find_owned(content, name, theirs).empty()
    assert find.folder(content, inv.dc, path_b) is None
