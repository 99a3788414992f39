"""create-cluster end to end on inventory/lab.yaml: etcd over mTLS, containerd, real Kubernetes.

One cluster for the module (the suite's shared cluster: a Kubernetes cluster costs minutes),
taken through what a user meets: a broken template stopped before anything is uploaded, a run
killed mid-phase that resumes, a re-run that changes nothing, the Kubernetes phase stopping
clearly without artifacts, an etcd member brought back after its VM went down; then the lab's
own Kubernetes v1.20.2: a run killed during kubeadm init that converges, three Ready nodes,
the API server on the external etcd, an app served across nodes through a ClusterIP and a
NodePort, vkp's sample app keeping a vote while its API pods are replaced, a re-run that
changes nothing, workers added and drained away, etcd restored from a snapshot, certificates
renewed one node at a time under etcd writes and API calls, a support bundle with no secret in
it, a destroyed worker and etcd member repaired in place, the cluster handed to another machine
(an empty state directory) that sees it in vCenter, imports its state and uses it, a node
whose host key changed refused, and at last the delete from that other machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVmomi import vim

from provisioner.bootstrap.etcd_client import EtcdClient
from provisioner.bootstrap.pki import load_pki
from provisioner.errors import ExitCode
from provisioner.lab import kubebuild, paths
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle
from tests.lab.shared_cluster import (
    ETCD,
    KUBE_NODES,
    REPO,
    RUNTIME_NODES,
    SPEC,
    WORKERS,
    Probe,
    all_serials,
    destroy_vm,
    etcd_report,
    etcd_started_at,
    exec_http,
    http_call,
    http_get,
    interrupted,
    kube_json,
    kubectl,
    kubelet_started_at,
    on_node,
    ready_nodes,
    state,
    unschedulable,
    vkp,
    wait_for,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def env(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    e = {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    yield e
    subprocess.run([VKP, "delete-cluster", "lab", "--yes"], env=e, capture_output=True)
    lab.wait_guests_gone("lab")


def test_1_vms_then_broken_template_uploads_nothing(env: dict[str, str], tmp_path: Path) -> None:
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "vms")
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "templates"
    shutil.copytree(REPO / "templates", broken)
    conf = broken / "etcd" / "etcd.conf.yml.j2"
    conf.write_text(conf.read_text() + "\n# {{ no_such_variable }}\n")
    r = vkp(
        {**env, "VKP_TEMPLATES": str(broken)}, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime"
    )
    assert r.returncode != 0
    assert "etcd/etcd.conf.yml.j2" in r.stderr and "no_such_variable" in r.stderr, r.stderr
    for node in ETCD:
        assert on_node(env, node, "test -e /etc/etcd/pki").returncode == 1, f"{node}: something was uploaded"


def test_2_killed_run_resumes(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [VKP, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "play etcd [" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [(p["name"], p["status"]) for p in result["phases"]] == [
        ("vms", "done"),
        ("etcd", "done"),
        ("runtime", "done"),
    ]
    report = etcd_report(env)
    assert sorted(m.name for m in report.members) == ETCD
    assert report.ok and report.round_trip
    for node in RUNTIME_NODES:
        r = on_node(env, node, "systemctl is-active containerd && sudo ctr version")
        assert r.returncode == 0 and "active" in r.stdout and "Server:" in r.stdout, (
            node,
            r.stdout,
            r.stderr,
        )
    for node in ETCD:
        mode = on_node(env, node, "sudo stat -c %a:%U /var/lib/etcd").stdout.strip()
        assert mode == "700:etcd", (node, mode)


def test_3_rerun_changes_nothing(env: dict[str, str]) -> None:
    before = {n: on_node(env, n, "systemctl show -p ExecMainStartTimestamp etcd").stdout for n in ETCD}
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["changed"] == 0 and result["bootstrap"]["changed"] == 0
    assert result["bootstrap"]["restarts"] == []
    assert {
        n: on_node(env, n, "systemctl show -p ExecMainStartTimestamp etcd").stdout for n in ETCD
    } == before


def test_4_without_kubernetes_artifacts_the_phase_stops_clearly(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "no-artifacts"
    empty.mkdir()
    without = {**env, "VKP_K8S_ARTIFACTS": f"local:{empty}"}
    r = vkp(without, "create-cluster", "-f", SPEC, "--yes", "-o", "json")
    assert r.returncode == ExitCode.ARTIFACTS, r.stderr
    error = json.loads(r.stdout)["error"]
    assert "kubeadm" in error["message"] and str(empty) in error["message"]
    assert "--up-to runtime" in error["hint"]
    phases = {
        p["name"]: p["status"]
        for p in json.loads(vkp(env, "describe-cluster", "lab", "-o", "json").stdout)["phases"]
    }
    assert phases == {"vms": "done", "etcd": "done", "runtime": "done", "kubernetes": "failed"}
    assert etcd_report(env).ok  # nothing before the phase was undone
    assert on_node(env, "lab-master-1", "test -e /usr/local/bin/kubeadm").returncode == 1


def test_5_etcd_member_whose_vm_went_down_comes_back(env: dict[str, str], lab: LabHandle) -> None:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        vm = next(v for v in view.view if v.name == "lab-etcd-2")
        view.Destroy()
        task = vm.PowerOffVM_Task()
        while task.info.state not in ("success", "error"):
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            etcd_report(env)
        except Exception as exc:  # noqa: BLE001 - any failure naming the member will do
            assert "198.18.0.21" in str(exc) or "lab-etcd-2" in str(exc), exc
            break
        time.sleep(0.5)
    else:
        raise AssertionError("etcd still reported 3 healthy members with lab-etcd-2's VM off")
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime")
    assert r.returncode == 0, r.stderr
    report = etcd_report(env)
    assert sorted(m.name for m in report.members) == ETCD and report.ok


# -- Kubernetes -----------------------------------------------------------------------------

WEB = "vkp-web"


def test_6_interrupted_during_kubeadm_init_then_converges(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [VKP, "create-cluster", "-f", SPEC, "--yes"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 600
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "kubernetes.init" in line or time.monotonic() > deadline:
            break
    time.sleep(8)  # well into kubeadm init: certificates and static pods written, API starting
    # Ctrl-C: the run stops within 5 s, says so, and records the phase as interrupted.
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    seen.append(rest)
    assert any("kubernetes.init" in line for line in seen), "".join(seen[-20:])
    assert proc.returncode == 130, "".join(seen[-20:])
    assert took < 5, f"SIGINT took {took:.1f}s to stop the run"
    assert "interrupted by SIGINT" in rest, rest
    assert state(env).phase("kubernetes").status == "interrupted"  # type: ignore[union-attr]
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [(p["name"], p["status"]) for p in result["phases"]][-1] == ("kubernetes", "done")
    assert "not installed" in json.dumps(result), "the health report says cluster DNS is not installed"
    r = vkp(env, "get-credentials", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    env["KUBECONFIG"] = json.loads(r.stdout)["path"]
    assert ready_nodes(env) == dict.fromkeys(KUBE_NODES, "v1.20.2")
    # The README's quick start: merged into a kubeconfig that already holds other contexts, the
    # cluster becomes the current context, so plain `kubectl get nodes` reaches it.
    operator = Path(env["VKP_STATE_DIR"]).parent / "operator-kube" / "config"
    operator.parent.mkdir(mode=0o700, exist_ok=True)
    others = [("prod", "https://192.0.2.1:6443"), ("staging", "https://192.0.2.2:6443")]
    operator.write_text(json.dumps({  # JSON is YAML: kubectl reads it as is
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in others],
        "users": [{"name": n, "user": {"token": "not-a-real-token"}} for n, _ in others],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n, _ in others],
    }))  # fmt: skip
    mine = {**env, "KUBECONFIG": str(operator)}
    r = vkp(mine, "get-credentials", "lab", "--merge", "-o", "json")
    assert r.returncode == 0, r.stderr
    merged = json.loads(r.stdout)
    assert merged["merged_into"] == str(operator)
    assert (merged["switched"], merged["previous_context"]) == (True, "prod")

    def plain_kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        # No --kubeconfig, no --context: what a user types after the merge.
        kubectl_bin = str(paths.BIN / "kubectl")
        return subprocess.run([kubectl_bin, *args], env=mine, capture_output=True, text=True, timeout=180)

    r = plain_kubectl("get", "nodes", "-o", "name")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(f"node/{n}" for n in KUBE_NODES)
    r = plain_kubectl("config", "get-contexts", "-o", "name")
    assert sorted(r.stdout.split()) == ["lab", "prod", "staging"], "the other contexts are kept"
    r = vkp(mine, "get-credentials", "lab", "--merge")
    assert r.returncode == 0 and "already in" in r.stdout, r.stdout + r.stderr
    for node in KUBE_NODES:
        r = on_node(env, node, "sudo ls /etc/kubernetes/vkp")
        assert r.returncode == 0 and "kubeadm-" not in r.stdout, (node, "a file holding the token is left")
    # The run's join token is a secret: not in anything vkp printed or logged.
    state_dir = Path(env["VKP_STATE_DIR"])
    logged = (
        r.stderr
        + "".join(seen)
        + "".join(
            p.read_text(errors="replace") for p in state_dir.rglob("*") if p.is_file() and p.suffix != ".key"
        )
    )
    tokens = kube_json(env, "get", "secrets", "-n", "kube-system", "--field-selector",
                       "type=bootstrap.kubernetes.io/token")["items"]  # fmt: skip
    assert tokens, "a bootstrap token was created for the joins"
    for t in tokens:
        secret = base64.b64decode(t["data"]["token-secret"]).decode()
        assert secret not in logged
    # Each run kept its full debug log, and none holds the vCenter password or a private key.
    run_logs = sorted((state_dir / "lab" / "logs").glob("*.log"))
    assert any("create-cluster" in p.name for p in run_logs), run_logs
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in run_logs)
    log_text = "".join(p.read_text(errors="replace") for p in run_logs)
    assert " DEBUG " in log_text, "the run logs hold vkp's debug lines whatever -v said"
    assert env["VKP_VSPHERE_PASSWORD"] not in log_text
    for key in state_dir.rglob("*.key"):
        body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
        assert body and not any(ln in log_text for ln in body), f"a line of {key.name} is in a run log"


def test_7_api_server_uses_the_external_etcd(env: dict[str, str]) -> None:
    pods = kube_json(env, "get", "pods", "-n", "kube-system")["items"]
    assert not [p for p in pods if p["metadata"]["name"].startswith("etcd-")], "no stacked etcd pod"
    (apiserver,) = [p for p in pods if p["metadata"]["name"].startswith("kube-apiserver-")]
    command = apiserver["spec"]["containers"][0]["command"]
    st = state(env)
    servers = ",".join(f"https://{st.nodes[n].address}:2379" for n in ETCD)
    assert f"--etcd-servers={servers}" in command
    assert "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt" in command
    # What the API server stores is in the etcd VMs: the kube-system namespace's key.
    r = vkp(env, "etcdctl", "lab", "--", "get", "/registry/namespaces/kube-system", "--keys-only")
    assert r.returncode == 0 and "/registry/namespaces/kube-system" in r.stdout, r.stderr


APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: vkp-web}
spec:
  replicas: 2
  selector: {matchLabels: {app: vkp-web}}
  template:
    metadata: {labels: {app: vkp-web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: vkp-web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: vkp-web}
spec:
  selector: {app: vkp-web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: vkp-web-nodeport}
spec:
  type: NodePort
  selector: {app: vkp-web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: vkp-client}
spec:
  containers:
  - name: client
    image: IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
"""


def test_8_an_app_served_across_nodes(env: dict[str, str]) -> None:
    record = kubebuild.read_record(paths.ARTIFACTS)
    assert record is not None
    r = kubectl(env, "apply", "-f", "-", stdin=APP.replace("IMAGE", str(record["workload_image"])))
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "rollout", "status", "deployment/vkp-web", "--timeout=180s")
    assert r.returncode == 0, r.stderr + kubectl(env, "describe", "pods").stdout[-3000:]
    kubectl(env, "wait", "--for=condition=Ready", "pod/vkp-client", "--timeout=120s")
    web = [p for p in kube_json(env, "get", "pods", "-l", "app=vkp-web")["items"]]
    assert sorted(p["spec"]["nodeName"] for p in web) == WORKERS, "one replica on each worker"
    names = {p["metadata"]["name"] for p in web}
    # Pod to pod, across nodes, without NAT in between: each replica answers from the other.
    for a, b in ((web[0], web[1]), (web[1], web[0])):
        answer = exec_http(env, a["metadata"]["name"], b["status"]["podIP"], 8080)
        assert b["metadata"]["name"] in answer, answer
    # Through the ClusterIP Service from another pod, found the way pods find Services here
    # (no cluster DNS in the lab): the variables Kubernetes injects. Both replicas answer.
    seen = set()
    for _ in range(30):
        answer = exec_http(env, "vkp-client", "$VKP_WEB_SERVICE_HOST", "$VKP_WEB_SERVICE_PORT")
        seen |= {n for n in names if n in answer}
        if seen == names:
            break
    assert seen == names, f"the ClusterIP balanced over {seen}, wanted {names}"
    # Through the NodePort from this machine, by every node's address.
    port = kube_json(env, "get", "service", "vkp-web-nodeport")["spec"]["ports"][0]["nodePort"]
    st = state(env)
    for node in KUBE_NODES:
        answer = http_get(st.nodes[node].address, port)
        assert "200 OK" in answer and any(n in answer for n in names), (node, answer)


SAMPLE = "vkp-sample"


def api_pods(env: dict[str, str]) -> set[str]:
    pods = kube_json(env, "get", "pods", "-n", SAMPLE, "-l", "app.kubernetes.io/component=api")["items"]
    return {p["metadata"]["name"] for p in pods}


def test_8b_sample_app_keeps_votes_when_the_api_pod_goes(env: dict[str, str]) -> None:
    r = vkp(env, "sample-app", "deploy", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr + kubectl(env, "describe", "pods", "-n", SAMPLE).stdout[-3000:]
    deployed = json.loads(r.stdout)
    assert deployed["warnings"] == [], deployed
    workers = {state(env).nodes[n].address for n in WORKERS}
    url = deployed["url"]
    assert url.removeprefix("http://").split(":")[0] in workers, url
    assert deployed["deployments"] == {"redis": "1/1", "api": "2/2", "ui": "1/1"}
    # The page, and a vote through its form, from this machine through the NodePort.
    page = http_get(url.removeprefix("http://").split(":")[0], deployed["node_port"])
    assert "200 OK" in page and "La Tavola" in page, page
    status, _ = http_call(url, "POST", "/vote", b"id=sakura")
    assert status == 303
    status, body = http_call(url, "POST", "/api/restaurants/sakura/vote", b"")
    assert status == 200 and json.loads(body)["votes"] == 2, body
    before = api_pods(env)
    assert len(before) == 2
    r = kubectl(env, "delete", "pods", "-n", SAMPLE, "-l", "app.kubernetes.io/component=api", "--wait=true")
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "rollout", "status", "-n", SAMPLE, "deployment/api", "--timeout=180s")
    assert r.returncode == 0, r.stderr
    assert not before & api_pods(env), "the API pods are new ones"

    def votes() -> dict[str, int] | None:
        try:
            status, body = http_call(url, "GET", "/api/votes")
        except OSError:
            return None  # the Service's endpoints and rules are still catching up
        return json.loads(body)["votes"] if status == 200 else None

    assert wait_for("the votes read through the NodePort", votes, timeout=60) == {"sakura": 2}
    status, page = http_call(url, "GET", "/")
    assert status == 200 and 'id="votes-sakura">2<' in page
    # Gone, and gone again: the second delete is a no-op.
    r = vkp(env, "sample-app", "delete", "lab", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"] is True, r.stdout + r.stderr
    r = kubectl(env, "get", "namespace", SAMPLE)
    assert r.returncode != 0 and "NotFound" in r.stderr, r.stdout + r.stderr
    r = vkp(env, "sample-app", "delete", "lab", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"] is False, r.stdout + r.stderr


def test_9_rerun_of_the_whole_cluster_changes_nothing(env: dict[str, str]) -> None:
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["changed"] == 0 and result["bootstrap"]["changed"] == 0, result["bootstrap"]
    assert result["bootstrap"]["restarts"] == []


def test_10_resize_adds_a_ready_worker_and_drains_it_away(env: dict[str, str], lab: LabHandle) -> None:
    # Killed during the new worker's kubeadm join, then run again: the join converges.
    proc = subprocess.Popen([VKP, "resize", "lab", "--workers", "3", "--yes"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        seen.append(line)
        if "play worker-join" in line or time.monotonic() > deadline:
            break
    time.sleep(6)  # into kubeadm join: the kubelet's TLS bootstrap
    proc.kill()
    proc.wait()
    assert any("play worker-join" in line for line in seen), "".join(seen[-20:])
    r = vkp(env, "resize", "lab", "--workers", "3", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert ready_nodes(env) == dict.fromkeys([*KUBE_NODES, "lab-worker-3"], "v1.20.2")
    r = on_node(env, "lab-worker-3", "sudo ls /etc/kubernetes/vkp")
    assert r.returncode == 0 and "kubeadm-join.yaml" not in r.stdout, "no file holding the token is left"
    # Its pods reach the others' pods: the new node's routes, and theirs to it, are in place.
    r = kubectl(env, "run", "vkp-probe", "--image", kubebuild.WORKLOAD_IMAGE, "--image-pull-policy=Never",
                "--restart=Never", "--overrides",
                json.dumps({"spec": {"nodeName": "lab-worker-3"}}), "--", "sleep", "600")  # fmt: skip
    assert r.returncode == 0, r.stderr
    kubectl(env, "wait", "--for=condition=Ready", "pod/vkp-probe", "--timeout=120s")
    web = kube_json(env, "get", "pods", "-l", "app=vkp-web")["items"][0]
    assert web["metadata"]["name"] in exec_http(env, "vkp-probe", web["status"]["podIP"], 8080)
    gone_address = state(env).nodes["lab-worker-3"].address
    assert all(f"via {gone_address} " in on_node(env, n, "ip -4 route show").stdout for n in KUBE_NODES)
    # The dry run shows the drain's commands and the VM it would destroy, and changes nothing.
    r = vkp(env, "resize", "lab", "--workers", "2", "--dry-run", "-o", "json")
    assert r.returncode == 0, r.stderr
    planned = json.loads(r.stdout)
    assert planned["removed"] == ["lab-worker-3"], planned
    text = "\n".join(planned["actions"])
    assert "drain lab-worker-3" in text and "delete node lab-worker-3" in text, text
    assert "destroy 1 VM(s): lab-worker-3" in text, text
    assert "lab-worker-3" in state(env).nodes and "lab-worker-3" in ready_nodes(env)
    # A bare pod would be lost by the drain, which refuses it (as kubectl does) rather than force.
    r = vkp(env, "resize", "lab", "--workers", "2", "--yes", "-o", "json")
    assert r.returncode != 0 and "vkp-probe" in r.stderr, r.stderr
    assert kubectl(env, "delete", "pod", "vkp-probe", "--wait=true").returncode == 0
    r = vkp(env, "resize", "lab", "--workers", "2", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] == ["lab-worker-3"]
    assert "lab-worker-3" not in state(env).nodes
    assert sorted(ready_nodes(env)) == KUBE_NODES
    for node in KUBE_NODES:
        routes = on_node(env, node, "ip -4 route show").stdout
        assert f"via {gone_address} " not in routes, (node, routes)
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        names = {v.name for v in view.view}
        view.Destroy()
    assert "lab-worker-3" not in names and "lab-worker-2" in names
    # The app kept both replicas through it (they live on the two first workers).
    r = kubectl(env, "rollout", "status", "deployment/vkp-web", "--timeout=60s")
    assert r.returncode == 0, r.stderr


def test_10a_etcd_snapshot_and_restore(env: dict[str, str], tmp_path: Path) -> None:
    assert kubectl(env, "create", "configmap", "cm-before", "--from-literal=at=before").returncode == 0
    r = vkp(env, "etcd", "snapshot", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    path = Path(snap["path"])
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600, snap
    assert snap["revision"] > 0 and snap["keys"] > 0, snap
    assert json.loads(Path(f"{path}.json").read_text())["cluster_id"] == state(env).cluster_id
    assert kubectl(env, "delete", "configmap", "cm-before").returncode == 0
    assert kubectl(env, "create", "configmap", "cm-after", "--from-literal=at=after").returncode == 0

    # Another cluster's snapshot (its metadata says so) is refused before anything is touched.
    other = tmp_path / "other.db"
    shutil.copyfile(path, other)
    shutil.copyfile(f"{path}.sha256", f"{other}.sha256")
    meta = json.loads(Path(f"{path}.json").read_text())
    Path(f"{other}.json").write_text(json.dumps({**meta, "cluster": "prod", "cluster_id": "not-lab"}))
    r = vkp(env, "etcd", "restore", "lab", "--from", str(other), "--yes", "-o", "json")
    assert r.returncode == ExitCode.PREFLIGHT and "snapshot of cluster 'prod'" in r.stdout, r.stdout

    # Killed once a member is restored (the control plane and every member stopped), then run
    # again: it finishes the same restore.
    restore = ("etcd", "restore", "lab", "--from", str(path), "--yes")
    t = time.monotonic()
    interrupted(env, *restore, at=r"lab-etcd-\d\s+etcd_restore\.restore\s+(ok|changed)")
    r = vkp(env, *restore, "-o", "json")
    restore_seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    restored = json.loads(r.stdout)
    assert restored["report"]["resumed_from"], "the second run resumed the first"
    names = {cm["metadata"]["name"] for cm in kube_json(env, "get", "configmaps")["items"]}
    assert "cm-before" in names and "cm-after" not in names, names

    def all_ready() -> bool:
        try:
            return sorted(ready_nodes(env)) == KUBE_NODES
        except AssertionError:  # the API still coming back
            return False

    wait_for("every node Ready after the restore", all_ready)
    report = etcd_report(env)
    assert report.ok and sorted(m.name for m in report.members) == ETCD
    # The data from before the restore is kept on every member, not deleted.
    for member in ETCD:
        assert on_node(env, member, f"sudo test -d {restored['backup_dir']}/member").returncode == 0
    assert kubectl(env, "delete", "configmap", "cm-before").returncode == 0
    print(f"etcd snapshot: {snap['seconds']:.1f}s ({snap['keys']} keys, revision {snap['revision']}); "
          f"restore killed and run again: {restore_seconds:.1f}s in all, "
          f"the second run {restored['seconds']:.1f}s")  # fmt: skip


def test_10b_certificates_renewed_one_node_at_a_time(env: dict[str, str]) -> None:
    before_serials = all_serials(env)
    before = {c["name"]: c for c in json.loads(vkp(env, "certs", "lab", "-o", "json").stdout)["certificates"]}
    st = state(env)
    pki = load_pki(st)
    # Clients made now keep the current vkp client certificate in memory (still valid after the
    # renewal: same CA); reading the files while the run replaces them would be the test's fault.
    clients = [
        EtcdClient(f"https://{st.nodes[n].address}:2379", pki.path("etcd-ca"), pki.path("vkp-etcd-client"),
                   pki.key_path("vkp-etcd-client"), timeout=2)
        for n in ETCD
    ]  # fmt: skip
    writes = 0

    def etcd_write() -> None:
        nonlocal writes
        writes += 1
        errors = []
        for c in clients:
            try:
                c.put("vkp/lab-renewal-probe", str(writes))
                return
            except Exception as exc:  # noqa: BLE001 - the next member may answer
                errors.append(f"{c.endpoint}: {exc}")
        raise RuntimeError("; ".join(errors))

    def get_nodes() -> None:
        r = kubectl(env, "get", "nodes", "--request-timeout=3s")
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip() or f"exit {r.returncode}")

    started_wall = time.time()
    t = time.monotonic()
    with Probe("etcd writes", etcd_write) as etcd_probe, Probe("kubectl get nodes", get_nodes) as api_probe:
        # Killed once the first member has restarted on its new certificates, then run again.
        renew = ("certs", "renew", "lab", "--all", "--yes")
        interrupted(env, *renew, at=r"lab-etcd-1\s+etcd\.roll\s+changed")
        r = vkp(env, *renew, "-o", "json")
    seconds = time.monotonic() - t
    print(f"vkp certs renew lab --all: {seconds:.1f}s")
    print(etcd_probe.summary())
    print(api_probe.summary())
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    print(f"API server back after its restart: {result['apiserver_restart_seconds']}")

    # New serials everywhere, and vkp certs shows the later expiry.
    after_serials = all_serials(env)
    same = [k for k, v in after_serials.items() if before_serials[k] == v]
    assert not same, f"certificates not renewed on the nodes: {same}"
    after = {c["name"]: c for c in json.loads(vkp(env, "certs", "lab", "-o", "json").stdout)["certificates"]}
    renewed = ("etcd-server-lab-etcd-1", "etcd-peer-lab-etcd-3", "apiserver-etcd-client", "vkp-etcd-client")
    for name in renewed:
        assert after[name]["not_after"] > before[name]["not_after"], name
        assert after[name]["serial"] != before[name]["serial"], name
    for ca in ("ca", "etcd-ca", "front-proxy-ca"):
        assert after[ca]["serial"] == before[ca]["serial"], ca
    assert after["etcd-server-lab-etcd-2"]["serial"] == after_serials[("lab-etcd-2", "server.crt")]

    # One member at a time: restarted in order, apart, and etcd never unwritable for long; the
    # re-run went on at the second member.
    assert result["resumed_from"], result
    assert result["restarts"] == [f"{n}:etcd" for n in ETCD[1:]], result["restarts"]
    starts = [etcd_started_at(env, n) for n in ETCD]
    assert starts == sorted(starts) and starts[0] >= int(started_wall) - 1, starts
    assert etcd_probe.ok > 0 and etcd_probe.longest < 5.0, etcd_probe.summary()
    # One master: its API server's restart is a gap, which must stay short.
    assert api_probe.ok > 0 and api_probe.longest < 60.0, api_probe.summary()
    assert any("one master" in n for n in result["notes"]), result["notes"]

    # The cluster is as the next tests need it.
    assert sorted(m.name for m in etcd_report(env).members) == ETCD
    assert wait_for("every node Ready", lambda: sorted(ready_nodes(env)) == KUBE_NODES, 120)


def test_10c_support_bundle_holds_no_secret(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    started = time.monotonic()
    r = vkp(env, "support-bundle", "lab", "--file", str(out), "-o", "json")
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["unreachable"] == [] and doc["failed"] == [], doc
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out, "r:gz") as tar:
        files = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None and m.mode == 0o600, m.name
            files[m.name.split("/", 1)[1]] = f.read()
    index = json.loads(files["index.json"])
    assert {f["path"] for f in index["files"]} == set(files) - {"index.json"}
    assert all(n["reachable"] for n in index["nodes"].values()), index["nodes"]
    assert [p for p in files if p.startswith("logs/") and p.endswith(".log")], sorted(files)
    described = json.loads(files["describe.json"])
    assert described["name"] == "lab" and described["needs_repair"] == [], described
    assert {k: v["status"] for k, v in described["checks"].items()} == dict.fromkeys(
        ("vcenter", "etcd", "kubernetes"), "ok"
    ), described["checks"]
    for node in ETCD:
        assert b"etcd" in files[f"nodes/{node}/journal-etcd.log"], node
    for node in KUBE_NODES:
        assert b"kubelet" in files[f"nodes/{node}/journal-kubelet.log"], node
        assert b"containerd" in files[f"nodes/{node}/journal-containerd.log"], node
        assert f"nodes/{node}/kubeadm/kubelet-kubeadm-flags.env" in files, node
    listed = files["kubectl/nodes.txt"].decode()
    assert all(node in listed for node in KUBE_NODES), listed
    assert b"kube-system" in files["kubectl/pods.txt"] and "kubectl/events.txt" in files
    certs = {c["name"]: c for c in json.loads(files["certs.json"])}
    assert {"ca", "etcd-ca", "vkp-etcd-client"} <= set(certs), sorted(certs)
    assert all(c["days_left"] > 300 for c in certs.values()), certs
    # Not one secret: the vCenter password, a bootstrap token's secret, a line of a private key.
    everything = b"\n".join(files.values()).decode(errors="replace")
    assert env["VKP_VSPHERE_PASSWORD"] not in everything
    tokens = kube_json(env, "get", "secrets", "-n", "kube-system", "--field-selector",
                       "type=bootstrap.kubernetes.io/token")["items"]  # fmt: skip
    for t in tokens:
        assert base64.b64decode(t["data"]["token-secret"]).decode() not in everything
    state_dir = Path(env["VKP_STATE_DIR"]) / "lab"
    hostkeys = [p for p in (state_dir / "hostkeys").iterdir() if p.suffix != ".pub"]
    keys = [*state_dir.rglob("*.key"), state_dir / "ssh" / "id_ed25519", *hostkeys]
    body = {
        line.strip()
        for k in keys
        if "PRIVATE KEY-----" in k.read_text()
        for line in k.read_text().splitlines()
        if "-----" not in line and len(line.strip()) >= 20
    }
    assert len(body) > 50, "the state's private keys were read"
    leaked = sorted(line for line in body if line in everything)
    assert not leaked, f"{len(leaked)} private key line(s) in the bundle"
    print(
        f"support bundle: {doc['bytes']} bytes, {doc['files']} files, {took:.1f}s; "
        f"{len(tokens)} bootstrap token(s) and {len(body)} key lines checked absent"
    )


def test_10d_repair_brings_back_a_destroyed_worker_and_etcd_member(
    env: dict[str, str], lab: LabHandle
) -> None:
    pinned = (Path(env["VKP_STATE_DIR"]) / "lab" / "ssh" / "known_hosts").read_text()
    # A worker whose VM is gone: its Node is deleted, a new VM of the same name joins.
    old = state(env).nodes["lab-worker-2"].moid
    destroy_vm(lab, "lab-worker-2")
    # describe-cluster names it, with what to run.
    r = vkp(env, "describe-cluster", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    flagged = {n["node"]: n for n in json.loads(r.stdout)["needs_repair"]}
    assert list(flagged) == ["lab-worker-2"], flagged
    t = time.monotonic()
    # Killed in its kubernetes stage (the new VM made, its binaries installed), then run again.
    repair = ("repair", "lab", "lab-worker-2", "--yes")
    interrupted(env, *repair, at=r"lab-worker-2\s+kubernetes\.binaries\s+(ok|changed)")
    r = vkp(env, *repair, "-o", "json")
    worker_seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["resumed"] is True
    stages = [(s["name"], s["status"]) for s in result["stages"]]
    assert stages == [("remove", "skipped"), ("vm", "skipped"), ("runtime", "skipped"),
                      ("kubernetes", "done")]  # fmt: skip
    assert result["bootstrap"]["kubernetes"]["resumed_from"], result["bootstrap"]
    assert state(env).nodes["lab-worker-2"].moid not in (None, old)
    assert (Path(env["VKP_STATE_DIR"]) / "lab" / "ssh" / "known_hosts").read_text() == pinned
    assert ready_nodes(env) == dict.fromkeys(KUBE_NODES, "v1.20.2")
    # Pods reach it: a pod on the new worker answers one on the other worker, and back.
    r = kubectl(env, "run", "vkp-repaired", "--image", kubebuild.WORKLOAD_IMAGE, "--image-pull-policy=Never",
                "--restart=Never", "--overrides",
                json.dumps({"spec": {"nodeName": "lab-worker-2"}}), "--", "sleep", "600")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "wait", "--for=condition=Ready", "pod/vkp-repaired", "--timeout=120s")
    assert r.returncode == 0, r.stderr
    r = kubectl(env, "rollout", "status", "deployment/vkp-web", "--timeout=180s")
    assert r.returncode == 0, r.stderr
    web = {p["spec"]["nodeName"]: p for p in kube_json(env, "get", "pods", "-l", "app=vkp-web")["items"]}
    other = web["lab-worker-1"]
    assert other["metadata"]["name"] in exec_http(env, "vkp-repaired", other["status"]["podIP"], 8080)
    kubectl(env, "delete", "pod", "vkp-repaired", "--wait=false")

    # An etcd member whose VM is gone: removed while the other two keep quorum, then added anew.
    destroy_vm(lab, "lab-etcd-3")
    t = time.monotonic()
    r = vkp(env, "repair", "lab", "lab-etcd-3", "--yes")
    etcd_seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert "lab-etcd-3 repaired" in r.stdout, r.stdout
    report = etcd_report(env)
    assert sorted(m.name for m in report.members) == ETCD and report.ok
    r = on_node(env, "lab-etcd-3", "grep initial-cluster-state /etc/etcd/etcd.conf.yml")
    assert "existing" in r.stdout, r.stdout + r.stderr
    assert sorted(ready_nodes(env)) == KUBE_NODES
    # Create-cluster over the repaired cluster changes nothing on the member.
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "etcd", "-o", "json")
    assert r.returncode == 0, r.stderr
    etcd_play = next(p for p in json.loads(r.stdout)["bootstrap"]["plays"] if p["play"] == "etcd")
    assert etcd_play["changed"] == 0, etcd_play
    print(f"repair seconds: worker {worker_seconds:.1f} (killed once, then run again), "
          f"etcd member {etcd_seconds:.1f}")  # fmt: skip


PDB = """
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: vkp-web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: vkp-web}}
"""
UPGRADE_STAGES = ["upgrade.drain", "kubernetes.binaries", "kubernetes.images", "upgrade.kubeadm",
                  "upgrade.kubelet", "upgrade.uncordon"]  # fmt: skip


def test_10e_upgrade_keeps_the_app_answering(env: dict[str, str], tmp_path: Path) -> None:
    """vkp upgrade, killed during the first worker's drain and run again to completion.

    The lab has only Kubernetes v1.20.2 (its own build from Debian's source package), so this
    re-applies the same version: it shows the whole rolling path on every node (drain with a
    PodDisruptionBudget respected, binaries and images, kubeadm, kubelet restart, Ready,
    uncordon) and that the app stays available, not a change of version. The lab sets
    kubernetes.node.skip_preflight (no crictl), so its first master re-applies with `kubeadm
    upgrade node` rather than `kubeadm upgrade apply` (steps/upgrade.py says why).
    """
    # Bare pods would stop the drain (kubectl evicts nothing no controller would recreate, and
    # vkp forces nothing: test_10 shows that refusal); the earlier tests' are done with.
    for pod in ("vkp-client", "vkp-repaired"):
        kubectl(env, "delete", "pod", pod, "--ignore-not-found", "--wait=true", "--timeout=120s")
    r = kubectl(env, "apply", "-f", "-", stdin=PDB)
    assert r.returncode == 0, r.stderr
    try:
        r = kubectl(env, "rollout", "status", "deployment/vkp-web", "--timeout=180s")
        assert r.returncode == 0, r.stderr
        st = state(env)
        port = kube_json(env, "get", "service", "vkp-web-nodeport")["spec"]["ports"][0]["nodePort"]
        addresses = [st.nodes[n].address for n in WORKERS]
        calls = 0

        def http_through_nodeport() -> None:
            nonlocal calls
            calls += 1
            answer = http_get(addresses[calls % len(addresses)], port, timeout=3)
            if "200 OK" not in answer:
                raise RuntimeError(answer.splitlines()[0] if answer else "empty answer")

        fewest_available = [2]

        def available_replicas() -> None:
            r = kubectl(env, "get", "deployment", WEB, "-o", "jsonpath={.status.availableReplicas}",
                        "--request-timeout=3s")  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(r.stderr.strip())  # the API, not the app: not a sample
            fewest_available[0] = min(fewest_available[0], int(r.stdout.strip() or 0))

        started_wall = time.time()
        t = time.monotonic()
        out, err = tmp_path / "killed.json", tmp_path / "killed.log"
        with Probe("HTTP through the NodePort", http_through_nodeport) as web, \
                Probe("vkp-web available replicas", available_replicas):  # fmt: skip
            with out.open("w") as o, err.open("w") as e:
                args = [VKP, "upgrade", "lab", "--version", "v1.20.2", "--yes", "-o", "json"]
                proc = subprocess.Popen(args, env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
                deadline = time.monotonic() + 900
                while (
                    proc.poll() is None
                    and time.monotonic() < deadline
                    and not unschedulable(env, "lab-worker-1")
                ):
                    time.sleep(0.2)
                assert proc.poll() is None, (
                    "the run ended before lab-worker-1's drain: " + err.read_text()[-3000:]
                )
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=180)
            print(
                f"killed run: exit {proc.returncode}; its last lines:\n"
                + "\n".join(err.read_text().splitlines()[-8:])
            )
            assert proc.returncode != 0
            # A killed run leaves the node it was draining cordoned: the re-run must give it back.
            assert unschedulable(env, "lab-worker-1")
            assert state(env).load_spec_dict()["kubernetes"]["version"] == "1.20.2"
            r = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL
            )
            seconds = time.monotonic() - t
        print(f"vkp upgrade lab --version v1.20.2 (killed once, then run again): {seconds:.1f}s")
        print(web.summary())
        print(f"fewest vkp-web replicas available during it: {fewest_available[0]}")
        assert r.returncode == 0, r.stderr[-5000:]
        result = json.loads(r.stdout)
        print(
            f"per node: { {n: e['seconds'] for n, e in result['nodes'].items()} }; notes: {result['notes']}"
        )
        assert result["same_version"] is True and result["to_version"] == "1.20.2"
        assert result["resumed_from"]["host"] == "lab-worker-1", result["resumed_from"]
        # Every node went through the whole path: the first master and lab-worker-1's first steps
        # in the killed run (skipped here, as done), the rest in this one.
        assert list(result["nodes"]) == KUBE_NODES, result["nodes"]
        for node, entry in result["nodes"].items():
            assert list(entry["stages"]) == UPGRADE_STAGES, (node, entry)
            assert set(entry["stages"].values()) <= {"ok", "changed", "skipped"}, (node, entry)
        assert "skipped" not in result["nodes"]["lab-worker-2"]["stages"].values()
        assert result["nodes"]["lab-worker-1"]["stages"]["upgrade.uncordon"] == "changed"
        assert all(kubelet_started_at(env, n) >= int(started_wall) - 1 for n in KUBE_NODES), (
            "a kubelet not restarted"
        )
        # The cluster is whole again, on v1.20.2, every node schedulable.
        assert ready_nodes(env) == dict.fromkeys(KUBE_NODES, "v1.20.2")
        assert not any(unschedulable(env, n) for n in KUBE_NODES)
        # The app stayed available: the budget kept a replica up, and the NodePort answered.
        assert fewest_available[0] >= 1
        assert web.ok > 0 and web.failed <= max(5, (web.ok + web.failed) // 20), web.summary()
        assert web.longest < 10.0, web.summary()
        r = kubectl(env, "rollout", "status", "deployment/vkp-web", "--timeout=180s")
        assert r.returncode == 0, r.stderr
    finally:
        # The later tests run without the budget, whatever happened here.
        kubectl(env, "delete", "poddisruptionbudget", "vkp-web", "--ignore-not-found")


# The machine that takes the cluster over: the same vCenter settings, an empty state directory.
HANDOVER_PASSPHRASE = "lab handover passphrase, not a secret"


@pytest.fixture(scope="module")
def elsewhere(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **env,
        "VKP_STATE_DIR": str(tmp_path_factory.mktemp("elsewhere")),
        "VKP_STATE_PASSPHRASE": HANDOVER_PASSPHRASE,
    }


def test_11b_another_machine_lists_describes_and_imports(
    env: dict[str, str], elsewhere: dict[str, str], tmp_path: Path
) -> None:
    made = state(env)
    roles: dict[str, int] = {}
    for n in made.nodes.values():
        roles[n.role] = roles.get(n.role, 0) + 1

    # Before the handover the other machine sees the cluster in vCenter, not as its own.
    r = vkp(elsewhere, "list-clusters", "--all", "-o", "json")
    assert r.returncode == 0, r.stderr
    (row,) = [c for c in json.loads(r.stdout)["clusters"] if c["name"] == "lab"]
    assert (row["cluster_id"], row["state"], row["in_vcenter"]) == (made.cluster_id, "remote", True)
    assert row["vms"] == roles
    r = vkp(elsewhere, "describe-cluster", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["cluster_id"] == made.cluster_id and seen["state"] == "remote"
    assert {n["name"]: (n["role"], n["address"]) for n in seen["nodes"]} == {
        n.name: (n.role, n.address) for n in made.nodes.values()
    }
    assert all(n["power_state"] == "poweredOn" and n["esxi_host"] for n in seen["nodes"]), seen["nodes"]

    out = tmp_path / "lab.vkpstate"
    exporter = {**env, "VKP_STATE_PASSPHRASE": HANDOVER_PASSPHRASE}
    r = vkp(exporter, "state", "export", "lab", "--file", str(out))
    assert r.returncode == 0, r.stderr
    r = vkp(elsewhere, "state", "import", str(out), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cluster_id"] == made.cluster_id

    r = vkp(elsewhere, "list-clusters", "-o", "json")
    listed = json.loads(r.stdout)["clusters"]
    assert [(c["name"], c["cluster_id"]) for c in listed] == [("lab", made.cluster_id)]
    r = vkp(elsewhere, "list-clusters", "--all", "-o", "json")
    (row,) = [c for c in json.loads(r.stdout)["clusters"] if c["name"] == "lab"]
    assert row["state"] == "local"
    r = vkp(elsewhere, "describe-cluster", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    described = json.loads(r.stdout)
    assert described["state_dir"].startswith(elsewhere["VKP_STATE_DIR"])
    assert sorted(n["name"] for n in described["nodes"]) == sorted(made.nodes)
    # The imported PKI and keys work from here: the API answers its admin, the nodes their key.
    assert described["kubernetes"].get("readyz") == "ok", described["kubernetes"]
    r = vkp(elsewhere, "get-credentials", "lab", "-o", "json")
    assert r.returncode == 0, r.stderr
    nodes = kube_json({**elsewhere, "KUBECONFIG": json.loads(r.stdout)["path"]}, "get", "nodes")
    assert sorted(n["metadata"]["name"] for n in nodes["items"]) == sorted(KUBE_NODES)
    r = vkp(elsewhere, "ssh", "lab", "lab-master-1", "--", "true")
    assert r.returncode == 0, r.stderr


def test_11_changed_host_key_is_refused(env: dict[str, str]) -> None:
    swap = (
        "sudo ssh-keygen -q -t ed25519 -N '' -f /tmp/other && "
        "sudo cp /tmp/other /etc/ssh/ssh_host_ed25519_key && "
        "sudo cp /tmp/other.pub /etc/ssh/ssh_host_ed25519_key.pub && "
        "sudo systemctl restart ssh"
    )
    assert on_node(env, "lab-worker-2", swap).returncode == 0
    r = vkp(env, "create-cluster", "-f", SPEC, "--yes", "--up-to", "runtime")
    assert r.returncode == ExitCode.HOST_KEY, r.stderr
    assert "lab-worker-2" in r.stderr
    r = on_node(env, "lab-worker-2", "true")
    assert r.returncode == ExitCode.HOST_KEY, "vkp ssh must refuse the node too"


def test_12_delete_leaves_nothing(env: dict[str, str], elsewhere: dict[str, str], lab: LabHandle) -> None:
    # The machine that took the cluster over (test_11b) deletes it.
    r = vkp(elsewhere, "delete-cluster", "lab", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert all(f"lab-{n}" in r.stdout for n in ("etcd-1", "master-1", "worker-1", "worker-2")), r.stdout
    assert "remove folder /" in r.stdout and "remove the local state" in r.stdout, r.stdout
    assert state(elsewhere).nodes, "a dry run deletes nothing"
    r = vkp(elsewhere, "delete-cluster", "lab", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["leftovers"] == []
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        names = [v.name for v in view.view if v.name.startswith("lab-")]
        view.Destroy()
    assert names == []
    assert not (Path(elsewhere["VKP_STATE_DIR"]) / "lab").exists()
    r = vkp(elsewhere, "delete-cluster", "lab", "--yes")
    assert r.returncode == 0, "a second delete is a no-op"
    # The machine that made it finds nothing left in vCenter and drops its own stale state.
    r = vkp(env, "delete-cluster", "lab", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == {"vms": 0, "rules": 0, "folders": 0}
    assert not (Path(env["VKP_STATE_DIR"]) / "lab").exists()
