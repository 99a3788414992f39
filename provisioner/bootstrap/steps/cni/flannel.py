"""flannel: upstream's kube-flannel.yml at a pinned release, with the spec's pod CIDR."""

from __future__ import annotations

from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.cni.base import CNI, CNI_DIR, Addon
from provisioner.bootstrap.steps.containerd import CNI_BIN_DIR

FLANNEL_VERSION = "0.25.6"
FLANNEL_CNI_PLUGIN = "v1.5.1-flannel2"  # the plugin image upstream's kube-flannel.yml of FLANNEL_VERSION uses


def render_flannel(cluster: Cluster, version: str) -> str:
    return render(
        "cni/flannel/kube-flannel.yml.j2",
        cluster=cluster.plan.cluster,
        flannel_version=f"v{version}",
        flannel_image=f"docker.io/flannel/flannel:v{version}",
        cni_plugin_image=f"docker.io/flannel/flannel-cni-plugin:{FLANNEL_CNI_PLUGIN}",
        pod_cidr=cluster.spec.kubernetes.pod_cidr,
        cni_bin_dir=CNI_BIN_DIR,
    )


def addon(cluster: Cluster, version: str) -> Addon:
    return Addon(files=[(f"{CNI_DIR}/kube-flannel.yml", render_flannel(cluster, version))])


FLANNEL = CNI("flannel", pinned=FLANNEL_VERSION, addon=addon, namespace="kube-flannel")
