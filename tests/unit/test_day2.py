"""Playbooks own their phases and resume records; the resize drain as a day-2 playbook.

Hosts are scripted fakes (tests/unit/fakes.py) that answer the drain's kubectl as a first master
would; the lab suite runs the same playbook against a real cluster (test_10 of
tests/lab/test_cluster_bootstrap.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provisioner import resources
from provisioner.bootstrap import phases, runner
from provisioner.bootstrap.engine import Cluster, Facts, Run, StepGen, step
from provisioner.bootstrap.playbook import (
    Playbook,
    PlaybookError,
    create_phases,
    load_playbook,
    parse_playbook,
    phases_up_to,
    read_phases,
)
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.bootstrap.steps import nodes
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.plan import make_plan
from provisioner.spec import load_spec
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

ADMIN = "/usr/local/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf"


class PKI:
    def cert_pem(self, name: str) -> bytes:
        return b"-----BEGIN CERTIFICATE-----\n"

    def key_pem(self, name: str) -> bytes:
        return b"-----BEGIN PRIVATE KEY-----\n"


def make_cluster(tmp_path: Path, workers: int = 3, **params: Any) -> Cluster:
    env = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    spec = load_spec(None, name="demo", plan="small", env=env)
    topo = spec.topology
    spec = replace(spec, topology=replace(topo, worker=replace(topo.worker, count=workers)))
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    return Cluster(spec=spec, plan=make_plan(spec), state=state, pki=PKI(), params=params)


def quiet(_: str) -> None:
    pass


@pytest.fixture(autouse=True)
def fake_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))


# -- phases belong to a playbook --------------------------------------------------------------


def test_create_cluster_phases_are_vms_and_the_cluster_playbooks_in_file_order() -> None:
    assert load_playbook(phases.PLAYBOOK).phases == ("etcd", "runtime", "kubernetes")
    assert read_phases(phases.PLAYBOOK) == ("etcd", "runtime", "kubernetes")
    assert create_phases() == ("vms", "etcd", "runtime", "kubernetes")
    assert phases_up_to("vms") == []
    assert phases_up_to("runtime") == ["etcd", "runtime"]
    with pytest.raises(ProvisionerError, match="unknown phase 'drain'; phases: vms, etcd"):
        phases_up_to("drain")


def test_a_playbook_implies_its_phases_in_the_order_its_plays_name_them() -> None:
    pb = parse_playbook(
        [
            {"play": "a", "phase": "check", "hosts": "master[0]", "steps": ["kubernetes.drain"]},
            {"play": "b", "phase": "fix", "hosts": "master[0]", "steps": ["kubernetes.drain"]},
            {"play": "c", "phase": "fix", "hosts": "master[0]", "steps": ["kubernetes.drain"]},
        ],
        source="repair.yaml",
    )
    assert (pb.name, pb.phases, pb.params) == ("repair", ("check", "fix"), ())
    with pytest.raises(PlaybookError, match="play 'c': phase check comes after a later phase's play"):
        parse_playbook(
            [
                {"play": "a", "phase": "check", "hosts": "all", "steps": ["kubernetes.drain"]},
                {"play": "b", "phase": "fix", "hosts": "all", "steps": ["kubernetes.drain"]},
                {"play": "c", "phase": "check", "hosts": "all", "steps": ["kubernetes.drain"]},
            ],
            source="repair.yaml",
        )


def test_a_header_declares_phases_and_params_and_is_checked(tmp_path: Path) -> None:
    pb = load_playbook(resources.playbook("remove-workers"))
    assert (pb.name, pb.phases, pb.params) == ("remove-workers", ("drain",), ("nodes",))
    assert [(p.name, p.hosts.text, p.steps) for p in pb.plays] == [
        ("drain", "master[0]", ("kubernetes.drain",))
    ]
    f = tmp_path / "upgrade.yaml"
    f.write_text(
        "phases: [prepare, upgrade]\nparams: [Version]\nretries: 3\nplays:\n"
        "- {play: a, phase: upgrade, hosts: master, steps: [kubernetes.drain]}\n"
        "- {play: b, phase: prepare, hosts: master, steps: [kubernetes.drain]}\n"
        "- {play: c, phase: upgarde, hosts: master, steps: [kubernetes.drain]}\n"
    )
    with pytest.raises(PlaybookError) as ei:
        load_playbook(f)
    msg = str(ei.value)
    assert "unknown key(s) retries" in msg
    assert "params must be a list of names" in msg
    assert "play 'b': phase prepare comes after a later phase's play" in msg
    assert "play 'c': phase must be one of prepare, upgrade; got 'upgarde'" in msg
    assert ei.value.exit_code == ExitCode.SPEC


def test_a_run_of_a_phase_its_playbook_lacks_is_refused(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=["demo-worker-3"])
    pb = load_playbook(resources.playbook("remove-workers"))
    with pytest.raises(
        ProvisionerError, match="playbook remove-workers has no phase etcd; its phases: drain"
    ):
        run_playbook(pb, cluster, {}, phases={"etcd"}, log=quiet, dry_run=True)


# -- resume records per playbook ----------------------------------------------------------------


@step("day2test.mark")
def _mark(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("mark", node.name))


@step("day2test.flaky")
def _flaky(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("flaky", node.name))


def two_step_playbook(name: str) -> Playbook:
    plays = [
        {"play": "first", "phase": "one", "hosts": "worker", "steps": ["day2test.mark"]},
        {"play": "second", "phase": "two", "hosts": "worker", "steps": ["day2test.mark", "day2test.flaky"]},
    ]
    return parse_playbook(plays, source=f"{name}.yaml", digest=f"{name}-digest")


def worker_hosts(cluster: Cluster) -> dict[str, fakes.FakeHost]:
    return {n.name: fakes.FakeHost(n.name) for n in cluster.plan.by_role("worker")}


def test_a_failed_run_resumes_at_its_failed_step_and_other_playbooks_do_not_interfere(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    hosts = worker_hosts(cluster)
    repair, upgrade = two_step_playbook("repair"), two_step_playbook("upgrade")
    hosts["demo-worker-2"].fail = {"flaky": Result(1, "", "not yet")}
    with pytest.raises(PlayFailed) as ei:
        run_playbook(repair, cluster, hosts, phases={"one", "two"}, log=quiet)
    assert "resumes at day2test.flaky on demo-worker-2" in ei.value.hint  # type: ignore[operator]
    record = json.loads(cluster.state.progress_path("repair").read_text())
    assert record["failed"]["step"] == "day2test.flaky" and record["failed"]["host"] == "demo-worker-2"
    assert cluster.state.progress_path("repair") == cluster.state.path / "playbooks" / "repair.json"

    # Another playbook's run, even a complete one, neither resumes from nor clears repair's record.
    for h in hosts.values():
        h.commands.clear()
    hosts["demo-worker-2"].fail = {}
    other = run_playbook(upgrade, cluster, hosts, phases={"one", "two"}, log=quiet)
    assert other.resumed_from is None and other.count("skipped") == 0
    assert hosts["demo-worker-1"].commands.count("sudo -n -- mark demo-worker-1") == 2
    assert json.loads(cluster.state.progress_path("repair").read_text())["failed"] is not None

    for h in hosts.values():
        h.commands.clear()
    again = run_playbook(repair, cluster, hosts, phases={"one", "two"}, log=quiet)
    assert again.resumed_from is not None and again.resumed_from["step"] == "day2test.flaky"
    assert hosts["demo-worker-1"].commands == []  # it finished both plays in the failed run
    assert hosts["demo-worker-2"].commands == ["sudo -n -- flaky demo-worker-2"]
    assert json.loads(cluster.state.progress_path("repair").read_text())["failed"] is None


def test_a_run_with_other_params_does_not_resume_the_failed_one(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=["demo-worker-3"])
    hosts = worker_hosts(cluster)
    pb = two_step_playbook("repair")
    hosts["demo-worker-2"].fail = {"flaky": Result(1, "", "not yet")}
    with pytest.raises(PlayFailed):
        run_playbook(pb, cluster, hosts, phases={"one", "two"}, log=quiet)
    hosts["demo-worker-2"].fail = {}
    other = replace(cluster, params={"nodes": ["demo-worker-2"]})
    assert run_playbook(pb, other, hosts, phases={"one", "two"}, log=quiet).resumed_from is None


def test_a_clusters_old_bootstrap_json_resumes_as_the_cluster_playbooks(tmp_path: Path) -> None:
    # A cluster whose run failed before playbooks had records of their own: its bootstrap.json
    # (the format vkp wrote then) is the cluster playbook's record.
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    pb = two_step_playbook("cluster")
    old = cluster.state.path / "bootstrap.json"
    old.write_text(
        json.dumps(
            {
                "digest": "cluster-digest",
                "plays": {
                    "first": {
                        "done": True,
                        "hosts": {},
                        "ran_on": ["demo-worker-1", "demo-worker-2", "demo-worker-3"],
                    },
                    "second": {
                        "done": False,
                        "hosts": {"demo-worker-1": ["day2test.mark", "day2test.flaky"]},
                    },
                },
                "failed": {"play": "second", "host": "demo-worker-2", "step": "day2test.mark", "error": "x"},
            }
        )
    )
    hosts = worker_hosts(cluster)
    assert (
        run_playbook(two_step_playbook("repair"), cluster, hosts, phases={"one"}, log=quiet).resumed_from
        is None
    )
    assert old.exists()  # another playbook's run leaves it alone
    for h in hosts.values():
        h.commands.clear()
    report = run_playbook(pb, cluster, hosts, phases={"one", "two"}, log=quiet)
    assert report.resumed_from == {
        "play": "second",
        "host": "demo-worker-2",
        "step": "day2test.mark",
        "error": "x",
    }
    assert hosts["demo-worker-1"].commands == []
    assert hosts["demo-worker-2"].commands == [
        "sudo -n -- mark demo-worker-2",
        "sudo -n -- flaky demo-worker-2",
    ]
    assert not old.exists()
    assert json.loads(cluster.state.progress_path("cluster").read_text())["failed"] is None


# -- the drain --------------------------------------------------------------------------------


class Master(fakes.FakeHost):
    """A first master whose kubectl knows the cluster's nodes and pods without a controller."""

    def __init__(self, name: str, members: list[str], bare: dict[str, str] | None = None) -> None:
        super().__init__(name)
        self.members = list(members)
        self.bare = dict(bare or {})  # node -> a pod on it that no controller owns
        self.cordoned: list[str] = []
        self.timeouts: dict[str, float | None] = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def run(self, cmd: Cmd, *, timeout: float | None = None, **kw: Any) -> Result:
        self.timeouts[cmd.masked()] = timeout
        return super().run(cmd, timeout=timeout, **kw)

    def _check(self, probe: Any) -> Result:
        args = [str(a) for a in probe.cmd.args]
        assert args[:3] == ["/usr/local/bin/kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"], args
        assert args[3:5] == ["get", "node"] and "--ignore-not-found" in args
        return Result(0, f"node/{args[5]}\n" if args[5] in self.members else "", "")

    def _command(self, args: list[str]) -> Result:
        assert args[:3] == ["/usr/local/bin/kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"], args
        verb, node = args[3], args[4]
        if verb == "drain":
            if node not in self.members:
                return Result(1, "", f'Error from server (NotFound): nodes "{node}" not found\n')
            self.cordoned.append(node)
            if node in self.bare:
                return Result(
                    1,
                    f"node/{node} cordoned\n",
                    f'error: unable to drain node "{node}" due to error: cannot delete Pods that declare '
                    f"no controller (use --force to override): default/{self.bare[node]}, continuing "
                    "command...\nThere are pending nodes to be drained:\n " + node + "\n",
                )
            return Result(0, f"node/{node} cordoned\nnode/{node} drained\n", "")
        if verb == "delete":
            assert node == "node" and args[6:] == ["--ignore-not-found"], args
            node = args[5]
            if node in self.members:
                self.members.remove(node)
            return Result(0, f'node "{node}" deleted\n', "")
        raise AssertionError(args)


def drain_pb() -> Playbook:
    return load_playbook(resources.playbook("remove-workers"))


def test_the_drain_drains_then_deletes_each_node_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=["demo-worker-3", "demo-worker-2"])
    master = Master("demo-master-1", ["demo-master-1", "demo-worker-1", "demo-worker-2", "demo-worker-3"])
    report = run_playbook(drain_pb(), cluster, {"demo-master-1": master}, phases={"drain"}, log=quiet)
    assert report.count("changed") == 1
    drain3 = (
        f"sudo -n -- {ADMIN} drain demo-worker-3 --ignore-daemonsets --delete-emptydir-data --timeout=300s"
    )
    assert master.commands == [
        "facts",
        drain3,
        f"sudo -n -- {ADMIN} delete node demo-worker-3 --ignore-not-found",
        drain3.replace("worker-3", "worker-2"),
        f"sudo -n -- {ADMIN} delete node demo-worker-2 --ignore-not-found",
    ]
    assert master.timeouts[drain3] == 360  # as resize's own drain had: kubectl's 300 s, and margin
    assert master.members == ["demo-master-1", "demo-worker-1"]

    master.commands.clear()
    again = run_playbook(drain_pb(), cluster, {"demo-master-1": master}, phases={"drain"}, log=quiet)
    assert again.count("changed") == 0 and again.count("ok") == 1
    assert master.commands == ["facts"]  # both are gone: one look, nothing run


def test_a_bare_pod_stops_the_drain_as_kubectl_refuses_it_and_the_rerun_resumes(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=["demo-worker-3"])
    assert cluster.state is not None
    master = Master("demo-master-1", ["demo-master-1", "demo-worker-3"], bare={"demo-worker-3": "vkp-probe"})
    with pytest.raises(PlayFailed) as ei:
        run_playbook(drain_pb(), cluster, {"demo-master-1": master}, phases={"drain"}, log=quiet)
    err = ei.value
    assert err.exit_code == ExitCode.SSH  # as the drain's refused command was before it was a step
    msg = str(err)
    assert "demo-master-1, step kubernetes.drain:" in msg
    assert "draining demo-worker-3 failed: demo-master-1: `/usr/local/bin/kubectl --kubeconfig" in msg
    assert "cannot delete Pods that declare no controller (use --force to override): default/vkp-probe" in msg
    assert "nothing was forced" in msg
    assert "--force" not in " ".join(master.commands)
    assert not any("delete node" in c for c in master.commands)  # still in the cluster
    assert json.loads(cluster.state.progress_path("remove-workers").read_text())["failed"]["step"] == (
        "kubernetes.drain"
    )

    master.bare.clear()  # the user deleted the pod
    report = run_playbook(drain_pb(), cluster, {"demo-master-1": master}, phases={"drain"}, log=quiet)
    assert report.resumed_from is not None and report.count("changed") == 1
    assert master.members == ["demo-master-1"]


def test_an_unreadable_membership_still_drains_so_kubectl_says_what_is_wrong(tmp_path: Path) -> None:
    class Down(Master):
        def _check(self, probe: Any) -> Result:
            return Result(1, "", "")

    cluster = make_cluster(tmp_path, nodes=["demo-worker-3"])
    master = Down("demo-master-1", [])
    with pytest.raises(PlayFailed, match="draining demo-worker-3 failed"):
        run_playbook(drain_pb(), cluster, {"demo-master-1": master}, phases={"drain"}, log=quiet)


def test_a_step_run_without_its_parameter_names_it(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    with pytest.raises(ProvisionerError, match="needs the run parameter 'nodes'"):
        nodes.nodes_to_remove(cluster)
    with pytest.raises(ProvisionerError, match="must be a list, not str"):
        nodes.nodes_to_remove(replace(cluster, params={"nodes": "demo-worker-3"}))


# -- run_day2, the lead's entry point ---------------------------------------------------------------


def test_run_day2_dry_run_lists_the_drain_commands_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None

    def no_connections(*_: Any) -> Any:
        raise AssertionError("a dry run connects to nothing")

    monkeypatch.setattr(phases, "connect_all", no_connections)
    lines: list[str] = []
    report = phases.run_day2(
        "remove-workers",
        cluster.spec,
        cluster.plan,
        cluster.state,
        params={"nodes": ["demo-worker-3"]},
        log=lines.append,
        dry_run=True,
    )
    assert report["dry_run"] and report["phases"] == ["drain"]
    (play,) = report["plays"]
    (result,) = play["results"]
    assert (play["play"], play["hosts"], result["host"]) == ("drain", ["demo-master-1"], "demo-master-1")
    assert result["actions"] == [
        f"run {ADMIN} drain demo-worker-3 --ignore-daemonsets --delete-emptydir-data --timeout=300s"
        " (as root)",
        f"run {ADMIN} delete node demo-worker-3 --ignore-not-found (as root)",
    ]
    assert any("drain demo-worker-3" in line for line in lines)
    assert not (cluster.state.path / "playbooks").exists()


def test_run_day2_connects_only_to_the_hosts_its_plays_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    master = Master("demo-master-1", ["demo-master-1", "demo-worker-3"])
    asked: list[list[str]] = []

    def connect(spec: Any, state: Any, hosts: list[Any]) -> dict[str, Any]:
        asked.append([n.name for n in hosts])
        return {"demo-master-1": master}

    monkeypatch.setattr(phases, "connect_all", connect)
    report = phases.run_day2(
        "remove-workers",
        cluster.spec,
        cluster.plan,
        cluster.state,
        params={"nodes": ["demo-worker-3"]},
        log=quiet,
    )
    assert asked == [["demo-master-1"]] and master.closed
    assert report["changed"] == 1 and report["failed"] == 0
    assert master.members == ["demo-master-1"]
    assert cluster.state.phases() == []  # create-cluster's phase records are not a day-2 run's


def test_run_day2_refuses_an_unknown_playbook_or_other_params_before_connecting(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    with pytest.raises(
        PlaybookError, match="no day-2 playbook 'remove-worker'; there are: certs-renew, remove-workers"
    ):
        phases.run_day2("remove-worker", cluster.spec, cluster.plan, cluster.state, params={}, log=quiet)
    with pytest.raises(PlaybookError, match="no day-2 playbook 'cluster'"):
        phases.run_day2("cluster", cluster.spec, cluster.plan, cluster.state, params={}, log=quiet)
    with pytest.raises(PlaybookError, match="takes the parameters nodes; the run gave node") as ei:
        phases.run_day2(
            "remove-workers", cluster.spec, cluster.plan, cluster.state, params={"node": "x"}, log=quiet
        )
    assert ei.value.exit_code == ExitCode.SPEC


def test_remove_workers_is_the_drain_playbook_over_the_nodes_given(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    report = phases.remove_workers(
        cluster.spec, cluster.plan, cluster.state, ["demo-worker-3", "demo-worker-2"], log=quiet, dry_run=True
    )
    (result,) = report["plays"][0]["results"]
    drained = [a.split()[5] for a in result["actions"] if " drain " in a]
    assert drained == ["demo-worker-3", "demo-worker-2"]


class _Closable(fakes.FakeHost):
    def close(self) -> None:
        pass


def test_a_run_in_batches_resumes_a_failure_of_its_last_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run_bootstrap runs the Kubernetes phase as a batch of its own: the earlier batch ending
    # well must not clear the record the failed later one is resumed from.
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    hosts = {n.name: _Closable(n.name) for n in cluster.plan.by_role("worker")}
    monkeypatch.setattr(
        phases, "connect_all", lambda spec, state, nodes: {n.name: hosts[n.name] for n in nodes}
    )
    pb = two_step_playbook("batched")
    hosts["demo-worker-2"].fail = {"flaky": Result(1, "", "not yet")}
    with pytest.raises(PlayFailed):
        phases._execute(pb, cluster, [["one"], ["two"]], log=quiet, dry_run=False)
    for h in hosts.values():
        h.commands.clear()
    hosts["demo-worker-2"].fail = {}
    report = phases._execute(pb, cluster, [["one"], ["two"]], log=quiet, dry_run=False)
    assert report["resumed_from"] is not None and report["resumed_from"]["step"] == "day2test.flaky"
    assert hosts["demo-worker-1"].commands == []  # both plays were done by the failed run
    assert hosts["demo-worker-2"].commands == ["sudo -n -- flaky demo-worker-2"]
    assert json.loads(cluster.state.progress_path("batched").read_text())["failed"] is None
