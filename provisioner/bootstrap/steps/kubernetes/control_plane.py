"""The control plane with kubeadm: vkp's PKI on the masters, the kubelet, init on the first
master, control-plane joins one at a time, workers in parallel.

- The cluster CA, front-proxy CA, service-account keys and the etcd client certificate are
  vkp's (provisioner/bootstrap/pki.py) and placed on every master before kubeadm runs. kubeadm
  signs everything else with them, vkp can build an admin kubeconfig itself, and the other
  masters join with --control-plane without a certificate key or the kubeadm-certs Secret.
- etcd is external (the etcd play's members, with the apiserver-etcd-client certificate).
- Done-markers in /etc/kubernetes/vkp record a completed init or join: admin.conf and
  kubelet.conf are written early by kubeadm, so their presence does not mean it finished. A node
  with kubeadm's files but no marker is adopted when the cluster shows it is complete, else
  reset with `kubeadm reset -f`, given its files back, and initialised or joined again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.bootstrap import kube_api
from provisioner.bootstrap.bootstrap_token import TOKEN_TTL
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Restart,
    Run,
    Service,
    StepGen,
    Upload,
    Warn,
    step,
)
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.etcd import client_endpoints
from provisioner.bootstrap.steps.kubernetes.endpoint import endpoint_interface, render_kube_vip, route_probe
from provisioner.bootstrap.steps.kubernetes.settings import (
    ADMIN_CONF,
    APISERVER_MANIFEST,
    BOOTSTRAP_KUBELET_CONF,
    CRI_SOCKET,
    INIT_CONFIG,
    INIT_DONE,
    JOIN_CONFIG,
    JOIN_DONE,
    K8S_DIR,
    KUBE_VIP_MANIFEST,
    KUBEADM,
    KUBELET,
    KUBELET_CONF,
    KUBELET_DROPIN,
    KUBELET_UNIT,
    MANIFESTS_DIR,
    PKI_DIR,
    POLL,
    RUNTIME_ENDPOINT_IN_CONFIG_FROM,
    VKP_DIR,
    apiserver_port,
    endpoint_hostport,
    is_first_master,
    kubeadm_api_version,
    masters,
    node_api_url,
    settings,
)
from provisioner.bootstrap.steps.kubernetes.token import ensure_token, run_token, scrubbed_failure, token_for
from provisioner.errors import ProvisionerError, Timeout
from provisioner.plan import NodePlan
from provisioner.retry import retry_call
from provisioner.ssh.commands import Cmd, Secret

KUBEADM_TIMEOUT = 900.0
READY_DEADLINE = 300.0  # an API server answers /readyz within a minute or two of kubeadm finishing


def cert_sans(cluster: Cluster) -> list[str]:
    """The endpoint, then every master's address and name (kubeadm adds its own defaults)."""
    out = [cluster.plan.api_endpoint.address]
    for m in masters(cluster):
        out += [m.address, m.name]
    return list(dict.fromkeys(out))


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's discovery hash: sha256 of the CA certificate's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _ca_hash_or_placeholder(cluster: Cluster, facts: Facts) -> str:
    try:
        return ca_cert_hash(cluster.pki.cert_pem("ca"))
    except ValueError:
        if facts.known:
            raise
        return "sha256:(the cluster CA's hash, computed on the real run)"


# -- rendering (pure) ------------------------------------------------------------------------


def _node_registration(node: NodePlan, cluster: Cluster, *, joining_master: bool) -> dict[str, Any]:
    s = settings(cluster)
    ep = cluster.plan.api_endpoint
    kubelet_args = {"node-ip": node.address}
    if s.vsphere:
        kubelet_args["cloud-provider"] = "external"
    ignore: list[str] = []
    if joining_master and ep.mode == "kube-vip":
        # kube-vip's static pod is placed before the join so the endpoint never loses a holder.
        ignore.append("DirAvailable--etc-kubernetes-manifests")
    ignore += cluster.spec.kubernetes.node.ignore_preflight_errors
    return {
        "node_name": node.name,
        "cri_socket": CRI_SOCKET,
        "kubelet_args": kubelet_args,
        "ignore_preflight": list(dict.fromkeys(ignore)),
    }


def render_init_config(node: NodePlan, cluster: Cluster, token: Secret) -> str:
    """kubeadm-init.yaml for the first master. Pure (the token is revealed into the text)."""
    s = settings(cluster)
    return render(
        "kubernetes/kubeadm-init.yaml.j2",
        cluster=cluster.plan.cluster,
        version=s.version,
        api_version=kubeadm_api_version(s.minor),
        token=token.reveal(),
        token_ttl=f"{int(TOKEN_TTL.total_seconds() // 60)}m0s",
        node_address=node.address,
        bind_port=apiserver_port(cluster),
        control_plane_endpoint=endpoint_hostport(cluster),
        pki_dir=PKI_DIR,
        image_repository=s.image_repository,
        pod_cidr=s.pod_cidr,
        service_cidr=s.service_cidr,
        etcd_endpoints=client_endpoints(cluster),
        etcd_ca_file=f"{PKI_DIR}/etcd/ca.crt",
        etcd_cert_file=f"{PKI_DIR}/apiserver-etcd-client.crt",
        etcd_key_file=f"{PKI_DIR}/apiserver-etcd-client.key",
        cert_sans=cert_sans(cluster),
        runtime_endpoint_in_config=s.minor >= RUNTIME_ENDPOINT_IN_CONFIG_FROM,
        cgroup_driver=cluster.spec.kubernetes.node.cgroup_driver,
        conntrack_max_per_core=cluster.spec.kubernetes.node.conntrack_max_per_core,
        **_node_registration(node, cluster, joining_master=False),
    )


def render_join_config(node: NodePlan, cluster: Cluster, token: Secret, ca_hash: str) -> str:
    """kubeadm-join.yaml for a master (control plane) or a worker. Pure."""
    s = settings(cluster)
    control_plane = node.role == "master"
    return render(
        "kubernetes/kubeadm-join.yaml.j2",
        cluster=cluster.plan.cluster,
        version=s.version,
        api_version=kubeadm_api_version(s.minor),
        node_address=node.address,
        bind_port=apiserver_port(cluster),
        api_server_endpoint=endpoint_hostport(cluster),
        token=token.reveal(),
        ca_cert_hash=ca_hash,
        control_plane=control_plane,
        **_node_registration(node, cluster, joining_master=control_plane),
    )


def render_kubelet_units() -> tuple[str, str]:
    return (
        render("kubernetes/kubelet.service.j2", kubelet_binary=KUBELET),
        render("kubernetes/10-kubeadm.conf.j2", kubelet_binary=KUBELET),
    )


# -- waiting ---------------------------------------------------------------------------------


def wait_ready(url: str, cluster: Cluster, what: str, deadline: float = READY_DEADLINE) -> str:
    """Poll url/readyz from this machine until it says ok; Timeout naming the last answer."""
    last = ["no answer yet"]

    def attempt() -> str:
        ok, detail = kube_api.client(cluster.pki, url).readyz()
        last[0] = detail
        if not ok:
            raise _NotYet(detail)
        return detail

    try:
        return retry_call(
            attempt,
            retry_on=lambda e: isinstance(e, _NotYet),
            deadline=deadline,
            initial=1.0,
            maximum=POLL,
            what=f"{url}/readyz ({what})",
        )
    except _NotYet:
        raise Timeout(
            f"{what}: {url}/readyz not ready after {deadline:.0f}s: {last[0]}",
            hint="look at the API server on that master: `crictl ps -a`, `journalctl -u kubelet`",
        ) from None


def others_ready(node: NodePlan, cluster: Cluster, doing: str) -> dict[str, str]:
    """Before node's API server goes away for doing (a restart, an upgrade): every other
    master's answers /readyz, or nothing is done, so the API always keeps one."""
    answers: dict[str, str] = {}
    for m in masters(cluster):
        if m.name == node.name:
            continue
        ok, detail = kube_api.client(cluster.pki, node_api_url(m, cluster)).readyz()
        if not ok:
            raise ProvisionerError(
                f"{node.name}: {doing} not started: {m.name}'s API server does not answer /readyz ({detail})",
                hint=f"{doing} now could leave no API server: bring {m.name}'s back (`journalctl -u "
                "kubelet` on it), then run the same command again; it resumes here",
            )
        answers[m.name] = "ready"
    return answers


class _NotYet(Exception):
    pass


# -- kubeadm reset of a half-done node -------------------------------------------------------

_RESTORE_SCRIPT = r"""
set -eu
umask 077
for d in "$@"; do mkdir -p -- "$d"; done
list=$(mktemp)
trap 'rm -f -- "$list"' EXIT
awk -v list="$list" '/^#vkp-file /{f=$2; print $2, $3 > list; printf "" > f; next} {print > f}'
while read -r path mode; do chown root:root -- "$path"; chmod -- "$mode" "$path"; done < "$list"
"""


_STOP_KUBEADM = (
    "pkill -x kubeadm || exit 0; "
    "for _ in $(seq 50); do pgrep -x kubeadm > /dev/null || exit 0; sleep 0.2; done; "
    "pkill -9 -x kubeadm; exit 0"
)
_REMOVE_POD_CONTAINERS = (
    "command -v ctr > /dev/null || exit 0; "
    "for id in $(ctr -n k8s.io containers list -q); do "
    'ctr -n k8s.io tasks delete --force "$id" > /dev/null 2>&1; ctr -n k8s.io containers delete "$id"; '
    "done"
)


def _bundle(files: Sequence[tuple[str, bytes, int]]) -> bytes:
    out = b""
    for path, data, mode in files:
        out += f"#vkp-file {path} {mode:o}\n".encode() + data + (b"" if data.endswith(b"\n") else b"\n")
    return out


def _reset_and_restore(node: NodePlan, cluster: Cluster, interface: str | None) -> StepGen:
    """kubeadm reset -f, then put back what vkp placed that reset removes (PKI, kube-vip)."""
    # A run killed mid-init or mid-join can leave its kubeadm running on the node, and it would
    # go on writing the files the reset removes.
    yield Run(Cmd.shell(_STOP_KUBEADM), timeout=60, retry_safe=True)
    yield Run(Cmd(KUBEADM, "reset", "-f"), timeout=300, retry_safe=True)
    # kubeadm reset removes the pods' containers through crictl, and only warns where there is
    # none: a half-started API server would keep its port from the next init or join.
    yield Run(Cmd.shell(_REMOVE_POD_CONTAINERS), timeout=300, retry_safe=True)
    files: list[tuple[str, bytes, int]] = []
    if node.role == "master":
        files += [(path, data, mode) for path, data, mode, _ in pki_files(cluster)]
        if cluster.plan.api_endpoint.mode == "kube-vip" and interface is not None:
            files.append(
                (
                    KUBE_VIP_MANIFEST,
                    render_kube_vip(node, cluster, interface, initialised=False).encode(),
                    0o600,
                )
            )
    if files:
        dirs = sorted({os.path.dirname(p) for p, _, _ in files})
        yield Run(Cmd.shell(_RESTORE_SCRIPT, *dirs), stdin=_bundle(files), retry_safe=True)


# -- kubernetes.pki --------------------------------------------------------------------------


def pki_files(cluster: Cluster) -> list[tuple[str, bytes, int, bool]]:
    """(path, content, mode, secret) for /etc/kubernetes/pki, with kubeadm's names and modes.

    Not the etcd CA's key: kubeadm needs only the etcd CA certificate and its client pair.
    """
    p = cluster.pki
    out: list[tuple[str, bytes, int, bool]] = []
    for name, base in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca")):
        out.append((f"{PKI_DIR}/{base}.crt", p.cert_pem(name), 0o644, False))
        out.append((f"{PKI_DIR}/{base}.key", p.key_pem(name), 0o600, True))
    out.append((f"{PKI_DIR}/sa.key", p.key_pem("sa"), 0o600, True))
    out.append((f"{PKI_DIR}/sa.pub", _sa_public(cluster), 0o644, False))
    out.append((f"{PKI_DIR}/apiserver-etcd-client.crt", p.cert_pem("apiserver-etcd-client"), 0o644, False))
    out.append((f"{PKI_DIR}/apiserver-etcd-client.key", p.key_pem("apiserver-etcd-client"), 0o600, True))
    out.append((f"{PKI_DIR}/etcd/ca.crt", p.cert_pem("etcd-ca"), 0o644, False))
    return out


def _sa_public(cluster: Cluster) -> bytes:
    public = getattr(cluster.pki, "public_pem", None)
    if callable(public):
        data: bytes = public("sa")
        return data
    try:
        key = serialization.load_pem_private_key(cluster.pki.key_pem("sa"), password=None)
    except (ValueError, TypeError):
        return b"-----BEGIN PUBLIC KEY-----\n(sa.pub, derived from sa.key on the real run)\n"
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pki_probes(node: NodePlan, cluster: Cluster) -> list[File]:
    return [
        File(K8S_DIR),
        File(PKI_DIR),
        File(f"{PKI_DIR}/etcd"),
        File(VKP_DIR),
        File(INIT_DONE),
        File(JOIN_DONE),
    ] + [File(path) for path, _, _, _ in pki_files(cluster)]


@step("kubernetes.pki", probes=_pki_probes)
def pki(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """vkp's CAs, service-account keys and etcd client certificate in /etc/kubernetes/pki, before
    kubeadm runs (every master gets the same, so the others join without a certificate key)."""
    files = pki_files(cluster)
    yield EnsureDir(K8S_DIR, 0o755, "root:root")
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield EnsureDir(PKI_DIR, 0o755, "root:root")
    yield EnsureDir(f"{PKI_DIR}/etcd", 0o755, "root:root")
    changed = []
    for path, data, mode, secret in files:
        if (yield Upload(data, path, mode, "root:root", secret=secret)):
            changed.append(path)
    running = facts.file(INIT_DONE).kind == "file" or facts.file(JOIN_DONE).kind == "file"
    if changed and running and facts.known:
        # The static pods read these only when they start; kubeadm's own renewal has the same rule.
        yield Warn(
            f"{', '.join(os.path.basename(c) for c in changed)} changed on a running control plane: "
            f"restart its static pods (move {MANIFESTS_DIR}/kube-*.yaml out and back) to use them"
        )


# -- kubernetes.kubelet ----------------------------------------------------------------------


@step(
    "kubernetes.kubelet",
    probes=lambda node, cluster: [
        File(os.path.dirname(KUBELET_DROPIN)),
        File(KUBELET_UNIT),
        File(KUBELET_DROPIN),
        Service("kubelet"),
    ],
)
def kubelet(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The kubelet's systemd unit and kubeadm drop-in, enabled (kubeadm init/join starts it)."""
    unit, dropin = render_kubelet_units()
    yield EnsureDir(os.path.dirname(KUBELET_DROPIN), 0o755, "root:root")
    a = yield Upload(unit, KUBELET_UNIT, 0o644, "root:root")
    b = yield Upload(dropin, KUBELET_DROPIN, 0o644, "root:root")
    svc = facts.service("kubelet")
    if a or b or svc.need_reload:
        yield Run(Cmd("systemctl", "daemon-reload"), retry_safe=True)
    if not svc.is_enabled:
        yield Run(Cmd("systemctl", "enable", "kubelet"), retry_safe=True)
    yield Restart("kubelet")


# -- kubernetes.init -------------------------------------------------------------------------


def _init_probes(node: NodePlan, cluster: Cluster) -> list[File | Check]:
    out: list[File | Check] = [
        File(INIT_DONE),
        File(ADMIN_CONF),
        File(KUBELET_CONF),
        File(APISERVER_MANIFEST),
        File(KUBE_VIP_MANIFEST),
    ]
    if cluster.plan.api_endpoint.mode == "kube-vip":
        out.append(route_probe(cluster))
    return out


def _kubeadm_files_present(facts: Facts, paths: Sequence[str]) -> bool:
    return facts.known and any(facts.file(p).kind != "absent" for p in paths)


@step("kubernetes.init", probes=_init_probes)
def init(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm init on the first master, once: skipped when vkp's marker says it completed; a
    node with kubeadm's files but no marker is adopted if the cluster is complete, else reset and
    initialised again. Then waits for /readyz through the endpoint."""
    if not is_first_master(node, cluster):
        raise ProvisionerError(f"kubernetes.init runs on the first master only, not on {node.name}")
    kube_vip = cluster.plan.api_endpoint.mode == "kube-vip"
    iface = endpoint_interface(node, cluster, facts) if kube_vip else None
    if facts.file(INIT_DONE).kind == "file":
        if kube_vip and iface is not None:
            yield Upload(
                render_kube_vip(node, cluster, iface, initialised=True), KUBE_VIP_MANIFEST, 0o600, "root:root"
            )
        return
    if _kubeadm_files_present(facts, (ADMIN_CONF, KUBELET_CONF, APISERVER_MANIFEST)):
        adopted = yield Local(
            "adopt the control plane if an earlier run finished kubeadm init",
            lambda: _cluster_initialised(cluster),
        )
        if adopted:
            # The interrupted run's configuration holds its bootstrap token.
            yield Run(Cmd("rm", "-f", "--", INIT_CONFIG), retry_safe=True, changes=False)
            yield from _after_init(node, cluster, iface)
            return
        yield from _reset_and_restore(node, cluster, iface)
    token = run_token(cluster)
    config = render_init_config(node, cluster, token.value)
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield Upload(config, INIT_CONFIG, 0o600, "root:root", secret=True)
    cmd = init_command(cluster)
    r = yield Run(cmd, check=False, timeout=KUBEADM_TIMEOUT)
    yield Run(Cmd("rm", "-f", "--", INIT_CONFIG), retry_safe=True, changes=False)
    if facts.known:
        if not r.ok:
            raise scrubbed_failure(node, cmd, r, token)
        # Only a real init made it: the check run before every run is a dry run of this step.
        token.created = True
    yield from _after_init(node, cluster, iface)


def _skip_phases(cluster: Cluster, *, init: bool) -> list[str]:
    # A flag, not the config: skipPhases only came with v1beta3, and every kubeadm vkp supports
    # takes --skip-phases beside --config.
    phases = []
    if cluster.spec.kubernetes.node.skip_preflight:
        phases.append("preflight")
    if init and settings(cluster).dns == "none":
        phases.append("addon/coredns")
    return [f"--skip-phases={','.join(phases)}"] if phases else []


def init_command(cluster: Cluster) -> Cmd:
    args = ["init", "--config", INIT_CONFIG, "--skip-token-print", "--skip-certificate-key-print"]
    return Cmd(KUBEADM, *args, *_skip_phases(cluster, init=True))


def join_command(cluster: Cluster) -> Cmd:
    return Cmd(KUBEADM, "join", "--config", JOIN_CONFIG, *_skip_phases(cluster, init=False))


def _cluster_initialised(cluster: Cluster) -> bool:
    api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
    if not api.readyz()[0]:
        return False
    try:
        api.get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
        api.get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
    except kube_api.KubeAPIError:
        return False
    return True


def _after_init(node: NodePlan, cluster: Cluster, iface: str | None) -> StepGen:
    if iface is not None:
        yield Upload(
            render_kube_vip(node, cluster, iface, initialised=True), KUBE_VIP_MANIFEST, 0o600, "root:root"
        )
    url = cluster.plan.api_endpoint.url
    yield Local(f"wait for {url}/readyz (the endpoint)", lambda: wait_ready(url, cluster, "the first master"))
    yield Upload(f"kubeadm init completed for {cluster.plan.cluster}\n", INIT_DONE, 0o644, "root:root")


# -- joins -----------------------------------------------------------------------------------


def _join_probes(node: NodePlan, cluster: Cluster) -> list[File | Check]:
    out: list[File | Check] = [
        File(VKP_DIR),
        File(JOIN_DONE),
        File(KUBELET_CONF),
        File(BOOTSTRAP_KUBELET_CONF),
        File(APISERVER_MANIFEST),
    ]
    if node.role == "master" and cluster.plan.api_endpoint.mode == "kube-vip":
        out.append(route_probe(cluster))
    return out


def _node_joined(cluster: Cluster, node: NodePlan) -> bool:
    api = kube_api.client(cluster.pki, cluster.plan.api_endpoint.url)
    try:
        obj = api.get(f"/api/v1/nodes/{node.name}")
    except kube_api.KubeAPIError:
        return False
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    if node.role == "master":
        return (
            "node-role.kubernetes.io/control-plane" in labels
            and kube_api.client(cluster.pki, node_api_url(node, cluster)).readyz()[0]
        )
    return True


def _join(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    if facts.file(JOIN_DONE).kind == "file":
        return
    master = node.role == "master"
    kube_vip = master and cluster.plan.api_endpoint.mode == "kube-vip"
    iface = endpoint_interface(node, cluster, facts) if kube_vip else None
    if _kubeadm_files_present(facts, (KUBELET_CONF, BOOTSTRAP_KUBELET_CONF, APISERVER_MANIFEST)):
        adopted = yield Local(
            f"adopt {node.name} if an earlier run finished its join", lambda: _node_joined(cluster, node)
        )
        if adopted:
            # The interrupted run's configuration holds its bootstrap token.
            yield Run(Cmd("rm", "-f", "--", JOIN_CONFIG), retry_safe=True, changes=False)
            yield Upload(
                f"kubeadm join completed for {cluster.plan.cluster}\n", JOIN_DONE, 0o644, "root:root"
            )
            return
        yield from _reset_and_restore(node, cluster, iface)
    got = yield Local(
        "this run's bootstrap token (created if this run has not yet)", lambda: ensure_token(cluster)
    )
    token = token_for(got, facts)
    shown = token.value if token is not None else Secret("(this run's bootstrap token)")
    config = render_join_config(node, cluster, shown, _ca_hash_or_placeholder(cluster, facts))
    yield EnsureDir(VKP_DIR, 0o700, "root:root")
    yield Upload(config, JOIN_CONFIG, 0o600, "root:root", secret=True)
    cmd = join_command(cluster)
    r = yield Run(cmd, check=False, timeout=KUBEADM_TIMEOUT)
    yield Run(Cmd("rm", "-f", "--", JOIN_CONFIG), retry_safe=True, changes=False)
    if facts.known and not r.ok:
        raise scrubbed_failure(node, cmd, r, token)
    if master:
        url = node_api_url(node, cluster)
        yield Local(
            f"wait for {url}/readyz ({node.name}'s API server)", lambda: wait_ready(url, cluster, node.name)
        )
    yield Upload(f"kubeadm join completed for {cluster.plan.cluster}\n", JOIN_DONE, 0o644, "root:root")


@step("kubernetes.join_control_plane", probes=_join_probes)
def join_control_plane(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm join --control-plane (run one master at a time), then wait for that master's own
    API server; skipped once vkp's marker says the join completed."""
    if node.role != "master" or is_first_master(node, cluster):
        raise ProvisionerError(
            f"kubernetes.join_control_plane runs on the masters after the first, not on {node.name}"
        )
    yield from _join(node, cluster, facts)


@step("kubernetes.join_worker", probes=_join_probes)
def join_worker(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm join of a worker with this run's bootstrap token; skipped once joined."""
    if node.role != "worker":
        raise ProvisionerError(f"kubernetes.join_worker runs on workers, not on {node.name}")
    yield from _join(node, cluster, facts)
