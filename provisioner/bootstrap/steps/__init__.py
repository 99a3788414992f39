"""The steps playbooks can name. Importing this package registers every one of them."""

import provisioner.bootstrap.steps.artifacts  # noqa: F401  (kubernetes.binaries, kubernetes.images)
from provisioner.bootstrap.steps import common, containerd, etcd, kubernetes

__all__ = ["common", "containerd", "etcd", "kubernetes"]
