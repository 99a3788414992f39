"""The steps playbooks can name. Importing this package registers every one of them."""

from provisioner.bootstrap.steps import common, containerd, etcd, kubernetes

__all__ = ["common", "containerd", "etcd", "kubernetes"]
