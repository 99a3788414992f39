"""kubernetes.cni: bridge on scripted hosts: each node's conflist on the pod CIDR Kubernetes gave
it, routes to the other nodes' pod CIDRs only (now and in a systemd unit), a re-run that changes
nothing, a stale route removed, a dry run without any API; and the health check that goes with
it (kube-system only, DNS reported as it is)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.bootstrap import kube_api, runner
from provisioner.bootstrap.engine import Check, Cluster, Facts, ServiceFact
from provisioner.bootstrap.phases import PLAYBOOK
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import run_playbook
from provisioner.bootstrap.steps import cni, health
from provisioner.bootstrap.steps.cni import bridge
from provisioner.errors import Timeout
from provisioner.plan import make_plan
from provisioner.spec import load_spec
from provisioner.ssh.commands import Result
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

POD_CIDR = "198.19.0.0/16"


class Node(fakes.FakeHost):
    """A node's routing table, its systemd, and what it was asked to do to them."""

    def __init__(self, name: str, routes: list[str] | None = None) -> None:
        super().__init__(name)
        self.routes = list(routes or ["default via 198.18.0.1 dev eth0 proto static"])

    def _check(self, probe: Check) -> Result:
        if probe.cmd.args[:4] == ("ip", "-4", "route", "show"):
            return Result(0, "".join(f"{r}\n" for r in self.routes), "")
        return super()._check(probe)

    def _command(self, args: list[str]) -> Result:
        if args[:3] == ["ip", "route", "replace"]:
            dst, via = args[3], args[5]
            self.routes = [r for r in self.routes if r.split()[0] != dst] + [f"{dst} via {via} dev eth0"]
        elif args[:3] == ["ip", "route", "del"]:
            self.routes = [r for r in self.routes if r.split()[0] != args[3]]
        elif args[:2] == ["systemctl", "enable"]:
            self.services[args[2]] = replace(self.services.get(args[2], ServiceFact()), enabled="enabled")
        return Result(0, "", "")


class FakeAPI:
    def __init__(self, cidrs: dict[str, str], asked: list[str]) -> None:
        self.cidrs, self.asked = cidrs, asked

    def get(self, path: str) -> Any:
        self.asked.append(path)
        assert path == "/api/v1/nodes"
        return {
            "items": [
                {"metadata": {"name": n}, "spec": {"podCIDR": c} if c else {}} for n, c in self.cidrs.items()
            ]
        }


@pytest.fixture(autouse=True)
def fake_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))


def make(tmp_path: Path, *, cni_name: str = "bridge", dns: str = "coredns", workers: int = 2) -> Cluster:
    spec = load_spec(None, name="demo", plan="small", env=LAB_ENV)
    topo = spec.topology
    spec = replace(
        spec,
        kubernetes=replace(spec.kubernetes, cni=cni_name, dns=dns, pod_cidr=POD_CIDR),
        topology=replace(topo, worker=replace(topo.worker, count=workers)),
    )
    return Cluster(spec=spec, plan=make_plan(spec), state=None, pki=None)  # type: ignore[arg-type]


def cidrs_of(cluster: Cluster) -> dict[str, str]:
    nodes = cluster.plan.by_role("master") + cluster.plan.by_role("worker")
    return {n.name: f"198.19.{i}.0/24" for i, n in enumerate(nodes)}


def api(monkeypatch: pytest.MonkeyPatch, cidrs: dict[str, str]) -> list[str]:
    asked: list[str] = []
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: FakeAPI(cidrs, asked))
    return asked


def pod_network_playbook() -> runner.Playbook:
    raw = [p for p in yaml.safe_load(PLAYBOOK.read_text()) if p["play"] == "pod-network"]
    return parse_playbook(raw, source=str(PLAYBOOK), digest=json.dumps(raw))


def hosts_for(cluster: Cluster) -> dict[str, Node]:
    return {n.name: Node(n.name) for n in cluster.plan.nodes if n.role in ("master", "worker")}


def run(cluster: Cluster, hosts: dict[str, Node], **kw: Any) -> runner.PlaybookReport:
    return run_playbook(
        pod_network_playbook(), cluster, hosts, phases={"kubernetes"}, log=lambda _: None, **kw
    )


def conflist(host: Node) -> dict[str, Any]:
    data, mode, owner = host.files[bridge.BRIDGE_CONFLIST]
    assert (mode, owner) == ("644", "root:root")
    doc: dict[str, Any] = json.loads(data)
    return doc


def test_each_node_bridges_its_own_pod_cidr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make(tmp_path)
    cidrs = cidrs_of(cluster)
    api(monkeypatch, cidrs)
    hosts = hosts_for(cluster)
    run(cluster, hosts)
    for name, h in hosts.items():
        doc = conflist(h)
        assert (doc["cniVersion"], doc["name"]) == ("0.4.0", "vkp")
        bridge_plugin, portmap = doc["plugins"]
        assert bridge_plugin == {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": cidrs[name]}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
        assert h.dirs[bridge.CNI_CONF_DIR] == ("755", "root:root")


def test_routes_go_to_the_other_nodes_only_now_and_at_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path)
    cidrs = cidrs_of(cluster)
    api(monkeypatch, cidrs)
    hosts = hosts_for(cluster)
    run(cluster, hosts)
    address = {n.name: n.address for n in cluster.plan.nodes}
    for name, h in hosts.items():
        others = sorted((cidrs[o], address[o]) for o in hosts if o != name)
        routed = sorted((r.split()[0], r.split()[2]) for r in h.routes if r.split()[0] != "default")
        assert routed == others  # never a route to its own pod CIDR
        unit, mode, _ = h.files[bridge.ROUTES_UNIT]
        text = unit.decode()
        assert mode == "644" and "Type=oneshot" in text and "RemainAfterExit=yes" in text
        assert "After=network-online.target" in text and "WantedBy=multi-user.target" in text
        execs = sorted(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert execs == sorted(f"ExecStart=ip route replace {c} via {a}" for c, a in others)
        assert "sudo -n -- systemctl enable vkp-pod-routes.service" in h.commands
        assert "sudo -n -- systemctl daemon-reload" in h.commands


def test_a_rerun_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make(tmp_path)
    api(monkeypatch, cidrs_of(cluster))
    hosts = hosts_for(cluster)
    run(cluster, hosts)
    for h in hosts.values():
        h.commands.clear()
    again = run(cluster, hosts)
    assert again.count("changed") == 0 and again.count("failed") == 0
    assert all(h.commands == ["facts"] for h in hosts.values())


def test_a_route_to_a_node_that_is_gone_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = make(tmp_path, workers=3)
    cidrs = cidrs_of(big)
    api(monkeypatch, cidrs)
    hosts = hosts_for(big)
    run(big, hosts)
    gone = big.plan.by_role("worker")[-1]
    # The cluster shrank: the worker and its node object are gone. An address outside the pod
    # CIDR is somebody else's route and stays.
    small = make(tmp_path, workers=2)
    api(monkeypatch, {n: c for n, c in cidrs.items() if n != gone.name})
    del hosts[gone.name]
    for h in hosts.values():
        h.routes.append("203.0.113.0/24 via 198.18.0.1 dev eth0")
        h.commands.clear()
    run(small, hosts)
    for h in hosts.values():
        assert f"sudo -n -- ip route del {cidrs[gone.name]} via {gone.address}" in h.commands
        assert not any(r.startswith(cidrs[gone.name]) for r in h.routes)
        assert "203.0.113.0/24 via 198.18.0.1 dev eth0" in h.routes
        assert gone.address not in h.files[bridge.ROUTES_UNIT][0].decode()
        assert not any("ip route replace" in c for c in h.commands)  # the others were right


def test_a_dry_run_needs_no_api_and_shows_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_api(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a dry run asked the API")

    monkeypatch.setattr(kube_api, "client", no_api)
    cluster = make(tmp_path)
    lines: list[str] = []
    report = run_playbook(
        pod_network_playbook(), cluster, {}, phases={"kubernetes"}, log=lines.append, dry_run=True
    )
    assert report.count("failed") == 0
    out = "\n".join(lines)
    w1 = cluster.plan.by_role("worker")[0]
    assert f'"subnet": "(the pod CIDR of {w1.name}, read from the API)"' in out
    assert f"ExecStart=ip route replace (pod CIDR of {w1.name}) via {w1.address}" in out
    assert "local: pod CIDRs of" in out


def test_waiting_for_a_pod_cidr_has_a_deadline_naming_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path)
    w2 = cluster.plan.by_role("worker")[1].name
    api(monkeypatch, cidrs_of(cluster) | {w2: ""})
    with pytest.raises(Timeout) as ei:
        bridge.pod_cidrs(cluster, [w2], deadline=0.3)
    assert f"no pod CIDR (spec.podCIDR) for node {w2}" in ei.value.message
    assert ei.value.exit_code == 13


@pytest.mark.parametrize("other", ["calico", "flannel"])
def test_nothing_of_it_for_calico_or_flannel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    asked = api(monkeypatch, {})
    cluster = make(tmp_path, cni_name=other)
    hosts = hosts_for(cluster)
    report = run(cluster, hosts)
    assert report.count("changed") == 0 and asked == []
    assert all(h.commands == [] for h in hosts.values())


def test_the_addon_step_does_nothing_for_bridge(tmp_path: Path) -> None:
    cluster = make(tmp_path)
    node = cluster.plan.by_role("master")[0]
    assert list(cni.cni(node, cluster, Facts.unknown())) == []


# -- health ------------------------------------------------------------------------------------


class HealthAPI:
    def __init__(self, cluster: Cluster, *, coredns: bool) -> None:
        self.names = [n.name for n in cluster.plan.nodes if n.role != "etcd"]
        self.coredns = coredns
        self.asked: list[str] = []

    def readyz(self) -> tuple[bool, str]:
        return True, "ok"

    def get(self, path: str) -> Any:
        self.asked.append(path)
        if path == "/api/v1/nodes":
            ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
            return {"items": [{"metadata": {"name": n}, **ready} for n in self.names]}
        ns = path.split("/")[4]
        pods = [("kube-proxy-1", {"k8s-app": "kube-proxy"})]
        if self.coredns:
            pods.append(("coredns-1", {"k8s-app": "kube-dns"}))
        running = {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True}]}
        return {
            "items": [
                {"metadata": {"namespace": ns, "name": n, "labels": lb}, "status": running} for n, lb in pods
            ]
        }


def test_health_with_bridge_checks_kube_system_and_reports_coredns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path)
    fake = HealthAPI(cluster, coredns=True)
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: fake)
    assert health.system_namespaces(cluster) == ["kube-system"]
    result = health.wait_healthy(cluster, deadline=1.0)
    assert result["ok"] is True and result["dns"] == "coredns"
    assert [p for p in fake.asked if p.endswith("/pods")] == ["/api/v1/namespaces/kube-system/pods"]


def test_health_does_not_claim_coredns_that_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make(tmp_path)
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: HealthAPI(cluster, coredns=False))
    with pytest.raises(health.ClusterNotReady) as ei:
        health.wait_healthy(cluster, deadline=0.3)
    assert "CoreDNS: no pod labelled k8s-app=kube-dns in kube-system" in ei.value.message


def test_health_without_dns_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make(tmp_path, dns="none")
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: HealthAPI(cluster, coredns=False))
    result = health.wait_healthy(cluster, deadline=1.0)
    assert result["ok"] is True
    assert result["dns"] == (
        "not installed (kubernetes.dns: none): workloads find Services through their "
        "{NAME}_SERVICE_HOST/PORT variables or ClusterIP"
    )


def test_the_health_result_reaches_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make(tmp_path, dns="none")
    monkeypatch.setattr(kube_api, "client", lambda pki, url, **kw: HealthAPI(cluster, coredns=False))
    raw = [p for p in yaml.safe_load(PLAYBOOK.read_text()) if p["play"] == "kubernetes-health"]
    pb = parse_playbook(raw, source=str(PLAYBOOK), digest=json.dumps(raw))
    hosts = hosts_for(cluster)
    report = run_playbook(pb, cluster, hosts, phases={"kubernetes"}, log=lambda _: None).to_dict()
    assert report["outputs"]["health"]["dns"].startswith("not installed (kubernetes.dns: none)")
    assert report["outputs"]["health"]["nodes"]


def test_create_cluster_shows_the_health_and_dns_lines() -> None:
    from provisioner.cli.lifecycle import _render_result

    result = {
        "cluster": "demo",
        "created": 0,
        "changed": 0,
        "nodes": [],
        "phases": [],
        "state_dir": "/s",
        "health": {
            "ok": True,
            "readyz": {"ok": True, "detail": "ok"},
            "nodes": {"a": "Ready", "b": "Ready"},
            "dns": health.NO_DNS,
        },
    }
    text = _render_result(result)
    assert "health: ok, /readyz ok, 2/2 nodes Ready" in text
    assert f"dns: {health.NO_DNS}" in text
