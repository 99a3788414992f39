"""The steps playbooks can name. Importing this package registers every one of them."""

import provisioner.bootstrap.steps.nodes  # noqa: F401  (kubernetes.drain, a day-2 step)
import provisioner.bootstrap.steps.repair  # noqa: F401  (vkp repair's day-2 steps)
import provisioner.bootstrap.steps.upgrade  # noqa: F401  (vkp upgrade's day-2 steps)
from provisioner.bootstrap.engine import STEPS, StepDef
from provisioner.bootstrap.steps import artifacts, certs, cni, common, containerd, etcd, etcd_restore, health
from provisioner.bootstrap.steps.cni import bridge
from provisioner.bootstrap.steps.kubernetes import certs as kubernetes_certs
from provisioner.bootstrap.steps.kubernetes import control_plane, endpoint, token, vsphere

__all__ = [
    "artifacts", "bridge", "certs", "cni", "common", "containerd", "control_plane", "endpoint",
    "etcd", "etcd_restore", "health", "kubernetes_certs", "registry", "token", "vsphere",
]  # fmt: skip


def registry() -> dict[str, StepDef]:
    """Every step, by name: complete, since this package imports every step module."""
    return STEPS
