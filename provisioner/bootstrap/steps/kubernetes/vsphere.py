"""With kubernetes.vsphere_csi: the vSphere cloud provider (CPI) and CSI driver at pinned
versions. Their vCenter credentials go into Secrets piped to kubectl, never onto a node's disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from provisioner.bootstrap.engine import Cluster, EnsureDir, Facts, File, Run, StepGen, Upload, step
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import Fetch, fetch_manifest, pinned_manifest
from provisioner.bootstrap.steps.kubernetes.settings import VKP_DIR, kubectl_cmd, settings
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Secret

VSPHERE_DIR = f"{VKP_DIR}/vsphere"
VSPHERE_MARKER = f"{VSPHERE_DIR}/applied"
CSI_VERSION = "3.3.1"
# The CPI release follows the Kubernetes minor (its compatibility matrix).
CPI_VERSIONS = {28: "1.28.0", 29: "1.29.0", 30: "1.30.1", 31: "1.31.0"}
CPI_IMAGE = "registry.k8s.io/cloud-pv-vsphere/cloud-provider-vsphere:v{version}"
CSI_NAMESPACE = "vmware-system-csi"
CPI_SECRET = "vsphere-cloud-secret"
STORAGE_CLASS = "vsphere-csi"


def csi_driver(cluster: Cluster) -> Fetch:
    return pinned_manifest(
        cluster,
        f"vSphere CSI driver v{CSI_VERSION}",
        f"https://raw.githubusercontent.com/kubernetes-sigs/vsphere-csi-driver/v{CSI_VERSION}"
        "/manifests/vanilla/vsphere-csi-driver.yaml",
        f"vsphere-csi-driver/v{CSI_VERSION}/vsphere-csi-driver.yaml",
        f"{VSPHERE_DIR}/vsphere-csi-driver.yaml",
    )


def vsphere_credentials(cluster: Cluster, env: Any = None) -> tuple[str, Secret]:
    creds = cluster.spec.vsphere.credentials
    env = os.environ if env is None else env
    user, password = creds.lookup(env)
    if not user or not password:
        raise ProvisionerError(
            f"the vSphere drivers need vCenter credentials: export {creds.user_env} and {creds.password_env}",
            hint="they are stored only in Secrets in the cluster (kube-system and vmware-system-csi)",
        )
    return user, Secret(password)


def render_vsphere_secrets(cluster: Cluster, user: str, password: Secret) -> str:
    vs = cluster.spec.vsphere
    return render(
        "kubernetes/vsphere-secrets.yaml.j2",
        cluster=cluster.plan.cluster,
        cluster_id=f"{cluster.plan.cluster}-{cluster.cluster_id}",
        cpi_secret_name=CPI_SECRET,
        csi_namespace=CSI_NAMESPACE,
        server=vs.server,
        port=vs.port,
        datacenter=vs.datacenter,
        insecure=vs.tls.insecure,
        thumbprint=vs.tls.thumbprint,
        user=user,
        password=password.reveal(),
    )


def render_vsphere_manifests(cluster: Cluster) -> list[tuple[str, str]]:
    s = settings(cluster)
    vs = cluster.spec.vsphere
    cpi = CPI_VERSIONS.get(s.minor, CPI_VERSIONS[max(CPI_VERSIONS)])
    return [
        (
            f"{VSPHERE_DIR}/vsphere-cpi.yaml",
            render(
                "kubernetes/vsphere-cpi.yaml.j2",
                cluster=cluster.plan.cluster,
                cpi_version=f"v{cpi}",
                cpi_image=CPI_IMAGE.format(version=cpi),
                secret_name=CPI_SECRET,
                secret_namespace="kube-system",
                server=vs.server,
                port=vs.port,
                datacenter=vs.datacenter,
                insecure=vs.tls.insecure,
                thumbprint=vs.tls.thumbprint,
            ),
        ),
        (
            f"{VSPHERE_DIR}/vsphere-csi-setup.yaml",
            render(
                "kubernetes/vsphere-csi-setup.yaml.j2",
                csi_version=f"v{CSI_VERSION}",
                namespace=CSI_NAMESPACE,
                storage_class=STORAGE_CLASS,
            ),
        ),
    ]


@step("kubernetes.vsphere", probes=lambda node, cluster: [File(VSPHERE_DIR), File(VSPHERE_MARKER)])
def vsphere(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """With kubernetes.vsphere_csi: the vSphere cloud provider and CSI driver at pinned versions,
    vCenter credentials in Secrets piped to kubectl (never on a node's disk); re-applied only on
    change."""
    if not settings(cluster).vsphere:
        return
    vs = cluster.spec.vsphere
    if vs.tls.ca_file and not vs.tls.thumbprint and not vs.tls.insecure:
        raise ProvisionerError(
            "the in-cluster vSphere drivers verify vCenter by thumbprint: set vsphere.tls.thumbprint",
            hint="vsphere.tls.ca_file is a file on this machine, which drivers in the cluster cannot read",
        )
    user, password = vsphere_credentials(cluster)
    secrets_doc = render_vsphere_secrets(cluster, user, password)
    manifests = render_vsphere_manifests(cluster)
    driver = csi_driver(cluster)
    # A keyed digest: the marker (0600, root) must not let anyone test guesses of the password.
    mac = hmac.new(hashlib.sha256(cluster.pki.key_pem("ca")).digest(), digestmod=hashlib.sha256)
    mac.update(secrets_doc.encode())
    mac.update(f"{driver.url or driver.local}\n".encode())
    for path, text in manifests:
        mac.update(f"{path}\n{text}".encode())
    marker = f"vsphere cpi+csi v{CSI_VERSION} hmac-sha256:{mac.hexdigest()}\n"
    if facts.file(VSPHERE_MARKER).sha256 == hashlib.sha256(marker.encode()).hexdigest():
        return
    yield EnsureDir(VSPHERE_DIR, 0o700, "root:root")
    setup = manifests[1][0]
    for path, text in manifests:
        yield Upload(text, path, 0o600, "root:root")
    yield Run(kubectl_cmd("apply", "-f", setup), timeout=300, retry_safe=True)
    yield Run(kubectl_cmd("apply", "-f", "-"), stdin=secrets_doc.encode(), timeout=120, retry_safe=True)
    yield Run(kubectl_cmd("apply", "-f", manifests[0][0]), timeout=300, retry_safe=True)
    yield from fetch_manifest(driver)
    yield Run(kubectl_cmd("apply", "-f", driver.dest), timeout=300, retry_safe=True)
    yield Upload(marker, VSPHERE_MARKER, 0o600, "root:root")
