"""The vSphere layer (finders, spec builders, effects, waits, placement) against the simulator.

The simulator is shared with other vcsim tests: every test works in a folder of its own with
unique names, and removes what it created.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyVmomi import vim

from provisioner.errors import Ambiguous, NotFound, TaskFailed, Timeout, VSphereError
from provisioner.vsphere import find, placement, specs, vms, waits
from provisioner.vsphere.session import Session, connect

pytestmark = pytest.mark.vcsim


def soon(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture(scope="module")
def session(vcsim: Any) -> Iterator[Session]:
    with connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=vcsim.thumbprint) as s:
        yield s


@pytest.fixture(scope="module")
def open_session(vcsim: Any) -> Callable[[], Session]:
    """A second, independent login (another thread's own connection)."""
    return lambda: connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=vcsim.thumbprint)


@dataclass
class Inventory:
    content: Any
    dc: Any
    cluster: Any
    datastore: Any
    network: Any
    template: Any
    pool: Any
    hosts: list[Any]


@pytest.fixture(scope="module")
def inv(session: Session) -> Inventory:
    c = session.content
    dc = find.datacenter(c, "DC0")
    cluster = find.cluster(c, dc, "DC0_C0")
    return Inventory(
        content=c,
        dc=dc,
        cluster=cluster,
        datastore=find.datastore(c, dc, "LocalDS_0"),
        network=find.network(c, dc, "VM Network"),
        template=find.template(c, dc, "debian-12"),
        pool=find.resource_pool(c, dc, cluster, None),
        hosts=find.hosts(cluster),
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workdir(inv: Inventory) -> Iterator[Any]:
    """A fresh VM folder; afterwards every VM and folder under it is removed."""
    root = find.folder(inv.content, inv.dc, "")
    name = unique("vkp-test")
    top = vms.create_folder(root, name)
    yield top
    # VMs first: the 0.24.2 simulator's folder Destroy_Task leaves the VMs inside behind.
    for vm in find.vms_in_folder(top, recursive=True):
        waits.power_off_and_wait(inv.content, vm, deadline=soon())
        waits.destroy_and_wait(inv.content, vm, deadline=soon())
    waits.wait_for_tasks(inv.content, [vms.destroy_folder(top)], deadline=soon())
    assert find.folder(inv.content, inv.dc, name) is None


def template_nic(template: Any) -> Any:
    (nic,) = [d for d in template.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    return nic


def node_spec(inv: Inventory, host: Any, extra: dict[str, str] | None = None) -> Any:
    return specs.clone_spec(
        cpus=2,
        memory_mb=1024,
        snapshot=inv.template.snapshot.currentSnapshot,
        pool=inv.pool,
        host=host,
        datastore=inv.datastore,
        nic=template_nic(inv.template),
        network=find.network_target(inv.content, inv.network),
        extra_config=extra or {},
        linked=True,
    )


def clone_many(inv: Inventory, folder: Any, names: list[str]) -> list[Any]:
    tasks = [
        vms.clone(inv.template, folder, name, node_spec(inv, inv.hosts[i % len(inv.hosts)]))
        for i, name in enumerate(names)
    ]
    return waits.wait_for_tasks(inv.content, tasks, deadline=soon())


# -- finders --------------------------------------------------------------------------------


def test_finders_resolve_names_and_paths(inv: Inventory) -> None:
    c, dc = inv.content, inv.dc
    assert find.inventory_path(dc) == "/DC0"
    assert find.datacenter(c, "/DC0") == dc
    for name in ("DC0_C0", "host/DC0_C0", "/DC0/host/DC0_C0"):
        assert find.cluster(c, dc, name) == inv.cluster
    assert find.inventory_path(inv.cluster) == "/DC0/host/DC0_C0"
    for name in ("LocalDS_0", "datastore/LocalDS_0", "/DC0/datastore/LocalDS_0"):
        assert find.datastore(c, dc, name) == inv.datastore
    for name in ("VM Network", "network/VM Network", "/DC0/network/VM Network"):
        assert find.network(c, dc, name) == inv.network
    for name in ("debian-12", "vm/debian-12", "/DC0/vm/debian-12"):
        assert find.template(c, dc, name) == inv.template
    assert find.inventory_path(inv.template) == "/DC0/vm/debian-12"
    assert inv.template.config.template is True
    assert inv.pool == inv.cluster.resourcePool
    assert find.resource_pool(c, dc, inv.cluster, "/DC0/host/DC0_C0/Resources") == inv.pool
    assert len(inv.hosts) == 3
    assert [h.name for h in inv.hosts] == sorted(h.name for h in inv.cluster.host)
    target = find.network_target(c, inv.network)
    assert (target.name, target.distributed) == ("VM Network", False)


def test_a_missing_object_is_not_found_with_the_names_that_exist(inv: Inventory) -> None:
    with pytest.raises(NotFound) as err:
        find.cluster(inv.content, inv.dc, "DC0_C9")
    assert err.value.kind == "cluster" and err.value.path == "DC0_C9"
    assert err.value.hint is not None and "/DC0/host/DC0_C0" in err.value.hint
    with pytest.raises(NotFound) as err:
        find.template(inv.content, inv.dc, "debian-13")
    assert "did you mean 'debian-12'" in str(err.value)
    with pytest.raises(NotFound):
        find.datastore(inv.content, inv.dc, "/DC0/datastore/LocalDS_9")
    with pytest.raises(NotFound):
        find.datacenter(inv.content, "DC1")


def test_two_vms_with_one_name_are_ambiguous_by_bare_name(inv: Inventory, workdir: Any) -> None:
    a = vms.create_folder(workdir, "a")
    b = vms.create_folder(workdir, "b")
    name = unique("twin")
    tasks = [vms.clone(inv.template, f, name, node_spec(inv, inv.hosts[0])) for f in (a, b)]
    vm_a, vm_b = waits.wait_for_tasks(inv.content, tasks, deadline=soon())
    with pytest.raises(Ambiguous) as err:
        find.vm(inv.content, inv.dc, name)
    assert len(err.value.candidates) == 2
    assert any(f"/{workdir.name}/a/{name}" in c for c in err.value.candidates)
    # The path says which one.
    assert find.vm(inv.content, inv.dc, f"{workdir.name}/a/{name}") == vm_a
    assert find.vm(inv.content, inv.dc, f"/DC0/vm/{workdir.name}/b/{name}") == vm_b


def test_folder_absence_is_none_and_creating_twice_is_success(inv: Inventory, workdir: Any) -> None:
    path = f"{workdir.name}/demo"
    assert find.folder(inv.content, inv.dc, path) is None
    made = vms.create_folder(workdir, "demo")
    assert vms.create_folder(workdir, "demo") == made
    for spelling in (path, f"vm/{path}", f"/DC0/vm/{path}"):
        assert find.folder(inv.content, inv.dc, spelling) == made
    assert find.inventory_path(made) == f"/DC0/vm/{path}"
    assert find.vms_in_folder(made) == []

    nested = f"{workdir.name}/x/y"
    made = vms.ensure_folder_path(inv.content, inv.dc, nested)
    assert find.inventory_path(made) == f"/DC0/vm/{nested}"
    assert vms.ensure_folder_path(inv.content, inv.dc, nested) == made


# -- clone, power, tasks --------------------------------------------------------------------


def test_linked_clone_lands_on_the_host_with_a_new_mac_and_extra_config(inv: Inventory, workdir: Any) -> None:
    folder = vms.create_folder(workdir, "demo")
    host = inv.hosts[-1]  # not the template's host, so placement is visible
    assert inv.template.runtime.host != host
    extra = {
        **specs.ownership_extra_config("demo", "c0ffee", "etcd"),
        **specs.guestinfo_extra_config('{"instance-id": "demo-etcd-1"}', "#cloud-config\n"),
    }
    spec = node_spec(inv, host, extra)
    done: list[Any] = []
    (vm,) = waits.wait_for_tasks(
        inv.content,
        [vms.clone(inv.template, folder, "demo-etcd-1", spec)],
        deadline=soon(),
        on_done=lambda task, result: done.append(result),
    )
    assert done == [vm]
    assert vm.name == "demo-etcd-1"
    assert vm.runtime.host == host
    assert vm.runtime.powerState == "poweredOff"
    assert vm.config.template is False
    # The 0.24.2 simulator applies only extraConfig from the clone's config (vCenter applies
    # all of it), so the size is checked after an explicit resize, which holds on both.
    waits.wait_for_tasks(inv.content, [vms.reconfigure(vm, specs.resize_spec(1, 1536))], deadline=soon())
    assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (1, 1536)
    (nic,) = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert nic.macAddress and nic.macAddress != template_nic(inv.template).macAddress
    assert nic.backing.deviceName == "VM Network"
    ec = {o.key: o.value for o in vm.config.extraConfig}
    assert specs.read_ownership(ec) == {
        "vkp.cluster.name": "demo",
        "vkp.cluster.id": "c0ffee",
        "vkp.node.role": "etcd",
    }
    assert ec["guestinfo.userdata.encoding"] == "base64"
    assert find.vms_in_folder(folder) == [vm]
    assert {"demo-etcd-1", "debian-12"} <= find.vm_names(inv.content, inv.dc)
    assert find.vm(inv.content, inv.dc, f"{workdir.name}/demo/demo-etcd-1") == vm

    # Redacting removes the user data and leaves the rest.
    waits.wait_for_tasks(
        inv.content, [vms.reconfigure(vm, specs.redact_userdata_spec(verified=True))], deadline=soon()
    )
    ec = {o.key: o.value for o in vm.config.extraConfig}
    assert not ec.get("guestinfo.userdata")
    assert ec["vkp.cluster.id"] == "c0ffee" and ec["guestinfo.metadata"]


def test_power_operations_already_in_the_requested_state_succeed(inv: Inventory, workdir: Any) -> None:
    (vm,) = clone_many(inv, workdir, [unique("pw")])
    assert waits.power_on_and_wait(inv.content, vm, deadline=soon()) is True
    assert waits.power_on_and_wait(inv.content, vm, deadline=soon()) is False
    assert vm.runtime.powerState == "poweredOn"
    assert waits.power_off_and_wait(inv.content, vm, deadline=soon()) is True
    assert waits.power_off_and_wait(inv.content, vm, deadline=soon()) is False
    assert waits.destroy_and_wait(inv.content, vm, deadline=soon()) is True
    assert waits.destroy_and_wait(inv.content, vm, deadline=soon()) is False


def test_a_failed_task_raises_task_failed_and_keeps_the_others_results(inv: Inventory, workdir: Any) -> None:
    on, off = clone_many(inv, workdir, [unique("on"), unique("off")])
    waits.power_on_and_wait(inv.content, on, deadline=soon())
    resize = vim.vm.ConfigSpec(numCPUs=1)
    tasks = [vms.destroy(on), vms.reconfigure(off, resize)]
    with pytest.raises(TaskFailed) as err:
        waits.wait_for_tasks(inv.content, tasks, deadline=soon())
    msg = str(err.value)
    # vCenter refuses to destroy a powered-on VM; the message names the task, the VM and the fault.
    assert "VirtualMachine.destroy" in msg and on._moId in msg
    assert "vim.fault.InvalidPowerState" in msg
    assert isinstance(err.value, waits.TasksFailed)
    assert isinstance(err.value.fault, vim.fault.InvalidPowerState)
    assert tasks[1]._moId in err.value.results  # the reconfigure still succeeded
    assert off.config.hardware.numCPU == 1
    assert on.runtime.powerState == "poweredOn"  # nothing was destroyed


def test_waits_from_many_threads_at_once(inv: Inventory, workdir: Any) -> None:
    """Each thread waits through a collector of its own, so no thread takes another's updates."""
    names = [unique(f"t{i}") for i in range(6)]
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            (vm,) = waits.wait_for_tasks(
                inv.content,
                [vms.clone(inv.template, workdir, name, node_spec(inv, inv.hosts[0]))],
                deadline=soon(),
            )
            waits.power_on_and_wait(inv.content, vm, deadline=soon())
            results[name] = vm
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(vm.name for vm in results.values()) == sorted(names)
    assert all(vm.runtime.powerState == "poweredOn" for vm in results.values())


# -- guest addresses ------------------------------------------------------------------------


def test_waiting_for_an_address_that_never_comes_times_out_and_says_so(inv: Inventory, workdir: Any) -> None:
    name = unique("silent")
    (vm,) = clone_many(inv, workdir, [name])
    waits.power_on_and_wait(inv.content, vm, deadline=soon())
    started = time.monotonic()
    with pytest.raises(Timeout) as err:
        waits.wait_for_guest_ip(inv.content, vm, expected="198.18.0.250", deadline=soon(2))
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 15  # bounded by the deadline, not by maxWaitSeconds
    msg = str(err.value)
    assert name in msg
    assert "guest IP address 198.18.0.250" in msg
    assert "last seen: guest.ipAddress=unset" in msg


def test_the_address_reported_from_another_thread_ends_the_wait(
    inv: Inventory, workdir: Any, open_session: Callable[[], Session]
) -> None:
    name = unique("talker")
    (vm,) = clone_many(inv, workdir, [name])
    waits.power_on_and_wait(inv.content, vm, deadline=soon())
    address = "198.18.0.249"

    def report() -> None:
        # The lab's way for a guest to report its address, as VMware Tools would.
        time.sleep(1.0)
        with open_session() as other:
            same_vm = vim.VirtualMachine(vm._moId, other.si._stub)
            spec = vim.vm.ConfigSpec(extraConfig=specs.option_values({"SET.guest.ipAddress": address}))
            waits.wait_for_tasks(other.content, [vms.reconfigure(same_vm, spec)], deadline=soon())

    reporter = threading.Thread(target=report)
    started = time.monotonic()
    reporter.start()
    try:
        assert waits.wait_for_guest_ip(inv.content, vm, expected=address, deadline=soon(30)) == address
    finally:
        reporter.join(30)
    assert time.monotonic() - started < 10  # woken by the update, not by a poll interval
    assert waits.wait_for_guest_ip(inv.content, vm, expected=None, deadline=soon(5)) == address
    assert list(find.all_vm_guest_ips(inv.content).get(address, {}).values()) == [name]


# -- placement rules ------------------------------------------------------------------------


def test_rules_are_ensured_once_per_role_edited_and_removed(inv: Inventory, workdir: Any) -> None:
    cluster_name = unique("rules")
    e1, e2, e3, m1, m2 = clone_many(inv, workdir, [unique(n) for n in ("e1", "e2", "e3", "m1", "m2")])
    wanted = {"etcd": [e1, e2, e3], "master": [m1, m2], "worker": [e1]}
    cid = str(uuid.uuid4())
    names = placement.rule_names(cluster_name, cid)
    assert names == {"etcd": f"vkp-{cluster_name}-etcd-{cid}", "master": f"vkp-{cluster_name}-master-{cid}"}

    def ours() -> dict[str, Any]:
        rules = [r for r in inv.cluster.configurationEx.rule or [] if r.name in names.values()]
        assert len(rules) == len({r.name for r in rules}), "a rule name appears twice"
        return {r.name: r for r in rules}

    def vm_ids(rule: Any) -> set[str]:
        return {v._moId for v in rule.vm}

    # Someone else's rule must be left alone.
    foreign = specs.anti_affinity_rule_spec(unique("foreign"), [e1, m1])
    waits.wait_for_tasks(inv.content, [vms.reconfigure_cluster(inv.cluster, foreign)], deadline=soon())
    foreign_name = foreign.rulesSpec[0].info.name

    try:
        tasks = placement.ensure_rules(inv.cluster, cluster_name, cid, wanted)
        assert len(tasks) == 1  # all changes in one reconfiguration
        waits.wait_for_tasks(inv.content, tasks, deadline=soon())
        assert placement.ensure_rules(inv.cluster, cluster_name, cid, wanted) == []  # already so
        # A same-named cluster with another id sees none of them.
        assert placement.find_rules(inv.cluster, cluster_name, str(uuid.uuid4())) == []
        rules = ours()
        assert set(rules) == set(names.values())
        etcd = rules[names["etcd"]]
        assert vm_ids(etcd) == {e1._moId, e2._moId, e3._moId}
        assert vm_ids(rules[names["master"]]) == {m1._moId, m2._moId}
        assert isinstance(etcd, vim.cluster.AntiAffinityRuleSpec)
        assert etcd.enabled is True and etcd.mandatory is False
        assert placement.rules_by_role(inv.cluster, cluster_name, cid)["etcd"].key == etcd.key
        assert [r.name for r in placement.find_rules(inv.cluster, cluster_name, cid)] == [
            names["etcd"],
            names["master"],
        ]

        # A new VM set edits the rule in place; a role down to one VM loses its rule.
        tasks = placement.ensure_rules(inv.cluster, cluster_name, cid, {"etcd": [e1, e2], "master": [m1]})
        waits.wait_for_tasks(inv.content, tasks, deadline=soon())
        rules = ours()
        assert set(rules) == {names["etcd"]}
        assert rules[names["etcd"]].key == etcd.key
        assert vm_ids(rules[names["etcd"]]) == {e1._moId, e2._moId}

        waits.wait_for_tasks(
            inv.content,
            placement.remove_rules(inv.cluster, placement.find_rules(inv.cluster, cluster_name, cid)),
            deadline=soon(),
        )
        assert ours() == {}
        assert (
            placement.remove_rules(inv.cluster, placement.find_rules(inv.cluster, cluster_name, cid)) == []
        )  # already gone
        assert foreign_name in {r.name for r in inv.cluster.configurationEx.rule or []}
    finally:
        leftovers = [r for r in inv.cluster.configurationEx.rule or [] if r.name == foreign_name]
        leftovers += list(ours().values())
        for rule in leftovers:
            spec = specs.remove_rule_spec(rule.key)
            waits.wait_for_tasks(inv.content, [vms.reconfigure_cluster(inv.cluster, spec)], deadline=soon())


def test_a_vm_deleted_while_waiting_ends_the_wait_at_once(
    inv: Inventory, workdir: Any, open_session: Callable[[], Session]
) -> None:
    name = unique("gone")
    (vm,) = clone_many(inv, workdir, [name])

    def delete() -> None:
        time.sleep(1.0)
        with open_session() as other:
            same_vm = vim.VirtualMachine(vm._moId, other.si._stub)
            waits.wait_for_tasks(other, [vms.destroy(same_vm)], deadline=soon())  # a Session works too

    deleter = threading.Thread(target=delete)
    started = time.monotonic()
    deleter.start()
    try:
        with pytest.raises(VSphereError, match=f"{name}.*deleted while waiting for guest IP address"):
            waits.wait_for_guest_ip(inv.content, vm, expected=None, deadline=soon(60))
    finally:
        deleter.join(30)
    assert time.monotonic() - started < 15
