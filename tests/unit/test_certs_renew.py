"""vkp certs renew over scripted hosts (tests/unit/fakes.py) and a real PKI in a temporary state:
new serials from the same CAs, one node at a time with health checks between, refusal while a
member is unhealthy, resume. The lab suite runs it on a real cluster (test_10b)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from provisioner.bootstrap import kube_api, phases, runner
from provisioner.bootstrap.engine import ServiceFact
from provisioner.bootstrap.etcd_client import EtcdUnhealthy, HealthReport
from provisioner.bootstrap.pki import ensure_pki, load_pki
from provisioner.bootstrap.runner import PlayFailed
from provisioner.bootstrap.steps import certs as certs_steps
from provisioner.bootstrap.steps import etcd as etcd_steps
from provisioner.day2 import certs as day2_certs
from provisioner.plan import make_plan
from provisioner.spec import load_spec
from provisioner.ssh.commands import Result
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

ENV = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
ETCD = ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3"]
ADDRESS = {"198.18.0.10": "demo-etcd-1", "198.18.0.11": "demo-etcd-2", "198.18.0.12": "demo-etcd-3"}


class Node(fakes.FakeHost):
    """An etcd member (etcd running) or a master: restarts answer as systemd's would."""

    def __init__(self, name: str, timeline: list[str]) -> None:
        super().__init__(name)
        self.timeline = timeline
        if "etcd" in name:
            self.services["etcd"] = ServiceFact(active="active", enabled="enabled", loaded="loaded")

    def close(self) -> None:
        pass

    def _command(self, args: list[str]) -> Result:
        if (removed := self.remove(args)) is not None:
            return removed
        if args[:2] == ["sh", "-c"] and "systemctl restart" in args[2]:
            return Result(0, "restarted\n", "")
        return Result(0, "", "")


class World:
    """The cluster as the run sees it: hosts, and what etcd and the API servers answer."""

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
        self.hosts = {n.name: Node(n.name, self.timeline) for n in self.plan.nodes}
        self.down: set[str] = set()  # etcd members that answer unhealthy
        self.connected: list[str] = []
        monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))
        monkeypatch.setattr(phases, "connect_all", self._connect)
        monkeypatch.setattr(etcd_steps, "check_cluster", self._etcd)
        monkeypatch.setattr(certs_steps, "check_cluster", self._etcd)
        monkeypatch.setattr(kube_api, "client", self._api)

    def _connect(self, spec: Any, state: Any, nodes: list[Any]) -> dict[str, Any]:
        self.connected = [n.name for n in nodes]
        return {n.name: self.hosts[n.name] for n in nodes}

    def _etcd(self, endpoints: list[str], expected: list[str], pki: Any) -> HealthReport:
        names = sorted(ADDRESS[e.split("//")[1].split(":")[0]] for e in endpoints)
        self.timeline.append("etcd health " + " ".join(n[-1] for n in names))
        sick = [n for n in names if n in self.down]
        if sick:
            raise EtcdUnhealthy(HealthReport(problems=[f"{n}: no leader" for n in sick]))
        return HealthReport(expected=expected, round_trip=True)

    def _api(self, pki: Any, url: str, **_: Any) -> Any:
        timeline = self.timeline

        class API:
            def readyz(self) -> tuple[bool, str]:
                timeline.append(f"readyz {url}")
                return True, "ok"

        return API()

    def serials(self) -> dict[str, int]:
        pki = load_pki(self.state)
        return {n: x509.load_pem_x509_certificate(pki.cert_pem(n)).serial_number for n in pki.names()}

    def renew(self, parts: list[str], **kw: Any) -> dict[str, Any]:
        return day2_certs.renew_certs("demo", parts, lambda _: None, **kw)


def members_rolled(timeline: list[str]) -> list[str]:
    """The etcd part of the timeline, in short: health checks, new certificates, restarts."""
    out = []
    for t in timeline:
        if t.startswith("etcd health"):
            out.append(t[len("etcd ") :])
        elif "put /etc/etcd/pki/server.crt" in t:
            out.append(f"certs {t.split(':')[0][-1]}")
        elif "systemctl restart" in t:
            out.append(f"restart {t.split(':')[0][-1]}")
    return out


def test_all_renews_every_leaf_and_rolls_members_then_the_master_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    before = w.serials()
    result = w.renew(["etcd", "kubernetes"])

    after = w.serials()
    for ca in ("ca", "etcd-ca", "front-proxy-ca"):
        assert after[ca] == before[ca]
    renewed = {r["name"] for r in result["renewed"]}
    assert renewed == {n for n in before if n not in ("ca", "etcd-ca", "front-proxy-ca")} | {"admin"}
    assert all(after[n] != before[n] for n in renewed if n in before)
    # The members got the certificates the state now holds.
    pki = load_pki(w.state)
    assert w.hosts["demo-etcd-2"].files["/etc/etcd/pki/server.crt"][0] == pki.cert_pem(
        "etcd-server-demo-etcd-2"
    )
    master = w.hosts["demo-master-1"]
    assert master.files["/etc/kubernetes/pki/apiserver-etcd-client.crt"][0] == pki.cert_pem(
        "apiserver-etcd-client"
    )

    assert members_rolled(w.timeline) == [
        "health 1 2 3",  # the check before anything is issued
        "certs 1", "health 2 3", "restart 1", "health 1 2 3",
        "certs 2", "health 1 3", "restart 2", "health 1 2 3",
        "certs 3", "health 1 2", "restart 3", "health 1 2 3",
    ]  # fmt: skip
    # The master only after the last member, then its API server's restart awaited.
    ran = [c for c in master.commands if c != "facts" and not c.startswith("put")]
    assert ran[0] == "sudo -n -- /usr/local/bin/kubeadm certs renew all"
    assert [c.split()[-3] for c in ran[1:]] == ["kube-controller-manager", "kube-scheduler", "kube-apiserver"]
    last_etcd = max(i for i, t in enumerate(w.timeline) if "restart" in t and "etcd" in t.split(":")[0])
    assert w.timeline.index(f"demo-master-1: {master.commands[-3]}") > last_etcd
    assert w.timeline[-1] == "readyz https://198.18.0.13:6443"  # its own API server, after the restart
    assert set(result["apiserver_restart_seconds"]) == {"demo-master-1"}
    assert any("one master" in n for n in result["notes"])
    assert any("kubelet" in n and "rotates" in n for n in result["notes"])
    # `vkp certs` shows the new ones: the serial openssl prints, and a year of validity.
    listed = {c["name"]: c for c in result["certificates"]}
    assert int(listed["etcd-peer-demo-etcd-3"]["serial"], 16) == after["etcd-peer-demo-etcd-3"]
    assert listed["etcd-peer-demo-etcd-3"]["days_left"] >= 364
    assert json.loads(w.state.progress_path("certs-renew").read_text())["failed"] is None


def test_etcd_only_leaves_the_masters_and_their_certificates_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    before = w.serials()
    w.renew(["etcd"])
    after = w.serials()
    assert after["apiserver-etcd-client"] == before["apiserver-etcd-client"]
    assert after["etcd-server-demo-etcd-1"] != before["etcd-server-demo-etcd-1"]
    assert w.hosts["demo-master-1"].commands == []
    assert not any(t.startswith("readyz") for t in w.timeline)


def test_an_unhealthy_member_stops_the_renewal_before_anything_is_issued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    w.down.add("demo-etcd-3")
    before = w.serials()
    with pytest.raises(PlayFailed) as ei:
        w.renew(["etcd", "kubernetes"])
    assert "etcd is not healthy, so no certificate was renewed" in str(ei.value)
    assert "demo-etcd-3: no leader" in str(ei.value)
    assert w.serials() == before
    assert not any(c != "facts" for h in w.hosts.values() for c in h.commands)


def test_a_member_that_fails_mid_roll_stops_it_and_the_rerun_resumes_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    real = w._etcd
    restarted: list[str] = []

    def member_2_never_comes_back(endpoints: list[str], expected: list[str], pki: Any) -> HealthReport:
        restarted[:] = [t.split(":")[0] for t in w.timeline if "systemctl restart" in t]
        if "demo-etcd-2" in restarted and len(endpoints) == 3:
            w.down.add("demo-etcd-2")
        return real(endpoints, expected, pki)

    monkeypatch.setattr(etcd_steps, "check_cluster", member_2_never_comes_back)
    monkeypatch.setattr(etcd_steps, "HEALTH_DEADLINE", 0.2)
    with pytest.raises(PlayFailed) as ei:
        w.renew(["etcd"])
    assert "demo-etcd-2, step etcd.roll" in str(ei.value)
    assert restarted == ["demo-etcd-1", "demo-etcd-2"]  # demo-etcd-3 was not touched
    assert "put /etc/etcd/pki/server.crt" not in w.hosts["demo-etcd-3"].commands
    issued = w.serials()

    w.down.clear()
    monkeypatch.setattr(etcd_steps, "check_cluster", real)
    w.timeline.clear()
    result = w.renew(["etcd"])
    assert result["resumed_from"]["host"] == "demo-etcd-2"
    assert w.serials() == issued  # not issued twice
    # demo-etcd-2 still owed its restart (its marker says so); demo-etcd-1 is not restarted again.
    assert [t for t in members_rolled(w.timeline) if t.startswith(("restart", "certs"))] == [
        "restart 2",
        "certs 3",
        "restart 3",
    ]


def test_three_masters_restart_one_at_a_time_each_while_the_others_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch, plan_name="prod")
    result = w.renew(["kubernetes"])
    masters = w.plan.by_role("master")
    urls = {m.name: f"https://{m.address}:6443" for m in masters}
    seen = [t for t in w.timeline if t.startswith("readyz") or "kube-apiserver" in t]
    # Per master: the two others ready, its API server restarted, itself ready again.
    i = 0
    for m in masters:
        others = {f"readyz {urls[o.name]}" for o in masters if o.name != m.name}
        restart = next(j for j in range(i, len(seen)) if seen[j].startswith(f"{m.name}:"))
        assert others <= set(seen[i:restart]), m.name
        assert seen[restart + 1].startswith(f"readyz {urls[m.name]}")
        i = restart + 1
    assert set(result["apiserver_restart_seconds"]) == {m.name for m in masters}
    assert not any("one master" in n for n in result["notes"])


def test_a_dry_run_lists_each_nodes_steps_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    before = w.serials()
    result = w.renew(["etcd", "kubernetes"], dry_run=True)
    assert w.serials() == before and w.connected == [] and w.timeline == []
    assert not (w.state.path / "playbooks").exists()
    actions = result["actions"]
    issue = [a for a in actions if a.startswith("local: local: issue again from the existing CAs")]
    assert len(issue) == 1 and "etcd-server-demo-etcd-1" in issue[0] and "admin" in issue[0]
    assert "demo-etcd-2: restart etcd (if running)" in actions
    assert "demo-master-1: run /usr/local/bin/kubeadm certs renew all (as root)" in actions
    assert result["plan"][1].startswith("etcd members one at a time")


def test_a_cluster_without_kubernetes_is_refused_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, monkeypatch)
    w.state.record_phase("kubernetes", "failed", 1.0, "x")
    with pytest.raises(day2_certs.NotReadyForRenewal, match="its kubernetes phase is failed") as ei:
        w.renew(["kubernetes"])
    assert "--up-to kubernetes" in (ei.value.hint or "")
    with pytest.raises(Exception, match="nothing to renew"):
        w.renew([])


# containerd's ctr as the restart script uses it, over a directory: containers/ holds one file
# per container (its task's status), signals/ what was sent. A task ignores SIGTERM when
# IGNORE_TERM is set (as an API server draining its watches does); on SIGKILL it stops and "the
# kubelet" runs a new container at once.
STAND_IN_CTR = r"""#!/bin/sh
d=$CTR_DIR
shift 2
case "$1 $2" in
  "containers list") ls "$d/containers" ;;
  "tasks ls")
    echo "TASK PID STATUS"
    for c in $(ls "$d/containers"); do echo "$c 1 $(cat "$d/containers/$c")"; done ;;
  "tasks kill")
    sig=$4 id=$5
    echo "$sig" >> "$d/signals/$id"
    if [ "$sig" = SIGKILL ] || [ -z "${IGNORE_TERM:-}" ]; then
      echo STOPPED > "$d/containers/$id"
      echo RUNNING > "$d/containers/new-$id"
    fi ;;
esac
"""


def _stand_in_ctr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ignore_term: bool) -> Path:
    d = tmp_path / "ctr"
    (d / "containers").mkdir(parents=True)
    (d / "signals").mkdir()
    (d / "containers" / "c1").write_text("RUNNING\n")
    (tmp_path / "bin").mkdir()
    ctr = tmp_path / "bin" / "ctr"
    ctr.write_text(STAND_IN_CTR)
    ctr.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("CTR_DIR", str(d))
    if ignore_term:
        monkeypatch.setenv("IGNORE_TERM", "1")
    return d


def test_a_container_that_stops_on_sigterm_is_not_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.bootstrap.steps.kubernetes.certs import restart_container

    d = _stand_in_ctr(tmp_path, monkeypatch, ignore_term=False)
    r = fakes.run_locally(restart_container("kube-scheduler"))
    assert r.ok and r.stdout.strip() == "new-c1", (r.stdout, r.stderr)
    assert (d / "signals" / "c1").read_text().split() == ["SIGTERM"]


def test_a_container_still_running_after_the_grace_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.bootstrap.steps.kubernetes import certs as kcerts

    d = _stand_in_ctr(tmp_path, monkeypatch, ignore_term=True)
    monkeypatch.setattr(kcerts, "STOP_GRACE", 1)
    started = time.monotonic()
    r = fakes.run_locally(kcerts.restart_container("kube-apiserver"))
    took = time.monotonic() - started
    assert r.ok and r.stdout.strip() == "new-c1", (r.stdout, r.stderr)
    assert (d / "signals" / "c1").read_text().split() == ["SIGTERM", "SIGKILL"]
    # Killed after the grace, not after the minute a draining API server would take.
    assert 1 <= took < 10, took


def test_no_running_container_is_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.bootstrap.steps.kubernetes.certs import restart_container

    d = _stand_in_ctr(tmp_path, monkeypatch, ignore_term=False)
    (d / "containers" / "c1").write_text("STOPPED\n")
    r = fakes.run_locally(restart_container("kube-apiserver"))
    assert r.exit_status == 3 and "no running kube-apiserver container" in r.stderr


def test_the_cli_keeps_vkp_certs_name_and_adds_renew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from provisioner.cli import main

    w = World(tmp_path, monkeypatch)
    listed = CliRunner().invoke(main, ["certs", "demo", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    names = [c["name"] for c in json.loads(listed.stdout)["certificates"]]
    assert names[:3] == ["ca", "etcd-ca", "front-proxy-ca"]
    text = CliRunner().invoke(main, ["certs", "demo"])
    assert text.exit_code == 0 and "etcd-server-demo-etcd-1" in text.stdout

    nothing = CliRunner().invoke(main, ["certs", "renew", "demo"])
    assert nothing.exit_code == 2 and "--etcd, --kubernetes, or --all" in nothing.output
    before = w.serials()
    dry = CliRunner().invoke(main, ["certs", "renew", "demo", "--all", "--dry-run", "-o", "json"])
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert doc["ok"] and doc["dry_run"] and doc["parts"] == ["etcd", "kubernetes"]
    assert w.serials() == before

    done = CliRunner().invoke(main, ["certs", "renew", "demo", "--etcd", "--yes", "-o", "json"])
    assert done.exit_code == 0, done.output
    renewed = {r["name"]: r["serial"] for r in json.loads(done.stdout)["renewed"]}
    after = {
        c["name"]: c["serial"]
        for c in json.loads(CliRunner().invoke(main, ["certs", "demo", "-o", "json"]).stdout)["certificates"]
    }
    assert after["etcd-server-demo-etcd-1"] == renewed["etcd-server-demo-etcd-1"]
    assert int(after["etcd-server-demo-etcd-1"], 16) == w.serials()["etcd-server-demo-etcd-1"]
    assert w.serials()["etcd-server-demo-etcd-1"] != before["etcd-server-demo-etcd-1"]


def test_a_ctrl_c_between_two_members_resumes_at_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import signal
    import threading

    from provisioner import stop
    from provisioner.errors import Interrupted

    w = World(tmp_path, monkeypatch)
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def ctrl_c_once_member_1_rolled(line: str) -> None:
        # As a user reading the progress would: the first member done, the second not begun. The
        # CLI's handler raises in the main thread, wherever it waits (found on the lab: the next
        # run then started over, issuing every certificate again).
        if re.search(r"demo-etcd-1\s+etcd\.roll\s+changed", line):
            signal.pthread_kill(main, signal.SIGINT)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop.install_signal_handlers()
    try:
        with pytest.raises(Interrupted):
            day2_certs.renew_certs("demo", ["etcd"], ctrl_c_once_member_1_rolled)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    issued = w.serials()
    assert [t for t in members_rolled(w.timeline) if t.startswith("restart")] == ["restart 1"]

    stop.reset()
    w.timeline.clear()
    result = w.renew(["etcd"])
    assert result["resumed_from"] is not None and result["resumed_from"]["host"] == "demo-etcd-2"
    assert w.serials() == issued  # not issued twice
    assert [t for t in members_rolled(w.timeline) if t.startswith(("restart", "certs"))] == [
        "certs 2", "restart 2", "certs 3", "restart 3",
    ]  # fmt: skip
