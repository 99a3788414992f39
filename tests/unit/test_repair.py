"""vkp repair: the playbook's host selection, the etcd member swap that keeps quorum, kubeadm's
ClusterStatus, and the lifecycle's resume (an already replaced VM is never destroyed again).

etcd and vCenter are fakes here; tests/vcsim/test_repair_vm.py replaces a VM in the simulator and
the lab suite repairs a destroyed worker and etcd member (test_10d in
tests/lab/test_cluster_bootstrap.py).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import infra, resources
from provisioner.bootstrap import phases
from provisioner.bootstrap.engine import Cluster, Executor, Facts
from provisioner.bootstrap.etcd_client import EtcdError, Member
from provisioner.bootstrap.playbook import PlaybookError, load_playbook, parse_playbook
from provisioner.bootstrap.steps import etcd, registry
from provisioner.bootstrap.steps import repair as steps
from provisioner.day2 import repair
from provisioner.errors import ExitCode, NotFound
from provisioner.infra import NodeOutcome
from provisioner.state import NodeRecord
from tests.unit.test_day2 import make_cluster, quiet

PLAYBOOK = load_playbook(resources.playbook("repair"))


def hosts_of(cluster: Cluster, node: str) -> dict[str, list[str]]:
    params = {"repair": node}
    return {p.name: [n.name for n in p.hosts.select(cluster.plan, params)] for p in PLAYBOOK.plays}


# -- which hosts each play acts on ---------------------------------------------------------------


def test_a_worker_repair_acts_on_that_worker_and_routes_on_every_kubelet_node(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, workers=3)
    hosts = hosts_of(cluster, "demo-worker-2")
    assert hosts["forget-node"] == ["demo-worker-2"]
    assert hosts["remove-member"] == [] and hosts["etcd"] == [] and hosts["control-plane-rejoin"] == []
    assert hosts["containerd"] == ["demo-worker-2"] and hosts["worker-join"] == ["demo-worker-2"]
    assert hosts["pod-network"] == ["demo-master-1", "demo-worker-1", "demo-worker-2", "demo-worker-3"]


def test_an_etcd_repair_acts_on_that_member_only(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_of(cluster, "demo-etcd-3")
    assert hosts["remove-member"] == hosts["etcd"] == hosts["add-member"] == ["demo-etcd-3"]
    assert hosts["forget-node"] == [] and hosts["worker-join"] == [] and hosts["runtime-common"] == []


def test_a_host_term_naming_an_undeclared_parameter_is_refused_when_the_playbook_loads() -> None:
    raw = {"params": ["nodes"], "plays": [{"play": "p", "phase": "x", "hosts": "etcd@repair",
                                           "steps": ["etcd.health"]}]}  # fmt: skip
    with pytest.raises(PlaybookError, match=r"@repair is not a parameter of the playbook \(params: nodes\)"):
        parse_playbook(raw, source="t.yaml", steps=registry())


def test_the_remove_phase_of_a_worker_repair_connects_to_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node being repaired may not answer at all: the remove phase works from here."""
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    monkeypatch.setattr(phases, "connect_all", lambda *a: pytest.fail("the remove phase needs no SSH"))
    report = phases.run_day2("repair", cluster.spec, cluster.plan, cluster.state,
                             params={"repair": "demo-worker-1"}, log=quiet, dry_run=True,
                             phases=["remove"])  # fmt: skip
    actions = [a for p in report["plays"] for r in p["results"] for a in r.get("actions", [])]
    assert any("delete node demo-worker-1" in a for a in actions), actions
    with pytest.raises(PlaybookError, match="has no phase vm; its phases: remove, etcd, runtime, kubernetes"):
        phases.run_day2("repair", cluster.spec, cluster.plan, cluster.state,
                        params={"repair": "demo-worker-1"}, log=quiet, phases=["vm"])  # fmt: skip


# -- etcd: the member swap -------------------------------------------------------------------


@dataclass
class FakeEtcd:
    """One etcd cluster as its members' clients see it."""

    members: list[Member]
    down: set[str] = field(default_factory=set)  # node names that do not answer
    ids: Any = field(default_factory=lambda: itertools.count(900))
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    def client(self, cluster: Cluster, node: Any) -> Any:
        return _Client(self, node.name)


@dataclass
class _Client:
    etcd: FakeEtcd
    name: str

    def health(self) -> bool:
        if self.name in self.etcd.down:
            raise EtcdError(f"https://{self.name}:2379: ConnectionRefusedError")
        return True

    def members(self) -> list[Member]:
        return list(self.etcd.members)

    def member_remove(self, member_id: str) -> None:
        self.etcd.removed.append(member_id)
        self.etcd.members = [m for m in self.etcd.members if m.id != member_id]

    def member_add(self, peer_url: str) -> Member:
        m = Member("", (peer_url,), (), str(next(self.etcd.ids)))
        self.etcd.added.append(peer_url)
        self.etcd.members.append(m)
        return m


def member(cluster: Cluster, name: str, member_id: str) -> Member:
    node = next(n for n in cluster.plan.nodes if n.name == name)
    return Member(name, (etcd.url(node.address, etcd.PEER_PORT),), (), member_id)


def run_local(step_name: str, cluster: Cluster, node: str) -> Any:
    sdef = registry()[step_name]
    nodes = [n for n in cluster.plan.nodes if n.name == node]
    return Executor(None, Facts.unknown(), dry_run=False).run_step(sdef, sdef.fn(nodes, cluster), "local")


@pytest.fixture
def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Cluster, FakeEtcd]:
    cluster = make_cluster(tmp_path, repair="demo-etcd-3")
    fake = FakeEtcd([member(cluster, f"demo-etcd-{i}", str(i)) for i in (1, 2, 3)], down={"demo-etcd-3"})
    monkeypatch.setattr(steps, "_client", fake.client)
    return cluster, fake


def test_the_member_is_not_removed_when_the_others_would_lose_quorum(three: tuple[Cluster, FakeEtcd]) -> None:
    cluster, fake = three
    fake.down.add("demo-etcd-1")
    res = run_local("etcd.remove_member", cluster, "demo-etcd-3")
    assert res.status == "failed"
    assert isinstance(res.exception, steps.QuorumAtRisk) and res.exception.exit_code == ExitCode.PREFLIGHT
    assert "needs 2 healthy other member(s)" in res.error and "demo-etcd-1: " in res.error
    assert fake.removed == [] and len(fake.members) == 3


def test_the_old_member_is_swapped_for_a_new_one_and_a_rerun_never_removes_the_new_one(
    three: tuple[Cluster, FakeEtcd],
) -> None:
    cluster, fake = three
    assert cluster.state is not None
    assert run_local("etcd.remove_member", cluster, "demo-etcd-3").status == "changed"
    assert fake.removed == ["3"] and [m.name for m in fake.members] == ["demo-etcd-1", "demo-etcd-2"]
    assert run_local("etcd.add_member", cluster, "demo-etcd-3").status == "changed"
    assert fake.added == ["https://" + cluster.plan.nodes[2].address + ":2380"]
    # The new member started under the node's name; the remove step runs again (a resume).
    fake.members[-1] = replace(fake.members[-1], name="demo-etcd-3")
    fake.down.clear()
    run_local("etcd.remove_member", cluster, "demo-etcd-3")
    run_local("etcd.add_member", cluster, "demo-etcd-3")
    assert fake.removed == ["3"] and len(fake.added) == 1
    assert [m.name for m in fake.members] == ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3"]


def test_the_repaired_member_joins_the_running_cluster_and_keeps_that_config(
    three: tuple[Cluster, FakeEtcd],
) -> None:
    cluster, _ = three
    etcd3, etcd1 = cluster.plan.by_role("etcd")[2], cluster.plan.by_role("etcd")[0]

    def state_of(node: Any, c: Cluster) -> str:
        return str(yaml.safe_load(etcd.render_config(node, c)[0])["initial-cluster-state"])

    assert state_of(etcd3, cluster) == "existing" and state_of(etcd1, cluster) == "new"
    later = replace(cluster, params={})  # a create-cluster run after the repair
    assert state_of(etcd3, later) == "new"
    run_local("etcd.add_member", cluster, "demo-etcd-3")
    assert state_of(etcd3, later) == "existing" and state_of(etcd1, later) == "new"
    config = yaml.safe_load(etcd.render_config(etcd3, cluster)[0])
    assert config["initial-cluster"].count("demo-etcd-") == 3


# -- a master: kubeadm's ClusterStatus --------------------------------------------------------


class FakeAPI:
    server = "https://api:6443"

    def __init__(self, endpoints: dict[str, Any]) -> None:
        status = {"apiEndpoints": endpoints, "kind": "ClusterStatus"}
        self.cm: dict[str, Any] = {"metadata": {"resourceVersion": "7"},
                                   "data": {"ClusterStatus": yaml.safe_dump(status)}}  # fmt: skip
        self.puts: list[dict[str, Any]] = []

    def find(self, path: str) -> Any:
        assert path == steps.KUBEADM_CONFIG
        return yaml.safe_load(yaml.safe_dump(self.cm))

    def request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        assert (method, body["metadata"]["resourceVersion"]) == ("PUT", "7")
        self.puts.append(body)
        self.cm = body
        return 200, body


def test_a_masters_api_endpoint_leaves_kubeadms_cluster_status_once() -> None:
    ep = {"advertiseAddress": "198.18.0.31", "bindPort": 6443}
    api = FakeAPI({"demo-master-1": ep, "demo-master-2": {**ep, "advertiseAddress": "198.18.0.32"}})
    assert steps.forget_api_endpoint(api, "demo-master-2") is True  # type: ignore[arg-type]
    status = yaml.safe_load(api.cm["data"]["ClusterStatus"])
    assert list(status["apiEndpoints"]) == ["demo-master-1"] and status["kind"] == "ClusterStatus"
    assert steps.forget_api_endpoint(api, "demo-master-2") is False  # type: ignore[arg-type]
    assert len(api.puts) == 1


def test_the_only_master_is_initialised_again_and_another_joins(tmp_path: Path) -> None:
    one = make_cluster(tmp_path)
    master = one.plan.by_role("master")[0]
    sdef = registry()["kubernetes.rejoin_master"]
    dry = Executor(None, Facts.unknown(), dry_run=True)
    res = dry.run_step(sdef, sdef.fn(master, one, Facts.unknown()), master.name)
    assert any("kubeadm init" in a for a in res.actions), res.actions
    spec = one.spec
    topo = spec.topology
    three = replace(spec, topology=replace(topo, master=replace(topo.master, count=3)))
    from provisioner.plan import make_plan

    ha = replace(one, spec=three, plan=make_plan(three))
    first = ha.plan.by_role("master")[0]
    res = dry.run_step(sdef, sdef.fn(first, ha, Facts.unknown()), first.name)
    assert any("kubeadm join" in a for a in res.actions) and not any("kubeadm init" in a for a in res.actions)


# -- the lifecycle: stages, resume, the VM ----------------------------------------------------


class FakeProvider:
    """vCenter holding one VM per node, by moid; clones get new moids."""

    def __init__(self, state: Any, vms: dict[str, str]) -> None:
        self.state, self.vms = state, vms
        self.destroyed: list[str] = []
        self.cloned: list[str] = []
        self.moids = itertools.count(500)

    def machine_ids(self, name: str, cluster_id: str, nodes: list[str]) -> dict[str, str]:
        return {n: self.vms[n] for n in nodes if n in self.vms}

    def find_nodes(self, name: str, cluster_id: str, nodes: list[str], *, only_ids: Any = None) -> list[str]:
        return [self.vms[n] for n in nodes if n in self.vms and (only_ids is None or self.vms[n] in only_ids)]

    def destroy(self, owned: list[str], log: Any) -> list[str]:
        for moid in owned:
            self.destroyed.append(moid)
            self.vms = {n: m for n, m in self.vms.items() if m != moid}
        return []

    def machines(self, spec: Any, state: Any, log: Any, *, concurrency: int, check: Any, only: Any) -> Any:
        (node,) = only
        created = node not in self.vms
        if created:
            self.vms[node] = f"vm-{next(self.moids)}"
            self.cloned.append(node)
        plan_node = next(n for n in repair.make_plan(spec).nodes if n.name == node)
        state.save_node(NodeRecord(node, plan_node.role, plan_node.address, moid=self.vms[node]))
        return None, [NodeOutcome(plan_node, machine=self.vms[node], created=created)]


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeProvider, list[tuple[str, ...]]]:
    cluster = make_cluster(tmp_path)
    state = cluster.state
    assert state is not None
    monkeypatch.setenv("VKP_STATE_DIR", str(state.path.parent))
    state.save_spec(cluster.spec.to_dict())
    for phase in ("vms", "etcd", "runtime", "kubernetes"):
        state.record_phase(phase, "done", 1.0)
    for i, n in enumerate(cluster.plan.nodes):
        state.save_node(NodeRecord(n.name, n.role, n.address, moid=f"vm-{i}"))
    provider = FakeProvider(state, {n.name: f"vm-{i}" for i, n in enumerate(cluster.plan.nodes)})

    class Infra:
        @contextmanager
        def open(self, spec: Any) -> Any:
            yield provider

        def planned_actions(self, spec: Any, plan: Any) -> list[str]:
            return [f"{n.name}: linked clone" for n in plan.nodes]

    monkeypatch.setattr(infra, "get", lambda name="vsphere": Infra())
    monkeypatch.setattr(infra, "ssh_check", lambda *a: None)
    runs: list[tuple[str, ...]] = []
    return state, provider, runs


def test_a_worker_repair_forgets_the_node_replaces_the_vm_then_joins(
    lab: tuple[Any, FakeProvider, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, provider, runs = lab
    old = state.nodes["demo-worker-2"].moid

    def day2(name: str, spec: Any, plan: Any, st: Any, *, params: Any, log: Any, phases: Any) -> Any:
        runs.append((params["repair"], *phases, f"vms={sorted(provider.vms)}"))
        return {"ok": 1, "changed": 1}

    monkeypatch.setattr(repair, "run_day2", day2)
    result = repair.repair_node("demo", "demo-worker-2", quiet)
    assert [s["name"] for s in result["stages"]] == ["remove", "vm", "runtime", "kubernetes"]
    # The Node is forgotten while the old VM still stands; the new VM exists before the join.
    assert runs[0][:2] == ("demo-worker-2", "remove") and "demo-worker-2" in runs[0][2]
    assert [r[1] for r in runs] == ["remove", "runtime", "kubernetes"]
    assert provider.destroyed == [old] and provider.cloned == ["demo-worker-2"]
    assert result["vm"]["old_machine"] == old and result["vm"]["machine"] == state.nodes["demo-worker-2"].moid
    assert result["vm"]["machine"] != old
    assert state.repair("demo-worker-2") is None


def test_a_repair_killed_after_the_clone_resumes_without_destroying_the_new_vm(
    lab: tuple[Any, FakeProvider, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, provider, runs = lab
    old = state.nodes["demo-etcd-3"].moid

    def dies_in_etcd(name: str, spec: Any, plan: Any, st: Any, *, params: Any, log: Any, phases: Any) -> Any:
        runs.append(tuple(phases))
        if phases == ["etcd"]:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(repair, "run_day2", dies_in_etcd)
    with pytest.raises(KeyboardInterrupt):
        repair.repair_node("demo", "demo-etcd-3", quiet)
    new = state.nodes["demo-etcd-3"].moid
    assert provider.destroyed == [old] and new != old
    assert state.repair("demo-etcd-3")["done"] == ["remove", "vm"]
    # The dry run of the resume says so, and keeps the new VM.
    monkeypatch.setattr(repair, "run_day2", lambda *a, **k: {"plays": []})
    planned = repair.repair_node("demo", "demo-etcd-3", quiet, dry_run=True)
    assert "stage vm: done by the interrupted repair, skipped" in planned["actions"]

    def completes(name: str, spec: Any, plan: Any, st: Any, *, params: Any, log: Any, phases: Any) -> Any:
        runs.append(tuple(phases))
        return {}

    monkeypatch.setattr(repair, "run_day2", completes)
    runs.clear()
    result = repair.repair_node("demo", "demo-etcd-3", quiet)
    assert runs == [("etcd",)] and result["resumed"]
    assert [s["status"] for s in result["stages"]] == ["skipped", "skipped", "done"]
    assert provider.destroyed == [old] and provider.cloned == ["demo-etcd-3"]
    assert state.nodes["demo-etcd-3"].moid == new and state.repair("demo-etcd-3") is None


def test_a_vm_stage_cut_short_after_the_clone_keeps_the_clone(
    lab: tuple[Any, FakeProvider, list[tuple[str, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, provider, _ = lab
    old = state.nodes["demo-worker-1"].moid
    state.update_repair("demo-worker-1", done=["remove"], old_machine=old)
    provider.vms["demo-worker-1"] = "vm-777"  # cloned by the interrupted run, not yet recorded done
    monkeypatch.setattr(repair, "run_day2", lambda *a, **k: {})
    result = repair.repair_node("demo", "demo-worker-1", quiet)
    assert provider.destroyed == [] and provider.cloned == []
    assert result["vm"] == {**result["vm"], "old_machine": old, "destroyed": False, "machine": "vm-777"}


def test_an_unknown_node_is_named_with_the_clusters_nodes(lab: Any) -> None:
    with pytest.raises(NotFound, match="node 'demo-worker-9' not found") as ei:
        repair.repair_node("demo", "demo-worker-9", quiet)
    assert "demo-etcd-1" in (ei.value.hint or "")
