"""The cluster spec: merging, environment, and every validation a user can trip over."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ExitCode, SpecError
from provisioner.spec import ClusterSpec, load_size_presets, load_spec, validate

REPO = Path(__file__).resolve().parents[2]

# What `vkp lab env` exports (the password is only here to prove it never leaks).
LAB_ENV = {
    "VKP_VSPHERE_SERVER": "127.0.0.1:8989",
    "VKP_VSPHERE_USER": "user",
    "VKP_VSPHERE_PASSWORD": "pa55-w0rd-never-shown",
    "VKP_VSPHERE_THUMBPRINT": ":".join(["ab"] * 32),
    "VKP_VSPHERE_DATACENTER": "DC0",
    "VKP_VSPHERE_CLUSTER": "DC0_C0",
    "VKP_VSPHERE_DATASTORE": "LocalDS_0",
    "VKP_VSPHERE_NETWORK": "VM Network",
    "VKP_VSPHERE_TEMPLATE": "debian-12",
    "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.250",
    "VKP_NETWORK_PREFIX": "24",
    "VKP_NETWORK_GATEWAY": "198.18.0.1",
    "VKP_NETWORK_DNS": "198.18.0.1",
}


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path | None = None, *, env: dict[str, str] | None = None, **kw: Any) -> dict[str, str]:
    """{field path: message} of the SpecError the spec raises (fails if it loads)."""
    with pytest.raises(SpecError) as ei:
        load_spec(path, env=LAB_ENV if env is None else env, **kw)
    assert ei.value.exit_code == ExitCode.SPEC
    return dict(ei.value.problems)


# --- plans and the environment -----------------------------------------------------------------


def test_plans_are_the_documented_sizes() -> None:
    plans = load_size_presets()
    counts = {
        n: tuple(p.topology.role(r).count for r in ("etcd", "master", "worker")) for n, p in plans.items()
    }
    assert counts["dev"] == (1, 1, 1)
    assert counts["small"] == (3, 1, 2)
    assert counts["prod"] == (3, 3, 3)


def test_plan_small_from_the_environment_alone() -> None:
    spec = load_spec(None, name="demo", plan="small", env=LAB_ENV)
    assert (spec.name, spec.plan) == ("demo", "small")
    assert (
        spec.topology.etcd.count == 3 and spec.topology.master.count == 1 and spec.topology.worker.count == 2
    )
    assert spec.vsphere.server == "127.0.0.1" and spec.vsphere.port == 8989
    assert spec.vsphere.datacenter == "DC0" and spec.vsphere.network == "VM Network"
    assert spec.vsphere.tls.thumbprint == ":".join(["AB"] * 32)
    assert spec.network.prefix == 24 and spec.network.gateway == "198.18.0.1"
    assert spec.network.dns == ("198.18.0.1",)
    assert spec.warnings() == []


def test_password_is_never_stored_only_the_variable_names() -> None:
    spec = load_spec(None, name="demo", plan="small", env=LAB_ENV)
    dumped = json.dumps(spec.to_dict())
    assert LAB_ENV["VKP_VSPHERE_PASSWORD"] not in dumped
    assert LAB_ENV["VKP_VSPHERE_PASSWORD"] not in repr(spec)
    assert spec.vsphere.credentials.password_env == "VKP_VSPHERE_PASSWORD"
    assert spec.vsphere.credentials.lookup(LAB_ENV) == ("user", LAB_ENV["VKP_VSPHERE_PASSWORD"])


def test_merge_order_plan_then_file_then_arguments(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: from-file
        plan: dev
        topology:
          worker: {count: 4, memory_mb: 8192}
        """,
    )
    spec = load_spec(f, env=LAB_ENV)
    assert spec.name == "from-file" and spec.plan == "dev"
    assert spec.topology.worker.count == 4 and spec.topology.worker.memory_mb == 8192
    assert spec.topology.worker.cpus == 2  # the rest of the worker comes from the plan
    spec = load_spec(f, name="from-args", plan="small", env=LAB_ENV)
    assert spec.name == "from-args" and spec.plan == "small"
    assert spec.topology.etcd.count == 3  # the argument's plan
    assert spec.topology.worker.count == 4  # the file still overrides the plan


def test_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        vsphere: {datacenter: DC-file}
        network: {pool: 198.18.0.100-198.18.0.110}
        """,
    )
    spec = load_spec(f, env=LAB_ENV)
    assert spec.vsphere.datacenter == "DC-file"
    assert [str(r) for r in spec.network.pool] == ["198.18.0.100-198.18.0.110"]
    assert spec.vsphere.cluster == "DC0_C0"  # left out of the file: from the environment


def test_tls_chosen_in_the_file_is_not_mixed_with_the_environment(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nvsphere: {tls: {insecure: true}}\n")
    spec = load_spec(f, env=LAB_ENV)  # LAB_ENV has a thumbprint, which would contradict
    assert spec.vsphere.tls.insecure and spec.vsphere.tls.thumbprint is None
    assert any("NOT verified" in w for w in spec.warnings())


def test_insecure_from_the_environment_warns() -> None:
    env = {k: v for k, v in LAB_ENV.items() if k != "VKP_VSPHERE_THUMBPRINT"} | {"VKP_VSPHERE_INSECURE": "1"}
    spec = load_spec(None, name="x", plan="dev", env=env)
    assert spec.vsphere.tls.insecure
    assert spec.warnings() and "insecure" in spec.warnings()[0]


def test_pool_as_comma_list_from_the_environment() -> None:
    env = LAB_ENV | {"VKP_NETWORK_POOL": "198.18.0.10,198.18.0.20-198.18.0.21, 198.18.0.30"}
    spec = load_spec(None, name="x", plan="dev", env=env)
    assert list(spec.network.pool_addresses()) == ["198.18.0.10", "198.18.0.20", "198.18.0.21", "198.18.0.30"]


def test_errors_in_environment_values_name_the_variable() -> None:
    p = problems(env=LAB_ENV | {"VKP_NETWORK_PREFIX": "twenty-four"}, name="x", plan="dev")
    assert "VKP_NETWORK_PREFIX" in p["network.prefix"]


def test_kubernetes_etcd_pki_defaults() -> None:
    spec = load_spec(None, name="x", plan="dev", env=LAB_ENV)
    assert spec.kubernetes.pod_cidr == "10.244.0.0/16"
    assert spec.kubernetes.service_cidr == "10.96.0.0/12"
    assert spec.kubernetes.cni == "calico"
    assert (spec.etcd.heartbeat_interval, spec.etcd.election_timeout) == (100, 1000)
    assert (spec.pki.key_type, spec.pki.rsa_bits) == ("rsa", 2048)


def test_relative_ca_file_is_relative_to_the_spec(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nvsphere: {tls: {ca_file: certs/vc.pem}}\n")
    spec = load_spec(f, env=LAB_ENV)
    assert spec.vsphere.tls.ca_file == str((tmp_path / "certs/vc.pem").resolve())


# --- the shipped specs -------------------------------------------------------------------------


def test_lab_spec_validates_with_lab_env() -> None:
    env = {
        k: v for k, v in LAB_ENV.items() if not k.startswith("VKP_NETWORK") and k != "VKP_VSPHERE_DATACENTER"
    }
    spec = load_spec(REPO / "inventory/lab.yaml", env=env)
    assert spec.vsphere.datacenter == "DC0" and spec.vsphere.template == "debian-12"
    assert spec.topology.etcd.count == 3 and spec.topology.master.count == 1
    assert all(a.startswith("198.18.0.") for a in spec.network.pool_addresses())


def test_sample_validates_without_any_environment() -> None:
    spec = load_spec(REPO / "inventory/sample/cluster.yaml", env={})
    validate(spec)
    assert spec.topology.master.count == 3 and spec.network.api_endpoint.address


def test_sample_shows_every_option() -> None:
    raw = yaml.safe_load((REPO / "inventory/sample/cluster.yaml").read_text())
    spec = load_spec(REPO / "inventory/sample/cluster.yaml", env={})

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, prefix + k + ".")
        return out

    schema = keys(spec.to_dict()) - {"source"}
    assert schema - keys(raw) == set()


# --- validation: each mistake names its field and what to do -----------------------------------


@pytest.mark.parametrize("count", [2, 0, 4])
def test_etcd_count_must_be_odd(tmp_path: Path, count: int) -> None:
    f = write(tmp_path, f"name: x\nplan: small\ntopology: {{etcd: {{count: {count}}}}}\n")
    msg = problems(f)["topology.etcd.count"]
    assert "odd" in msg and "quorum" in msg and f"got {count}" in msg


def test_no_master(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: small\ntopology: {master: {count: 0}}\n")
    assert "at least one master" in problems(f)["topology.master.count"]


def test_memory_below_what_the_role_needs(tmp_path: Path) -> None:
    f = write(
        tmp_path, "name: x\nplan: small\ntopology: {master: {memory_mb: 1024}, etcd: {memory_mb: 512}}\n"
    )
    p = problems(f)
    assert (
        "at least 2048 MB" in p["topology.master.memory_mb"] and "got 1024" in p["topology.master.memory_mb"]
    )
    assert "at least 1024 MB" in p["topology.etcd.memory_mb"]


def test_unknown_plan_suggests_the_close_one() -> None:
    msg = problems(name="x", plan="smal")["plan"]
    assert "unknown plan 'smal'" in msg and "did you mean 'small'" in msg and "dev" in msg


def test_unknown_plan_does_not_also_report_every_topology_field() -> None:
    assert list(problems(name="x", plan="huge")) == ["plan"]


def test_unknown_keys_with_did_you_mean(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        netwrok: {}
        topology:
          worker: {memory: 4096}
        """,
    )
    p = problems(f)
    assert "did you mean 'network'" in p["netwrok"]
    assert "did you mean 'memory_mb'" in p["topology.worker.memory"]


def test_credentials_in_the_file_are_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nvsphere: {password: hunter2, user: admin}\n")
    p = problems(f)
    assert "never go in the spec" in p["vsphere.password"] and "VKP_VSPHERE_PASSWORD" in p["vsphere.password"]
    assert "vsphere.user" in p


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nnetwork:\n  pool: [198.18.0.10\n  prefix: 24\n")
    (where, msg), *_ = problems(f).items()
    assert where.startswith(f"{f}:") and int(where.split(":")[1]) >= 4
    assert "YAML syntax error" in msg


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nname: y\n")
    (where, msg), *_ = problems(f).items()
    assert where == f"{f}:3:1" and "duplicate key 'name'" in msg


def test_missing_file() -> None:
    assert "no such file" in problems(Path("/nonexistent/spec.yaml"))["/nonexistent/spec.yaml"]


@pytest.mark.parametrize("name", ["Demo", "demo_1", "1demo", "demo-", ""])
def test_name_must_be_a_dns_label(name: str) -> None:
    msg = problems(name=name, plan="dev")["name"]
    assert "DNS label" in msg or "required" in msg


def test_name_too_long_for_host_names() -> None:
    msg = problems(name="a" * 60, plan="dev")["name"]
    assert "63" in msg and "at most" in msg


def test_duplicate_addresses_in_the_pool_and_pins(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: small
        topology:
          etcd: {addresses: [198.18.0.5, 198.18.0.5]}
        network:
          pool: [198.18.0.10-198.18.0.20, 198.18.0.15]
        """,
    )
    p = problems(f)
    assert "198.18.0.15 appears in entries 0 and 1" in p["network.pool"]
    assert "198.18.0.5 is also given to topology.etcd.addresses[0]" in p["topology.etcd.addresses[1]"]


def test_duplicate_host_names_in_placement(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nplacement: {hosts: [esx-1, esx-2, esx-1]}\n")
    assert "esx-1 is listed more than once" in problems(f)["placement.hosts"]


def test_addresses_outside_the_subnet(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        topology: {master: {addresses: [10.0.0.5]}}
        network: {pool: 198.19.0.10-198.19.0.20}
        """,
    )
    p = problems(f)
    assert "outside the subnet 198.18.0.0/24" in p["network.pool"]
    assert "outside the subnet" in p["topology.master.addresses[0]"]


def test_pool_including_the_gateway(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nnetwork: {pool: 198.18.0.1-198.18.0.20}\n")
    assert "includes the gateway 198.18.0.1" in problems(f)["network.pool"]


def test_pool_too_small_for_the_topology() -> None:
    msg = problems(env=LAB_ENV | {"VKP_NETWORK_POOL": "198.18.0.10-198.18.0.13"}, name="x", plan="small")[
        "network.pool"
    ]
    assert "has 4 free address(es) but the topology needs 6" in msg and "widen the pool" in msg


def test_api_address_inside_the_node_pool() -> None:
    msg = problems(env=LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.50"}, name="x", plan="prod")[
        "network.api_endpoint.address"
    ]
    assert "inside the node pool" in msg and "VKP_API_ENDPOINT" in msg


def test_several_masters_need_a_virtual_address() -> None:
    msg = problems(name="x", plan="prod")["network.api_endpoint.address"]
    assert "required with 3 master(s)" in msg and "outside network.pool" in msg


def test_direct_mode_with_several_masters(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "name: x\nplan: prod\nnetwork: {pool: 198.18.0.10-198.18.0.30, api_endpoint: {mode: direct}}\n",
    )
    assert "direct serves the API from the only master" in problems(f)["network.api_endpoint.mode"]


def test_tls_must_be_chosen_and_not_contradictory(tmp_path: Path) -> None:
    env = {k: v for k, v in LAB_ENV.items() if k != "VKP_VSPHERE_THUMBPRINT"}
    assert "how to verify vCenter's certificate" in problems(env=env, name="x", plan="dev")["vsphere.tls"]
    f = write(
        tmp_path, "name: x\nplan: dev\nvsphere: {tls: {insecure: true, thumbprint: " + "aa" * 32 + "}}\n"
    )
    assert "contradicts" in problems(f)["vsphere.tls.insecure"]
    f = write(tmp_path, "name: x\nplan: dev\nvsphere: {tls: {thumbprint: " + "aa" * 20 + "}}\n")
    assert "SHA-1" in problems(f)["vsphere.tls.thumbprint"]


def test_required_vsphere_settings_say_which_variable() -> None:
    p = problems(env={}, name="x", plan="dev")
    assert "VKP_VSPHERE_SERVER" in p["vsphere.server"]
    assert "VKP_NETWORK_POOL" in p["network.pool"]


def test_kubernetes_etcd_pki_checks(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        kubernetes: {cni: weave, pod_cidr: 10.96.0.0/16, service_cidr: 10.96.0.0/12, version: latest}
        etcd: {heartbeat_interval: 500, election_timeout: 1000}
        pki: {key_type: dsa, rsa_bits: 1024}
        """,
    )
    p = problems(f)
    assert "calico, flannel" in p["kubernetes.cni"]
    assert "overlaps kubernetes.pod_cidr" in p["kubernetes.service_cidr"]
    assert "1.30.4" in p["kubernetes.version"]
    assert "at least 5 x etcd.heartbeat_interval (2500 ms)" in p["etcd.election_timeout"]
    assert "rsa or ecdsa" in p["pki.key_type"]
    assert "2048" in p["pki.rsa_bits"]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: Bad_Name
        plan: small
        topology:
          etcd: {count: 2}
          master: {count: 0, memory_mb: 512}
        network: {pool: 198.18.0.10-198.18.0.11}
        """,
    )
    with pytest.raises(SpecError) as ei:
        load_spec(f, env=LAB_ENV)
    fields = [p for p, _ in ei.value.problems]
    for expected in ("name", "topology.etcd.count", "topology.master.count", "topology.master.memory_mb"):
        assert expected in fields
    text = str(ei.value)
    assert f"{len(fields)} problem(s)" in text and "topology.etcd.count: must be odd" in text
    assert [d["field"] for d in ei.value.to_dict()["problems"]] == fields


def test_type_errors_do_not_cascade(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: small\ntopology: {etcd: {count: three}}\n")
    p = problems(f)
    assert list(p) == ["topology.etcd.count"] and "whole number" in p["topology.etcd.count"]


def test_validate_accepts_a_loaded_spec_and_rejects_a_broken_one() -> None:
    spec = load_spec(None, name="x", plan="dev", env=LAB_ENV)
    validate(spec)
    import dataclasses

    broken: ClusterSpec = dataclasses.replace(
        spec,
        topology=dataclasses.replace(spec.topology, etcd=dataclasses.replace(spec.topology.etcd, count=2)),
    )
    with pytest.raises(SpecError) as ei:
        validate(broken)
    assert dict(ei.value.problems)["topology.etcd.count"].startswith("must be odd (1, 3, 5)")


# --- kubernetes: version range and artifacts -----------------------------------------------------


def test_kubernetes_artifact_defaults() -> None:
    k = load_spec(None, name="x", plan="dev", env=LAB_ENV).kubernetes
    assert k.version == "1.30.4" and 28 <= k.minor <= 31
    assert k.artifacts.source == "upstream"
    # None: the registry kubeadm of the version names (registry.k8s.io for 1.30).
    assert k.artifacts.image_repository is None and k.image_repository == "registry.k8s.io"
    assert k.artifacts.image_tarballs is None
    assert k.sandbox_image == "registry.k8s.io/pause:3.9"
    assert (k.cni, k.cni_version, k.vsphere_csi) == ("calico", None, False)


def test_artifact_settings_from_the_file(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        kubernetes:
          version: v1.31.0
          cni: flannel
          cni_version: v0.25.6
          vsphere_csi: true
          artifacts:
            source: local:artifacts
            image_repository: mirror.example.com:5000/k8s/
            image_tarballs: images
        """,
    )
    k = load_spec(f, env=LAB_ENV | {"VKP_K8S_ARTIFACTS": "https://ignored.example"}).kubernetes
    assert k.version == "1.31.0" and k.cni_version == "0.25.6" and k.vsphere_csi is True
    # Relative to the spec file, like ca_file; the file wins over the environment.
    assert k.artifacts.source == f"local:{(tmp_path / 'artifacts').resolve()}"
    assert k.artifacts.image_tarballs == str((tmp_path / "images").resolve())
    assert k.sandbox_image == "mirror.example.com:5000/k8s/pause:3.10"  # kubeadm 1.31's pause


def test_artifact_source_from_the_environment() -> None:
    env = LAB_ENV | {"VKP_K8S_ARTIFACTS": "http://198.18.0.1:8080/k8s"}
    assert (
        load_spec(None, name="x", plan="dev", env=env).kubernetes.artifacts.source == env["VKP_K8S_ARTIFACTS"]
    )
    p = problems(env=LAB_ENV | {"VKP_K8S_ARTIFACTS": "ftp://mirror/k8s"}, name="x", plan="dev")
    assert "VKP_K8S_ARTIFACTS" in p["kubernetes.artifacts.source"]
    assert "local:/path/to/dir" in p["kubernetes.artifacts.source"]


def test_old_artifact_source_key_still_works(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nkubernetes: {artifact_source: /srv/k8s}\n")
    k = load_spec(f, env=LAB_ENV).kubernetes
    assert k.artifacts.source == "/srv/k8s" and k.artifact_source == "/srv/k8s"
    f = write(tmp_path, "name: x\nplan: dev\nkubernetes: {artifact_source: 'gopher://x'}\n")
    assert "old name" in problems(f)["kubernetes.artifacts.source"]
    f = write(
        tmp_path,
        "name: x\nplan: dev\nkubernetes: {artifact_source: /a, artifacts: {source: upstream}}\n",
    )
    assert "keep only artifacts.source" in problems(f)["kubernetes.artifact_source"]


@pytest.mark.parametrize(
    ("version", "says"),
    [("1.19.16", "1.28 to 1.31"), ("1.32.0", "1.28 to 1.31"), ("1.30", "X.Y.Z"), ("latest", "1.30.4")],
)
def test_kubernetes_version_is_a_supported_release(tmp_path: Path, version: str, says: str) -> None:
    f = write(tmp_path, f"name: x\nplan: dev\nkubernetes: {{version: '{version}'}}\n")
    assert says in problems(f)["kubernetes.version"]


def test_artifact_checks_name_their_fields(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        kubernetes:
          cni_version: latest
          vsphere_csi: maybe
          artifacts:
            source: https://user:pw@mirror.example/k8s
            image_repository: https://registry.k8s.io
            sandbox_image: pause
            mirror: x
        """,
    )
    p = problems(f)
    assert "3.28.1" in p["kubernetes.cni_version"]
    assert "true or false" in p["kubernetes.vsphere_csi"]
    assert "credentials" in p["kubernetes.artifacts.source"]
    assert "without a scheme" in p["kubernetes.artifacts.image_repository"]
    assert "tag or digest" in p["kubernetes.artifacts.sandbox_image"]
    assert "unknown key" in p["kubernetes.artifacts.mirror"]


def test_spec_from_the_state_round_trips(tmp_path: Path) -> None:
    from provisioner.spec import spec_from_dict

    f = write(
        tmp_path, "name: x\nplan: dev\nkubernetes: {cni: flannel, artifacts: {source: local:/srv/k8s}}\n"
    )
    spec = load_spec(f, env=LAB_ENV)
    saved = yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    again = spec_from_dict(saved)
    assert again.to_dict() | {"source": None} == spec.to_dict() | {"source": None}
    saved["kubernetes"]["artifact_source"] = saved["kubernetes"].pop("artifacts")["source"]
    assert spec_from_dict(saved).kubernetes.artifacts.source == "local:/srv/k8s"


def test_kubernetes_version_is_parsed_and_ranged_in_one_place(tmp_path: Path) -> None:
    from provisioner.lab import kubebuild
    from provisioner.spec import k8s_minor, k8s_version_problem

    assert [k8s_minor(v) for v in ("1.30.4", "v1.30.4", "1.30", "2.30.1")] == [30, 0, 0, 0]
    assert k8s_version_problem("1.30.4") is None
    assert k8s_version_problem(kubebuild.VERSION) is None  # the lab's own build is accepted
    assert "outside the versions vkp supports" in (k8s_version_problem("1.19.16") or "")
    assert "must be a release like" in (k8s_version_problem("v1.30.4") or "")
    spec = write(tmp_path, "name: c1\nplan: small\nkubernetes:\n  version: 1.99.0\n")
    assert "outside the versions vkp supports" in problems(spec)["kubernetes.version"]
