"""The cluster network: Calico (through the Tigera operator) or Flannel, applied once from the
first master at a pinned version, with the spec's pod CIDR."""

from __future__ import annotations

import hashlib
import ipaddress

from provisioner.bootstrap.engine import Cluster, EnsureDir, Facts, File, Run, StepGen, Upload, step
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import Fetch, fetch_manifest, pinned_manifest
from provisioner.bootstrap.steps.containerd import CNI_BIN_DIR
from provisioner.bootstrap.steps.kubernetes import FLANNEL_CNI_PLUGIN, VKP_DIR, _kubectl, settings
from provisioner.plan import NodePlan

CNI_DIR = f"{VKP_DIR}/cni"
CNI_MARKER = f"{CNI_DIR}/applied"


def render_flannel(cluster: Cluster) -> str:
    s = settings(cluster)
    return render(
        "kubernetes/kube-flannel.yml.j2",
        cluster=cluster.plan.cluster,
        flannel_version=f"v{s.cni_version}",
        flannel_image=f"docker.io/flannel/flannel:v{s.cni_version}",
        cni_plugin_image=f"docker.io/flannel/flannel-cni-plugin:{FLANNEL_CNI_PLUGIN}",
        pod_cidr=s.pod_cidr,
        cni_bin_dir=CNI_BIN_DIR,
    )


def render_calico_installation(cluster: Cluster) -> str:
    s = settings(cluster)
    v6 = ipaddress.ip_network(s.pod_cidr).version == 6
    return render(
        "kubernetes/calico-installation.yaml.j2",
        cluster=cluster.plan.cluster,
        calico_version=f"v{s.cni_version}",
        pod_cidr=s.pod_cidr,
        ip_version=6 if v6 else 4,
        block_size=122 if v6 else 26,
        registry=None,
    )


def calico_operator(cluster: Cluster) -> Fetch:
    v = settings(cluster).cni_version
    return pinned_manifest(
        cluster,
        f"Calico v{v} tigera-operator.yaml",
        f"https://raw.githubusercontent.com/projectcalico/calico/v{v}/manifests/tigera-operator.yaml",
        f"calico/v{v}/tigera-operator.yaml",
        f"{CNI_DIR}/tigera-operator.yaml",
    )


def cni_plan(cluster: Cluster) -> tuple[str, list[tuple[str, str]], Fetch | None]:
    """(marker text, [(path, rendered manifest)], operator manifest to fetch)."""
    s = settings(cluster)
    if s.cni == "flannel":
        files = [(f"{CNI_DIR}/kube-flannel.yml", render_flannel(cluster))]
        fetch = None
    else:
        files = [(f"{CNI_DIR}/calico-installation.yaml", render_calico_installation(cluster))]
        fetch = calico_operator(cluster)
    h = hashlib.sha256(f"{s.cni} {s.cni_version}\n".encode())
    if fetch is not None:
        h.update(f"{fetch.url or fetch.local}\n".encode())
    for path, text in files:
        h.update(f"{path}\n{text}".encode())
    return f"{s.cni} v{s.cni_version} sha256:{h.hexdigest()}\n", files, fetch


@step("kubernetes.cni", probes=lambda node, cluster: [File(CNI_DIR), File(CNI_MARKER)])
def cni(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Calico (through the Tigera operator) or Flannel at a pinned version, with the spec's pod
    CIDR: applied once, and again only when what would be applied changed (a marker records it)."""
    marker, files, fetch = cni_plan(cluster)
    if facts.file(CNI_MARKER).sha256 == hashlib.sha256(marker.encode()).hexdigest():
        return
    yield EnsureDir(CNI_DIR, 0o700, "root:root")
    if fetch is not None:
        yield from fetch_manifest(fetch)
        # The operator's CRDs exceed the annotation kubectl's client-side apply keeps.
        yield Run(
            _kubectl("apply", "--server-side", "--force-conflicts", "-f", fetch.dest),
            timeout=300,
            retry_safe=True,
        )
        yield Run(
            _kubectl(
                "wait", "--for=condition=established", "--timeout=120s",
                "crd/installations.operator.tigera.io", "crd/apiservers.operator.tigera.io",
            ),
            timeout=180,
            retry_safe=True,
            changes=False,
        )  # fmt: skip
    for path, text in files:
        yield Upload(text, path, 0o600, "root:root")
        yield Run(_kubectl("apply", "-f", path), timeout=300, retry_safe=True)
    yield Upload(marker, CNI_MARKER, 0o600, "root:root")
