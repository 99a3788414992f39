"""vkp upgrade over scripted hosts (tests/unit/fakes.py) in a temporary state: the version
refusals, the rolling order (first master apply, other masters upgrade node one at a time, then
workers one at a time: drain, upgrade, uncordon), a drain a PodDisruptionBudget refuses, a run
killed midway and resumed, the dry run, and when the saved spec changes. The lab suite runs it on
a real cluster (test_10e of tests/lab/test_cluster_bootstrap.py), with the same version only.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner import stop
from provisioner.bootstrap import etcd_client, kube_api, phases, runner
from provisioner.bootstrap.engine import STEPS, Cluster, Facts, Run, StepDef, StepGen
from provisioner.bootstrap.etcd_client import EtcdUnhealthy, HealthReport
from provisioner.bootstrap.pki import ensure_pki
from provisioner.bootstrap.runner import PlayFailed
from provisioner.day2 import upgrade as day2_upgrade
from provisioner.errors import ArtifactError, ExitCode, Interrupted, ProvisionerError
from provisioner.plan import NodePlan, make_plan
from provisioner.spec import load_spec, spec_from_dict
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

ENV = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
KUBECTL = "sudo -n -- /usr/local/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf"
PDB_WORDS = (
    'error when evicting pods/"vkp-web-7d9f" -n "default" (will retry after 5s): Cannot evict pod as '
    "it would violate the pod's disruption budget."
)


@pytest.fixture(autouse=True)
def _no_stop() -> Iterator[None]:
    # The stop flag is process-wide: a kill simulated by one test must not end the next one.
    stop.reset()
    yield
    stop.reset()


class Node(fakes.FakeHost):
    """A master or worker: kubelet running; the first master answers kubectl as the API would."""

    def __init__(self, name: str, world: World) -> None:
        super().__init__(name)
        self.world = world
        self.timeline = world.timeline

    def close(self) -> None:
        pass

    def _command(self, args: list[str]) -> Result:
        w = self.world
        if args[:2] == ["sh", "-c"] and "systemctl restart" in args[2] and "kubelet" in args:
            # The kubelet comes back on the binary the run installed.
            w.kubelet[self.name] = f"v{w.installed.get(self.name, w.kubelet[self.name][1:])}"
            return Result(0, "restarted\n", "")
        if args[:1] == ["/usr/local/bin/kubectl"]:
            verb, node = args[3], args[4] if len(args) > 4 else ""
            if verb == "drain":
                w.cordoned.add(node)  # kubectl cordons before it evicts
                if node in w.kill_during_drain:
                    w.kill_during_drain.discard(node)
                    stop.request({"signal": signal.SIGINT})
                    raise stop.error(f"kubectl drain {node}")
                if node in w.pdb_blocks:
                    return Result(1, "", f"{PDB_WORDS}\nerror: global timeout reached: 300s")
                return Result(0, f"node/{node} drained\n", "")
            if verb == "uncordon":
                w.cordoned.discard(node)
                return Result(0, f"node/{node} uncordoned\n", "")
        return Result(0, "", "")


class World:
    """The cluster as the run sees it: hosts, what etcd and the API answer, what is cordoned."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan_name: str = "small") -> None:
        monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "clusters"))
        self.spec = load_spec(None, name="demo", plan=plan_name, env=ENV)
        self.plan = make_plan(self.spec)
        self.state = ClusterState.create_or_load("demo")
        self.state.save_spec(self.spec.to_dict())
        for phase in ("vms", "etcd", "runtime", "kubernetes"):
            self.state.record_phase(phase, "done", 1.0, None)
        ensure_pki(self.state, self.plan, self.spec.pki)
        self.timeline: list[str] = []
        kubelets = [n for n in self.plan.nodes if n.role != "etcd"]
        self.hosts = {n.name: Node(n.name, self) for n in kubelets}
        self.kubelet = {n.name: f"v{self.spec.kubernetes.version}" for n in kubelets}
        self.installed: dict[str, str] = {}
        self.cordoned: set[str] = set()
        self.pdb_blocks: set[str] = set()
        self.kill_during_drain: set[str] = set()
        self.etcd_down = False
        self.connected: list[list[str]] = []
        self.probed: list[str] = []
        monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))
        monkeypatch.setattr(phases, "connect_all", self._connect)
        monkeypatch.setattr(etcd_client, "check_cluster", self._etcd)
        monkeypatch.setattr(kube_api, "client", self._api)
        monkeypatch.setattr(day2_upgrade, "probe_source", self._probe_source)
        # The artifact steps are create-cluster's, tested with their sources in test_artifacts;
        # here they show which version the run's spec gave them.
        for name in ("kubernetes.binaries", "kubernetes.images"):
            monkeypatch.setitem(STEPS, name, StepDef(name, self._artifact_step(name)))

    def _artifact_step(self, name: str) -> Any:
        world = self

        def fn(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
            version = cluster.spec.kubernetes.version
            yield Run(Cmd("install", name.split(".")[1], version))
            if name == "kubernetes.binaries":
                world.installed[node.name] = version

        return fn

    def _probe_source(self, k8s: Any, log: Any) -> None:
        self.probed.append(k8s.version)
        if k8s.version == "1.31.9":
            raise ArtifactError(
                "Kubernetes v1.31.9 artifacts are not available: kubeadm.sha256 could not be fetched",
                hint="provide it",
            )

    def _connect(self, spec: Any, state: Any, nodes: list[Any]) -> dict[str, Any]:
        self.connected.append([n.name for n in nodes])
        return {n.name: self.hosts[n.name] for n in nodes}

    def _etcd(self, endpoints: list[str], expected: list[str], pki: Any) -> HealthReport:
        self.timeline.append("etcd health")
        if self.etcd_down:
            raise EtcdUnhealthy(HealthReport(problems=["demo-etcd-2: no leader"]))
        return HealthReport(expected=expected, round_trip=True)

    def node_doc(self, name: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {"unschedulable": True} if name in self.cordoned else {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": self.kubelet[name]},
            },
        }

    def _api(self, pki: Any, url: str, **_: Any) -> Any:
        world = self

        class API:
            def readyz(self) -> tuple[bool, str]:
                world.timeline.append(f"readyz {url}")
                return True, "ok"

            def get(self, path: str) -> Any:
                if path == "/api/v1/nodes":
                    return {"items": [world.node_doc(n) for n in world.kubelet]}
                if path.startswith("/api/v1/nodes/"):
                    name = path.rsplit("/", 1)[1]
                    world.timeline.append(f"ready? {name}")
                    return world.node_doc(name)
                namespace = path.split("/")[4]  # /api/v1/namespaces/NS/pods
                pod = {
                    "metadata": {"namespace": namespace, "name": "p", "labels": {"k8s-app": "kube-dns"}},
                    "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True}]},
                }
                return {"items": [pod]}

        return API()

    def upgrade(self, version: str, **kw: Any) -> dict[str, Any]:
        return day2_upgrade.upgrade_cluster("demo", version, lambda _: None, **kw)

    def saved_version(self) -> str:
        return spec_from_dict(ClusterState.load("demo").load_spec_dict()).kubernetes.version


def path_of(timeline: list[str]) -> list[str]:
    """The rolling path in short: node and what happened to it, in order."""
    out = []
    for t in timeline:
        host, _, cmd = t.partition(": ")
        if cmd.startswith(KUBECTL):
            words = cmd[len(KUBECTL) :].split()
            if words[0] in ("drain", "uncordon"):
                out.append(f"{words[0]} {words[1]}")
        elif "kubeadm upgrade" in cmd:
            out.append(f"{host}: " + " ".join(cmd.split("kubeadm ", 1)[1].split()[:2]))
        elif "install binaries" in cmd:
            out.append(f"{host}: binaries {cmd.split()[-1]}")
        elif "systemctl restart" in cmd:
            out.append(f"{host}: kubelet restart")
    return out


def test_the_first_master_applies_then_each_worker_is_drained_upgraded_and_uncordoned_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    result = w.upgrade("v1.31.0")
    assert path_of(w.timeline) == [
        "drain demo-master-1",
        "demo-master-1: binaries 1.31.0",
        "demo-master-1: upgrade apply",
        "demo-master-1: kubelet restart",
        "uncordon demo-master-1",
        "drain demo-worker-1",
        "demo-worker-1: binaries 1.31.0",
        "demo-worker-1: upgrade node",
        "demo-worker-1: kubelet restart",
        "uncordon demo-worker-1",
        "drain demo-worker-2",
        "demo-worker-2: binaries 1.31.0",
        "demo-worker-2: upgrade node",
        "demo-worker-2: kubelet restart",
        "uncordon demo-worker-2",
    ]
    master = w.hosts["demo-master-1"]
    assert (
        "sudo -n -- /usr/local/bin/kubeadm upgrade apply v1.31.0 --yes --etcd-upgrade=false"
        in master.commands
    )
    drain = next(c for c in master.commands if " drain demo-worker-1" in c)
    assert drain.endswith("drain demo-worker-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s")
    assert "--force" not in drain and "--disable-eviction" not in drain
    # Each node was Ready with the new kubelet before it was uncordoned.
    i = w.timeline.index("ready? demo-worker-1")
    assert i < next(j for j, t in enumerate(w.timeline) if "uncordon demo-worker-1" in t)
    assert set(w.kubelet.values()) == {"v1.31.0"} and not w.cordoned
    assert w.probed == ["1.31.0"]
    assert result["from_version"] == "1.30.4" and result["to_version"] == "1.31.0"
    assert result["same_version"] is False
    assert list(result["nodes"]) == ["demo-master-1", "demo-worker-1", "demo-worker-2"]
    assert list(result["nodes"]["demo-worker-2"]["stages"]) == [
        "upgrade.drain", "kubernetes.binaries", "kubernetes.images", "upgrade.kubeadm",
        "upgrade.kubelet", "upgrade.uncordon",
    ]  # fmt: skip
    assert sorted(result["restarts"]) == [
        f"{n}:kubelet" for n in ("demo-master-1", "demo-worker-1", "demo-worker-2")
    ]
    assert result["check"]["nodes"]["demo-worker-1"] == {"kubelet": "v1.30.4", "cordoned": False}
    assert w.saved_version() == "1.31.0"


def test_other_masters_use_upgrade_node_one_at_a_time_each_while_the_others_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch, plan_name="prod")
    w.upgrade("1.31.0")
    path = [p for p in path_of(w.timeline) if "upgrade" in p]
    assert path == [
        "demo-master-1: upgrade apply",
        "demo-master-2: upgrade node",
        "demo-master-3: upgrade node",
        "demo-worker-1: upgrade node",
        "demo-worker-2: upgrade node",
        "demo-worker-3: upgrade node",
    ]
    # demo-master-2 is drained only after master 1 is back, and master 3 only after master 2.
    order = path_of(w.timeline)
    assert order.index("uncordon demo-master-1") < order.index("drain demo-master-2")
    assert order.index("uncordon demo-master-2") < order.index("drain demo-master-3")
    drain_2 = next(
        i
        for i, t in enumerate(w.timeline)
        if t.endswith("drain demo-master-2 --ignore-daemonsets --delete-emptydir-data --timeout=300s")
    )
    before = w.timeline[:drain_2]
    assert "readyz https://198.18.0.13:6443" in before and "readyz https://198.18.0.15:6443" in before


def test_a_drain_a_disruption_budget_refuses_stops_the_run_and_the_rerun_resumes_at_that_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    w.pdb_blocks.add("demo-worker-2")
    with pytest.raises(PlayFailed) as ei:
        w.upgrade("1.31.0", drain_timeout=120)
    err = ei.value
    assert "draining demo-worker-2 failed" in str(err)
    assert "would violate the pod's disruption budget" in str(err)  # kubectl's own words
    assert "nothing was forced" in (err.hint or "") or "nothing was forced" in str(err)
    assert err.exit_code == ExitCode.SSH
    assert "demo-worker-2" in w.cordoned and w.kubelet["demo-worker-2"] == "v1.30.4"
    assert not any("demo-worker-2: " in p and "upgrade" in p for p in path_of(w.timeline))
    assert w.saved_version() == "1.30.4"  # the run failed: the old version stays saved

    w.pdb_blocks.clear()
    w.timeline.clear()
    result = w.upgrade("1.31.0", drain_timeout=120)
    assert result["resumed_from"]["host"] == "demo-worker-2"
    assert result["resumed_from"]["step"] == "upgrade.drain"
    assert path_of(w.timeline) == [
        "drain demo-worker-2",
        "demo-worker-2: binaries 1.31.0",
        "demo-worker-2: upgrade node",
        "demo-worker-2: kubelet restart",
        "uncordon demo-worker-2",
    ]
    assert set(result["nodes"]["demo-worker-1"]["stages"].values()) == {"skipped"}
    assert not w.cordoned and w.saved_version() == "1.31.0"


def test_a_run_killed_during_a_drain_leaves_the_node_cordoned_and_the_rerun_uncordons_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    w.kill_during_drain.add("demo-worker-1")
    with pytest.raises(Interrupted):
        w.upgrade("1.30.4")
    assert w.cordoned == {"demo-worker-1"}
    assert not any(p.startswith("demo-worker") for p in path_of(w.timeline))

    stop.reset()
    w.timeline.clear()
    result = w.upgrade("1.30.4")
    assert result["resumed_from"]["host"] == "demo-worker-1"
    assert not w.cordoned
    path = path_of(w.timeline)
    assert path[0] == "drain demo-worker-1" and "uncordon demo-worker-1" in path
    assert not any(p.startswith("demo-master-1:") for p in path)  # done before the kill
    steps = ["upgrade.drain", "kubernetes.binaries", "kubernetes.images", "upgrade.kubeadm",
             "upgrade.kubelet", "upgrade.uncordon"]  # fmt: skip
    # Listed in the cluster's order, though the run began at demo-worker-1.
    assert list(result["nodes"]) == ["demo-master-1", "demo-worker-1", "demo-worker-2"]
    assert result["nodes"]["demo-master-1"]["stages"] == dict.fromkeys(steps, "skipped")
    assert list(result["nodes"]["demo-worker-1"]["stages"]) == steps
    assert result["nodes"]["demo-worker-1"]["stages"]["upgrade.uncordon"] == "changed"
    assert path[-1] == "uncordon demo-worker-2"


def test_the_same_version_is_re_applied_through_the_whole_path_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    result = w.upgrade("v1.30.4")
    assert result["same_version"] is True
    assert any("re-applied" in n for n in result["notes"])
    path = path_of(w.timeline)
    for node in ("demo-master-1", "demo-worker-1", "demo-worker-2"):
        assert f"drain {node}" in path and f"{node}: kubelet restart" in path and f"uncordon {node}" in path
    assert "demo-master-1: upgrade apply" in path


def test_skip_preflight_re_applies_with_upgrade_node_and_refuses_a_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    doc = w.state.load_spec_dict()
    doc["kubernetes"]["node"]["skip_preflight"] = True
    w.state.save_spec(doc)
    with pytest.raises(day2_upgrade.UpgradeRefused, match="crictl") as ei:
        w.upgrade("1.31.0")
    assert ei.value.exit_code == ExitCode.SPEC and w.timeline == []
    result = w.upgrade("1.30.4")
    master = w.hosts["demo-master-1"].commands
    assert "sudo -n -- /usr/local/bin/kubeadm upgrade node --skip-phases=preflight" in master
    assert not any("upgrade apply" in c for c in master)
    assert any("skip_preflight" in n for n in result["notes"])


def test_dns_none_removes_the_coredns_kubeadm_apply_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    doc = w.state.load_spec_dict()
    doc["kubernetes"]["dns"] = "none"
    w.state.save_spec(doc)
    w.upgrade("1.30.4")
    master = w.hosts["demo-master-1"].commands
    apply = next(i for i, c in enumerate(master) if "upgrade apply" in c)
    assert master[apply + 1].startswith(f"{KUBECTL} delete -n kube-system deployment/coredns")
    assert master[apply + 1].endswith("--ignore-not-found")


@pytest.mark.parametrize(
    ("current", "asked", "words"),
    [
        ("1.30.4", "v1.29.9", "older than the cluster's v1.30.4: vkp does not downgrade"),
        ("1.30.4", "1.30.3", "older than the cluster's"),
        ("1.29.2", "v1.31.0", "skips a minor release: the cluster is at v1.29.2"),
        ("1.30.4", "banana", "must be a release like"),
        ("1.30.4", "v1.40.0", "outside the versions vkp supports"),
    ],
)
def test_versions_vkp_does_not_upgrade_to_are_refused_before_anything_is_contacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, current: str, asked: str, words: str
) -> None:
    w = World(tmp_path, monkeypatch)
    doc = w.state.load_spec_dict()
    doc["kubernetes"]["version"] = current
    w.state.save_spec(doc)
    with pytest.raises(day2_upgrade.UpgradeRefused) as ei:
        w.upgrade(asked)
    assert words in ei.value.message and ei.value.message.startswith("--version")
    assert ei.value.hint and ei.value.exit_code == ExitCode.SPEC
    assert w.connected == [] and w.probed == [] and w.timeline == []


def test_a_version_the_artifact_source_lacks_stops_before_any_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    with pytest.raises(ArtifactError, match="v1.31.9 artifacts are not available"):
        w.upgrade("1.31.9")
    assert w.connected == [] and w.timeline == [] and w.saved_version() == "1.30.4"


def test_a_cluster_without_kubernetes_or_with_unhealthy_etcd_is_not_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    w.state.record_phase("kubernetes", "failed", 1.0, "x")
    with pytest.raises(day2_upgrade.UpgradeRefused, match="its kubernetes phase is failed") as ei:
        w.upgrade("1.31.0")
    assert "--up-to kubernetes" in (ei.value.hint or "")

    w.state.record_phase("kubernetes", "done", 1.0, None)
    w.etcd_down = True
    with pytest.raises(PlayFailed, match="etcd is not healthy, so nothing was upgraded"):
        w.upgrade("1.31.0")
    assert not any(c != "facts" for h in w.hosts.values() for c in h.commands)
    assert w.saved_version() == "1.30.4"


def test_a_dry_run_lists_each_nodes_actions_and_contacts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    result = w.upgrade("1.31.0", dry_run=True)
    assert w.connected == [] and w.timeline == [] and w.probed == []
    assert not (w.state.path / "playbooks").exists()
    assert w.saved_version() == "1.30.4"
    actions = result["actions"]
    assert (
        f"demo-worker-1: local: on demo-master-1: {KUBECTL[len('sudo -n -- ') :]} drain demo-worker-1 "
        "--ignore-daemonsets --delete-emptydir-data --timeout=300s" in actions
    )
    assert (
        "demo-master-1: run /usr/local/bin/kubeadm upgrade apply v1.31.0 --yes --etcd-upgrade=false (as root)"
        in actions
    )
    assert "demo-worker-2: run /usr/local/bin/kubeadm upgrade node (as root)" in actions
    assert "demo-worker-2: restart kubelet (if running)" in actions
    workers = [a.split(":")[0] for a in actions if "kubeadm upgrade" in a]
    assert workers == ["demo-master-1", "demo-worker-1", "demo-worker-2"]
    assert result["plan"][0].startswith("v1.30.4 -> v1.31.0")


def test_the_cli_asks_refuses_and_reports_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli import main

    w = World(tmp_path, monkeypatch)
    refused = CliRunner().invoke(main, ["upgrade", "demo", "--version", "v1.29.0", "--yes", "-o", "json"])
    assert refused.exit_code == ExitCode.SPEC
    assert "does not downgrade" in refused.stdout
    missing = CliRunner().invoke(main, ["upgrade", "demo"])
    assert missing.exit_code == 2 and "--version" in missing.output

    dry = CliRunner().invoke(main, ["upgrade", "demo", "--version", "v1.31.0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "v1.30.4 -> v1.31.0" in dry.stdout and "kubeadm upgrade apply v1.31.0" in dry.stdout
    assert w.connected == [] and w.saved_version() == "1.30.4"

    declined = CliRunner().invoke(main, ["upgrade", "demo", "--version", "v1.31.0"], input="n\n")
    assert declined.exit_code != 0 and w.timeline == []

    done = CliRunner().invoke(
        main, ["upgrade", "demo", "--version", "v1.31.0", "--yes", "--drain-timeout", "60", "-o", "json"]
    )
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["to_version"] == "1.31.0" and doc["from_version"] == "1.30.4"
    assert set(doc["nodes"]) == {"demo-master-1", "demo-worker-1", "demo-worker-2"}
    assert any(t.endswith("--timeout=60s") for t in w.timeline)
    again = CliRunner().invoke(main, ["upgrade", "demo", "--version", "1.31.0", "--yes"])
    assert again.exit_code == 0, again.output
    assert (
        "Kubernetes v1.31.0 re-applied" in again.stdout
        and "note: v1.31.0 is the cluster's version" in again.stdout
    )
    described = CliRunner().invoke(main, ["describe-cluster", "demo", "-o", "json"])
    assert described.exit_code == 0, described.output
    assert "1.31.0" in described.stdout


def test_the_playbook_declares_what_the_lifecycle_passes() -> None:
    from provisioner import resources
    from provisioner.bootstrap.playbook import load_playbook

    book = load_playbook(resources.playbook("upgrade"))
    assert book.params == ("version", "from", "drain-timeout")
    assert book.phases == ("check", "first-master", "masters", "workers")
    serial = {p.name: p.serial for p in book.plays}
    assert serial["masters"] == 1 and serial["workers"] == 1


def test_a_master_s_api_server_goes_away_only_while_the_others_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.bootstrap import kube_api
    from provisioner.bootstrap.steps.kubernetes.control_plane import others_ready
    from provisioner.bootstrap.steps.kubernetes.settings import node_api_url
    from tests.unit.test_deadlines import make_cluster

    cluster = make_cluster(tmp_path, "prod")
    m1, m2, m3 = cluster.plan.by_role("master")
    down = node_api_url(m3, cluster)

    class Client:
        def __init__(self, url: str) -> None:
            self.url = url

        def readyz(self) -> tuple[bool, str]:
            return (False, "[-]etcd failed") if self.url == down else (True, "ok")

    monkeypatch.setattr(kube_api, "client", lambda pki, url: Client(url))
    assert others_ready(m3, cluster, "its upgrade") == {m1.name: "ready", m2.name: "ready"}
    with pytest.raises(ProvisionerError) as ei:
        others_ready(m1, cluster, "its upgrade")
    assert str(ei.value).startswith(
        f"{m1.name}: its upgrade not started: {m3.name}'s API server does not answer /readyz"
    ), str(ei.value)
    assert f"bring {m3.name}'s back" in (ei.value.hint or "")
