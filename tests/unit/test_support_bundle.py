"""`vkp support-bundle`: what goes in, what is written down as missing, and that no secret does.

Nodes are scripted stand-ins for vkp's SSH connections that answer as a cluster's nodes would,
secrets and all (a kubelet journal quoting a bootstrap token, a join configuration an
interrupted run left behind); the lab suite makes a real one (test_10c in
tests/lab/test_cluster_bootstrap.py).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import logs
from provisioner.day2 import bundle as bundle_mod
from provisioner.day2.bundle import BundleError, support_bundle
from provisioner.day2.bundle_nodes import CLOUD_INIT_OUTPUT, NodeCollector, files_cmd, split_files
from provisioner.errors import ExitCode, SSHError
from provisioner.spec import load_spec
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState, NodeRecord, atomic_write
from tests.unit.fakes import run_locally
from tests.unit.test_cli_plan import vkp as _vkp
from tests.unit.test_spec import LAB_ENV

PASSWORD = LAB_ENV["VKP_VSPHERE_PASSWORD"]
TOKEN = "abcdef.0123456789abcdef"
CERT_KEY = "f" * 64
KEY_BODY = [
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
]
PEM_KEY = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n-----END PRIVATE KEY-----\n"
CLIENT_KEY_DATA = base64.b64encode(PEM_KEY.encode()).decode()
NODES = [
    NodeRecord("demo-etcd-1", "etcd", "198.18.0.10", "esx-1", "vm-10", "u-10"),
    NodeRecord("demo-master-1", "master", "198.18.0.11", "esx-1", "vm-11", "u-11"),
    NodeRecord("demo-worker-1", "worker", "198.18.0.12", "esx-2", "vm-12", "u-12"),
    NodeRecord("demo-worker-2", "worker", "198.18.0.13", "esx-3", "vm-13", "u-13"),
]
JOIN_YAML = f"""apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
discovery:
  bootstrapToken:
    token: "{TOKEN}"
    apiServerEndpoint: 198.18.0.251:6443
  tlsBootstrapToken: "{TOKEN}"
controlPlane:
  certificateKey: {CERT_KEY}
"""
CERTS = [{"name": "ca", "not_after": "2035-01-01T00:00:00+00:00", "days_left": 3650}]
MANIFEST = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n"


class Node:
    """A node as the bundle sees it through a Connection: it answers the bundle's commands."""

    become = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.commands: list[str] = []
        self.closed = False

    def open(self) -> Node:
        return self

    def close(self) -> None:
        self.closed = True

    def run(
        self, cmd: Cmd, *, check: bool = True, timeout: float = 0, stdin: bytes | None = None,
        retry_safe: bool = False,
    ) -> Result:  # fmt: skip
        assert not check, "a bundle command never raises on a non-zero exit: it writes it down"
        args = [a for a in cmd.args if isinstance(a, str)]
        assert args[:3] == ["sudo", "-n", "--"], args
        args = args[3:]
        self.commands.append(" ".join(args))
        text = " ".join(args)
        if args[:2] == ["sh", "-c"] and "journalctl" in args[2] and "SYSLOG_IDENTIFIER=sudo" not in args[2]:
            unit = args[4]
            return Result(0, f"{self.name} {unit}[1]: started, join token {TOKEN}, key {PEM_KEY}\n", "")
        if "SYSLOG_IDENTIFIER=sudo" in text:
            return Result(
                0, f"sudo: vkp : COMMAND=/usr/local/bin/kubeadm join --config x --token {TOKEN}\n", ""
            )
        if args[:2] == ["sh", "-c"] and "tail -c" in args[2]:
            if self.name.startswith("demo-etcd"):
                return Result(3, "", "")  # no cloud-init log there
            return Result(0, f"Cloud-init finished on {self.name}\n", "")
        if args[:2] == ["sh", "-c"] and "ls -la" in args[2]:
            return Result(0, "total 8\n-rw------- 1 root root 10 kubeadm-join.yaml\n", "")
        if args[:2] == ["sh", "-c"] and "#vkp-file" in args[2]:
            out = (
                f"#vkp-file /etc/kubernetes/vkp/kubeadm-join.yaml\n{JOIN_YAML}\n"
                f"#vkp-file /etc/kubernetes/manifests/kube-apiserver.yaml\n{MANIFEST}\n"
                "#vkp-file /var/lib/kubelet/kubeadm-flags.env\nKUBELET_KUBEADM_ARGS=--node-ip=1.2.3.4\n"
            )
            return Result(0, out, "")
        if "kubectl" in args[0]:
            what = args[4]
            if what == "events":
                return Result(1, "", "error: the server doesn't have a resource type events\n")
            if what == "configmap":
                return Result(
                    0, f"data:\n  ClusterConfiguration: |\n    client-key-data: {CLIENT_KEY_DATA}\n", ""
                )
            return Result(0, f"NAME STATUS\n{what}-listed Ready\n", "")
        raise AssertionError(f"unexpected command {args}")


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterState:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VKP_VSPHERE_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)
    st = ClusterState.create_or_load("demo")
    spec = load_spec(None, name="demo", plan="dev", env=LAB_ENV)
    st.save_spec(spec.to_dict())
    for n in NODES:
        st.save_node(n)
    for phase in ("vms", "etcd", "runtime", "kubernetes"):
        st.record_phase(phase, "done", 1.0)
    (st.path / "logs").mkdir(mode=0o700)
    # A log that somehow kept a secret: the bundle scrubs again what it takes in.
    (st.path / "logs" / "20250101T000000Z-create-cluster.log").write_text(
        f"create: vCenter password {PASSWORD}\nkubeadm failed: token {TOKEN}\n"
    )
    (st.path / "pki").mkdir(mode=0o700)
    atomic_write(st.path / "pki" / "ca.key", PEM_KEY, 0o600)
    # A key body line left bare in a file vkp reads (no PEM frame around it).
    (st.path / "playbooks").mkdir(mode=0o700)
    (st.path / "playbooks" / "cluster.json").write_text(json.dumps({"done": [], "note": KEY_BODY[1]}))
    # describe-cluster reads vCenter, etcd and the API: not here.
    monkeypatch.setattr("provisioner.cluster.describe_cluster", lambda name, env=None: {"name": name})
    monkeypatch.setattr("provisioner.bootstrap.pki.list_certs", lambda name: CERTS)
    return st


def connect_all_but(*down: str) -> Any:
    nodes: dict[str, Node] = {}

    def connect(state: ClusterState, node: NodeRecord) -> Node:
        if node.name in down:
            raise SSHError(f"node {node.name} ({node.address}:22) did not answer SSH within 15 s")
        nodes[node.name] = Node(node.name)
        return nodes[node.name]

    connect.nodes = nodes  # type: ignore[attr-defined]
    return connect


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            assert m.mode == 0o600, m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
    return out


def quiet(_: str) -> None:
    pass


def test_bundle_holds_each_kind_of_file_and_its_index(demo: ClusterState, tmp_path: Path) -> None:
    connect = connect_all_but("demo-worker-2")
    lines: list[str] = []
    out = tmp_path / "b.tar.gz"
    result = support_bundle("demo", lines.append, output=out, connect=connect)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    got = members(out)
    assert {
        "index.json",
        "logs/20250101T000000Z-create-cluster.log",
        "state/spec.yaml",
        "state/state.json",
        "state/playbooks/cluster.json",
        "state/files.txt",
        "describe.json",
        "certs.json",
        "nodes/demo-etcd-1/journal-etcd.log",
        "nodes/demo-master-1/cloud-init-output.log",
        "nodes/demo-master-1/journal-containerd.log",
        "nodes/demo-master-1/journal-kubelet.log",
        "nodes/demo-master-1/kubeadm/vkp-kubeadm-join.yaml",
        "nodes/demo-master-1/kubeadm/manifests-kube-apiserver.yaml",
        "nodes/demo-master-1/kubeadm/kubelet-kubeadm-flags.env",
        "nodes/demo-master-1/kubeadm/runs.log",
        "nodes/demo-worker-1/journal-kubelet.log",
        "kubectl/nodes.txt",
        "kubectl/pods.txt",
        "kubectl/kubeadm-config.yaml",
    } <= set(got)
    assert not any(p.startswith("nodes/demo-worker-2/") for p in got)
    assert not any(p.startswith("nodes/demo-etcd-1/kubeadm") for p in got), "etcd nodes run no kubeadm"
    assert json.loads(got["describe.json"]) == {"name": "demo"}
    assert json.loads(got["certs.json"]) == CERTS
    index = json.loads(got["index.json"])
    listed = {f["path"]: f for f in index["files"]}
    assert set(listed) == set(got) - {"index.json"}
    assert all(listed[p]["bytes"] == len(got[p]) for p in listed)
    assert listed["kubectl/nodes.txt"]["source"].startswith("demo-master-1: ")
    assert "get nodes -o wide" in listed["kubectl/nodes.txt"]["source"]
    assert listed["state/spec.yaml"]["source"] == str(demo.path / "spec.yaml")
    # The unreachable node and the failed kubectl are written down, with why.
    assert index["nodes"]["demo-worker-2"]["reachable"] is False
    assert "did not answer SSH" in index["nodes"]["demo-worker-2"]["reason"]
    assert index["nodes"]["demo-worker-1"]["reachable"] is True
    assert {"what": f"demo-etcd-1 {CLOUD_INIT_OUTPUT}", "reason": "not on the node"} in index["skipped"]
    assert not any("cloud-init" in f["what"] for f in index["failed"]), "absent is not a failure"
    events = [f for f in index["failed"] if "events" in f["what"]]
    assert events and "doesn't have a resource type events" in events[0]["reason"]
    assert result["unreachable"] == ["demo-worker-2"] and result["files"] == len(got)
    # Progress: a line per node, the unreachable one said so.
    assert any(line.startswith("demo-worker-1: collecting journals (containerd, kubelet)") for line in lines)
    assert any(line.startswith("demo-worker-2: unreachable") for line in lines)
    assert all(n.closed for n in connect.nodes.values()), "every connection is closed"


def test_no_secret_of_any_kind_is_in_the_bundle(demo: ClusterState, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    support_bundle("demo", quiet, output=out, connect=connect_all_but())
    got = members(out)
    everything = b"\n".join(got.values()).decode()
    for secret in (PASSWORD, TOKEN, TOKEN.split(".")[1], CERT_KEY, CLIENT_KEY_DATA, *KEY_BODY):
        assert secret not in everything, secret
    # What was around the secrets is kept, so the files still say what they said.
    join = got["nodes/demo-master-1/kubeadm/vkp-kubeadm-join.yaml"].decode()
    assert yaml.safe_load(join)["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "198.18.0.251:6443"
    assert f'tlsBootstrapToken: "{logs.MASK}"' in join
    assert "-----BEGIN PRIVATE KEY-----" in got["nodes/demo-etcd-1/journal-etcd.log"].decode()
    config = yaml.safe_load(got["kubectl/kubeadm-config.yaml"])["data"]["ClusterConfiguration"]
    assert yaml.safe_load(config) == {"client-key-data": logs.MASK}
    assert "kube-apiserver" in got["nodes/demo-master-1/kubeadm/manifests-kube-apiserver.yaml"].decode()
    # The state listing names the key file; its content never goes in.
    assert "pki/ca.key" in got["state/files.txt"].decode()
    assert not any("ca.key" in p for p in got)


def test_a_password_variable_the_spec_names_is_scrubbed_whatever_it_is_called(
    demo: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = demo.load_spec_dict()
    spec["vsphere"].setdefault("credentials", {})["password_env"] = "VC_SECRET_PW"
    demo.save_spec(spec)
    monkeypatch.setenv("VC_SECRET_PW", "Another-Pa55")
    (demo.path / "logs" / "20250102T000000Z-describe-cluster.log").write_text("logged Another-Pa55\n")
    out = tmp_path / "b.tar.gz"
    support_bundle("demo", quiet, output=out, connect=connect_all_but())
    assert b"Another-Pa55" not in b"".join(members(out).values())


def test_a_cluster_whose_create_failed_early_still_gives_a_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    st = ClusterState.create_or_load("half")
    st.save_node(NodeRecord("half-etcd-1", "etcd"))  # the VM phase failed before its address
    st.record_phase("vms", "failed", 3.0, "clone failed")
    result = support_bundle("half", quiet, connect=bundle_mod._connect)
    path = Path(result["path"])
    assert path.parent == tmp_path and path.name.startswith("vkp-support-half-")
    got = members(path)
    index = json.loads(got["index.json"])
    assert index["nodes"]["half-etcd-1"] == {
        "role": "etcd",
        "address": None,
        "reachable": False,
        "reason": "node half-etcd-1 has no address recorded yet",
    }
    skipped = {s["what"]: s["reason"] for s in index["skipped"]}
    assert "the saved spec" in skipped and "never ran" in skipped["kubectl get nodes, pods, events"]
    assert json.loads(got["describe.json"])["phases"][0]["status"] == "failed"
    assert "state/state.json" in got


def test_an_existing_output_is_never_overwritten(demo: ClusterState, tmp_path: Path) -> None:
    out = tmp_path / "there.tar.gz"
    out.write_text("keep me")
    with pytest.raises(BundleError, match="already exists"):
        support_bundle("demo", quiet, output=out, connect=connect_all_but())
    assert out.read_text() == "keep me"
    with pytest.raises(BundleError, match="does not exist"):
        support_bundle("demo", quiet, output=tmp_path / "nodir" / "b.tar.gz", connect=connect_all_but())


def test_cli_json_and_missing_cluster(
    demo: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_mod, "_connect", connect_all_but("demo-etcd-1"))
    env = {"VKP_STATE_DIR": os.environ["VKP_STATE_DIR"], "VKP_VSPHERE_PASSWORD": PASSWORD}
    out = tmp_path / "cli.tar.gz"
    r = _vkp("support-bundle", "demo", "--file", str(out), "-o", "json", env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["path"] == str(out) and doc["unreachable"] == ["demo-etcd-1"]
    assert doc["bytes"] == out.stat().st_size
    r = _vkp("support-bundle", "nope", "-o", "json", env=env)
    assert r.exit_code == ExitCode.NOT_FOUND
    assert json.loads(r.stdout)["error"]["type"] == "NotFound"


def test_the_files_script_splits_back_into_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.env", tmp_path / "b.yaml"
    a.write_text("X=1\n#not a marker\n")
    b.write_text("k: v")  # no final newline
    res = run_locally(files_cmd((str(a), str(tmp_path / "absent"), str(b)), max_bytes=100))
    files = split_files(res.stdout)
    assert files[str(a)] == "X=1\n#not a marker\n\n"
    assert files[str(b)].strip() == "k: v"
    assert str(tmp_path / "absent") not in files


class LocalNode:
    """Runs the bundle's node scripts in a local shell (no sudo): the real scripts, no node."""

    become = False

    def run(self, cmd: Cmd, **_: Any) -> Result:
        return run_locally(cmd)


class Kept:
    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def add(self, path: str, content: str | bytes, source: str) -> None:
        self.files[path] = content if isinstance(content, str) else content.decode()

    def fail(self, what: str, source: str, reason: str) -> None:
        self.failed.append(what)

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append(what)


def test_a_missing_cloud_init_log_is_skipped_and_a_present_one_cut_to_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = Kept()
    node = NodeCollector(NODES[0], LocalNode(), kept, lines=10, max_bytes=5)  # type: ignore[arg-type]
    monkeypatch.setattr("provisioner.day2.bundle_nodes.CLOUD_INIT_OUTPUT", str(tmp_path / "absent.log"))
    node.cloud_init()
    assert kept.skipped == [f"demo-etcd-1 {tmp_path / 'absent.log'}"] and not kept.failed and not kept.files
    (tmp_path / "cloud.log").write_text("0123456789")
    monkeypatch.setattr("provisioner.day2.bundle_nodes.CLOUD_INIT_OUTPUT", str(tmp_path / "cloud.log"))
    node.cloud_init()
    assert kept.files == {"nodes/demo-etcd-1/cloud-init-output.log": "56789"}


# -- the one scrubber ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"    client-key-data: {CLIENT_KEY_DATA}\n", 'client-key-data: "********"'),
        (f'{{"client-key-data": "{CLIENT_KEY_DATA}"}}', '"client-key-data": "********"'),
        ("users:\n- name: x\n  user:\n    token: eyJhbGciOiJSUzI1NiJ9.payload.sig\n", 'token: "********"'),
        ("kubectl --token=eyJhbGciOiJSUzI1NiJ9.payload.sig get pods", "--token=******** get pods"),
        (f"  certificateKey: {CERT_KEY}", 'certificateKey: "********"'),
        ("  tlsBootstrapToken: 'sekrit-value'", "tlsBootstrapToken: '********'"),
        ("password: hunter2-also", 'password: "********"'),
        (f"join with {TOKEN} now", "join with ******** now"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
            "KEY-----****",
        ),
    ],
)
def test_mask_removes_each_kind_of_secret(text: str, kept: str) -> None:
    masked = logs.mask(text, [])
    assert kept in masked
    for secret in (
        CLIENT_KEY_DATA,
        "eyJhbGciOiJSUzI1NiJ9",
        CERT_KEY,
        "sekrit",
        "hunter2",
        TOKEN,
        "b3BlbnNzaC1rZXk",
    ):
        assert secret not in masked


def test_mask_leaves_step_names_and_prose_alone() -> None:
    for text in (
        "step kubernetes.token: create this run's bootstrap token (expires in 30 min)",
        "the passphrase is wrong",
        "VKP_VSPHERE_PASSWORD: not set",
        "volumes: [{secret: {secretName: x}}]",
        "token: {}",
    ):
        assert logs.mask(text, []) == text


def test_mask_also_removes_given_literals() -> None:
    assert logs.mask(f"x {KEY_BODY[0]} y", [], also=[KEY_BODY[0]]) == f"x {logs.MASK} y"
