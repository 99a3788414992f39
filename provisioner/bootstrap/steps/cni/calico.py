"""calico: the Tigera operator (upstream's manifest at a pinned release) and an Installation
with the spec's pod CIDR."""

from __future__ import annotations

import ipaddress

from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import Fetch, pinned_manifest
from provisioner.bootstrap.steps.cni.base import CNI, CNI_DIR, Addon

CALICO_VERSION = "3.28.2"


def render_calico_installation(cluster: Cluster, version: str) -> str:
    pod_cidr = cluster.spec.kubernetes.pod_cidr
    v6 = ipaddress.ip_network(pod_cidr).version == 6
    return render(
        "cni/calico/calico-installation.yaml.j2",
        cluster=cluster.plan.cluster,
        calico_version=f"v{version}",
        pod_cidr=pod_cidr,
        ip_version=6 if v6 else 4,
        block_size=122 if v6 else 26,
        registry=None,
    )


def calico_operator(cluster: Cluster, version: str) -> Fetch:
    return pinned_manifest(
        cluster,
        f"Calico v{version} tigera-operator.yaml",
        f"https://raw.githubusercontent.com/projectcalico/calico/v{version}/manifests/tigera-operator.yaml",
        f"calico/v{version}/tigera-operator.yaml",
        f"{CNI_DIR}/tigera-operator.yaml",
    )


def addon(cluster: Cluster, version: str) -> Addon:
    return Addon(
        files=[(f"{CNI_DIR}/calico-installation.yaml", render_calico_installation(cluster, version))],
        fetch=calico_operator(cluster, version),
        crds=("crd/installations.operator.tigera.io", "crd/apiservers.operator.tigera.io"),
    )


CALICO = CNI("calico", pinned=CALICO_VERSION, addon=addon, namespace="calico-system")
