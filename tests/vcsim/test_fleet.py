"""Clusters seen from another machine: list-clusters --all and describe-cluster read vCenter.

What someone on a second machine (an empty VKP_STATE_DIR) checks: the cluster CI made is
listed with its VMs by role and its folder, as "remote"; describe shows each VM's role, power
state, address, ESXi host and moid, the DRS rules and the id, all without the local state.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from provisioner import cluster
from provisioner.cli import main
from provisioner.plan import make_plan
from provisioner.vsphere import find, ownership, placement, specs, vms, waits
from provisioner.vsphere.provider import VSPHERE
from tests.vcsim import test_provider as provider_suite
from tests.vcsim import test_vsphere_layer as layer
from tests.vcsim.test_ownership import make_cluster
from tests.vcsim.test_provider import create, make_spec
from tests.vcsim.test_vsphere_layer import Inventory, node_spec, soon

pytestmark = pytest.mark.vcsim

# The other vcsim suites' fixtures, shared.
session, inv, workdir = layer.session, layer.inv, layer.workdir
env, guests = provider_suite.env, provider_suite.guests


def vkp(environ: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=environ, catch_exceptions=False)


def doc(result: Result) -> Any:
    return json.loads(result.stdout)


def test_a_cluster_made_elsewhere_is_listed_and_described_from_vcenter(
    env: dict[str, str], guests: Any, tmp_path: Path
) -> None:
    spec = make_spec(env, "prod")
    state = create(spec, env)  # the machine that made it (CI), with its state in env's dir
    plan = make_plan(spec)
    elsewhere = env | {"VKP_STATE_DIR": str(tmp_path / "elsewhere")}
    try:
        # The other machine: no local state of it at all.
        listed = vkp(elsewhere, "list-clusters", "--all", "-o", "json")
        assert listed.exit_code == 0, listed.output
        (row,) = [c for c in doc(listed)["clusters"] if c["name"] == spec.name]
        assert row["cluster_id"] == state.cluster_id
        assert row["state"] == "remote" and row["in_vcenter"] is True
        assert row["vms"] == {"etcd": 3, "master": 3, "worker": spec.topology.worker.count}
        assert row["folders"] == [f"/DC0/vm/vkp/{spec.name}"]
        # Without --all the other machine still lists only its own clusters: none.
        assert doc(vkp(elsewhere, "list-clusters", "-o", "json"))["clusters"] == []

        text = vkp(elsewhere, "list-clusters", "--all")
        (line,) = [ln for ln in text.stdout.splitlines() if ln.startswith(spec.name + " ")]
        assert state.cluster_id in line and line.rstrip().endswith("remote")
        assert f"/DC0/vm/vkp/{spec.name}" in line and "3 etcd, 3 master" in line

        # The machine that made it sees the same cluster as its own.
        mine = vkp(env, "list-clusters", "--all", "-o", "json")
        (row,) = [c for c in doc(mine)["clusters"] if c["name"] == spec.name]
        assert row["state"] == "local"

        described = vkp(elsewhere, "describe-cluster", spec.name, "-o", "json")
        assert described.exit_code == 0, described.output
        d = doc(described)
        assert d["cluster_id"] == state.cluster_id and d["state"] == "remote"
        assert d["folders"] == [f"/DC0/vm/vkp/{spec.name}"]
        by_name = {n["name"]: n for n in d["nodes"]}
        assert sorted(by_name) == sorted(n.name for n in plan.nodes)
        with VSPHERE.open(spec, env) as p:
            content = p.session.content
            for node in plan.nodes:
                seen = by_name[node.name]
                assert (seen["role"], seen["address"], seen["power_state"]) == (
                    node.role,
                    node.address,
                    "poweredOn",
                )
                vm = find.vm(content, find.datacenter(content, "DC0"), f"vkp/{spec.name}/{node.name}")
                assert seen["moid"] == vm._moId
                assert seen["esxi_host"] == vm.runtime.host.name
            names = placement.rule_names(spec.name, state.cluster_id)
        rules = {r["name"]: sorted(r["members"]) for r in d["rules"]}
        assert rules == {
            names["etcd"]: sorted(n.name for n in plan.by_role("etcd")),
            names["master"]: sorted(n.name for n in plan.by_role("master")),
        }
        text = vkp(elsewhere, "describe-cluster", spec.name).stdout
        assert state.cluster_id in text and "no local state" in text
        assert all(n.name in text and str(n.address) in text for n in plan.nodes)

        # With the local state, the local view stays; --from-vcenter asks vCenter anyway.
        local = doc(vkp(env, "describe-cluster", spec.name, "-o", "json"))
        assert "state_dir" in local and "source" not in local
        remote = doc(vkp(env, "describe-cluster", spec.name, "--from-vcenter", "-o", "json"))
        assert remote["state"] == "local" and len(remote["nodes"]) == len(plan.nodes)
    finally:
        cluster.delete_cluster(spec.name, print, env=env)
    gone = vkp(elsewhere, "list-clusters", "--all", "-o", "json")
    assert spec.name not in [c["name"] for c in doc(gone)["clusters"]]


def test_two_clusters_of_one_name_need_a_cluster_id(
    env: dict[str, str], inv: Inventory, workdir: Any, tmp_path: Path
) -> None:
    name = f"twin-{uuid.uuid4().hex[:6]}"
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    folder_a = make_cluster(inv, vms.create_folder(workdir, "team-a"), name, ours, vm_count=2)
    make_cluster(inv, vms.create_folder(workdir, "team-b"), name, theirs, vm_count=3)
    # A worker that never booted: no address from a guest, only the one vkp gave it.
    metadata = (
        "instance-id: w1\nlocal-hostname: w1\nnetwork:\n  version: 2\n  ethernets:\n"
        "    id0:\n      addresses: ['198.18.9.7/24']\n"
    )
    extra = specs.ownership_extra_config(name, ours, "worker") | specs.guestinfo_extra_config(metadata, "")
    task = vms.clone(inv.template, folder_a, f"{name}-worker-1", node_spec(inv, inv.hosts[0], extra))
    waits.wait_for_tasks(inv.content, [task], deadline=soon())
    elsewhere = env | {"VKP_STATE_DIR": str(tmp_path / "elsewhere")}

    listed = doc(vkp(elsewhere, "list-clusters", "--all", "-o", "json"))["clusters"]
    assert {c["cluster_id"]: c["vms"] for c in listed if c["name"] == name} == {
        ours: {"etcd": 2, "worker": 1},
        theirs: {"etcd": 3},
    }

    refused = vkp(elsewhere, "describe-cluster", name, "-o", "json")
    assert refused.exit_code == 4
    message = doc(refused)["error"]["message"]
    assert ours in message and theirs in message and "--cluster-id" in doc(refused)["error"]["hint"]

    picked = vkp(elsewhere, "describe-cluster", name, "--cluster-id", theirs, "-o", "json")
    assert picked.exit_code == 0, picked.output
    d = doc(picked)
    assert d["cluster_id"] == theirs and len(d["nodes"]) == 3
    assert d["folders"] == [f"{find.inventory_path(workdir)}/team-b/vkp/{name}"]

    (worker,) = [
        n
        for n in doc(vkp(elsewhere, "describe-cluster", name, "--cluster-id", ours, "-o", "json"))["nodes"]
        if n["role"] == "worker"
    ]
    assert (worker["address"], worker["address_source"], worker["power_state"]) == (
        "198.18.9.7",
        "config",
        "poweredOff",
    )

    unknown = vkp(elsewhere, "describe-cluster", name, "--cluster-id", str(uuid.uuid4()), "-o", "json")
    assert unknown.exit_code == 4 and "list-clusters --all" in doc(unknown)["error"]["hint"]
    for cid in (ours, theirs):
        owned = ownership.find_owned(inv.content, name, cid)
        assert owned.counts()["vms"] > 0  # reading changed nothing


def test_list_all_without_a_vcenter_names_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k != "VKP_VSPHERE_SERVER"} | {"VKP_VSPHERE_SERVER": ""}
    result = vkp(bare, "list-clusters", "--all", "-o", "json")
    assert result.exit_code == 3
    assert "VKP_VSPHERE_SERVER" in doc(result)["error"]["message"]
