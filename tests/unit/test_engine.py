"""The bootstrap engine: playbook loading, host selection, play order, check-then-change steps,
masking, failure reports and resume. Hosts are scripted fakes that record every command (the
lab tests run the same steps on real guests)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provisioner.bootstrap import runner
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    Facts,
    File,
    Local,
    Probe,
    Run,
    ServiceFact,
    StepGen,
    Upload,
    facts_command,
    parse_facts,
    step,
)
from provisioner.bootstrap.etcd_client import EtcdUnhealthy, HealthReport
from provisioner.bootstrap.phases import PLAYBOOK, phases_up_to, run_bootstrap
from provisioner.bootstrap.playbook import (
    HostSelector,
    Playbook,
    PlaybookError,
    load_playbook,
    parse_playbook,
)
from provisioner.bootstrap.render import TemplateError, render
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.bootstrap.steps import etcd as etcd_steps
from provisioner.bootstrap.tools import etcdctl_bundle, etcdctl_command
from provisioner.errors import ExitCode
from provisioner.plan import Plan, make_plan
from provisioner.spec import EtcdSpec, load_spec
from provisioner.ssh.commands import Cmd, Result, Secret
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

KEY = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"


class FakePKI:
    def cert_pem(self, name: str) -> bytes:
        return f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n".encode()

    def key_pem(self, name: str) -> bytes:
        return KEY


class FakeHost(fakes.FakeHost):
    """Answers the checks and commands of the etcd and runtime steps as a node would."""

    def _check(self, probe: Check) -> Result:
        script = str(probe.cmd.args[2]) if probe.cmd.args[0] == "sh" else ""
        if "command -v" in script:
            return Result(0, "", "")
        if "/sys/module" in script:
            return Result(0, "overlay\n", "")
        if "sysctl -n" in script:
            return Result(0, "net.ipv4.ip_forward=0\nnet.bridge.bridge-nf-call-iptables=?\n", "")
        if "ctr" in probe.cmd.args:
            active = self.services.get("containerd", ServiceFact()).is_active
            return Result(0, "Server:\n  Version: 1.6\n", "") if active else Result(1, "", "")
        return Result(0, "", "")

    def _command(self, args: list[str]) -> Result:
        if (removed := self.remove(args)) is not None:
            return removed
        if args[:2] == ["sh", "-c"] and "systemctl restart" in args[2]:
            svc = args[4]
            if self.services.get(svc, ServiceFact()).is_active:
                self.services[svc] = replace(self.services[svc], started=str(time.monotonic_ns()))
                return Result(0, "restarted\n", "")
            return Result(0, "", "")
        if args[:1] == ["systemctl"] and len(args) == 3:
            verb, svc = args[1], args[2]
            s = self.services.get(svc, ServiceFact(loaded="loaded"))
            if verb == "enable":
                self.services[svc] = replace(s, enabled="enabled")
            elif verb == "start":
                self.services[svc] = replace(s, active="active", started=str(time.monotonic_ns()))
            elif verb == "stop":
                self.services[svc] = replace(s, active="inactive")
        if args[:1] == ["ctr"]:
            return Result(0, "Client:\n  Version: 1.6\nServer:\n  Version: 1.6\n", "")
        return Result(0, "", "")


@pytest.fixture(autouse=True)
def fake_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake hosts answer probes from their model; the real facts script is tested on its own.
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))


def make_cluster(tmp_path: Path, plan_name: str = "small", **etcd_settings: int) -> Cluster:
    env = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    spec = load_spec(None, name="demo", plan=plan_name, env=env)
    if etcd_settings:
        spec = replace(spec, etcd=EtcdSpec(**etcd_settings))
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    return Cluster(spec=spec, plan=make_plan(spec), state=state, pki=FakePKI())


def hosts_for(plan: Plan) -> dict[str, FakeHost]:
    return {n.name: FakeHost(n.name) for n in plan.nodes}


def playbook_of(plays: list[dict[str, Any]], name: str = "test.yaml") -> Playbook:
    return parse_playbook(plays, source=name, digest=json.dumps(plays, sort_keys=True))


def quiet(_: str) -> None:
    pass


# -- test-only steps ------------------------------------------------------------------------------

ORDER: list[tuple[str, str, str]] = []  # (event, host, step)
ORDER_LOCK = threading.Lock()


# Test steps act only through actions, as real steps do: the engine runs every step once as a
# dry run before a real run (to catch template errors), and a dry run performs no action.
@step("test.record")
def _record(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    def work() -> None:
        with ORDER_LOCK:
            ORDER.append(("start", node.name, "test.record"))
        time.sleep(0.05)
        with ORDER_LOCK:
            ORDER.append(("end", node.name, "test.record"))

    yield Local("record the order", work)


BARRIER: dict[str, threading.Barrier] = {}


@step("test.meet")
def _meet(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    # Returns only when every host of the play is inside this step at the same time.
    yield Local("meet", lambda: BARRIER["b"].wait(timeout=5))


@step("test.secret_fails")
def _secret_fails(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("login", "--token", Secret("hunter2-token")), stdin=b"hunter2-stdin")


@step("test.upload")
def _upload(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Upload("hello\n", "/etc/test.conf", 0o644)


@step("test.broken_template")
def _broken(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    text = render("etcd/etcd.service.j2", name=node.name)  # cluster, etcd_binary... missing
    yield Upload(text, "/etc/never.conf", 0o644)


@step("test.flaky", probes=lambda node, cluster: [File("/etc/flaky-ok")])
def _flaky(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("flaky", node.name))


# -- loading --------------------------------------------------------------------------------------


def test_the_cluster_playbook_loads_in_phase_order() -> None:
    pb = load_playbook(PLAYBOOK)
    assert [(p.name, p.phase) for p in pb.plays] == [
        ("etcd-common", "etcd"),
        ("etcd", "etcd"),
        ("etcd-roll", "etcd"),
        ("etcd-health", "etcd"),
        ("runtime-common", "runtime"),
        ("containerd", "runtime"),
        ("kubernetes-artifacts", "kubernetes"),
        ("endpoint-preflight", "kubernetes"),
        ("control-plane-prepare", "kubernetes"),
        ("worker-prepare", "kubernetes"),
        ("init", "kubernetes"),
        ("bootstrap-token", "kubernetes"),
        ("control-plane-join", "kubernetes"),
        ("worker-join", "kubernetes"),
        ("pod-network", "kubernetes"),
        ("addons", "kubernetes"),
        ("kubernetes-health", "kubernetes"),
    ]
    assert pb.plays[1].steps == ("etcd.configure", "etcd.start")
    assert pb.plays[1].serial is None  # members start together
    assert (pb.plays[2].steps, pb.plays[2].serial) == (("etcd.roll",), 1)  # and restart one by one


def test_an_unknown_step_names_file_play_and_step_before_anything_runs(tmp_path: Path) -> None:
    f = tmp_path / "pb.yaml"
    f.write_text(
        "- {play: etcd, phase: etcd, hosts: etcd, steps: [etcd.configure, etcd.strat]}\n"
        "- {play: rt, phase: runtime, hosts: mastr, steps: [containerd.start], paralel: true}\n"
        "- {play: late, phase: etcd, hosts: etcd, steps: [etcd.start], serial: 0}\n"
    )
    with pytest.raises(PlaybookError) as ei:
        load_playbook(f)
    msg = str(ei.value)
    assert f"{f}: play 'etcd': unknown step 'etcd.strat'; did you mean 'etcd.start'?" in msg
    assert "play 'rt': hosts: unknown role 'mastr'" in msg
    assert "play 'rt': unknown key(s) paralel" in msg
    assert "play 'late': phase etcd comes after a later phase's play" in msg
    assert "play 'late': serial must be a positive number" in msg
    assert ei.value.exit_code == ExitCode.SPEC


def test_host_selectors(tmp_path: Path) -> None:
    plan = make_cluster(tmp_path, "prod").plan  # 3 etcd, 3 masters, 3 workers

    def names(sel: str) -> list[str]:
        return [n.name for n in HostSelector.parse(sel).select(plan)]

    assert names("all") == [n.name for n in plan.nodes]
    assert names("etcd") == ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3"]
    assert names("master[0]") == ["demo-master-1"]
    assert names("master[1:]") == ["demo-master-2", "demo-master-3"]
    assert names("worker[-1]") == ["demo-worker-3"]
    assert names("worker + master[0]") == ["demo-master-1", "demo-worker-1", "demo-worker-2", "demo-worker-3"]
    assert names("master[5]") == []
    for bad in ("masters", "all[0]", "master[x]", "master[]", ""):
        with pytest.raises(ValueError):
            HostSelector.parse(bad)


# -- order and parallelism ---------------------------------------------------------------------------


def test_first_master_then_the_others_one_at_a_time(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, "prod")
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {"play": "first", "phase": "kubernetes", "hosts": "master[0]", "steps": ["test.record"]},
            {
                "play": "others",
                "phase": "kubernetes",
                "hosts": "master[1:]",
                "serial": 1,
                "steps": ["test.record"],
            },
        ]
    )
    ORDER.clear()
    report = run_playbook(pb, cluster, hosts, phases={"kubernetes"}, log=quiet)
    assert [
        (e, h, "test.record")
        for h in ("demo-master-1", "demo-master-2", "demo-master-3")
        for e in ("start", "end")
    ] == ORDER
    assert [p.name for p in report.plays] == ["first", "others"]


def test_a_parallel_play_runs_its_hosts_at_the_same_time(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    BARRIER["b"] = threading.Barrier(3)
    pb = playbook_of([{"play": "p", "phase": "etcd", "hosts": "etcd", "steps": ["test.meet"]}])
    report = run_playbook(pb, cluster, hosts_for(cluster.plan), phases={"etcd"}, log=quiet)
    assert report.count("ok") == 3


def test_plays_of_unselected_phases_do_not_run(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {"play": "e", "phase": "etcd", "hosts": "etcd", "steps": ["test.upload"]},
            {"play": "r", "phase": "runtime", "hosts": "worker", "steps": ["test.upload"]},
        ]
    )
    run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    assert hosts["demo-etcd-1"].files and not hosts["demo-worker-1"].files


# -- check, then change ---------------------------------------------------------------------------


def etcd_playbook() -> Playbook:
    return playbook_of(
        [
            {
                "play": "etcd",
                "phase": "etcd",
                "hosts": "etcd",
                "steps": ["etcd.configure", "etcd.start"],
            }
        ]
    )


def rolling_etcd_playbook() -> Playbook:
    """The etcd plays as cluster.yaml has them: configure and start together, then the roll."""
    return playbook_of(
        [
            {"play": "etcd", "phase": "etcd", "hosts": "etcd", "steps": ["etcd.configure", "etcd.start"]},
            {"play": "etcd-roll", "phase": "etcd", "hosts": "etcd", "serial": 1, "steps": ["etcd.roll"]},
        ]
    )


@pytest.fixture
def etcd_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The etcd health checks asked, each as "health <addresses>"; every one answers healthy."""
    asked: list[str] = []

    def check(endpoints: list[str], expected: list[str], pki: Any) -> str:
        asked.append("health " + " ".join(e.split("//")[1].split(":")[0] for e in endpoints))
        return "healthy"

    monkeypatch.setattr(etcd_steps, "check_cluster", check)
    return asked


def test_etcd_steps_change_once_then_report_ok_without_commands(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    first = run_playbook(etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    assert first.count("changed") == 6 and first.restarts == []
    h = hosts["demo-etcd-1"]
    assert h.files["/etc/etcd/pki/server.key"][1:] == ("600", "etcd:etcd")
    assert h.files["/etc/etcd/pki/server.crt"][1:] == ("644", "root:root")
    assert h.dirs["/var/lib/etcd"] == ("700", "etcd:etcd")
    assert "sudo -n -- systemctl daemon-reload" in h.commands
    assert h.commands[-2:] == ["sudo -n -- systemctl enable etcd", "sudo -n -- systemctl start etcd"]
    config = h.files["/etc/etcd/etcd.conf.yml"][0].decode()
    assert (
        'initial-cluster: "demo-etcd-1=https://198.18.0.10:2380,demo-etcd-2=https://198.18.0.11:2380,'
        in config
    )
    assert "client-cert-auth: true" in config and "heartbeat-interval: 100" in config
    started = h.services["etcd"].started

    for host in hosts.values():
        host.commands.clear()
    again = run_playbook(etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    assert (again.count("ok"), again.count("changed"), again.restarts) == (6, 0, [])
    # Facts once per host and play, and nothing else: unchanged files are not even sent.
    assert h.commands == ["facts"]
    assert h.services["etcd"].started == started


def test_a_changed_setting_restarts_the_running_members_one_at_a_time_with_health_between(
    tmp_path: Path, etcd_checks: list[str]
) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    first = run_playbook(rolling_etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    assert first.restarts == [] and etcd_checks == []  # a first start: together, nothing to roll
    slower = replace(
        cluster, spec=replace(cluster.spec, etcd=EtcdSpec(heartbeat_interval=200, election_timeout=2000))
    )
    for h in hosts.values():
        h.commands.clear()
        h.timeline = etcd_checks  # one timeline: each host's commands among the health checks
    report = run_playbook(rolling_etcd_playbook(), slower, hosts, phases={"etcd"}, log=quiet)
    assert report.restarts == [f"demo-etcd-{i}:etcd" for i in (1, 2, 3)]
    by_step = {s["step"]: s for s in report.plays[0].step_summary()}
    assert by_step["etcd.configure"]["changed"] == 3
    assert "heartbeat-interval: 200" in hosts["demo-etcd-2"].files["/etc/etcd/etcd.conf.yml"][0].decode()
    # The unit did not change, so no daemon-reload.
    assert not any("daemon-reload" in c for c in hosts["demo-etcd-2"].commands)
    # Each member: the two others healthy, its restart, the three healthy; then the next one.
    rolled = [t for t in etcd_checks if t.startswith("health") or "systemctl restart" in t]
    a, b, c = "198.18.0.10", "198.18.0.11", "198.18.0.12"
    assert [t if t.startswith("health") else t.split(":")[0] for t in rolled] == [
        f"health {b} {c}", "demo-etcd-1", f"health {a} {b} {c}",
        f"health {a} {c}", "demo-etcd-2", f"health {a} {b} {c}",
        f"health {a} {b}", "demo-etcd-3", f"health {a} {b} {c}",
    ]  # fmt: skip
    assert all(etcd_steps.RESTART_PENDING not in h.files for h in hosts.values())


def test_no_member_restarts_while_another_is_unhealthy_and_the_next_run_restarts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    monkeypatch.setattr(etcd_steps, "check_cluster", lambda eps, names, pki: "healthy")
    run_playbook(rolling_etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)

    def etcd_2_down(endpoints: list[str], expected: list[str], pki: Any) -> str:
        down = "https://198.18.0.11:2379"
        if down in endpoints:
            raise EtcdUnhealthy(
                HealthReport(endpoints={down: "connection refused"}, problems=[f"{down}: down"])
            )
        return "healthy"

    monkeypatch.setattr(etcd_steps, "check_cluster", etcd_2_down)
    slower = replace(cluster, spec=replace(cluster.spec, etcd=EtcdSpec(heartbeat_interval=200)))
    for h in hosts.values():
        h.commands.clear()
    with pytest.raises(PlayFailed) as ei:
        run_playbook(rolling_etcd_playbook(), slower, hosts, phases={"etcd"}, log=quiet)
    assert "demo-etcd-1 was not restarted: the other members must be healthy first" in str(ei.value)
    assert "198.18.0.11:2379: down" in str(ei.value)
    assert not any("systemctl restart" in c for h in hosts.values() for c in h.commands)
    # The new configuration is on every member, each marked for the restart still owed to it.
    assert all(etcd_steps.RESTART_PENDING in hosts[n.name].files for n in cluster.plan.by_role("etcd"))

    monkeypatch.setattr(etcd_steps, "check_cluster", lambda eps, names, pki: "healthy")
    again = run_playbook(rolling_etcd_playbook(), slower, hosts, phases={"etcd"}, log=quiet)
    assert again.resumed_from is not None and again.resumed_from["step"] == "etcd.roll"
    assert again.restarts == [f"demo-etcd-{i}:etcd" for i in (1, 2, 3)]
    assert all(etcd_steps.RESTART_PENDING not in h.files for h in hosts.values())


def test_a_stopped_member_marked_for_a_restart_is_left_to_etcd_start(
    tmp_path: Path, etcd_checks: list[str]
) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    run_playbook(rolling_etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    h = hosts["demo-etcd-2"]
    h.files[etcd_steps.RESTART_PENDING] = (b"pending\n", "644", "root:root")
    h.services["etcd"] = replace(h.services["etcd"], active="failed")
    pb = playbook_of(
        [{"play": "etcd-roll", "phase": "etcd", "hosts": "etcd", "serial": 1, "steps": ["etcd.roll"]}]
    )
    report = run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    assert report.restarts == [] and etcd_checks == []
    assert etcd_steps.RESTART_PENDING not in h.files


def test_a_stopped_member_is_started_not_restarted(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    run_playbook(etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    h = hosts["demo-etcd-2"]
    h.services["etcd"] = replace(h.services["etcd"], active="inactive")
    h.commands.clear()
    report = run_playbook(etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet)
    assert h.commands == ["facts", "sudo -n -- systemctl start etcd"]
    assert report.count("changed") == 1 and report.restarts == []


def test_kernel_settings_the_host_refuses_are_warnings_not_failures(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    w = hosts["demo-worker-1"]
    w.fail = {
        "modprobe -- br_netfilter": Result(1, "", "modprobe: FATAL: Module br_netfilter not found"),
        "sysctl -w": Result(255, "", "sysctl: cannot stat /proc/sys/net/...: Read-only file system"),
    }
    pb = playbook_of([{"play": "k", "phase": "runtime", "hosts": "worker[0]", "steps": ["common.kernel"]}])
    run_playbook(pb, cluster, hosts, phases={"runtime"}, log=quiet)
    report = run_playbook(pb, cluster, hosts, phases={"runtime"}, log=quiet)
    (res,) = report.results
    assert res.status == "ok"  # the files are in place; failed attempts change nothing
    assert any("br_netfilter is not loaded" in x and "not found" in x for x in res.warnings)
    assert any(x.startswith("net.ipv4.ip_forward is 0, wanted 1, and cannot be set") for x in res.warnings)
    assert any(x.startswith("net.bridge.bridge-nf-call-iptables is absent") for x in res.warnings)
    assert report.to_dict()["warnings"]


def test_containerd_is_configured_started_and_verified(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {
                "play": "c",
                "phase": "runtime",
                "hosts": "worker",
                "steps": ["containerd.configure", "containerd.start"],
            }
        ]
    )
    run_playbook(pb, cluster, hosts, phases={"runtime"}, log=quiet)
    w = hosts["demo-worker-1"]
    assert "SystemdCgroup = true" in w.files["/etc/containerd/config.toml"][0].decode()
    assert "sudo -n -- ctr version" in w.commands
    w.commands.clear()
    again = run_playbook(pb, cluster, hosts, phases={"runtime"}, log=quiet)
    assert again.count("changed") == 0 and w.commands == ["facts"]


# -- secrets, failures, resume ----------------------------------------------------------------------


def test_dry_run_shows_files_and_commands_with_secrets_masked(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    lines: list[str] = []
    pb = playbook_of(
        [
            {"play": "etcd", "phase": "etcd", "hosts": "etcd", "steps": ["etcd.configure"]},
            {"play": "s", "phase": "etcd", "hosts": "etcd[0]", "steps": ["test.secret_fails"]},
        ]
    )
    report = run_playbook(pb, cluster, {}, phases={"etcd"}, log=lines.append, dry_run=True)
    out = "\n".join(lines) + json.dumps(report.to_dict())
    assert "upload /etc/etcd/pki/server.key (mode 0600, owner etcd:etcd): ******** (" in out
    assert "upload /etc/etcd/etcd.conf.yml (mode 0644, owner root:root):" in out
    assert '| name: "demo-etcd-1"' in out and "Generated by vkp" in out
    assert "run login --token ******** (as root) <<< ********" in out
    for secret in ("c2VjcmV0", "hunter2"):
        assert secret not in out
    assert not (cluster.state and cluster.state.progress_path("test").exists())


def test_a_failure_names_host_step_masked_command_and_output(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    hosts["demo-etcd-2"].fail = {"login": Result(3, "", "line 1\nauth refused: bad token\n")}
    pb = playbook_of(
        [
            {"play": "s", "phase": "etcd", "hosts": "etcd", "steps": ["test.upload", "test.secret_fails"]},
            {"play": "after", "phase": "etcd", "hosts": "etcd", "steps": ["test.upload"]},
        ]
    )
    hosts["demo-etcd-1"].fail = hosts["demo-etcd-3"].fail = {}
    with pytest.raises(PlayFailed) as ei:
        run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    msg = str(ei.value)
    assert "play s failed on 3 host(s)" in msg or "play s failed on" in msg
    assert "demo-etcd-2, step test.secret_fails:" in msg
    assert "`sudo -n -- login --token ********` exited 3" in msg and "auth refused: bad token" in msg
    assert "hunter2" not in msg and "hunter2" not in json.dumps(ei.value.to_dict())
    assert ei.value.exit_code == ExitCode.SSH


def test_rendering_failures_stop_before_anything_is_uploaded(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {"play": "ok", "phase": "etcd", "hosts": "all", "steps": ["test.upload"]},
            {"play": "bad", "phase": "runtime", "hosts": "worker", "steps": ["test.broken_template"]},
        ]
    )
    with pytest.raises(TemplateError) as ei:
        run_playbook(pb, cluster, hosts, phases={"etcd", "runtime"}, log=quiet)
    assert "play bad, demo-worker-1, step test.broken_template: templates/etcd/etcd.service.j2" in str(
        ei.value
    )
    assert "is undefined" in str(ei.value) and ei.value.variable
    assert all(h.commands == [] for h in hosts.values())


def test_resume_skips_what_the_failed_run_completed_and_a_good_run_rechecks_all(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {"play": "one", "phase": "etcd", "hosts": "etcd", "steps": ["test.upload"]},
            {
                "play": "two",
                "phase": "etcd",
                "hosts": "etcd",
                "steps": ["test.upload", "test.flaky", "test.record"],
            },
        ]
    )
    hosts["demo-etcd-3"].fail = {"flaky": Result(1, "", "not yet")}
    with pytest.raises(PlayFailed) as ei:
        run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    assert "resumes at test.flaky on demo-etcd-3" in str(ei.value)
    assert cluster.state is not None
    saved = json.loads(cluster.state.progress_path("test").read_text())
    assert saved["failed"] == {
        "play": "two",
        "host": "demo-etcd-3",
        "step": "test.flaky",
        "error": saved["failed"]["error"],
    }
    assert saved["plays"]["one"]["done"] and not saved["plays"]["two"]["done"]

    hosts["demo-etcd-3"].fail = {}
    for h in hosts.values():
        h.commands.clear()
    lines: list[str] = []
    report = run_playbook(pb, cluster, hosts, phases={"etcd"}, log=lines.append)
    assert report.resumed_from and report.resumed_from["step"] == "test.flaky"
    assert hosts["demo-etcd-1"].commands == []  # finished both plays last time
    assert hosts["demo-etcd-3"].commands == ["facts", "sudo -n -- flaky demo-etcd-3"]
    two = report.plays[1]
    statuses = {(r.host, r.step): r.status for r in two.results}
    assert statuses[("demo-etcd-3", "test.upload")] == "skipped"
    assert statuses[("demo-etcd-3", "test.flaky")] == "changed"
    assert statuses[("demo-etcd-3", "test.record")] == "ok"
    assert any("resuming: the last run failed in play two on demo-etcd-3 at test.flaky" in x for x in lines)

    # The resume record is gone after a good run: the next run re-checks every step.
    third = run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    assert third.resumed_from is None and third.count("skipped") == 0


def test_a_resume_runs_a_finished_play_again_when_a_node_was_added(tmp_path: Path) -> None:
    # A run fails late; a resize then adds a worker: plays the failed run finished must run on
    # it, and again on the others (their work may depend on every node, like pod routes).
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    pb = playbook_of(
        [
            {"play": "nodes", "phase": "etcd", "hosts": "worker", "steps": ["test.upload"]},
            {"play": "late", "phase": "etcd", "hosts": "etcd[0]", "steps": ["test.flaky"]},
        ]
    )
    hosts["demo-etcd-1"].fail = {"flaky": Result(1, "", "not yet")}
    with pytest.raises(PlayFailed):
        run_playbook(pb, cluster, hosts, phases={"etcd"}, log=quiet)
    hosts["demo-etcd-1"].fail = {}
    topo = cluster.spec.topology
    grown_spec = replace(cluster.spec, topology=replace(topo, worker=replace(topo.worker, count=3)))
    grown = replace(cluster, spec=grown_spec, plan=make_plan(grown_spec))
    hosts = {**hosts_for(grown.plan), **hosts}
    for h in hosts.values():
        h.commands.clear()
    report = run_playbook(pb, grown, hosts, phases={"etcd"}, log=quiet)
    nodes = report.plays[0]
    assert {(r.host, r.status) for r in nodes.results} == {
        ("demo-worker-1", "ok"),
        ("demo-worker-2", "ok"),
        ("demo-worker-3", "changed"),
    }
    assert "put /etc/test.conf" in hosts["demo-worker-3"].commands
    assert hosts["demo-worker-1"].commands == ["put /etc/test.conf"]  # ran again, changed nothing


def test_report_has_per_play_and_per_step_timings_and_counts(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = hosts_for(cluster.plan)
    d = run_playbook(etcd_playbook(), cluster, hosts, phases={"etcd"}, log=quiet).to_dict()
    (play,) = d["plays"]
    assert play["play"] == "etcd" and play["changed"] == 6 and play["seconds"] >= 0
    assert [s["step"] for s in play["steps"]] == ["etcd.configure", "etcd.start"]
    assert all({"ok", "changed", "max_seconds", "round_trips"} <= set(s) for s in play["steps"])
    assert play["facts"]["demo-etcd-1"]["round_trips"] == 2  # first gather, then after the change
    assert d["phase_seconds"].keys() == {"etcd"}


# -- phases -----------------------------------------------------------------------------------------


def test_phases_up_to() -> None:
    assert phases_up_to("vms") == []
    assert phases_up_to("runtime") == ["etcd", "runtime"]
    assert phases_up_to("kubernetes") == ["etcd", "runtime", "kubernetes"]


def test_the_kubernetes_phase_is_planned_in_a_dry_run(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    assert cluster.state is not None
    result = run_bootstrap(
        cluster.spec, cluster.plan, cluster.state, up_to="kubernetes", log=quiet, dry_run=True
    )
    assert "not_implemented" not in result
    assert result["phases"] == ["etcd", "runtime", "kubernetes"]
    assert "kubernetes-health" in [p["play"] for p in result["plays"]]
    assert not (cluster.state.path / "pki").exists()  # a dry run makes no CA


# -- the facts script and etcdctl's stdin, run by a real local shell ----------------------------------


def test_facts_script_answers_every_probe(tmp_path: Path) -> None:
    f = tmp_path / "a file"
    f.write_text("x")
    os.chmod(f, 0o640)
    probes: list[Probe] = [
        File(str(f)),
        File(str(tmp_path)),
        File(str(tmp_path / "nope")),
        Check(Cmd("printf", "a\nb")),
    ]
    cmd = facts_command(probes)
    out = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True, check=True).stdout
    facts = parse_facts(probes, out)
    ff = facts.file(str(f))
    assert (ff.kind, ff.sha256, ff.mode) == ("file", hashlib.sha256(b"x").hexdigest(), "640")
    assert facts.file(str(tmp_path)).kind == "dir"
    assert facts.file(str(tmp_path / "nope")).kind == "absent"
    assert facts.check(Cmd("printf", "a\nb")) == Result(0, "a\nb", "")
    with pytest.raises(KeyError):
        facts.service("etcd")


def test_etcdctl_gets_its_keys_on_stdin_and_leaves_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "etcdctl"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "args: $*"\ncert=${3#--cert=}\n'
        'ls -l "$(dirname "$cert")" | tail -n +2 | cut -c1-10\ncat "$cert"\n'
    )
    fake.chmod(0o755)
    cmd = etcdctl_command(["https://198.18.0.70:2379", "https://198.18.0.71:2379"], ["member", "list"])
    assert "PRIVATE" not in cmd.render()
    bundle = etcdctl_bundle(b"CA PEM\n", b"CERT PEM\n", KEY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(run_dir)}
    p = subprocess.run(["sh", "-c", cmd.render()], input=bundle, capture_output=True, env=env, check=True)
    out = p.stdout.decode()
    assert "args: --endpoints=https://198.18.0.70:2379,https://198.18.0.71:2379 --cacert=" in out
    assert "member list" in out
    assert out.count("-rw-------") == 3  # ca.crt, client.crt, client.key, private to the user
    assert "CERT PEM" in out
    assert list(run_dir.iterdir()) == []  # removed when etcdctl exited
