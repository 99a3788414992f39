"""The vSphere provider against the simulator: create, delete and resize at the provider level.

What an operator would look for in vCenter afterwards: the VMs in <vsphere.folder>/<name>,
sized, powered on, marked with the cluster's id, its DRS rules; after delete nothing of the
cluster left but the shared parent folder (and a folder holding a VM that is not the
cluster's, with that VM); after a resize one more worker, or the highest-numbered one gone.

The simulator runs no guests: tests/vcsim/hardware.py plays the hardware, reporting each
powered-on VM's guestinfo address as VMware Tools would, and the SSH check is a test double
of the node check the lifecycle passes to the provider (it records which nodes were asked
about). The lab suite covers real guests and real SSH.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import cluster
from provisioner.errors import ProvisionerError, SSHError
from provisioner.plan import NodePlan, make_plan
from provisioner.spec import load_spec
from provisioner.state import ClusterState
from provisioner.vsphere import find, ownership, placement, specs
from provisioner.vsphere.provider import VSPHERE, VSphereProvider
from tests.vcsim import hardware

pytestmark = pytest.mark.vcsim


@pytest.fixture
def env(vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "VKP_VSPHERE_SERVER": vcsim.server,
        "VKP_VSPHERE_USER": vcsim.user,
        "VKP_VSPHERE_PASSWORD": vcsim.password,
        "VKP_VSPHERE_THUMBPRINT": vcsim.thumbprint,
        "VKP_VSPHERE_DATACENTER": "DC0",
        "VKP_VSPHERE_CLUSTER": "DC0_C0",
        "VKP_VSPHERE_DATASTORE": "LocalDS_0",
        "VKP_VSPHERE_NETWORK": "VM Network",
        "VKP_VSPHERE_TEMPLATE": "debian-12",
        "VKP_NETWORK_PREFIX": "24",
        "VKP_NETWORK_GATEWAY": "198.18.1.1",
        "VKP_NETWORK_DNS": "198.18.1.1",
        "VKP_API_ENDPOINT": "198.18.1.250",
        "VKP_STATE_DIR": str(tmp_path / "state"),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture(scope="module")
def guests(vcsim: Any) -> Iterator[hardware.Hardware]:
    with hardware.running(vcsim.server, vcsim.user, vcsim.password, vcsim.thumbprint) as hw:
        yield hw


_pools = iter(range(20, 240, 12))


def make_spec(env: dict[str, str], plan: str, **more: str) -> Any:
    """A spec of a cluster of its own: unique name, and addresses no other test uses."""
    start = next(_pools)
    values = env | {"VKP_NETWORK_POOL": f"198.18.1.{start}-198.18.1.{start + 11}"} | more
    return load_spec(None, name=f"p{uuid.uuid4().hex[:6]}", plan=plan, env=values)


class Checked:
    """The node check's double: every node asked about answers."""

    def __init__(self) -> None:
        self.nodes: list[str] = []

    def __call__(self, node: NodePlan, deadline: float) -> None:
        self.nodes.append(node.name)


def vm_view(p: VSphereProvider, vm: Any) -> dict[str, Any]:
    props = find.props_of(
        p.session.content,
        vm,
        [
            "name",
            "runtime.powerState",
            "config.hardware.numCPU",
            "config.hardware.memoryMB",
            "config.extraConfig",
        ],
    )
    return props | {"extra": {o.key: o.value for o in props.get("config.extraConfig") or []}}


def create(spec: Any, env: dict[str, str], check: Checked | None = None) -> ClusterState:
    state = ClusterState.create_or_load(spec.name)
    state.save_spec(spec.to_dict())
    with VSPHERE.open(spec, env) as p:
        p.machines(spec, state, print, concurrency=4, check=check or Checked())
    return state


def test_create_clones_sizes_boots_marks_and_places(env: dict[str, str], guests: Any) -> None:
    spec = make_spec(env, "prod")
    state = ClusterState.create_or_load(spec.name)
    checked = Checked()
    with VSPHERE.open(spec, env) as p:
        plan, outcomes = p.machines(spec, state, print, concurrency=4, check=checked)
        content = p.session.content
        dc = find.datacenter(content, "DC0")
        folder = find.folder(content, dc, f"vkp/{spec.name}")
        assert folder is not None, "the cluster's folder is <vsphere.folder>/<name>"
        assert ownership.folder_owner(content, folder) == state.cluster_id
        in_folder = {vm_view(p, vm)["name"]: vm_view(p, vm) for vm in find.vms_in_folder(folder)}
        assert sorted(in_folder) == sorted(n.name for n in plan.nodes)
        for node in plan.nodes:
            vm = in_folder[node.name]
            assert (vm["config.hardware.numCPU"], vm["config.hardware.memoryMB"]) == (
                node.cpus,
                node.memory_mb,
            )
            assert vm["runtime.powerState"] == "poweredOn"
            assert vm["extra"][specs.OWNER_CLUSTER_ID] == state.cluster_id
            assert not vm["extra"].get(specs.GUESTINFO_USERDATA), "the host key must not linger"
            assert vm["extra"].get(specs.NODE_VERIFIED) == "TRUE"
        assert sorted(checked.nodes) == sorted(n.name for n in plan.nodes)
        assert all(o.created for o in outcomes)
        cl = find.cluster(content, dc, "DC0_C0")
        rules = {
            r.name: sorted(v.name for v in r.vm)
            for r in placement.find_rules(cl, spec.name, state.cluster_id)
        }
        names = placement.rule_names(spec.name, state.cluster_id)
        assert rules == {names[r.role]: sorted(r.vms) for r in plan.anti_affinity_rules}
        assert len(rules) == 2

        # A re-run changes nothing and creates nothing.
        _plan, again = p.machines(spec, state, print, concurrency=4, check=Checked())
        assert not any(o.created or o.changed for o in again)
    cluster.delete_cluster(spec.name, print, env=env)


@pytest.mark.parametrize("parent", [None, "k8s"])
def test_delete_removes_what_is_owned_and_keeps_the_parent(
    env: dict[str, str], guests: Any, parent: str | None
) -> None:
    spec = make_spec(env, "dev", **({"VKP_VSPHERE_FOLDER": parent} if parent else {}))
    parent_path = parent or "vkp"
    state = create(spec, env)
    cid = state.cluster_id

    # The dry run reads what the delete will act on, from the same effects, and changes nothing.
    plan = cluster.delete_cluster(spec.name, print, env=env, dry_run=True)
    assert plan["would_delete"] == {"vms": 3, "rules": 0, "folders": 1}
    text = "\n".join(plan["actions"])
    assert all(f"{spec.name}-{n}" in text for n in ("etcd-1", "master-1", "worker-1")), text
    assert f"remove folder /DC0/vm/{parent_path}/{spec.name}" in text
    assert f"remove the local state {state.path}" in text
    with VSPHERE.open(spec, env) as p:
        assert p.find_owned(spec.name, cid).counts() == plan["would_delete"]
    assert ClusterState.exists(spec.name)

    result = cluster.delete_cluster(spec.name, print, env=env)

    assert result["deleted"] == {"vms": 3, "rules": 0, "folders": 1}
    assert result["leftovers"] == [] and result["kept_folders"] == []
    with VSPHERE.open(spec, env) as p:
        content = p.session.content
        dc = find.datacenter(content, "DC0")
        assert p.find_owned(spec.name, cid).empty()
        assert find.folder(content, dc, f"{parent_path}/{spec.name}") is None
        assert find.folder(content, dc, parent_path) is not None, "the shared parent folder stays"
    assert not ClusterState.exists(spec.name)


def test_delete_keeps_a_vm_it_does_not_own_and_its_folder(env: dict[str, str], guests: Any) -> None:
    spec = make_spec(env, "dev", VKP_VSPHERE_FOLDER="k8s")
    create(spec, env)
    with VSPHERE.open(spec, env) as p:
        content = p.session.content
        dc = find.datacenter(content, "DC0")
        folder = find.folder(content, dc, f"k8s/{spec.name}")
        from provisioner.vsphere import machines, vms, waits
        from tests.vcsim.test_vsphere_layer import soon

        r = machines.resolve(content, spec, f"k8s/{spec.name}")
        clone_spec = specs.clone_spec(
            cpus=1,
            memory_mb=512,
            snapshot=r.template_snapshot,
            pool=r.pool,
            host=r.hosts[0],
            datastore=r.datastore,
            nic=r.template_nic,
            network=r.network,
            extra_config={},
            linked=True,
        )
        task = vms.clone(r.template, folder, "someone-elses", clone_spec)
        waits.wait_for_tasks(content, [task], deadline=soon())

    plan = cluster.delete_cluster(spec.name, print, env=env, dry_run=True)
    assert f"keep folder /DC0/vm/k8s/{spec.name}" in "\n".join(plan["actions"])
    assert not any("remove folder" in a for a in plan["actions"])

    result = cluster.delete_cluster(spec.name, print, env=env)

    assert result["kept_folders"] == [f"/DC0/vm/k8s/{spec.name}"]
    with VSPHERE.open(spec, env) as p:
        content = p.session.content
        dc = find.datacenter(content, "DC0")
        folder = find.folder(content, dc, f"k8s/{spec.name}")
        assert folder is not None
        assert [vm.name for vm in find.vms_in_folder(folder)] == ["someone-elses"]
        for vm in find.vms_in_folder(folder):
            waits.wait_for_tasks(content, [vms.destroy(vm)], deadline=soon())
        waits.wait_for_tasks(content, [vms.destroy_folder(folder)], deadline=soon())


def test_resize_grows_by_one_worker_and_shrinks_the_highest_numbered(
    env: dict[str, str], guests: Any
) -> None:
    import dataclasses

    spec = make_spec(env, "dev")
    state = create(spec, env)
    topo = spec.topology
    bigger = dataclasses.replace(
        spec, topology=dataclasses.replace(topo, worker=dataclasses.replace(topo.worker, count=3))
    )
    with VSPHERE.open(bigger, env) as p:
        _plan, outcomes = p.machines(bigger, state, print, concurrency=4, check=Checked())
        assert sorted(o.node.name for o in outcomes if o.created) == [
            f"{spec.name}-worker-2",
            f"{spec.name}-worker-3",
        ]
        assert not any(o.created for o in outcomes if o.node.role != "worker")
    state.save_spec(bigger.to_dict())

    # Dry runs: a grow lists the new worker's VM actions only, a shrink the VM it destroys and
    # the address it releases; neither changes vCenter or the state.
    grow = cluster.resize_cluster(spec.name, 4, print, dry_run=True)
    assert grow["added"] == [f"{spec.name}-worker-4"]
    nodes_named = {a.split(":")[0] for a in grow["actions"] if a.startswith(f"{spec.name}-")}
    assert nodes_named == {f"{spec.name}-worker-4"}, grow["actions"]
    assert any(a.startswith(f"{spec.name}-worker-4: linked clone of debian-12") for a in grow["actions"])
    assert not any(a.startswith("folder ") for a in grow["actions"]), "its folder exists already"
    shrink = cluster.resize_cluster(spec.name, 2, print, dry_run=True)
    assert shrink["removed"] == [f"{spec.name}-worker-3"]
    assert any(f"destroy 1 VM(s): {spec.name}-worker-3" in a for a in shrink["actions"]), shrink["actions"]
    assert any(f"{spec.name}-worker-3: release address" in a for a in shrink["actions"])
    with VSPHERE.open(spec, env) as p:
        assert len(p.find_owned(spec.name, state.cluster_id).vms) == 5
    assert f"{spec.name}-worker-3" in ClusterState.load(spec.name).nodes

    result = cluster.resize_cluster(spec.name, 2, print)

    assert result["removed"] == [f"{spec.name}-worker-3"]
    with VSPHERE.open(spec, env) as p:
        names = sorted(vm.name for vm in p.find_owned(spec.name, state.cluster_id).vms)
    assert names == sorted(
        [f"{spec.name}-etcd-1", f"{spec.name}-master-1", f"{spec.name}-worker-1", f"{spec.name}-worker-2"]
    )
    cluster.delete_cluster(spec.name, print, env=env)


class Refusing(Checked):
    """The node check's double for a node that never answers as itself."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    def __call__(self, node: NodePlan, deadline: float) -> None:
        super().__call__(node, deadline)
        if node.name == self.refused:
            raise SSHError(f"{node.name} answers as 'someone-else'")


def test_a_node_that_fails_its_check_keeps_no_host_key_in_vcenter(env: dict[str, str], guests: Any) -> None:
    spec = make_spec(env, "dev")
    state = ClusterState.create_or_load(spec.name)
    state.save_spec(spec.to_dict())
    worker = f"{spec.name}-worker-1"
    with VSPHERE.open(spec, env) as p:
        with pytest.raises(ProvisionerError, match="answers as 'someone-else'"):
            p.machines(spec, state, print, concurrency=4, check=Refusing(worker))
        by_name = {vm.name: vm for vm in p.find_owned(spec.name, state.cluster_id).vms}
        failed, other = vm_view(p, by_name[worker]), vm_view(p, by_name[f"{spec.name}-etcd-1"])
    assert not failed["extra"].get(specs.GUESTINFO_USERDATA), "the private host key must not linger"
    assert failed["extra"].get(specs.NODE_VERIFIED) != "TRUE", "the next run must check it again"
    assert other["extra"].get(specs.NODE_VERIFIED) == "TRUE"
    cluster.delete_cluster(spec.name, print, env=env)


def test_the_progress_view_follows_each_vm_and_its_recap_counts_what_changed(
    env: dict[str, str], guests: Any
) -> None:
    """What the live view and the recap of create-cluster and delete-cluster show for the VM
    phase: a row per node with its role, its steps in phase vms, and ok/changed counts; a
    re-run changes nothing."""
    from provisioner import view

    spec = make_spec(env, "dev")
    state = ClusterState.create_or_load(spec.name)
    state.save_spec(spec.to_dict())
    expected_rows = [(n.name, n.role) for n in make_plan(spec).nodes]
    with VSPHERE.open(spec, env) as p:
        with view.session(quiet=True) as first:
            p.machines(spec, state, print, concurrency=4, check=Checked())
        rows = first.rows()
        assert [(r.name, r.role) for r in rows] == expected_rows
        assert {r.phase for r in rows} == {"vms"}
        # The last step: the user data (with the host key) erased once the node answered.
        assert {(r.step, r.status) for r in rows} == {("erase user data", "changed")}
        for name, counts in first.recap()["hosts"].items():
            # clone, cloud-init, power on, erase (and a resize if the clone kept the template's
            # size) changed it; the address and the SSH check only looked.
            assert counts["changed"] >= 4 and counts["ok"] == 2 and counts["failed"] == 0, (name, counts)
        with view.session(quiet=True) as again:
            p.machines(spec, state, print, concurrency=4, check=Checked())
        assert all(
            c == {"ok": 2, "changed": 0, "failed": 0, "skipped": 0} for c in again.recap()["hosts"].values()
        )
    with view.session(quiet=True) as deleted:
        cluster.delete_cluster(spec.name, print, env=env)
    recap = deleted.recap()
    # Each VM powered off, then destroyed.
    assert recap["hosts"] == {n: {"ok": 0, "changed": 2, "failed": 0, "skipped": 0} for n, _ in expected_rows}
    assert [p["name"] for p in recap["phases"]] == ["delete"]
