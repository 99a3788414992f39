"""kubernetes.binaries on a real lab guest, from a mirror served on the lab bridge.

The mirror is a small HTTP server on 198.18.0.1 with dl.k8s.io's layout, holding stand-in
executables (shell scripts) and their .sha256 files: the step downloads, verifies and installs
them exactly as it would the real binaries. What is asserted is what an operator would check:
the files are in /usr/local/bin, 0755 root, and run; a second run changes nothing; a file whose
checksum differs is refused with both checksums and nothing at all is installed; an unreachable
source fails with a message that says how to provide the artifacts.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from provisioner.bootstrap.artifacts import BINARIES, probe_source
from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.errors import ArtifactError, ExitCode
from provisioner.lab import guest as lab_guest
from provisioner.lab import paths
from provisioner.plan import NodePlan, make_plan
from provisioner.spec import ClusterSpec, load_spec
from provisioner.ssh.commands import Cmd, sudo
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState
from tests.lab import guests
from tests.unit.test_spec import LAB_ENV

pytestmark = pytest.mark.lab

CLUSTER = "arttest"
# The dev plan takes .90 (etcd), .91 (master), .92 (worker); only the worker is booted.
POOL = "198.18.0.90-198.18.0.99"
VERSION = "1.30.4"
GID = "vkp-test-art92"
MAC = "00:50:56:18:00:5c"


class _NoPKI:
    def cert_pem(self, name: str) -> bytes:
        raise AssertionError("the artifact steps use no certificates")

    def key_pem(self, name: str) -> bytes:
        raise AssertionError("the artifact steps use no keys")


def _stand_in(name: str, tag: str) -> bytes:
    return f'#!/bin/sh\necho "{name} v{VERSION} {tag}"\n'.encode()


def _publish(root: Path, base: str, files: dict[str, bytes], sums: dict[str, str] | None = None) -> None:
    d = root / base / f"v{VERSION}" / "bin" / "linux" / "amd64"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
        digest = (sums or {}).get(name) or hashlib.sha256(data).hexdigest()
        # Both formats the upstream release has used: "<hex>" and "<hex>  <file>".
        (d / f"{name}.sha256").write_text(digest + ("\n" if name == "kubeadm" else f"  {name}\n"))


@dataclass
class Mirror:
    root: Path
    url: str


@pytest.fixture(scope="module")
def mirror(lab_bridge: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("mirror")
    good = {n: _stand_in(n, "good") for n in BINARIES}
    _publish(root, "good", good)
    # kubeadm verifies, kubelet's published checksum is of other content: the set must be refused.
    bad = {n: _stand_in(n, "bad") for n in BINARIES}
    _publish(root, "bad", bad, sums={"kubelet": hashlib.sha256(b"another build").hexdigest()})
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((paths.GATEWAY, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(root, f"http://{paths.GATEWAY}:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((paths.GATEWAY, 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    plan_node: NodePlan
    state: ClusterState
    conn: Connection

    def sh(self, script: str) -> str:
        return self.conn.run(sudo(Cmd.shell(script)), check=False).stdout

    def wipe(self) -> None:
        self.sh("rm -f /usr/local/bin/kubeadm /usr/local/bin/kubelet /usr/local/bin/kubectl")

    def installed(self) -> list[str]:
        return self.sh("ls -A /usr/local/bin").split()


@pytest.fixture(scope="module")
def node(lab_image: Path, lab_bridge: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("artifacts")
    guests_dir = home / "guests"
    spec = _spec("upstream")
    worker = make_plan(spec).by_role("worker")[0]
    guests.free_address(GID, worker.address, guests_dir)
    state = ClusterState.create_or_load(CLUSTER, home=home / "state")
    guests.boot_node(
        state, GID, worker.name, worker.address, MAC, image_root=lab_image, guests_dir=guests_dir
    )
    state.write_known_hosts([(worker.name, worker.address)])
    conn = guests.connect_node(state, worker.name, worker.address, connect_deadline=60)
    try:
        guests.wait_booted(conn, deadline=300.0, status_timeout=180)
        yield Node(worker, state, conn)
    finally:
        conn.close()
        lab_guest.destroy_guest(GID, guests_dir=guests_dir)


def _spec(source: str) -> ClusterSpec:
    env = LAB_ENV | {"VKP_NETWORK_POOL": POOL, "VKP_K8S_ARTIFACTS": source}
    return load_spec(None, name=CLUSTER, plan="dev", env=env)


PLAYBOOK = parse_playbook(
    [{"play": "binaries", "phase": "kubernetes", "hosts": "worker", "steps": ["kubernetes.binaries"]}],
    source="test",
)


def _run(node: Node, source: str) -> dict[str, object]:
    spec = _spec(source)
    plan = replace(make_plan(spec), nodes=(node.plan_node,))
    cluster = Cluster(spec=spec, plan=plan, state=None, pki=_NoPKI())
    report = run_playbook(
        PLAYBOOK, cluster, {node.plan_node.name: node.conn}, phases={"kubernetes"}, log=print
    )
    [result] = report.results
    return {"status": result.status, "round_trips": result.round_trips}


def _failure(node: Node, source: str) -> ArtifactError:
    # A local source is verified on this machine before the play touches any host, so its
    # failure stops the run itself; a remote source's shows as the node's failed step.
    with pytest.raises((PlayFailed, ArtifactError)) as ei:
        _run(node, source)
    assert ei.value.exit_code == ExitCode.ARTIFACTS
    if isinstance(ei.value, ArtifactError):
        assert not source.startswith("http"), "a remote source is only read on the node"
        return ei.value
    [failed] = [r for r in ei.value.report.results if r.status == "failed"]
    assert isinstance(failed.exception, ArtifactError)
    assert failed.exception.message in str(ei.value)
    return failed.exception


def test_good_mirror_installs_verified_binaries_once(node: Node, mirror: Mirror) -> None:
    node.wipe()
    source = f"{mirror.url}/good"
    assert _run(node, source)["status"] == "changed"
    for name in BINARIES:
        path = f"/usr/local/bin/{name}"
        assert node.sh(f"stat -c '%a %U:%G' {path}").strip() == "755 root:root"
        want = hashlib.sha256(_stand_in(name, "good")).hexdigest()
        assert node.sh(f"sha256sum < {path}").split()[0] == want
        # Runs as the login user, from PATH.
        out = node.conn.run(Cmd.shell(f"PATH=/usr/local/bin:$PATH {name}")).stdout.strip()
        assert out == f"{name} v{VERSION} good"
    assert sorted(node.installed()) == sorted(BINARIES), "no staging directory is left behind"
    # Checked against the published checksums, nothing downloaded or changed.
    again = _run(node, source)
    assert again == {"status": "ok", "round_trips": 1}  # the three .sha256 files, in one command


def test_checksum_mismatch_installs_nothing(node: Node, mirror: Mirror) -> None:
    node.wipe()
    source = f"{mirror.url}/bad"
    err = _failure(node, source)
    published = hashlib.sha256(b"another build").hexdigest()
    actual = hashlib.sha256(_stand_in("kubelet", "bad")).hexdigest()
    assert err.message.startswith("kubelet from mirror " + source)
    assert f"expected sha256 {published}, got {actual}" in err.message
    assert "Nothing was installed" in err.message
    # Not even kubeadm, which verified before kubelet was found bad.
    assert node.installed() == []


def test_mismatch_leaves_a_good_install_untouched(node: Node, mirror: Mirror) -> None:
    node.wipe()
    assert _run(node, f"{mirror.url}/good")["status"] == "changed"
    _failure(node, f"{mirror.url}/bad")
    for name in BINARIES:
        want = hashlib.sha256(_stand_in(name, "good")).hexdigest()
        assert node.sh(f"sha256sum < /usr/local/bin/{name}").split()[0] == want
    assert sorted(node.installed()) == sorted(BINARIES)


def test_unreachable_mirror_fails_clearly(node: Node, lab_bridge: str) -> None:
    node.wipe()
    source = f"http://{paths.GATEWAY}:{_closed_port()}/k8s"
    err = _failure(node, source)
    assert f"Kubernetes v{VERSION} artifacts are not available" in err.message
    assert f"kubeadm.sha256 ({source}/v{VERSION}/bin/linux/amd64/kubeadm.sha256)" in err.message
    assert "refused" in err.message
    assert err.hint is not None and "--up-to runtime" in err.hint and "local:" in err.hint
    assert node.installed() == []


def test_missing_file_on_the_mirror_fails_clearly(node: Node, mirror: Mirror) -> None:
    node.wipe()
    err = _failure(node, f"{mirror.url}/no-such-release")
    assert "HTTP 404 (no such file there)" in err.message


def test_local_directory_is_verified_here_and_pushed(node: Node, tmp_path: Path) -> None:
    node.wipe()
    files = {n: _stand_in(n, "local") for n in BINARIES}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items())
    )
    assert _run(node, f"local:{tmp_path}")["status"] == "changed"
    for name in BINARIES:
        assert node.sh(f"stat -c '%a %U:%G' /usr/local/bin/{name}").strip() == "755 root:root"
    assert sorted(node.installed()) == sorted(BINARIES)
    assert _run(node, f"local:{tmp_path}")["status"] == "ok"
    (tmp_path / "kubectl").write_bytes(b"#!/bin/sh\necho tampered\n")
    err = _failure(node, f"local:{tmp_path}")
    assert "kubectl from local directory" in err.message and "SHA256SUMS" in err.message
    assert node.sh("cat /usr/local/bin/kubectl") == files["kubectl"].decode(), "the good install stays"


def test_probe_source_against_the_mirror(mirror: Mirror) -> None:
    lines: list[str] = []
    probe_source(_spec(f"{mirror.url}/good").kubernetes, lines.append)
    assert "serves Kubernetes v1.30.4" in lines[0]
    with pytest.raises(ArtifactError) as ei:
        probe_source(_spec(f"{mirror.url}/nothing-here").kubernetes, lines.append)
    assert ei.value.exit_code == ExitCode.ARTIFACTS and "HTTP 404" in ei.value.message
