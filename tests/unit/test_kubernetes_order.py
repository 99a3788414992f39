"""The Kubernetes plays through the engine on scripted hosts: what runs where and in which order,
that a finished cluster is left alone, that a failed join resumes at that node, and that the
bootstrap token never shows. No Kubernetes binaries exist here, so the hosts answer kubeadm the
way a node would (files appear) and the API is a fake that records what vkp asked of it."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.bootstrap import kube_api, runner
from provisioner.bootstrap.engine import Check, Cluster, Facts, ServiceFact
from provisioner.bootstrap.phases import PLAYBOOK
from provisioner.bootstrap.pki import ensure_pki
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.bootstrap.steps.kubernetes import control_plane as cp
from provisioner.bootstrap.steps.kubernetes import settings as ks
from provisioner.bootstrap.steps.kubernetes import token as tok
from provisioner.plan import make_plan
from provisioner.spec import PKISpec, load_spec
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

VIP = "198.18.0.251"


class World:
    """What the fake cluster knows: events in order (host, what), nodes registered, API calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.registered: list[str] = []
        self.created: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def event(self, host: str, what: str) -> None:
        with self.lock:
            self.events.append((host, what))


class Node(fakes.FakeHost):
    """Answers kubeadm as a node would (its files appear) and records it in the world."""

    def __init__(self, name: str, world: World) -> None:
        super().__init__(name)
        self.world = world

    def _check(self, probe: Check) -> Result:
        if probe.cmd.args[:3] == ("ip", "-o", "route"):
            return Result(0, f"{VIP} dev ens192 src 198.18.0.20 uid 0\n    cache\n", "")
        return super()._check(probe)

    def _command(self, args: list[str]) -> Result:
        if args[:1] == ["systemctl"] and len(args) == 3 and args[1] in ("enable", "start", "restart"):
            s = self.services.get(args[2], ServiceFact(loaded="loaded"))
            if args[1] == "enable":
                self.services[args[2]] = replace(s, enabled="enabled")
            else:
                self.services[args[2]] = replace(s, active="active")
        return Result(0, "", "")

    def run(self, cmd: Cmd, **kw: Any) -> Result:
        shown = cmd.masked()
        if "kubeadm" in shown and not any(n in shown for n in self.fail):
            self._kubeadm(shown)
        return super().run(cmd, **kw)

    def _kubeadm(self, shown: str) -> None:
        conf = (b"apiVersion: v1\n", "600", "root:root")
        if " init " in shown:
            self.world.event(self.name, "kubeadm init")
            for f in (ks.ADMIN_CONF, ks.KUBELET_CONF, ks.APISERVER_MANIFEST):
                self.files[f] = conf
        elif " join " in shown:
            self.world.event(self.name, "kubeadm join")
            self.files[ks.KUBELET_CONF] = conf
            if "master" in self.name:
                self.files[ks.APISERVER_MANIFEST] = conf
        elif " reset " in shown:
            self.world.event(self.name, "kubeadm reset")
            return
        else:
            return
        with self.world.lock:
            self.world.registered.append(self.name)


class FakeAPI:
    def __init__(self, world: World, url: str) -> None:
        self.world, self.url = world, url

    def readyz(self) -> tuple[bool, str]:
        self.world.event("local", f"readyz {self.url}")
        return True, "ok"

    def get(self, path: str) -> Any:
        if path == "/api/v1/nodes":
            items = [
                {"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
                for n in self.world.registered
            ]
            return {"items": items}
        if path.endswith("/pods"):
            ns = path.split("/")[4]
            pod = {"name": "p", "ready": True}
            # kubeadm's CoreDNS keeps the kube-dns label; every namespace has one running pod.
            labels = {"k8s-app": "kube-dns"} if ns == "kube-system" else {}
            return {
                "items": [
                    {
                        "metadata": {"namespace": ns, "name": "p", "labels": labels},
                        "status": {"phase": "Running", "containerStatuses": [pod]},
                    }
                ]
            }
        raise AssertionError(f"unexpected GET {path}")

    def create(self, path: str, obj: dict[str, Any]) -> bool:
        self.world.event("local", f"create {obj['kind']} {obj['type']}")
        self.world.created.append(obj)
        return True


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: FakeAPI(w, url))
    return w


def make(tmp_path: Path, plan_name: str = "prod") -> Cluster:
    env = LAB_ENV | {"VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    if plan_name != "small":  # one master: the endpoint is its own address
        env["VKP_API_ENDPOINT"] = VIP
    spec = load_spec(None, name="demo", plan=plan_name, env=env)
    plan = make_plan(spec)
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    return Cluster(spec=spec, plan=plan, state=state, pki=ensure_pki(state, plan, PKISpec(key_type="ecdsa")))


def kubernetes_playbook() -> runner.Playbook:
    """The cluster playbook's Kubernetes plays, less the artifacts play (its downloads are the
    artifacts module's tests' business)."""
    raw = yaml.safe_load(PLAYBOOK.read_text())
    plays = [p for p in raw if p["phase"] == "kubernetes" and p["play"] != "kubernetes-artifacts"]
    return parse_playbook(plays, source=str(PLAYBOOK), digest=json.dumps(plays, sort_keys=True))


def run(cluster: Cluster, hosts: dict[str, Node], lines: list[str] | None = None) -> runner.PlaybookReport:
    out = lines if lines is not None else []
    return run_playbook(kubernetes_playbook(), cluster, hosts, phases={"kubernetes"}, log=out.append)


def hosts_for(cluster: Cluster, world: World) -> dict[str, Node]:
    return {n.name: Node(n.name, world) for n in cluster.plan.nodes}


def kubeadm_events(world: World) -> list[tuple[str, str]]:
    return [(h, w) for h, w in world.events if w.startswith("kubeadm")]


def test_the_kubernetes_plays_in_order(tmp_path: Path) -> None:
    plays = [(p.name, p.hosts.text, p.serial, p.steps) for p in kubernetes_playbook().plays]
    assert plays == [
        ("endpoint-preflight", "master[0]", None, ("kubernetes.endpoint_preflight",)),
        (
            "control-plane-prepare",
            "master",
            None,
            ("kubernetes.pki", "kubernetes.kubelet", "kubernetes.endpoint"),
        ),
        ("worker-prepare", "worker", None, ("kubernetes.kubelet",)),
        ("init", "master[0]", None, ("kubernetes.init",)),
        ("bootstrap-token", "master[0]", None, ("kubernetes.token",)),
        ("control-plane-join", "master[1:]", 1, ("kubernetes.join_control_plane",)),
        ("worker-join", "worker", None, ("kubernetes.join_worker",)),
        ("pod-network", "master+worker", None, ("kubernetes.cni_bridge", "kubernetes.pod_routes")),
        ("addons", "master[0]", None, ("kubernetes.cni", "kubernetes.vsphere")),
        ("kubernetes-health", "master[0]", None, ("kubernetes.health",)),
    ]
    raw = yaml.safe_load(PLAYBOOK.read_text())
    art = next(p for p in raw if p["play"] == "kubernetes-artifacts")
    assert art["hosts"] == "master+worker"
    assert art["steps"] == ["kubernetes.binaries", "kubernetes.cni_plugins", "kubernetes.images"]
    names = [p["play"] for p in raw]
    assert names.index("kubernetes-artifacts") < names.index("control-plane-prepare")


def test_init_once_then_control_plane_joins_one_at_a_time_then_workers(tmp_path: Path, world: World) -> None:
    cluster = make(tmp_path)
    hosts = hosts_for(cluster, world)
    lines: list[str] = []
    report = run(cluster, hosts, lines)

    m1, m2, m3 = (n.name for n in cluster.plan.by_role("master"))
    workers = [n.name for n in cluster.plan.by_role("worker")]
    ms = {n.name: n for n in cluster.plan.by_role("master")}
    ev = world.events
    # kubeadm init exactly once, on the first master.
    assert [e for e in ev if e[1] == "kubeadm init"] == [(m1, "kubeadm init")]
    assert sum("kubeadm init" in c for h in hosts.values() for c in h.commands) == 1
    # The first master is ready through the endpoint before anyone joins; each other master
    # joins after the previous one's API server is ready; workers only after that.
    i_init = ev.index((m1, "kubeadm init"))
    i_ready1 = ev.index(("local", f"readyz https://{VIP}:6443"))
    i_join2, i_join3 = ev.index((m2, "kubeadm join")), ev.index((m3, "kubeadm join"))
    i_ready2 = ev.index(("local", f"readyz https://{ms[m2].address}:6443"))
    i_ready3 = ev.index(("local", f"readyz https://{ms[m3].address}:6443"))
    i_workers = [ev.index((w, "kubeadm join")) for w in workers]
    assert i_init < i_ready1 < i_join2 < i_ready2 < i_join3 < i_ready3 < min(i_workers)
    # The token made for this run is the one init created: no second one through the API.
    assert world.created == []
    assert sorted(world.registered) == sorted([m1, m2, m3, *workers])

    h1 = hosts[m1]
    assert h1.files["/etc/kubernetes/pki/ca.key"][1:] == ("600", "root:root")
    assert h1.files["/etc/kubernetes/pki/ca.crt"][1:] == ("644", "root:root")
    assert "/etc/kubernetes/pki/etcd/ca.key" not in h1.files  # the etcd CA's key stays with vkp
    assert all("/etc/kubernetes/pki/sa.key" in hosts[m].files for m in (m1, m2, m3))
    vip = yaml.safe_load(h1.files[ks.KUBE_VIP_MANIFEST][0])
    assert vip["spec"]["volumes"][0]["hostPath"]["path"] == ks.ADMIN_CONF  # super-admin.conf until init
    assert "sudo -n -- systemctl enable kubelet" in hosts[workers[0]].commands
    # kubeadm reads its configuration from a 0600 file that is removed right after.
    w = hosts[workers[0]].commands
    j = w.index("sudo -n -- /usr/local/bin/kubeadm join --config /etc/kubernetes/vkp/kubeadm-join.yaml")
    assert w[j - 1] == "put /etc/kubernetes/vkp/kubeadm-join.yaml"
    assert w[j + 1] == "sudo -n -- rm -f -- /etc/kubernetes/vkp/kubeadm-join.yaml"
    assert hosts[workers[0]].files["/etc/kubernetes/vkp/kubeadm-join.yaml"][1] == "600"
    # CNI applied once on the first master, after every join.
    cni = [c for c in h1.commands if "kubectl" in c and "apply" in c]
    assert cni[0].endswith(
        "apply --server-side --force-conflicts -f /etc/kubernetes/vkp/cni/tigera-operator.yaml"
    )
    assert cni[-1].endswith("apply -f /etc/kubernetes/vkp/cni/calico-installation.yaml")
    assert report.count("failed") == 0

    # The token: in the 0600 files kubeadm read, nowhere else.
    token = tok.run_token(cluster).value.reveal()
    secret_half = token.split(".")[1]
    assert token in hosts[workers[0]].files["/etc/kubernetes/vkp/kubeadm-join.yaml"][0].decode()
    shown = (
        "\n".join(lines)
        + json.dumps(report.to_dict())
        + "".join(c for h in hosts.values() for c in h.commands)
    )
    assert secret_half not in shown and token not in shown


def test_a_rerun_on_a_finished_cluster_runs_no_init_or_join_and_changes_nothing(
    tmp_path: Path, world: World
) -> None:
    cluster = make(tmp_path)
    hosts = hosts_for(cluster, world)
    run(cluster, hosts)
    for h in hosts.values():
        h.commands.clear()
    world.events.clear()
    again = run(replace(cluster), hosts)  # a new run: a new Cluster object, no token in memory
    assert kubeadm_events(world) == []
    assert not any("kubeadm" in c or "kubectl" in c for h in hosts.values() for c in h.commands)
    assert world.created == []  # every node is registered: no token is made
    assert again.count("changed") == 0 and again.count("failed") == 0
    extra = [(n, c) for n, h in hosts.items() for c in h.commands if c != "facts"]
    assert extra == []


def test_a_failed_join_resumes_at_that_node_with_a_new_token(tmp_path: Path, world: World) -> None:
    cluster = make(tmp_path)
    hosts = hosts_for(cluster, world)
    token = tok.run_token(cluster)
    m1, m2, m3 = (n.name for n in cluster.plan.by_role("master"))
    leaked = f"discovery failed with token {token.value.reveal()} (id {token.value.reveal()[:6]})\n"
    hosts[m3].fail = {"kubeadm join": Result(1, "", leaked)}
    lines: list[str] = []
    with pytest.raises(PlayFailed) as ei:
        run(cluster, hosts, lines)
    msg = str(ei.value) + json.dumps(ei.value.to_dict()) + "\n".join(lines)
    assert (
        f"{m3}, step kubernetes.join_control_plane" in msg and "discovery failed with token ********" in msg
    )
    assert token.value.reveal() not in msg and token.value.reveal().split(".")[1] not in msg
    assert "resumes at kubernetes.join_control_plane on " + m3 in msg
    assert [h for h, w in kubeadm_events(world)] == [m1, m2]  # m3's join failed, workers never started
    assert any("kubeadm join" in c for c in hosts[m3].commands)
    assert not any(
        "kubeadm join" in c for n in cluster.plan.by_role("worker") for c in hosts[n.name].commands
    )
    assert "sudo -n -- rm -f -- /etc/kubernetes/vkp/kubeadm-join.yaml" in hosts[m3].commands

    hosts[m3].fail = {}
    world.events.clear()
    for h in hosts.values():
        h.commands.clear()
    resumed = replace(cluster)  # a new process: the old token is gone with it
    run(resumed, hosts)
    assert [h for h, w in kubeadm_events(world)][0] == m3
    assert sorted(h for h, w in kubeadm_events(world)) == sorted(
        [m3, *(n.name for n in cluster.plan.by_role("worker"))]
    )
    assert not any("kubeadm" in c for c in hosts[m1].commands + hosts[m2].commands)
    # The token play was done by the failed run; the join made sure this run's token exists.
    assert len(world.created) == 1 and world.created[0]["type"] == "bootstrap.kubernetes.io/token"
    new = tok.run_token(resumed)
    assert world.created[0]["stringData"]["token-secret"] == new.value.reveal().split(".")[1]
    assert new.value.reveal() in hosts[m3].files["/etc/kubernetes/vkp/kubeadm-join.yaml"][0].decode()


def test_a_half_joined_node_is_reset_and_given_its_certificates_back(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path)
    hosts = hosts_for(cluster, world)
    m3 = cluster.plan.by_role("master")[2].name
    conf = (b"apiVersion: v1\n", "600", "root:root")
    hosts[m3].files[ks.BOOTSTRAP_KUBELET_CONF] = conf  # an interrupted kubeadm join
    monkey_nodes: list[str] = []

    def not_joined(cluster: Cluster, node: Any) -> bool:
        monkey_nodes.append(node.name)
        return False

    monkeypatch.setattr(cp, "_node_joined", not_joined)
    run(cluster, hosts)
    assert monkey_nodes == [m3]
    cmds = hosts[m3].commands
    reset = cmds.index("sudo -n -- /usr/local/bin/kubeadm reset -f")
    restore = next(i for i, c in enumerate(cmds) if "vkp-file" in c)
    join = next(i for i, c in enumerate(cmds) if "kubeadm join" in c)
    assert reset < restore < join
    assert "PRIVATE" not in cmds[restore]  # the keys travel on stdin


def test_endpoint_preflight_refuses_an_address_that_answers(tmp_path: Path, world: World) -> None:
    cluster = make(tmp_path)
    hosts = hosts_for(cluster, world)
    m1 = cluster.plan.by_role("master")[0].name
    hosts[m1].fail = {"answers:": Result(0, "answers: ping arp\n", "")}
    with pytest.raises(PlayFailed) as ei:
        run(cluster, hosts)
    assert f"the API endpoint {VIP} already answers (ping, arp)" in str(ei.value)
    assert ei.value.exit_code == 5  # PREFLIGHT
    assert kubeadm_events(world) == [] and not hosts[m1].files


def test_one_master_needs_no_endpoint_and_no_control_plane_join(tmp_path: Path, world: World) -> None:
    cluster = make(tmp_path, "small")
    hosts = hosts_for(cluster, world)
    run(cluster, hosts)
    m1 = cluster.plan.by_role("master")[0]
    assert [w for _, w in kubeadm_events(world)] == ["kubeadm init", "kubeadm join", "kubeadm join"]
    assert ("local", f"readyz https://{m1.address}:6443") in world.events
    assert ks.KUBE_VIP_MANIFEST not in hosts[m1.name].files


def test_health_reports_what_is_not_ready() -> None:
    nodes = {
        "items": [
            {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {
                "metadata": {"name": "b"},
                "status": {
                    "conditions": [{"type": "Ready", "status": "False", "message": "cni not initialized"}]
                },
            },
        ]
    }
    pods = [
        {
            "items": [
                {
                    "metadata": {"namespace": "kube-system", "name": "coredns-1"},
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": "coredns",
                                "ready": False,
                                "state": {"waiting": {"reason": "ImagePullBackOff"}},
                            }
                        ],
                    },
                },
                {"metadata": {"namespace": "kube-system", "name": "job"}, "status": {"phase": "Succeeded"}},
            ]
        }
    ]
    h = kube_api.assess((True, "ok"), nodes, pods, ["a", "b", "c"], ["kube-system", "calico-system"])
    assert h.problems == [
        "node b: NotReady: cni not initialized",
        "node c: not registered",
        "pod kube-system/coredns-1: Pending (coredns: ImagePullBackOff)",
        "namespace calico-system: no pods yet",
    ]
    assert not h.ok and h.to_dict()["nodes"]["a"] == "Ready"


def test_dry_run_shows_the_phase_with_the_token_masked(tmp_path: Path, world: World) -> None:
    cluster = make(tmp_path)
    lines: list[str] = []
    report = run_playbook(
        kubernetes_playbook(), cluster, {}, phases={"kubernetes"}, log=lines.append, dry_run=True
    )
    out = "\n".join(lines) + json.dumps(report.to_dict())
    assert "upload /etc/kubernetes/vkp/kubeadm-init.yaml (mode 0600, owner root:root): ********" in out
    assert "run /usr/local/bin/kubeadm init --config /etc/kubernetes/vkp/kubeadm-init.yaml" in out
    assert tok.run_token(cluster).value.reveal() not in out
    assert Facts.unknown().known is False
