"""kubernetes.renew_certs: a master's certificates renewed and put to use, one master at a time.

How the kubernetes phase provides them (control_plane.py): vkp places its CAs (cluster and
front-proxy, with their keys), the service-account keys and the API server's etcd client
certificate (issued by vkp's etcd CA: kubeadm with external etcd neither issues nor renews it)
on every master; kubeadm issues every other leaf from those CAs. So a master's renewal is:

1. the API server's etcd client certificate, issued again by `certs.issue`, put in place;
2. `kubeadm certs renew all`: the API server's serving and kubelet-client certificates, the
   front-proxy client, and the client certificates inside admin.conf, controller-manager.conf
   and scheduler.conf, each from the CA already on the node;
3. the control-plane static pods restarted, since they read certificates only when they start:
   the controller manager and scheduler first (no API gap), then the API server, whose new
   container is awaited before /readyz is; kube-vip last, where it runs, for its admin.conf.

The containers are stopped through containerd (ctr, always there: the runtime is containerd)
and the kubelet starts new ones at once; moving the manifests aside and back would cost two of
the kubelet's file-check periods (20 s each) of API outage instead of the API server's own
start-up time. With one master that start-up is the API outage: unavoidable, kept that short,
and measured in the report. The kubelets' client certificates rotate by themselves (kubeadm
enables rotation): no node needs anything for them.
"""

from __future__ import annotations

import time

from provisioner.bootstrap.engine import Cluster, Facts, File, Local, Run, StepGen, Upload, Warn, step
from provisioner.bootstrap.steps.kubernetes.control_plane import others_ready, pki_files, wait_ready
from provisioner.bootstrap.steps.kubernetes.settings import (
    KUBE_VIP_MANIFEST,
    KUBEADM,
    PKI_DIR,
    masters,
    node_api_url,
)
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

RENEW_TIMEOUT = 300.0
CONTAINER_WAIT = 120  # seconds for the kubelet to run a new container of a static pod
STOP_GRACE = 5  # seconds a container has to stop on SIGTERM before SIGKILL
# In the order they are restarted: the API server's gap starts only once the others are back.
STATIC_PODS = ("kube-controller-manager", "kube-scheduler", "kube-apiserver")
ETCD_CLIENT_FILES = (f"{PKI_DIR}/apiserver-etcd-client.crt", f"{PKI_DIR}/apiserver-etcd-client.key")

# Stop the running container(s) of a static pod ($1) and wait up to $2 s for the kubelet to run
# a new one; prints its id. A container still running $3 s after SIGTERM gets SIGKILL: the API
# server stops listening at once on SIGTERM but then drains its watches for up to a minute, all
# of it an outage with one master (measured on the lab: 80 s of refused connections).
# Exit 3: none was running; 4: none came back.
RESTART_CONTAINER = r"""
set -u
name=$1 wait=$2 grace=$3
running() {
  for id in $(ctr -n k8s.io containers list -q "labels.\"io.kubernetes.container.name\"==$name"); do
    ctr -n k8s.io tasks ls | awk -v id="$id" '$1 == id && $3 == "RUNNING" { print id }'
  done
}
old_running() {
  for id in $(running); do
    case "$old" in *" $id "*) echo "$id" ;; esac
  done
}
old=" $(running | tr '\n' ' ') "
[ "$old" != "  " ] || { echo "no running $name container" >&2; exit 3; }
for id in $old; do ctr -n k8s.io tasks kill --signal SIGTERM "$id" || true; done
i=0
while [ "$i" -lt "$grace" ] && [ -n "$(old_running)" ]; do
  sleep 1
  i=$((i + 1))
done
for id in $(old_running); do ctr -n k8s.io tasks kill --signal SIGKILL "$id" || true; done
i=0
while [ "$i" -lt "$wait" ]; do
  for id in $(running); do
    case "$old" in *" $id "*) ;; *) echo "$id"; exit 0 ;; esac
  done
  sleep 1
  i=$((i + 1))
done
echo "no new $name container after ${wait}s (old: $old)" >&2
exit 4
"""


def restart_container(name: str) -> Cmd:
    return Cmd.shell(RESTART_CONTAINER, name, str(CONTAINER_WAIT), str(STOP_GRACE))


def renew_command() -> Cmd:
    return Cmd(KUBEADM, "certs", "renew", "all")


@step("kubernetes.renew_certs", probes=lambda node, cluster: [File(KUBE_VIP_MANIFEST)])
def renew_certs(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """On a master (run with serial: 1): the other API servers ready, the new etcd client
    certificate, `kubeadm certs renew all`, the control-plane containers restarted (API server
    last), and this master's /readyz before the next master starts."""
    url = node_api_url(node, cluster)
    alone = len(masters(cluster)) == 1
    if alone:
        yield Warn(
            f"{node.name} is the only master: the API is unavailable while its API server restarts "
            "(its start-up time, measured in the report)"
        )
    else:
        yield Local(
            f"the API servers other than {node.name}'s answer /readyz",
            lambda: others_ready(node, cluster, "restarting its API server"),
        )
    for path, data, mode, secret in pki_files(cluster):
        if path in ETCD_CLIENT_FILES:
            yield Upload(data, path, mode, "root:root", secret=secret)
    yield Run(renew_command(), timeout=RENEW_TIMEOUT)
    for pod in STATIC_PODS[:-1]:
        yield Run(restart_container(pod), timeout=CONTAINER_WAIT + STOP_GRACE + 30)
    started = time.monotonic()
    yield Run(restart_container("kube-apiserver"), timeout=CONTAINER_WAIT + STOP_GRACE + 30)

    def api_back() -> float:
        wait_ready(url, cluster, f"{node.name}'s API server after its restart")
        return round(time.monotonic() - started, 1)

    # Keyed by node: the lifecycle reports each master's gap (the API's own with one master).
    yield Local(
        f"wait for {url}/readyz (the new API server)", api_back, report=f"apiserver-restart:{node.name}"
    )
    kube_vip = cluster.plan.api_endpoint.mode == "kube-vip"
    if kube_vip and (not facts.known or facts.file(KUBE_VIP_MANIFEST).kind == "file"):
        # kube-vip holds admin.conf's old client certificate in memory until it restarts.
        yield Run(restart_container("kube-vip"), timeout=CONTAINER_WAIT + STOP_GRACE + 30)
        endpoint = cluster.plan.api_endpoint.url
        yield Local(
            f"wait for {endpoint}/readyz (the endpoint)",
            lambda: wait_ready(endpoint, cluster, "the endpoint"),
        )
