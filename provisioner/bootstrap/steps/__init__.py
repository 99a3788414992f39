"""The steps playbooks can name. Importing this package registers every one of them."""

import provisioner.bootstrap.steps.artifacts  # noqa: F401  (kubernetes.binaries, kubernetes.images)
import provisioner.bootstrap.steps.nodes  # noqa: F401  (kubernetes.drain, a day-2 step)
from provisioner.bootstrap.steps import cni, common, containerd, etcd, health, kubernetes

__all__ = ["cni", "common", "containerd", "etcd", "health", "kubernetes"]
