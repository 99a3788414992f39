"""The steps playbooks can name. Importing this package registers every one of them."""

import provisioner.bootstrap.steps.artifacts  # noqa: F401  (kubernetes.binaries, kubernetes.images)
from provisioner.bootstrap.steps import cni, common, containerd, etcd, health, kubernetes

__all__ = ["cni", "common", "containerd", "etcd", "health", "kubernetes"]
