"""The cluster network (kubernetes.cni): a registry of the networks vkp knows, by name.

- calico: the Tigera operator and an Installation, applied once from the first master at a
  pinned version, with the spec's pod CIDR (cni/calico.py);
- flannel: its manifest, the same way (cni/flannel.py);
- bridge: no network add-on at all, only the standard CNI plugins, a bridge on each node and
  routes between the nodes (cni/bridge.py).

A new one is a module here (a CNI value, and any steps of its own), its templates under
templates/cni/<name>/, and its entry in REGISTRY; the spec's kubernetes.cni accepts exactly the
registry's names.
"""

from __future__ import annotations

import hashlib

from provisioner.bootstrap.engine import Cluster, EnsureDir, Facts, File, Run, StepGen, Upload, step
from provisioner.bootstrap.steps.artifacts import fetch_manifest
from provisioner.bootstrap.steps.cni.base import CNI, CNI_DIR, Addon
from provisioner.bootstrap.steps.cni.bridge import BRIDGE
from provisioner.bootstrap.steps.cni.calico import CALICO
from provisioner.bootstrap.steps.cni.flannel import FLANNEL
from provisioner.bootstrap.steps.kubernetes.settings import kubectl_cmd, settings
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan

REGISTRY: dict[str, CNI] = {c.name: c for c in (CALICO, FLANNEL, BRIDGE)}
CNI_MARKER = f"{CNI_DIR}/applied"


def cni_of(cluster: Cluster) -> CNI:
    """The cluster's network, as kubernetes.cni names it."""
    name = settings(cluster).cni
    if name not in REGISTRY:
        # validate() refuses it first; a spec made without it (a test, a bench) ends here.
        raise ProvisionerError(f"kubernetes.cni: {name!r} is not one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def version(cluster: Cluster) -> str:
    """X.Y.Z of the cluster's network: kubernetes.cni_version, else the release vkp pins."""
    k = cluster.spec.kubernetes
    return (k.cni_version or cni_of(cluster).pinned or k.cni_plugins_version).removeprefix("v")


def cni_plan(cluster: Cluster) -> tuple[str, Addon | None]:
    """(marker text, what the first master applies); None for a network with no add-on."""
    c = cni_of(cluster)
    if c.addon is None:
        return "", None
    v = version(cluster)
    addon = c.addon(cluster, v)
    h = hashlib.sha256(f"{c.name} {v}\n".encode())
    if addon.fetch is not None:
        h.update(f"{addon.fetch.url or addon.fetch.local}\n".encode())
    for path, text in addon.files:
        h.update(f"{path}\n{text}".encode())
    return f"{c.name} v{v} sha256:{h.hexdigest()}\n", addon


def _cni_probes(node: NodePlan, cluster: Cluster) -> list[File]:
    return [File(CNI_DIR), File(CNI_MARKER)] if cni_of(cluster).addon is not None else []


@step("kubernetes.cni", probes=_cni_probes)
def cni(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The network add-on (Calico through the Tigera operator, or Flannel) at a pinned version,
    with the spec's pod CIDR: applied once, and again only when what would be applied changed (a
    marker records it)."""
    marker, addon = cni_plan(cluster)
    if addon is None:
        return  # no add-on: the network's own steps (kubernetes.cni_bridge, ...) make it
    if facts.file(CNI_MARKER).sha256 == hashlib.sha256(marker.encode()).hexdigest():
        return
    yield EnsureDir(CNI_DIR, 0o700, "root:root")
    if addon.fetch is not None:
        yield from fetch_manifest(addon.fetch)
        # An operator's CRDs exceed the annotation kubectl's client-side apply keeps.
        yield Run(
            kubectl_cmd("apply", "--server-side", "--force-conflicts", "-f", addon.fetch.dest),
            timeout=300,
            retry_safe=True,
        )
    if addon.crds:
        yield Run(
            kubectl_cmd("wait", "--for=condition=established", "--timeout=120s", *addon.crds),
            timeout=180,
            retry_safe=True,
            changes=False,
        )
    for path, text in addon.files:
        yield Upload(text, path, 0o600, "root:root")
        yield Run(kubectl_cmd("apply", "-f", path), timeout=300, retry_safe=True)
    yield Upload(marker, CNI_MARKER, 0o600, "root:root")
