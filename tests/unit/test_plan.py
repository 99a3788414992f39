"""The plan: node order and names, addresses, placement, API endpoint, rules, folder, output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from provisioner.errors import NotFound, SpecError
from provisioner.plan import NodePlan, make_plan, place, render_plan
from provisioner.spec import ClusterSpec, load_spec
from tests.unit.test_spec import LAB_ENV, REPO, write


def spec_for(plan: str = "small", **env: str) -> ClusterSpec:
    return load_spec(None, name="demo", plan=plan, env=LAB_ENV | env)


def test_nodes_in_role_order_with_names_and_sizes() -> None:
    plan = make_plan(spec_for("small"))
    assert [n.name for n in plan.nodes] == [
        "demo-etcd-1",
        "demo-etcd-2",
        "demo-etcd-3",
        "demo-master-1",
        "demo-worker-1",
        "demo-worker-2",
    ]
    assert [n.role for n in plan.nodes] == ["etcd"] * 3 + ["master"] + ["worker"] * 2
    m = plan.node("demo-master-1")
    assert (m.cpus, m.memory_mb, m.disk_gb) == (2, 4096, 30)


def test_addresses_come_from_the_pool_in_node_order_deterministically() -> None:
    spec = spec_for("prod", VKP_API_ENDPOINT="198.18.0.5", VKP_NETWORK_POOL="198.18.0.100-198.18.0.120")
    a, b = make_plan(spec), make_plan(spec)
    addresses = [n.address for n in a.nodes]
    assert addresses == [f"198.18.0.{i}" for i in range(100, 109)]
    assert addresses == [n.address for n in b.nodes]
    assert len(set(addresses)) == len(addresses)


def test_pinned_addresses_are_kept_and_skipped_in_the_pool(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: demo
        plan: small
        topology: {master: {addresses: [198.18.0.11]}}
        network: {pool: 198.18.0.10-198.18.0.20}
        """,
    )
    plan = make_plan(load_spec(f, env=LAB_ENV))
    by_name = {n.name: n.address for n in plan.nodes}
    assert by_name["demo-master-1"] == "198.18.0.11"
    assert by_name["demo-etcd-1"] == "198.18.0.10" and by_name["demo-etcd-2"] == "198.18.0.12"
    assert len(set(by_name.values())) == len(by_name)


def test_placement_with_three_hosts_puts_each_role_on_distinct_hosts() -> None:
    spec = spec_for("prod", VKP_API_ENDPOINT="198.18.0.5", VKP_NETWORK_POOL="198.18.0.100-198.18.0.120")
    plan = make_plan(spec, hosts=["esx-3", "esx-1", "esx-2"])
    for role in ("etcd", "master", "worker"):
        hosts = [n.esxi_host for n in plan.by_role(role)]
        assert sorted(h or "" for h in hosts) == ["esx-1", "esx-2", "esx-3"], role
    assert Counter(n.esxi_host for n in plan.nodes) == {"esx-1": 3, "esx-2": 3, "esx-3": 3}
    assert plan.hosts == ("esx-1", "esx-2", "esx-3")  # natural order, whatever vCenter returned


def test_placement_with_two_hosts_is_round_robin_and_balanced() -> None:
    plan = make_plan(spec_for("small"), hosts=["esx-1", "esx-2"])
    assert [n.esxi_host for n in plan.by_role("etcd")] == ["esx-1", "esx-2", "esx-1"]
    assert {n.esxi_host for n in plan.by_role("worker")} == {"esx-1", "esx-2"}
    assert Counter(n.esxi_host for n in plan.nodes) == {"esx-1": 3, "esx-2": 3}


def test_place_is_pure_and_leaves_hosts_unknown_without_hosts() -> None:
    nodes = [NodePlan(f"c-etcd-{i}", "etcd", i, 1, 1024, 10, f"10.0.0.{i}") for i in (1, 2, 3)]
    assert [n.esxi_host for n in place(nodes, None)] == [None, None, None]
    assert [n.esxi_host for n in place(nodes, ["a", "b", "c", "d"])] == ["a", "b", "c"]
    assert all(n.esxi_host is None for n in nodes)  # inputs untouched
    with pytest.raises(ValueError):
        place(nodes, [])


def test_hosts_natural_order() -> None:
    plan = make_plan(spec_for("dev"), hosts=["esx-10", "esx-2", "esx-1"])
    assert plan.hosts == ("esx-1", "esx-2", "esx-10")


def test_placement_hosts_in_the_spec_restrict_and_must_exist(tmp_path: Path) -> None:
    f = write(tmp_path, "name: demo\nplan: small\nplacement: {hosts: [esx-2, esx-3]}\n")
    spec = load_spec(f, env=LAB_ENV)
    plan = make_plan(spec, hosts=["esx-1", "esx-2", "esx-3"])
    assert {n.esxi_host for n in plan.nodes} == {"esx-2", "esx-3"}
    assert make_plan(spec).hosts == ("esx-2", "esx-3")  # known from the spec before preflight
    with pytest.raises(NotFound) as ei:
        make_plan(spec, hosts=["esx-1", "esx-2"])
    assert "esx-3" in str(ei.value)


def test_api_endpoint_single_master_is_its_address() -> None:
    plan = make_plan(spec_for("small"))
    ep = plan.api_endpoint
    assert (ep.mode, ep.address, ep.port) == ("direct", plan.by_role("master")[0].address, 6443)
    assert ep.url == f"https://{ep.address}:6443"


def test_api_endpoint_several_masters_is_a_virtual_address(tmp_path: Path) -> None:
    plan = make_plan(
        spec_for("prod", VKP_API_ENDPOINT="198.18.0.5", VKP_NETWORK_POOL="198.18.0.100-198.18.0.120")
    )
    assert (plan.api_endpoint.mode, plan.api_endpoint.address) == ("kube-vip", "198.18.0.5")
    assert "198.18.0.5" not in {n.address for n in plan.nodes}
    f = write(
        tmp_path,
        "name: demo\nplan: prod\nnetwork: {pool: 198.18.0.100-198.18.0.120,"
        " api_endpoint: {address: 198.18.0.6, mode: haproxy-keepalived}}\n",
    )
    assert make_plan(load_spec(f, env=LAB_ENV)).api_endpoint.mode == "haproxy-keepalived"


def test_auto_takes_the_virtual_holder_the_spec_names_and_one_master_stays_direct(tmp_path: Path) -> None:
    text = "name: demo\nplan: {plan}\nnetwork: {{api_endpoint: {{virtual: haproxy-keepalived}}}}\n"
    env = LAB_ENV | {"VKP_NETWORK_POOL": "198.18.0.100-198.18.0.120"}
    vip = env | {"VKP_API_ENDPOINT": "198.18.0.5"}
    prod = make_plan(load_spec(write(tmp_path, text.format(plan="prod")), env=vip))
    assert (prod.api_endpoint.mode, prod.api_endpoint.address) == ("haproxy-keepalived", "198.18.0.5")
    small = make_plan(load_spec(write(tmp_path, text.format(plan="small")), env=env))
    assert small.api_endpoint.mode == "direct"
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, "name: demo\nnetwork: {api_endpoint: {virtual: keepalived}}\n"), env=env)
    assert "network.api_endpoint.virtual" in str(ei.value) and "haproxy-keepalived" in str(ei.value)


def test_anti_affinity_rules_and_folder(tmp_path: Path) -> None:
    plan = make_plan(spec_for("small"), hosts=["esx-1", "esx-2", "esx-3"])
    assert plan.folder == "vkp/demo"
    rules = {r.role: r for r in plan.anti_affinity_rules}
    assert rules["etcd"].name == "vkp-demo-etcd"
    assert rules["etcd"].vms == ("demo-etcd-1", "demo-etcd-2", "demo-etcd-3")
    assert "master" not in rules  # one VM: nothing to keep apart
    # More etcd VMs than hosts: a hard rule would stop the third from powering on.
    assert "etcd" not in {r.role for r in make_plan(spec_for("small"), hosts=["a", "b"]).anti_affinity_rules}
    f = write(
        tmp_path,
        "name: demo\nplan: small\nvsphere: {folder: /k8s/}\nplacement: {anti_affinity: false}\n",
    )
    plan = make_plan(load_spec(f, env=LAB_ENV))
    assert plan.folder == "k8s/demo" and plan.anti_affinity_rules == ()


def test_json_has_the_documented_node_keys_and_no_password() -> None:
    plan = make_plan(spec_for("small"), hosts=["esx-1", "esx-2", "esx-3"])
    d = plan.to_dict()
    json.dumps(d)  # serialisable as is
    assert all(
        set(n) == {"name", "role", "cpus", "memory_mb", "disk_gb", "address", "esxi_host"} for n in d["nodes"]
    )
    assert d["nodes"][0] == {
        "name": "demo-etcd-1",
        "role": "etcd",
        "cpus": 2,
        "memory_mb": 2048,
        "disk_gb": 20,
        "address": "198.18.0.10",
        "esxi_host": "esx-1",
    }
    assert d["api_endpoint"]["url"].startswith("https://")
    assert d["totals"]["vms"] == 6
    secret = LAB_ENV["VKP_VSPHERE_PASSWORD"]
    assert secret not in json.dumps(d) and secret not in render_plan(plan)


def test_render_plan_table() -> None:
    text = render_plan(make_plan(spec_for("small")))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    assert header.split() == ["NAME", "ROLE", "CPUS", "MEMORY", "DISK", "ADDRESS", "ESXI", "HOST"]
    row = next(line for line in lines if line.startswith("demo-master-1"))
    assert row.split() == ["demo-master-1", "master", "2", "4096", "MB", "30", "GB", "198.18.0.13", "-"]
    assert "https://198.18.0.13:6443" in text and "vkp/demo" in text
    assert "chosen at preflight" in text


def test_make_plan_refuses_an_invalid_spec() -> None:
    import dataclasses

    spec = spec_for("small")
    no_master = dataclasses.replace(spec.topology.master, count=0)
    bad = dataclasses.replace(spec, topology=dataclasses.replace(spec.topology, master=no_master))
    with pytest.raises(SpecError):
        make_plan(bad)


def test_sample_plan_spreads_over_hosts() -> None:
    spec = load_spec(REPO / "inventory/sample/cluster.yaml", env={})
    plan = make_plan(spec, hosts=["esx-01", "esx-02", "esx-03", "esx-04"])
    for role in ("etcd", "master", "worker"):
        hosts = [n.esxi_host for n in plan.by_role(role)]
        assert len(set(hosts)) == 3
    assert max(Counter(n.esxi_host for n in plan.nodes).values()) == 3
