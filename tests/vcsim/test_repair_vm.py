"""vkp repair's VM stage against the simulator: the old VM destroyed, a new one of the same name
with the node's address and its pinned host key, marked as the cluster's; the others untouched.

As in test_provider.py, tests/vcsim/hardware.py reports guest addresses and the SSH check is a
double; this one also reads the new VM's guestinfo while the check runs (the user data, with the
host key, is erased right after it).
"""

from __future__ import annotations

from typing import Any

import pytest

from provisioner import infra
from provisioner.day2 import repair
from provisioner.plan import NodePlan
from provisioner.state import ClusterState
from provisioner.vsphere import find, guestinfo, specs
from provisioner.vsphere.provider import VSPHERE
from tests.vcsim import test_provider
from tests.vcsim.test_provider import Checked, create, make_spec

pytestmark = pytest.mark.vcsim
# The provider tests' fixtures: the settings of the simulator, and the hardware double.
env = test_provider.env
guests = test_provider.guests


class Reading(Checked):
    """The node check's double that also reads what the VM was given (guestinfo)."""

    def __init__(self, spec: Any, environ: dict[str, str]) -> None:
        super().__init__()
        self.spec, self.env = spec, environ
        self.seen: dict[str, dict[str, str]] = {}

    def __call__(self, node: NodePlan, deadline: float) -> None:
        super().__call__(node, deadline)
        with VSPHERE.open(self.spec, self.env) as p:
            (vm,) = p.find_nodes(
                self.spec.name, ClusterState.load(self.spec.name).cluster_id, [node.name]
            ).vms
            extra = {o.key: o.value for o in find.props_of(p.session.content, vm, ["config.extraConfig"])
                     ["config.extraConfig"] or []}  # fmt: skip
        key = specs.GUESTINFO_USERDATA
        self.seen[node.name] = {
            "moid": vm._moId,
            "userdata": guestinfo.decode(extra.get(key, ""), extra.get(f"{key}.encoding")),
            "metadata": guestinfo.decode(
                extra.get(specs.GUESTINFO_METADATA, ""), extra.get(f"{specs.GUESTINFO_METADATA}.encoding")
            ),
            "owner": extra.get(specs.OWNER_CLUSTER_ID, ""),
        }


def test_repair_replaces_the_vm_with_the_same_name_address_and_host_key(
    env: dict[str, str], guests: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(env, "dev")
    state = create(spec, env)
    state.record_phase("vms", "done", 1.0)
    worker = next(n for n in repair.make_plan(spec).nodes if n.role == "worker")
    before = {name: rec.moid for name, rec in state.nodes.items()}
    known_hosts = state.known_hosts_path.read_text()
    _, public = state.host_key(worker.name)
    check = Reading(spec, env)
    monkeypatch.setattr(infra, "ssh_check", lambda *a: check)

    planned = repair.repair_node(spec.name, worker.name, print, dry_run=True)
    assert f"stage vm: destroy 1 VM(s): {worker.name}" in planned["actions"], planned["actions"]
    assert ClusterState.load(spec.name).nodes[worker.name].moid == before[worker.name]

    result = repair.repair_node(spec.name, worker.name, print)

    assert [s["name"] for s in result["stages"]] == ["vm"]  # a cluster taken to its VMs only
    assert result["vm"]["destroyed"] and result["vm"]["created"]
    new = ClusterState.load(spec.name).nodes
    assert new[worker.name].moid not in (None, before[worker.name])
    assert {n: r.moid for n, r in new.items() if n != worker.name} == {
        n: m for n, m in before.items() if n != worker.name
    }
    assert check.nodes == [worker.name], "only the repaired node was booted and checked"
    seen = check.seen[worker.name]
    assert seen["moid"] == new[worker.name].moid and seen["owner"] == state.cluster_id
    assert public.split()[1] in seen["userdata"], "the new VM gets the node's pinned host key"
    assert worker.address in seen["metadata"]
    assert state.known_hosts_path.read_text() == known_hosts
    with VSPHERE.open(spec, env) as p:
        vms = p.find_owned(spec.name, state.cluster_id).vms
        names = sorted(vm.name for vm in vms)
        assert before[worker.name] not in {vm._moId for vm in vms}, "the old VM is gone"
        (vm,) = [v for v in vms if v.name == worker.name]
        extra = {o.key: o.value for o in find.props_of(p.session.content, vm, ["config.extraConfig"])
                 ["config.extraConfig"] or []}  # fmt: skip
    assert names == sorted(before)
    assert not extra.get(specs.GUESTINFO_USERDATA), "the host key does not linger in vCenter"
    assert state.repair(worker.name) is None

    # A second repair replaces the replacement (a new record: it starts from the VM there now).
    again = repair.repair_node(spec.name, worker.name, print)
    assert again["vm"]["old_machine"] == new[worker.name].moid and again["vm"]["destroyed"]
    from provisioner import cluster

    cluster.delete_cluster(spec.name, print, env=env)
