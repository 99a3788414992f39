"""Checks of what is installed on the nodes: the kubernetes section (version, CNI, cluster
DNS, pod and service ranges, node settings, artifacts and images), etcd (tuning, package or
artifact, version) and pki."""

from __future__ import annotations

import ipaddress
import re

from provisioner.bootstrap.artifacts import ETCD, ArtifactSource
from provisioner.spec.checks_network import _overlap
from provisioner.spec.schema import (
    _K8S_VERSION,
    CGROUP_DRIVERS,
    CNIS,
    DEFAULT_CNI_PLUGINS_VERSION,
    DEFAULT_ETCD_VERSION,
    DEFAULT_IMAGE_REPOSITORY,
    DEFAULT_K8S_VERSION,
    DNS_ADDONS,
    ETCD_PACKAGE,
    K8S_MINORS,
    K8S_SUPPORTED_FROM,
    KEY_TYPES,
    LIMITS,
    RSA_SIZES,
    ArtifactsSpec,
    ClusterSpec,
    EtcdSpec,
    IPNetwork,
    NodeSettingsSpec,
    PKISpec,
    k8s_minor,
)
from provisioner.spec.values import show

_SEMVER = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
# A registry host (with optional port) and optional path, as kubeadm's imageRepository takes it.
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)?")
# registry/path/name:tag or @sha256:digest (lower-case repository, as the distribution spec says).
_IMAGE_REF = re.compile(
    r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._/-]*[a-z0-9])?)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"
)
# kubeadm's check names: Port-6443, DirAvailable--etc-kubernetes-manifests, FileExisting-crictl.
_PREFLIGHT_CHECK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def k8s_version_problem(version: str) -> str | None:
    """Why version cannot be kubernetes.version (not a 1.Y.Z release, or a minor outside
    K8S_MINORS), or None: the one range check, over schema.k8s_minor's parse."""
    lo, hi = K8S_MINORS
    if not _K8S_VERSION.fullmatch(version):
        return f"must be a release like {DEFAULT_K8S_VERSION} (X.Y.Z); got {show(version)}"
    if not lo <= k8s_minor(version) <= hi:
        return (
            f"{version} is outside the versions vkp supports (1.{K8S_SUPPORTED_FROM} to 1.{hi}; "
            f"1.{lo} to 1.{K8S_SUPPORTED_FROM - 1} for the embedded lab only); pick a release in that "
            f"range, e.g. {DEFAULT_K8S_VERSION}"
        )
    return None


def _check_kubernetes(spec: ClusterSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    k = spec.kubernetes
    if (why := k8s_version_problem(k.version)) is not None:
        p.append(("kubernetes.version", why))
    if k.cni not in CNIS:
        p.append(("kubernetes.cni", f"unknown CNI {show(k.cni)}; use one of {', '.join(CNIS)}"))
    if k.dns not in DNS_ADDONS:
        p.append(
            (
                "kubernetes.dns",
                f"unknown cluster DNS {show(k.dns)}; use coredns, or none to install no cluster DNS",
            )
        )
    nets: dict[str, IPNetwork] = {}
    for key, default in (("pod_cidr", "10.244.0.0/16"), ("service_cidr", "10.96.0.0/12")):
        value = getattr(k, key)
        try:
            nets[key] = ipaddress.ip_network(value, strict=True)
        except ValueError:
            try:
                fixed = ipaddress.ip_network(value, strict=False)
                p.append((f"kubernetes.{key}", f"{value} has host bits set; use {fixed}"))
            except ValueError:
                p.append((f"kubernetes.{key}", f"{show(value)} is not a CIDR like {default}"))
    node_subnet = spec.network.subnet()
    for key, n in nets.items():
        if node_subnet is not None and _overlap(n, node_subnet):
            p.append(
                (
                    f"kubernetes.{key}",
                    f"{n} overlaps the node subnet {node_subnet}; pick a range that does not",
                )
            )
    pod, svc = nets.get("pod_cidr"), nets.get("service_cidr")
    if pod is not None and svc is not None and _overlap(pod, svc):
        p.append(
            ("kubernetes.service_cidr", f"{svc} overlaps kubernetes.pod_cidr {pod}; pick separate ranges")
        )
    if svc is not None and svc.version == 4 and svc.prefixlen < 12:
        p.append(
            (
                "kubernetes.service_cidr",
                f"kube-apiserver accepts at most a /12 for services; got /{svc.prefixlen}",
            )
        )
    if pod is not None and pod.version == 4:
        nodes = max(spec.topology.master.count, 0) + max(spec.topology.worker.count, 0)
        # Each node gets a /24 out of the pod CIDR (kube-controller-manager's default mask).
        if pod.prefixlen > 24 or 2 ** (24 - pod.prefixlen) < nodes:
            p.append(
                (
                    "kubernetes.pod_cidr",
                    f"{pod} is too small: every master and worker takes a /24 from it ({nodes} needed); "
                    "use a shorter prefix such as /16",
                )
            )
    if k.cni_version is not None and not _SEMVER.fullmatch(k.cni_version):
        p.append(("kubernetes.cni_version", f"must be a release like 3.28.1; got {show(k.cni_version)}"))
    elif k.cni_version is not None and k.cni == "bridge":
        p.append(
            (
                "kubernetes.cni_version",
                "does not apply to cni: bridge; the CNI plugins' release is kubernetes.cni_plugins_version",
            )
        )
    if not _SEMVER.fullmatch(k.cni_plugins_version):
        p.append(
            (
                "kubernetes.cni_plugins_version",
                f"must be a release of the CNI plugins like {DEFAULT_CNI_PLUGINS_VERSION} (X.Y.Z); "
                f"got {show(k.cni_plugins_version)}",
            )
        )
    p += _check_node_settings(k.node)
    p += _check_artifacts(k.artifacts)
    return p


def _check_node_settings(n: NodeSettingsSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    np = "kubernetes.node"
    if n.cgroup_driver not in CGROUP_DRIVERS:
        p.append(
            (
                f"{np}.cgroup_driver",
                f"unknown cgroup driver {show(n.cgroup_driver)}; use systemd (where systemd manages the "
                "node's cgroups) or cgroupfs",
            )
        )
    limit = LIMITS["conntrack_max_per_core"]
    if n.conntrack_max_per_core is not None and n.conntrack_max_per_core < 0:
        p.append(
            (
                f"{np}.conntrack_max_per_core",
                "must be 0 (leave the host's conntrack table size alone) or more, or unset for "
                f"kube-proxy's default; got {n.conntrack_max_per_core}",
            )
        )
    elif n.conntrack_max_per_core is not None and n.conntrack_max_per_core > limit.maximum:
        p.append(
            (
                f"{np}.conntrack_max_per_core",
                f"must be at most {limit.maximum} ({limit.why}); got {show(n.conntrack_max_per_core)}",
            )
        )
    for i, name in enumerate(n.ignore_preflight_errors):
        if not _PREFLIGHT_CHECK.fullmatch(name):
            p.append(
                (
                    f"{np}.ignore_preflight_errors[{i}]",
                    f"must be a kubeadm preflight check name like Swap or FileExisting-crictl (or all); "
                    f"got {show(name)}",
                )
            )
    return p


def _check_artifacts(a: ArtifactsSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    ap = "kubernetes.artifacts"
    try:
        ArtifactSource.parse(a.source)
    except ValueError as exc:
        p.append((f"{ap}.source", _quoting(str(exc), a.source)))
    except RuntimeError:
        p.append((f"{ap}.source", _no_home(a.source)))
    if a.image_repository is not None and not _REGISTRY.fullmatch(a.image_repository):
        p.append(
            (
                f"{ap}.image_repository",
                f"must be a registry and path without a scheme, like {DEFAULT_IMAGE_REPOSITORY} or "
                f"mirror.example.com:5000/k8s; got {show(a.image_repository)}",
            )
        )
    if a.sandbox_image is not None and not _IMAGE_REF.fullmatch(a.sandbox_image):
        p.append(
            (
                f"{ap}.sandbox_image",
                f"must be an image with a tag or digest, like {DEFAULT_IMAGE_REPOSITORY}/pause:3.9; "
                f"got {show(a.sandbox_image)}",
            )
        )
    return p


def _quoting(message: str, value: str) -> str:
    # The artifact parser quotes the whole value; cut it like every other quoted value.
    return message.replace(repr(value.strip()), show(value.strip()))


def _no_home(value: str) -> str:
    # Path.expanduser() raises RuntimeError for ~name when there is no such user.
    return f"{show(value)} starts with ~ but names no user's home directory; give the full path"


def _check_etcd(e: EtcdSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if e.heartbeat_interval < 1:
        p.append(
            (
                "etcd.heartbeat_interval",
                f"must be a positive number of milliseconds; got {e.heartbeat_interval}",
            )
        )
    elif e.election_timeout < 5 * e.heartbeat_interval:
        p.append(
            (
                "etcd.election_timeout",
                f"must be at least 5 x etcd.heartbeat_interval ({5 * e.heartbeat_interval} ms) or etcd "
                f"refuses to start; got {e.election_timeout}",
            )
        )
    if e.election_timeout > 50000:
        p.append(("etcd.election_timeout", f"etcd allows at most 50000 ms; got {e.election_timeout}"))
    p += _check_etcd_artifact(e)
    return p


def _check_etcd_artifact(e: EtcdSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if not e.from_package:
        try:
            ArtifactSource.parse(e.artifact, layout=ETCD)
        except ValueError as exc:
            msg = _quoting(str(exc), e.artifact)
            if msg.startswith("must be "):
                msg = f"must be {ETCD_PACKAGE} (the distribution's etcd-server), {msg[len('must be ') :]}"
            p.append(("etcd.artifact", msg))
        except RuntimeError:
            p.append(("etcd.artifact", _no_home(e.artifact)))
    if not _SEMVER.fullmatch(e.version):
        p.append(
            ("etcd.version", f"must be a release like {DEFAULT_ETCD_VERSION} (X.Y.Z); got {show(e.version)}")
        )
    elif not e.from_package and not e.version.startswith("3."):
        p.append(("etcd.version", f"vkp's etcd configuration is for etcd 3.x; got {e.version}"))
    return p


def _check_pki(pki: PKISpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if pki.key_type not in KEY_TYPES:
        p.append(("pki.key_type", f"unknown key type {show(pki.key_type)}; use rsa or ecdsa"))
    if pki.rsa_bits not in RSA_SIZES:
        p.append(("pki.rsa_bits", f"must be one of {', '.join(map(str, RSA_SIZES))}; got {pki.rsa_bits}"))
    return p
