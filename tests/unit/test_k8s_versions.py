"""Kubernetes versions and node settings as a user would check them: 1.20.2 (what the embedded lab
builds) validates with a warning and gets kubeadm v1beta2 configuration whose every field exists
in kubeadm 1.20; the pause image and registry follow the version; the cgroup driver, containerd's
oom_score_adj restriction, kube-proxy's conntrack sizing, extra preflight exceptions and "no
cluster DNS" reach the files and commands on the nodes."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.pki import ensure_pki
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import run_playbook
from provisioner.bootstrap.steps import containerd
from provisioner.bootstrap.steps.kubernetes import control_plane as cp
from provisioner.bootstrap.steps.kubernetes import endpoint as ep
from provisioner.bootstrap.steps.kubernetes import settings as ks
from provisioner.errors import SpecError
from provisioner.plan import make_plan
from provisioner.spec import NodeSettingsSpec, PKISpec, load_spec, spec_from_dict
from provisioner.ssh.commands import Secret
from provisioner.state import ClusterState
from tests.unit.test_kubernetes_order import PLAYBOOK, VIP, World, hosts_for, world  # noqa: F401
from tests.unit.test_spec import LAB_ENV

TOKEN = Secret("abcdef.0123456789abcdef")
ENV = LAB_ENV | {"VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199", "VKP_API_ENDPOINT": VIP}
LAB_K8S = """
kubernetes:
  version: 1.20.2
  pod_cidr: 198.19.0.0/17
  service_cidr: 198.19.128.0/17
  cni: bridge
  dns: none
  node:
    cgroup_driver: cgroupfs
    restrict_oom_score_adj: true
    conntrack_max_per_core: 0
    ignore_preflight_errors: [FileExisting-crictl, Port-6443]
"""


def write(where: Path, text: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    f = where / "cluster.yaml"
    f.write_text(text)
    return f


def cluster_from(tmp_path: Path, text: str, plan: str = "small") -> Cluster:
    f = write(tmp_path, f"name: demo\nplan: {plan}\n{textwrap.dedent(text)}")
    spec = load_spec(f, env=ENV if plan != "small" else LAB_ENV)
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    p = make_plan(spec)
    return Cluster(spec=spec, plan=p, state=state, pki=ensure_pki(state, p, PKISpec(key_type="ecdsa")))


def docs(text: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


# Every field of kubeadm.k8s.io/v1beta2 in v1.20.2 (cmd/kubeadm/app/apis/kubeadm/v1beta2/types.go),
# of KubeletConfiguration (k8s.io/kubelet/config/v1beta1) for the fields vkp writes, and of
# KubeProxyConfiguration v1alpha1's conntrack. "*": a map with keys of the user's choosing.
_ENDPOINT = {"advertiseAddress": None, "bindPort": None}
_NODE_REG = {
    "name": None,
    "criSocket": None,
    "taints": None,
    "kubeletExtraArgs": "*",
    "ignorePreflightErrors": None,
}
_COMPONENT = {"extraArgs": "*", "extraVolumes": None}
V1BETA2: dict[str, dict[str, Any]] = {
    "InitConfiguration": {
        "bootstrapTokens": {
            "token": None,
            "description": None,
            "ttl": None,
            "expires": None,
            "usages": None,
            "groups": None,
        },
        "nodeRegistration": _NODE_REG,
        "localAPIEndpoint": _ENDPOINT,
        "certificateKey": None,
    },
    "ClusterConfiguration": {
        "etcd": {
            "local": None,
            "external": {"endpoints": None, "caFile": None, "certFile": None, "keyFile": None},
        },
        "networking": {"serviceSubnet": None, "podSubnet": None, "dnsDomain": None},
        "kubernetesVersion": None,
        "controlPlaneEndpoint": None,
        "apiServer": {**_COMPONENT, "certSANs": None, "timeoutForControlPlane": None},
        "controllerManager": _COMPONENT,
        "scheduler": _COMPONENT,
        "dns": None,
        "certificatesDir": None,
        "imageRepository": None,
        "useHyperKubeImage": None,
        "featureGates": "*",
        "clusterName": None,
    },
    "JoinConfiguration": {
        "nodeRegistration": _NODE_REG,
        "caCertPath": None,
        "discovery": {
            "bootstrapToken": {
                "token": None,
                "apiServerEndpoint": None,
                "caCertHashes": None,
                "unsafeSkipCAVerification": None,
            },
            "file": None,
            "tlsBootstrapToken": None,
            "timeout": None,
        },
        "controlPlane": {"localAPIEndpoint": _ENDPOINT, "certificateKey": None},
    },
    # Not every field, but every one vkp might write; containerRuntimeEndpoint came in 1.27.
    "KubeletConfiguration": {"cgroupDriver": None, "rotateCertificates": None},
    "KubeProxyConfiguration": {
        "clusterCIDR": None,
        "mode": None,
        "conntrack": {"maxPerCore": None, "min": None, "tcpEstablishedTimeout": None},
    },
}


def unknown_fields(value: Any, schema: Any, path: str) -> list[str]:
    if schema is None or schema == "*":
        return []
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in unknown_fields(v, schema, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path} (a {type(value).__name__} where kubeadm has an object)"]
    out = []
    for k, v in value.items():
        if k not in schema:
            out.append(f"{path}.{k}")
        else:
            out += unknown_fields(v, schema[k], f"{path}.{k}")
    return out


def check_v1beta2(text: str) -> dict[str, dict[str, Any]]:
    d = docs(text)
    for kind, doc in d.items():
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
        assert unknown_fields(body, V1BETA2[kind], kind) == []
        if kind.endswith("Configuration") and doc["apiVersion"].startswith("kubeadm.k8s.io/"):
            assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta2"
    return d


# -- the version ------------------------------------------------------------------------------


def test_the_labs_1_20_validates_with_an_end_of_life_warning(tmp_path: Path) -> None:
    cluster = cluster_from(tmp_path, LAB_K8S)
    k = cluster.spec.kubernetes
    assert (k.version, k.minor) == ("1.20.2", 20)
    (warning,) = cluster.spec.warnings()
    assert warning.startswith("kubernetes.version 1.20.2 is past upstream end of life")
    assert "embedded lab" in warning
    # Supported versions say nothing.
    assert cluster_from(tmp_path / "b", "kubernetes: {version: 1.28.0}\n").spec.warnings() == []


def test_1_20_init_and_join_are_kubeadm_v1beta2_with_only_fields_kubeadm_1_20_knows(tmp_path: Path) -> None:
    cluster = cluster_from(tmp_path, LAB_K8S.replace("[FileExisting-crictl, Port-6443]", "[]"), plan="prod")
    m1, m2 = cluster.plan.by_role("master")[:2]
    init = check_v1beta2(cp.render_init_config(m1, cluster, TOKEN))
    assert set(init) == {
        "InitConfiguration",
        "ClusterConfiguration",
        "KubeletConfiguration",
        "KubeProxyConfiguration",
    }
    cc = init["ClusterConfiguration"]
    assert cc["kubernetesVersion"] == "v1.20.2"
    assert cc["imageRepository"] == "k8s.gcr.io"  # what kubeadm 1.20 names
    # v1beta2 takes maps of arguments, as v1beta3 does.
    assert init["InitConfiguration"]["nodeRegistration"]["kubeletExtraArgs"] == {"node-ip": m1.address}
    # kubeadm 1.20 hands criSocket to the kubelet as a flag: the kubelet config has no endpoint.
    assert "containerRuntimeEndpoint" not in init["KubeletConfiguration"]
    assert init["InitConfiguration"]["nodeRegistration"]["criSocket"] == ks.CRI_SOCKET
    for node in (m2, cluster.plan.by_role("worker")[0]):
        join = check_v1beta2(cp.render_join_config(node, cluster, TOKEN, "sha256:x"))
        assert set(join) == {"JoinConfiguration"}


@pytest.mark.parametrize(
    ("version", "api", "registry", "pause"),
    [
        ("1.20.2", "v1beta2", "k8s.gcr.io", "3.2"),
        ("1.21.14", "v1beta2", "k8s.gcr.io", "3.4.1"),
        ("1.22.17", "v1beta3", "k8s.gcr.io", "3.5"),
        ("1.24.17", "v1beta3", "k8s.gcr.io", "3.7"),
        ("1.25.16", "v1beta3", "registry.k8s.io", "3.8"),
        ("1.30.4", "v1beta3", "registry.k8s.io", "3.9"),
        ("1.31.2", "v1beta4", "registry.k8s.io", "3.10"),
    ],
)
def test_api_registry_and_pause_follow_the_version(
    tmp_path: Path, version: str, api: str, registry: str, pause: str
) -> None:
    cluster = cluster_from(tmp_path, f"kubernetes: {{version: {version}}}\n")
    d = docs(cp.render_init_config(cluster.plan.by_role("master")[0], cluster, TOKEN))
    assert d["InitConfiguration"]["apiVersion"] == f"kubeadm.k8s.io/{api}"
    assert d["ClusterConfiguration"]["imageRepository"] == registry
    assert cluster.spec.kubernetes.sandbox_image == f"{registry}/pause:{pause}"
    assert f'sandbox_image = "{registry}/pause:{pause}"' in containerd.render_config(cluster)


def test_pause_image_for_1_20_and_1_30_and_the_overrides(tmp_path: Path) -> None:
    assert cluster_from(tmp_path / "a", LAB_K8S).spec.kubernetes.sandbox_image == "k8s.gcr.io/pause:3.2"
    default = cluster_from(tmp_path / "b", "")
    assert default.spec.kubernetes.sandbox_image == "registry.k8s.io/pause:3.9"
    mirrored = cluster_from(
        tmp_path / "c",
        "kubernetes: {version: 1.20.2, artifacts: {image_repository: mirror.example:5000/k8s}}\n",
    )
    k = mirrored.spec.kubernetes
    assert k.image_repository == "mirror.example:5000/k8s"
    assert k.sandbox_image == "mirror.example:5000/k8s/pause:3.2"
    pinned = cluster_from(tmp_path / "d", "kubernetes: {artifacts: {sandbox_image: 'r.example/pause:9'}}\n")
    assert 'sandbox_image = "r.example/pause:9"' in containerd.render_config(pinned)


def test_a_saved_spec_reads_back_with_the_same_images(tmp_path: Path) -> None:
    for i, text in enumerate(
        (LAB_K8S, "kubernetes: {version: 1.20.2, artifacts: {image_repository: m.example/k8s}}\n")
    ):
        spec = cluster_from(tmp_path / str(i), text).spec
        back = spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
        assert back.kubernetes == spec.kubernetes
        assert back.kubernetes.image_repository == spec.kubernetes.image_repository


# -- node settings ----------------------------------------------------------------------------


def test_defaults_are_what_a_systemd_vm_needs(tmp_path: Path) -> None:
    cluster = cluster_from(tmp_path, "")
    k = cluster.spec.kubernetes
    assert k.node == NodeSettingsSpec("systemd", False, None, ())
    assert (k.dns, k.cni_plugins_version) == ("coredns", "1.1.1")
    d = docs(cp.render_init_config(cluster.plan.by_role("master")[0], cluster, TOKEN))
    assert d["KubeletConfiguration"]["cgroupDriver"] == "systemd"
    assert "conntrack" not in d["KubeProxyConfiguration"]  # kube-proxy's own default
    toml = containerd.render_config(cluster)
    assert "SystemdCgroup = true\n" in toml and "restrict_oom_score_adj = false\n" in toml


def test_cgroupfs_oom_and_conntrack_reach_kubelet_containerd_and_kube_proxy(tmp_path: Path) -> None:
    cluster = cluster_from(tmp_path, LAB_K8S)
    d = docs(cp.render_init_config(cluster.plan.by_role("master")[0], cluster, TOKEN))
    assert d["KubeletConfiguration"]["cgroupDriver"] == "cgroupfs"
    assert d["KubeProxyConfiguration"]["conntrack"] == {"maxPerCore": 0}
    toml = containerd.render_config(cluster)
    assert "SystemdCgroup = false\n" in toml and "SystemdCgroup = true" not in toml
    assert "restrict_oom_score_adj = true\n" in toml
    assert "cgroupfs cgroup driver" in toml  # the comment says what this file does


def test_extra_preflight_exceptions_are_merged_once_in_order_for_init_and_join(tmp_path: Path) -> None:
    text = LAB_K8S + "network: {api_endpoint: {mode: kube-vip, address: 198.18.0.250}}\n"
    cluster = cluster_from(tmp_path, text, plan="prod")
    m1, m2 = cluster.plan.by_role("master")[:2]
    worker = cluster.plan.by_role("worker")[0]
    init = docs(cp.render_init_config(m1, cluster, TOKEN))["InitConfiguration"]
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["FileExisting-crictl", "Port-6443"]
    # vkp's own exception (kube-vip's manifest is placed before a master joins) first, each once.
    join = docs(cp.render_join_config(m2, cluster, TOKEN, "sha256:x"))["JoinConfiguration"]
    assert join["nodeRegistration"]["ignorePreflightErrors"] == [
        "DirAvailable--etc-kubernetes-manifests",
        "FileExisting-crictl",
        "Port-6443",
    ]
    wjoin = docs(cp.render_join_config(worker, cluster, TOKEN, "sha256:x"))["JoinConfiguration"]
    assert wjoin["nodeRegistration"]["ignorePreflightErrors"] == ["FileExisting-crictl", "Port-6443"]


def test_behind_haproxy_the_api_servers_take_another_port_on_every_master(tmp_path: Path) -> None:
    # haproxy holds the endpoint's 6443 on the virtual address on each master. kubeadm keeps the
    # API server's arguments cluster-wide, so a bind address would be the first master's on all.
    text = LAB_K8S + "network: {api_endpoint: {mode: haproxy-keepalived, address: 198.18.0.250}}\n"
    cluster = cluster_from(tmp_path, text, plan="prod")
    m1, m2 = cluster.plan.by_role("master")[:2]
    init = docs(cp.render_init_config(m1, cluster, TOKEN))
    assert init["InitConfiguration"]["localAPIEndpoint"]["bindPort"] == 6444
    assert "bind-address" not in str(init["ClusterConfiguration"])
    assert init["ClusterConfiguration"]["controlPlaneEndpoint"] == "198.18.0.250:6443"
    join = docs(cp.render_join_config(m2, cluster, TOKEN, "sha256:x"))["JoinConfiguration"]
    assert join["controlPlane"]["localAPIEndpoint"]["bindPort"] == 6444
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "198.18.0.250:6443"
    haproxy = ep.render_haproxy(m2, cluster)
    assert "bind 198.18.0.250:6443" in haproxy
    assert all(f"{m.address}:6444 check" in haproxy for m in cluster.plan.by_role("master"))


def _through_the_joins() -> Any:
    raw = yaml.safe_load(PLAYBOOK.read_text())
    names = [p["play"] for p in raw]
    plays = [
        p
        for p in raw[: names.index("worker-join") + 1]
        if p["phase"] == "kubernetes" and p["play"] != "kubernetes-artifacts"
    ]
    return parse_playbook(plays, source=str(PLAYBOOK))


@pytest.mark.parametrize("dns", ["none", "coredns"])
def test_dns_none_runs_kubeadm_init_without_coredns(tmp_path: Path, world: World, dns: str) -> None:  # noqa: F811
    cluster = cluster_from(tmp_path, LAB_K8S.replace("dns: none", f"dns: {dns}"), plan="prod")
    hosts = hosts_for(cluster, world)
    run_playbook(_through_the_joins(), cluster, hosts, phases={"kubernetes"}, log=lambda _: None)
    m1 = cluster.plan.by_role("master")[0].name
    (init,) = [c for c in hosts[m1].commands if "kubeadm init" in c]
    assert ("--skip-phases=addon/coredns" in init) is (dns == "none")
    # Joins have no such phase: the flag is init's only.
    joins = [c for h in hosts.values() for c in h.commands if "kubeadm join" in c]
    others = len(cluster.plan.by_role("master")) - 1 + len(cluster.plan.by_role("worker"))
    assert len(joins) == others and not any("skip-phases" in c for c in joins)
    uploaded = hosts[m1].files[ks.INIT_CONFIG][0].decode()
    assert docs(uploaded)["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta2"


# -- bad values -------------------------------------------------------------------------------


def problems(tmp_path: Path, text: str) -> dict[str, str]:
    f = write(tmp_path, f"name: demo\nplan: small\n{textwrap.dedent(text)}")
    with pytest.raises(SpecError) as ei:
        load_spec(f, env=LAB_ENV)
    return dict(ei.value.problems)


def test_bad_node_settings_name_their_fields(tmp_path: Path) -> None:
    p = problems(
        tmp_path,
        """
        kubernetes:
          cni: bridge
          cni_version: 1.0.0
          cni_plugins_version: latest
          dns: kube-dns
          node:
            cgroup_driver: systemd-cgroup
            restrict_oom_score_adj: "yes"
            conntrack_max_per_core: -1
            ignore_preflight_errors: [Swap, "bad name"]
            swap: true
        """,
    )
    assert "use systemd" in p["kubernetes.node.cgroup_driver"]
    assert "true or false" in p["kubernetes.node.restrict_oom_score_adj"]
    assert "must be 0" in p["kubernetes.node.conntrack_max_per_core"]
    assert "preflight check name" in p["kubernetes.node.ignore_preflight_errors[1]"]
    assert "kubernetes.node.ignore_preflight_errors[0]" not in p
    assert "unknown key" in p["kubernetes.node.swap"]
    assert "coredns, or none" in p["kubernetes.dns"]
    assert "1.1.1" in p["kubernetes.cni_plugins_version"]
    assert "cni_plugins_version" in p["kubernetes.cni_version"]


def test_bridge_is_a_cni_and_its_plugins_version_is_read(tmp_path: Path) -> None:
    k = cluster_from(tmp_path, "kubernetes: {cni: bridge, cni_plugins_version: v1.4.0}\n").spec.kubernetes
    assert (k.cni, k.cni_plugins_version) == ("bridge", "1.4.0")
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path / "x", "name: d\nplan: small\nkubernetes: {cni: weave}\n"), env=LAB_ENV)
    assert "calico, flannel, bridge" in dict(ei.value.problems)["kubernetes.cni"]


def test_the_version_is_parsed_once(tmp_path: Path) -> None:
    cluster = cluster_from(tmp_path, "kubernetes: {version: v1.20.2}\n")
    s = ks.settings(cluster)
    assert (s.version, s.minor) == ("1.20.2", 20) == (cluster.spec.kubernetes.version, 20)
    k = replace(cluster.spec.kubernetes, version="1.x")
    bad = replace(cluster, spec=replace(cluster.spec, kubernetes=k))
    with pytest.raises(Exception, match="must be a release like"):
        ks.settings(bad)
