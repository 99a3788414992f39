"""The shared lab cluster as the tests of tests/lab/test_cluster_bootstrap.py look at it: vkp and
kubectl run as a user would, the cluster's state, its nodes over SSH, waits, HTTP, background
probes that count failures, and vSphere-side acts (a VM destroyed as a host failure would)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pyVmomi import vim

from provisioner.bootstrap.etcd_client import check_cluster
from provisioner.bootstrap.pki import load_pki
from provisioner.lab import guest as lab_guests
from provisioner.lab import paths
from provisioner.state import ClusterState
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

REPO = Path(__file__).resolve().parents[2]

SPEC = str(REPO / "inventory" / "lab.yaml")

ETCD = ["lab-etcd-1", "lab-etcd-2", "lab-etcd-3"]

RUNTIME_NODES = ["lab-master-1", "lab-worker-1", "lab-worker-2"]

def vkp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, *args], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )

def state(env: dict[str, str]) -> ClusterState:
    os.environ["VKP_STATE_DIR"] = env["VKP_STATE_DIR"]
    try:
        return ClusterState.load("lab")
    finally:
        del os.environ["VKP_STATE_DIR"]

def etcd_report(env: dict[str, str]) -> Any:
    st = state(env)
    endpoints = [f"https://{st.nodes[n].address}:2379" for n in ETCD]
    return check_cluster(endpoints, ETCD, load_pki(st))

def on_node(env: dict[str, str], node: str, command: str) -> subprocess.CompletedProcess[str]:
    return vkp(env, "ssh", "lab", node, "--", command)

def interrupted(env: dict[str, str], *args: str, at: str, timeout: float = 600) -> str:
    """Run vkp with args, send it SIGINT (a user's Ctrl-C) once a line of its progress matches
    the regular expression at, and return what it printed. It must still have been running then,
    and must stop with exit 130."""
    proc = subprocess.Popen(
        [VKP, *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    pattern, seen, deadline = re.compile(at), [], time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line)
        if pattern.search(line) or time.monotonic() > deadline:
            break
    printed = "".join(seen)
    assert pattern.search(seen[-1] if seen else ""), f"vkp {args[0]} never printed {at!r}: {printed[-3000:]}"
    proc.send_signal(signal.SIGINT)
    printed += proc.stderr.read()
    proc.wait(timeout=180)
    assert proc.returncode == 130, f"exit {proc.returncode}: {printed[-3000:]}"
    return printed

WORKERS = ["lab-worker-1", "lab-worker-2"]

KUBE_NODES = ["lab-master-1", *WORKERS]

def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The operator's kubectl (the lab's own v1.20.2, as `vkp lab env` puts it on PATH)."""
    return subprocess.run(
        [str(paths.BIN / "kubectl"), "--kubeconfig", env["KUBECONFIG"], *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )

def kube_json(env: dict[str, str], *args: str) -> Any:
    r = kubectl(env, *args, "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def ready_nodes(env: dict[str, str]) -> dict[str, str]:
    """{node name: kubelet version} of the nodes whose Ready condition is True."""
    out = {}
    for n in kube_json(env, "get", "nodes")["items"]:
        conditions = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        if conditions.get("Ready") == "True":
            out[n["metadata"]["name"]] = n["status"]["nodeInfo"]["kubeletVersion"]
    return out

def wait_for(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"{what}: not after {timeout:.0f}s (last: {last!r})")

def http_get(host: str, port: int, timeout: float = 5) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while data := sock.recv(4096):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")

def exec_http(env: dict[str, str], pod: str, host: str, port: int | str) -> str:
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"
    r = kubectl(env, "exec", pod, "--", "sh", "-c", script)
    return r.stdout if r.returncode == 0 else f"exit {r.returncode}: {r.stderr}"

def http_call(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    """(status, body) of one request to url (http://host:port/) from this machine."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()

def node_serial(env: dict[str, str], node: str, path: str) -> str:
    """The serial of the certificate at path on node, as openssl prints it (upper-case hex)."""
    r = on_node(env, node, f"sudo openssl x509 -noout -serial -in {path}")
    assert r.returncode == 0 and r.stdout.startswith("serial="), (node, path, r.stdout, r.stderr)
    return r.stdout.strip().split("=", 1)[1]

def all_serials(env: dict[str, str]) -> dict[tuple[str, str], str]:
    out = {}
    for node in ETCD:
        for f in ("server.crt", "peer.crt"):
            out[(node, f)] = node_serial(env, node, f"/etc/etcd/pki/{f}")
    for f in ("apiserver.crt", "apiserver-etcd-client.crt", "apiserver-kubelet-client.crt"):
        out[("lab-master-1", f)] = node_serial(env, "lab-master-1", f"/etc/kubernetes/pki/{f}")
    return out

def etcd_started_at(env: dict[str, str], node: str) -> int:
    """When the member's etcd last started, in seconds since the epoch (the lab's guests share
    the host's clock, so members compare)."""
    r = on_node(env, node, 'date -d "$(systemctl show etcd -p ActiveEnterTimestamp --value)" +%s')
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())

class Probe:
    """A loop in the background: etcd writes (through whichever member answers, as a client with
    every endpoint does) or `kubectl get nodes`; counts failures and the longest failed stretch."""

    def __init__(self, name: str, attempt: Any) -> None:
        self.name, self.attempt = name, attempt
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.attempt()
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
                self.failed += 1
                self.errors.append(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                failing_since = t if failing_since is None else failing_since
                self.longest = max(self.longest, time.monotonic() - failing_since)
            else:
                self.ok += 1
                failing_since = None
            self._stop.wait(0.2)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def summary(self) -> str:
        return (f"{self.name}: {self.ok} ok, {self.failed} failed, longest failure {self.longest:.1f}s"
                + (f"; e.g. {self.errors[0]}" if self.errors else ""))  # fmt: skip

def destroy_vm(lab: LabHandle, name: str) -> None:
    """Power a node's VM off and destroy it through vCenter, as a host failure would lose it;
    until the lab's hypervisor has removed its guest."""
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        vm = next(v for v in view.view if v.name == name)
        view.Destroy()
        for start in (vm.PowerOffVM_Task, vm.Destroy_Task):
            task = start()
            while task.info.state not in ("success", "error"):
                time.sleep(0.1)
            assert task.info.state == "success", task.info.error

    def gone() -> bool:
        return name not in {g.hostname for g in lab_guests.list_guests(paths.GUESTS)}

    wait_for(f"{name}'s guest gone", gone, timeout=120)

def kubelet_started_at(env: dict[str, str], node: str) -> int:
    """When the node's kubelet last started, in seconds since the epoch (shared host clock)."""
    r = on_node(env, node, 'date -d "$(systemctl show kubelet -p ActiveEnterTimestamp --value)" +%s')
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())

def unschedulable(env: dict[str, str], node: str) -> bool:
    r = kubectl(env, "get", "node", node, "-o", "jsonpath={.spec.unschedulable}", "--request-timeout=3s")
    return r.returncode == 0 and r.stdout.strip() == "true"
