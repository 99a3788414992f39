"""vkp etcd snapshot and restore without a cluster.

The node scripts run for real in a local shell, with stand-ins for etcdctl, etcdutl, systemctl
and chown on PATH that do to files what the real ones do; the restore playbook runs over
scripted hosts (tests/unit/fakes.py). The lab suite runs both against a real cluster
(test_10a of tests/lab/test_cluster_bootstrap.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from provisioner import resources
from provisioner.bootstrap import phases, runner
from provisioner.bootstrap.engine import Cluster, ServiceFact
from provisioner.bootstrap.pki import ensure_pki, load_pki
from provisioner.bootstrap.playbook import load_playbook
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.bootstrap.steps import etcd as etcd_steps
from provisioner.bootstrap.steps import etcd_restore as steps
from provisioner.bootstrap.steps.kubernetes.settings import MANIFESTS_DIR
from provisioner.cli import main
from provisioner.day2 import etcd_restore, etcd_snapshot
from provisioner.day2.etcd_snapshot import SnapshotInvalid, SnapshotRefused, TargetExists
from provisioner.errors import CommandFailed, ExitCode
from provisioner.plan import make_plan
from provisioner.spec import PKISpec, load_spec
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState, NodeRecord
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

ENV = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
DB = "the etcd database of demo\n" * 40

# etcdctl / etcdutl as far as the scripts use them: what they do to files, and their JSON.
FAKE_ETCD_TOOL = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
tool = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(f"{tool} api={os.environ.get('ETCDCTL_API', '-')} {' '.join(args)}\n")
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
pos = [a for a in args if not a.startswith("-") and a != "json"]
if pos[:2] == ["snapshot", "save"]:
    assert "PRIVATE KEY" in open(opts["key"]).read() and "CERTIFICATE" in open(opts["cacert"]).read()
    open(pos[2], "w").write(os.environ["FAKE_DB"])
    print("Snapshot saved at " + pos[2])
elif pos[:2] == ["snapshot", "status"]:
    if os.environ.get("FAKE_STATUS_FAIL"):
        sys.exit("snapshot file corrupted")
    size = os.path.getsize(pos[2])
    print(json.dumps({"hash": 3735928559, "revision": 4242, "totalKey": 321, "totalSize": size}))
elif pos[:2] == ["endpoint", "status"]:
    header = {"cluster_id": 14841639068965178418, "member_id": 10276657743932975437, "revision": 4242}
    print(json.dumps([{"Endpoint": opts["endpoints"], "Status": {"header": header, "version": "3.4.23"}}]))
elif pos[:2] == ["snapshot", "restore"]:
    if os.environ.get("FAKE_RESTORE_FAIL"):
        sys.exit("restore failed")
    d = opts["data-dir"]
    os.makedirs(d + "/member/snap")
    open(d + "/member/snap/db", "w").write(open(pos[2]).read())
    json.dump(opts, open(d + "/restored-with.json", "w"))
else:
    sys.exit("unexpected: " + " ".join(args))
"""
FAKE_LOGGER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_LOG"\n'


def _tool(bin_dir: Path, name: str, text: str) -> None:
    p = bin_dir / name
    p.write_text(text)
    p.chmod(0o755)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin directory first on PATH with etcdctl, systemctl and chown stand-ins; their log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "etcdctl", FAKE_ETCD_TOOL)
    _tool(bin_dir, "systemctl", FAKE_LOGGER)
    _tool(bin_dir, "chown", FAKE_LOGGER)
    log = tmp_path / "tools.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_DB", DB)
    return log


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterState:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    spec = load_spec(None, name="demo", plan="small", env=ENV)
    st = ClusterState.create_or_load("demo")
    st.save_spec(spec.to_dict())
    plan = make_plan(spec)
    for n in plan.nodes:
        st.save_node(NodeRecord(n.name, n.role, n.address))
    ensure_pki(st, plan, PKISpec("ecdsa"))
    return st


def run_sh(cmd: Cmd, stdin: bytes | None = None) -> Result:
    p = subprocess.run(["sh", "-c", cmd.render()], input=stdin, capture_output=True, timeout=60, check=False)
    return Result(p.returncode, p.stdout.decode(), p.stderr.decode())


class LocalLink:
    """A node that is this machine: the snapshot script runs in a local shell."""

    def __init__(self, state: ClusterState, node: str, *, corrupt: bool = False) -> None:
        self.name = node
        self.corrupt = corrupt
        self.commands: list[str] = []
        self.stdins: list[bytes] = []
        self.remote_dirs: list[str] = []
        self.closed = False

    def run(
        self, cmd: Cmd, *, check: bool = True, timeout: float = 300.0, stdin: bytes | None = None
    ) -> Result:
        self.commands.append(cmd.masked())
        self.stdins.append(stdin or b"")
        r = run_sh(cmd, stdin)
        if check and r.exit_status:
            raise CommandFailed(self.name, cmd.masked(), r.exit_status, r.stdout, r.stderr)
        return r

    def download(self, remote: str, into: IO[bytes]) -> None:
        self.remote_dirs.append(str(Path(remote).parent))
        data = Path(remote).read_bytes()
        into.write(data[:-1] + b"X" if self.corrupt else data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def healthy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which endpoints answer healthy (all but those listed as down)."""
    down: list[str] = []
    monkeypatch.setattr(etcd_snapshot, "_healthy", lambda endpoint, pki: endpoint not in down)
    return down


def take(state: ClusterState, links: list[LocalLink], **kw: Any) -> dict[str, Any]:
    corrupt = kw.pop("corrupt", False)

    def link(st: ClusterState, node: str) -> LocalLink:
        links.append(LocalLink(st, node, corrupt=corrupt))
        return links[-1]

    return etcd_snapshot.take_snapshot("demo", lambda _: None, link=link, **kw)


# -- snapshot ---------------------------------------------------------------------------------


def test_a_snapshot_comes_from_a_healthy_member_checked_and_private(
    state: ClusterState, tools: Path, healthy: list[str]
) -> None:
    first = state.nodes["demo-etcd-1"].address
    healthy.append(f"https://{first}:2379")
    links: list[LocalLink] = []
    result = take(state, links)
    (link,) = links
    second = state.nodes["demo-etcd-2"].address
    assert link.name == "demo-etcd-2" and link.closed

    path = Path(result["path"])
    assert path.parent == state.path / "snapshots"
    assert path.read_text() == DB
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    sha = hashlib.sha256(DB.encode()).hexdigest()
    assert (result["sha256"], result["revision"], result["keys"]) == (sha, 4242, 321)
    assert isinstance(result["seconds"], float)
    sums = Path(f"{path}.sha256")
    assert sums.read_text() == f"{sha}  {path.name}\n"
    meta = json.loads(Path(f"{path}.json").read_text())
    assert meta["cluster_id"] == state.cluster_id and meta["member"] == "demo-etcd-2"
    assert meta["etcd_cluster_id"] == format(14841639068965178418, "x")
    assert (meta["etcd_version"], meta["revision"], meta["keys"]) == ("3.4.23", 4242, 321)
    assert meta["sha256"] == sha
    for f in (sums, Path(f"{path}.json")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600

    # etcdctl on the node went to that member alone, with the key from stdin, never in argv.
    calls = tools.read_text()
    assert f"--endpoints=https://{second}:2379 --cacert=" in calls and "snapshot save" in calls
    assert "snapshot status -w json" in calls
    assert b"PRIVATE KEY" in link.stdins[0] and "PRIVATE KEY" not in " ".join(link.commands)
    assert link.commands[-1].startswith("rm -rf -- /var/tmp/vkp-etcd-snapshot.")
    assert not Path(link.remote_dirs[0]).exists()


def test_a_snapshot_that_fails_its_check_leaves_nothing_on_the_node(
    tools: Path, state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node's script, run here against the stand-in etcdctl: the snapshot is made, its check
    # fails, and neither it nor the client key stays behind.
    monkeypatch.setenv("FAKE_STATUS_FAIL", "1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    before = set(Path("/var/tmp").glob("vkp-etcd-snapshot.*"))
    cmd = etcd_snapshot.snapshot_command("https://198.18.0.21:2379")
    bundle = etcd_snapshot.cert_bundle(load_pki(state))
    p = subprocess.run(["sh", "-c", cmd.render()], input=bundle, capture_output=True, check=False)
    assert p.returncode != 0 and b"snapshot file corrupted" in p.stderr, p.stderr
    assert "snapshot save" in tools.read_text()
    assert set(Path("/var/tmp").glob("vkp-etcd-snapshot.*")) == before
    assert list(run_dir.iterdir()) == []


def test_a_copy_that_differs_from_the_nodes_file_is_not_kept(
    state: ClusterState, tools: Path, healthy: list[str]
) -> None:
    links: list[LocalLink] = []
    with pytest.raises(SnapshotInvalid, match="changed on the way") as ei:
        take(state, links, corrupt=True)
    assert ei.value.exit_code == ExitCode.SPEC
    assert list((state.path / "snapshots").iterdir()) == []  # no file, no partial copy
    assert not Path(links[0].remote_dirs[0]).exists()


def test_no_healthy_member_is_a_clear_error_before_any_node_is_contacted(
    state: ClusterState, tools: Path, healthy: list[str]
) -> None:
    healthy += [f"https://{state.nodes[n].address}:2379" for n in sorted(state.nodes) if "etcd" in n]
    links: list[LocalLink] = []
    with pytest.raises(Exception, match="no etcd member of cluster demo answers healthy"):
        take(state, links)
    assert links == []


def test_keep_removes_the_oldest_of_the_default_directory(
    state: ClusterState, tools: Path, healthy: list[str]
) -> None:
    directory = state.path / "snapshots"
    directory.mkdir(mode=0o700)
    old = ["20250101T000000Z.db", "20250102T000000Z.db", "20250103T000000Z.db"]
    for i, name in enumerate(old):
        for suffix in ("", ".sha256", ".json"):
            (directory / f"{name}{suffix}").write_text("x")
        os.utime(directory / name, (1_700_000_000 + i, 1_700_000_000 + i))
    (directory / "before-upgrade.db").write_text("the user's own")
    result = take(state, [], keep=2)
    left = sorted(p.name for p in directory.iterdir())
    new = Path(result["path"]).name
    assert left == sorted([
        "20250103T000000Z.db", "20250103T000000Z.db.json", "20250103T000000Z.db.sha256",
        new, f"{new}.json", f"{new}.sha256", "before-upgrade.db",
    ])  # fmt: skip
    assert result["pruned"] == [str(directory / n) for n in old[:2]]


def test_file_writes_elsewhere_and_never_replaces(
    state: ClusterState, tools: Path, healthy: list[str], tmp_path: Path
) -> None:
    target = tmp_path / "backup" / "demo.db"
    target.parent.mkdir()
    result = take(state, [], file=target)
    assert Path(result["path"]) == target and target.read_text() == DB
    assert Path(f"{target}.json").is_file() and Path(f"{target}.sha256").is_file()
    links: list[LocalLink] = []
    with pytest.raises(TargetExists, match="already exists") as ei:
        take(state, links, file=target)
    assert ei.value.exit_code == ExitCode.USAGE and links == []


# -- checking a file before a restore ---------------------------------------------------------


def write_snapshot(directory: Path, state: ClusterState, data: str = DB, **meta: Any) -> Path:
    path = directory / "20260101T000000Z.db"
    path.write_text(data)
    sha = hashlib.sha256(data.encode()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{sha}  {path.name}\n")
    doc = {"cluster": state.name, "cluster_id": state.cluster_id, "sha256": sha, "revision": 4242,
           "keys": 321, "taken_at": "2026-01-01T00:00:00+00:00", "member": "demo-etcd-1"} | meta  # fmt: skip
    Path(f"{path}.json").write_text(json.dumps(doc))
    return path


def test_a_file_that_is_not_the_snapshot_taken_is_refused(state: ClusterState, tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, state)
    assert etcd_snapshot.verify_snapshot(path, state).revision == 4242
    path.write_text(DB[:-10])  # cut short
    with pytest.raises(SnapshotInvalid, match="is not the snapshot that was taken") as ei:
        etcd_snapshot.verify_snapshot(path, state)
    assert ei.value.exit_code == ExitCode.SPEC
    path = write_snapshot(tmp_path, state)
    Path(f"{path}.json").unlink()
    with pytest.raises(SnapshotInvalid, match=r"20260101T000000Z.db.json missing beside it") as ei:
        etcd_snapshot.verify_snapshot(path, state)
    assert ei.value.exit_code == ExitCode.SPEC


def test_another_clusters_snapshot_is_refused(state: ClusterState, tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, state, cluster="prod", cluster_id="0000-other")
    with pytest.raises(SnapshotRefused) as ei:
        etcd_snapshot.verify_snapshot(path, state)
    assert ei.value.exit_code == ExitCode.PREFLIGHT
    msg = str(ei.value)
    assert "snapshot of cluster 'prod' (id 0000-other), not of cluster 'demo'" in msg
    assert state.cluster_id in msg


# -- the restore script on a member ---------------------------------------------------------------


def restore_cmd(root: Path, snap: Path, stamp: str = "abc run1") -> Cmd:
    return Cmd.shell(
        steps._RESTORE_SCRIPT, str(snap), "demo-etcd-2", "demo-etcd-1=https://a:2380,demo-etcd-2=https://b:2380",
        "https://b:2380", "vkp-demo-restore-run1", str(root / "etcd"), str(root / "etcd.before-restore-run1"),
        str(root / "restored"), stamp,
    )  # fmt: skip


@pytest.fixture
def member(tmp_path: Path, tools: Path) -> Path:
    root = tmp_path / "node"
    (root / "etcd" / "member").mkdir(parents=True)
    (root / "etcd" / "member" / "old").write_text("the data before")
    (root / "snap.db").write_text(DB)
    return root


def test_the_restore_makes_a_new_data_dir_and_keeps_the_old(member: Path, tools: Path) -> None:
    r = run_sh(restore_cmd(member, member / "snap.db"))
    assert r.exit_status == 0, r.stderr
    assert (member / "etcd" / "member" / "snap" / "db").read_text() == DB
    assert (member / "etcd.before-restore-run1" / "member" / "old").read_text() == "the data before"
    flags = json.loads((member / "etcd" / "restored-with.json").read_text())
    assert flags == {
        "data-dir": str(member / "etcd.restoring"),
        "name": "demo-etcd-2",
        "initial-cluster": "demo-etcd-1=https://a:2380,demo-etcd-2=https://b:2380",
        "initial-cluster-token": "vkp-demo-restore-run1",
        "initial-advertise-peer-urls": "https://b:2380",
    }
    assert (member / "restored").read_text() == "abc run1\n"
    assert not (member / "snap.db").exists()  # it holds the cluster's Secrets
    log = tools.read_text()
    assert "systemctl stop etcd" in log and f"chown -R etcd:etcd -- {member / 'etcd.restoring'}" in log
    assert "etcdctl api=3 snapshot restore" in log  # Debian's 3.4 client has no etcdutl

    # Once done, the same run's retry changes nothing.
    tools.write_text("")
    assert run_sh(restore_cmd(member, member / "snap.db")).exit_status == 0
    assert tools.read_text() == ""


def test_the_restore_prefers_etcdutl(member: Path, tools: Path) -> None:
    _tool(Path(os.environ["PATH"].split(":")[0]), "etcdutl", FAKE_ETCD_TOOL)
    assert run_sh(restore_cmd(member, member / "snap.db")).exit_status == 0
    assert "etcdutl api=- snapshot restore" in tools.read_text()


def test_a_restore_cut_short_is_finished_and_never_loses_the_old_data(
    member: Path, tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RESTORE_FAIL", "1")
    assert run_sh(restore_cmd(member, member / "snap.db")).exit_status != 0
    assert (member / "etcd" / "member" / "old").is_file()  # untouched
    assert not (member / "etcd.before-restore-run1").exists()
    monkeypatch.delenv("FAKE_RESTORE_FAIL")
    # Killed after the old data was moved aside and the new one put in, before the marker.
    (member / "etcd").rename(member / "etcd.before-restore-run1")
    (member / "etcd").mkdir()
    (member / "etcd" / "half").write_text("this run's restore, cut short")
    assert run_sh(restore_cmd(member, member / "snap.db")).exit_status == 0
    assert (member / "etcd.before-restore-run1" / "member" / "old").read_text() == "the data before"
    assert (member / "etcd" / "member" / "snap" / "db").read_text() == DB
    assert not (member / "etcd" / "half").exists()


# -- the playbook over scripted nodes --------------------------------------------------------------


class Node(fakes.FakeHost):
    """A node whose moves, systemctl and restore script change what its facts show."""

    def __init__(self, name: str, seq: list[str]) -> None:
        super().__init__(name)
        self.seq = seq
        self.services["etcd"] = ServiceFact(active="active", enabled="enabled")
        self.restored_with: list[str] | None = None
        if "master" in name:
            for c in steps.CONTROL_PLANE:
                self.files[f"{MANIFESTS_DIR}/{c}.yaml"] = (f"{c} manifest".encode(), "600", "root:root")

    def close(self) -> None:
        pass

    def _command(self, args: list[str]) -> Result:
        if any(needle in " ".join(args) for needle in self.fail):
            return Result(1, "", "")  # a command that fails changes nothing here (run() answers)
        if args[:2] == ["sh", "-c"]:
            script, params = args[2], args[4:]
            if script == steps._MOVE_SCRIPT:
                src, dst = params
                self.seq.append(f"{self.name} mv {src} {dst}")
                if src in self.files:
                    self.files[dst] = self.files.pop(src)
                    return Result(0, "moved\n", "")
            elif script == steps._WAIT_GONE_SCRIPT:
                self.seq.append(f"{self.name} wait {' '.join(params[1:])}")
            elif script == steps._RESTORE_SCRIPT:
                self.seq.append(f"{self.name} restore")
                self.restored_with = params
                self.files[steps.MARKER] = ((params[8] + "\n").encode(), "644", "root:root")
                self.files.pop(params[0], None)
                self.services["etcd"] = ServiceFact(active="inactive", enabled="enabled")
            return Result(0, "", "")
        if args[0] == "systemctl":
            self.seq.append(f"{self.name} {' '.join(args)}")
            if args[1:] == ["stop", "etcd"]:
                self.services["etcd"] = ServiceFact(active="inactive", enabled="enabled")
            if args[1:] == ["start", "etcd"]:
                self.services["etcd"] = ServiceFact(active="active", enabled="enabled")
        return Result(0, "", "")


class PKI:
    def cert_pem(self, name: str) -> bytes:
        return b"-----BEGIN CERTIFICATE-----\n"

    def key_pem(self, name: str) -> bytes:
        return b"-----BEGIN PRIVATE KEY-----\n"


@pytest.fixture
def local_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))
    monkeypatch.setattr(etcd_steps, "check_cluster", lambda eps, names, pki: checked.append("etcd") or "ok")
    monkeypatch.setattr(steps, "wait_ready", lambda url, cluster, what: checked.append(f"readyz {what}"))
    monkeypatch.setattr(steps, "wait_healthy", lambda cluster: checked.append("kubernetes") or {"ok": True})
    return checked


def restore_cluster(state: ClusterState, snap: Path, run: str = "run1") -> Cluster:
    spec = load_spec(None, name="demo", plan="small", env=ENV)
    sha = hashlib.sha256(snap.read_bytes()).hexdigest()
    params = {"snapshot": str(snap), "sha256": sha, "run": run, "kubernetes": True}
    return Cluster(spec=spec, plan=make_plan(spec), state=state, pki=PKI(), params=params)


PB = load_playbook(resources.playbook("etcd-restore"))
ALL = set(PB.phases)


def test_the_playbook_stops_the_api_before_etcd_and_brings_all_back(
    state: ClusterState, tmp_path: Path, local_checks: list[str]
) -> None:
    snap = write_snapshot(tmp_path, state)
    cluster = restore_cluster(state, snap)
    seq: list[str] = []
    hosts = {n.name: Node(n.name, seq) for n in cluster.plan.nodes}
    report = run_playbook(PB, cluster, hosts, phases=ALL, log=lambda _: None)
    assert report.count("failed") == 0

    etcd = [n.name for n in cluster.plan.by_role("etcd")]
    masters = [n.name for n in cluster.plan.by_role("master")]
    first = {line: i for i, line in reversed(list(enumerate(seq)))}
    last = {line: i for i, line in enumerate(seq)}
    waits = [last[f"{m} wait kube-apiserver kube-controller-manager kube-scheduler"] for m in masters]
    stops = [first[f"{e} systemctl stop etcd"] for e in etcd]
    restores = [first[f"{e} restore"] for e in etcd]
    starts = [first[f"{e} systemctl start etcd"] for e in etcd]
    back = [first[f"{m} systemctl restart kubelet"] for m in masters]
    # Every API server gone before any member stops; all restored before any starts.
    assert max(waits) < min(stops) and max(stops) < min(restores) and max(restores) < min(starts)
    assert max(starts) < min(back)
    for e in etcd:
        node = hosts[e]
        assert node.restored_with is not None
        assert node.restored_with[1] == e and node.restored_with[4] == "vkp-demo-restore-run1"
        assert node.restored_with[3] == f"https://{node_address(cluster, e)}:2380"
        assert node.restored_with[5:7] == ["/var/lib/etcd", "/var/lib/etcd.before-restore-run1"]
        assert f"put {steps.RESTORE_DIR}/{cluster.params['sha256'][:16]}.db" in node.commands
    for m in masters:
        assert all(f"{MANIFESTS_DIR}/{c}.yaml" in hosts[m].files for c in steps.CONTROL_PLANE)
    for w in (n.name for n in cluster.plan.by_role("worker")):
        assert f"{w} systemctl restart kubelet" in seq
    assert local_checks[0] == "etcd" and local_checks[-1] == "kubernetes"


def node_address(cluster: Cluster, name: str) -> str:
    return next(n.address for n in cluster.plan.nodes if n.name == name)


def test_a_failed_restore_resumes_and_restores_no_member_twice(
    state: ClusterState, tmp_path: Path, local_checks: list[str]
) -> None:
    snap = write_snapshot(tmp_path, state)
    cluster = restore_cluster(state, snap)
    seq: list[str] = []
    hosts = {n.name: Node(n.name, seq) for n in cluster.plan.nodes}
    hosts["demo-etcd-2"].fail = {"snapshot restore": Result(1, "", "disk full")}
    with pytest.raises(PlayFailed, match="demo-etcd-2") as ei:
        run_playbook(PB, cluster, hosts, phases=ALL, log=lambda _: None)
    assert "resumes at etcd_restore.restore on demo-etcd-2" in (ei.value.hint or "")
    assert not any("systemctl start etcd" in s for s in seq)  # no member started on half a restore

    seq.clear()
    hosts["demo-etcd-2"].fail = {}
    report = run_playbook(PB, cluster, hosts, phases=ALL, log=lambda _: None)
    assert report.resumed_from is not None and report.resumed_from["step"] == "etcd_restore.restore"
    assert [s for s in seq if s.endswith(" restore")] == ["demo-etcd-2 restore"]
    assert not any(" wait " in s or "stop etcd" in s for s in seq)  # done before the failure

    # A run killed outright leaves no failure to resume from: everything is looked at again, and
    # the markers keep every member from being restored a second time.
    state.progress_path("etcd-restore").unlink()
    seq.clear()
    run_playbook(PB, cluster, hosts, phases=ALL, log=lambda _: None)
    assert not any(s.endswith(" restore") or "stop etcd" in s for s in seq)
    assert not any("put " in c for h in hosts.values() for c in h.commands[-5:])


# -- the lifecycle function and the command ------------------------------------------------------


def test_dry_run_checks_the_file_and_lists_the_steps_contacting_nothing(
    state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_connections(*_: Any) -> Any:
        raise AssertionError("a dry run connects to nothing")

    monkeypatch.setattr(phases, "connect_all", no_connections)
    snap = write_snapshot(tmp_path, state)
    state.record_phase("kubernetes", "done", 1.0, None)
    result = etcd_restore.restore_etcd("demo", snap, lambda _: None, dry_run=True)
    text = "\n".join(result["actions"])
    assert f"demo-master-1: run sh -c '{steps._MOVE_SCRIPT}' sh {MANIFESTS_DIR}/kube-apiserver.yaml" in text
    assert "secret)" in text and "demo-etcd-3: run sh -c" in text and "snapshot restore" in text
    assert "vkp-demo-restore-<new-id>" in text and "systemctl restart kubelet" in text
    assert result["resumes"] is None and result["revision"] == 4242
    assert not (state.path / "playbooks").exists()

    other = write_snapshot(tmp_path, state, cluster_id="someone-else")
    with pytest.raises(SnapshotRefused):
        etcd_restore.restore_etcd("demo", other, lambda _: None, dry_run=True)


def test_a_restore_run_again_keeps_its_id_until_it_ends_well(
    state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[dict[str, Any]] = []
    failing = [True]

    def fake_run_day2(name: str, spec: Any, plan: Any, st: Any, *, params: Any, log: Any, **kw: Any) -> Any:
        if kw.get("dry_run"):
            return {"plays": []}
        runs.append(dict(params))
        if failing[0]:
            raise PlayFailed("etcd-2 failed", hint="", exit_code=7, report=None)  # type: ignore[arg-type]
        return {"outputs": {}}

    monkeypatch.setattr(etcd_restore, "run_day2", fake_run_day2)
    snap = write_snapshot(tmp_path, state)
    with pytest.raises(PlayFailed):
        etcd_restore.restore_etcd("demo", snap, lambda _: None)
    pending = state.path / "playbooks" / "etcd-restore.pending.json"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    dry = etcd_restore.restore_etcd("demo", snap, lambda _: None, dry_run=True)
    assert dry["resumes"] == runs[0]["run"]
    failing[0] = False
    done = etcd_restore.restore_etcd("demo", snap, lambda _: None)
    assert runs[1]["run"] == runs[0]["run"] == done["run"] and runs[1]["kubernetes"] is False
    assert done["backup_dir"] == f"/var/lib/etcd.before-restore-{done['run']}"
    assert not pending.exists()
    etcd_restore.restore_etcd("demo", snap, lambda _: None)
    assert runs[2]["run"] != runs[0]["run"]  # the same file again is a new restore


def test_the_command_refuses_another_clusters_snapshot_with_exit_5(
    state: ClusterState, tmp_path: Path
) -> None:
    other = write_snapshot(tmp_path, state, cluster="prod", cluster_id="someone-else")
    r = CliRunner().invoke(main, ["etcd", "restore", "demo", "--from", str(other), "--yes", "-o", "json"])
    assert r.exit_code == ExitCode.PREFLIGHT, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and "snapshot of cluster 'prod'" in doc["error"]["message"]


def test_state_export_leaves_the_snapshots_here(state: ClusterState) -> None:
    from provisioner.handover import _files

    (state.path / "snapshots").mkdir(mode=0o700)
    (state.path / "snapshots" / "20260101T000000Z.db").write_text(DB)
    files = _files(state.path)
    assert "spec.yaml" in files and not any(f.startswith("snapshots/") for f in files)
