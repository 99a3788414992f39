"""VKP_SITE_DEFAULTS: a platform team's spec-shaped file of site-wide settings. It sits between the
plan and the spec file, the environment still fills what nobody set, relative paths in it are its
own, and a bad value in it is reported with the file's name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from provisioner.errors import SpecError
from provisioner.spec import load_spec, spec_from_dict
from tests.unit.test_spec import LAB_ENV

# What the embedded lab's own site file holds (vkp lab env exports VKP_SITE_DEFAULTS for it).
LAB_SITE = """
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
    ignore_preflight_errors: [FileExisting-crictl]
  artifacts:
    source: local:artifacts
    image_tarballs: images
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def site_env(tmp_path: Path, text: str = LAB_SITE) -> dict[str, str]:
    site = write(tmp_path / "etc" / "site.yaml", text)
    return LAB_ENV | {"VKP_SITE_DEFAULTS": str(site)}


def problems(path: Path | None, env: dict[str, str], **kw: str) -> dict[str, str]:
    with pytest.raises(SpecError) as ei:
        load_spec(path, env=env, **kw)
    return dict(ei.value.problems)


def test_name_and_plan_on_the_command_line_work_from_the_environment_alone(tmp_path: Path) -> None:
    env = site_env(tmp_path) | {"VKP_API_ENDPOINT": "198.18.0.251"}
    env["VKP_NETWORK_POOL"] = "198.18.0.10-198.18.0.99"
    spec = load_spec(None, name="demo", plan="prod", env=env)
    k = spec.kubernetes
    assert (k.version, k.cni, k.dns, k.pod_cidr) == ("1.20.2", "bridge", "none", "198.19.0.0/17")
    assert k.node.cgroup_driver == "cgroupfs" and k.node.conntrack_max_per_core == 0
    assert k.node.ignore_preflight_errors == ("FileExisting-crictl",)
    assert spec.topology.master.count == 3  # the plan still sizes it
    assert spec.vsphere.server == "127.0.0.1"  # and the environment still fills vsphere
    # Relative paths are relative to the site file, not to the current directory.
    assert k.artifacts.source == f"local:{(tmp_path / 'etc' / 'artifacts').resolve()}"
    assert k.artifacts.image_tarballs == str((tmp_path / "etc" / "images").resolve())


def test_merge_order_plan_site_file_arguments_environment(tmp_path: Path) -> None:
    env = site_env(
        tmp_path,
        LAB_SITE
        + """
plan: dev
topology: {worker: {count: 4, cpus: 8}}
network: {dns: [198.18.0.53]}
""",
    )
    env["VKP_NETWORK_DNS"] = "198.18.0.99"
    f = write(
        tmp_path / "spec" / "cluster.yaml",
        """
        name: demo
        topology: {worker: {cpus: 2}}
        kubernetes:
          version: 1.30.4
          node: {cgroup_driver: systemd, ignore_preflight_errors: [Swap]}
          artifacts: {source: local:mine}
        """,
    )
    spec = load_spec(f, plan="small", env=env)
    w = spec.topology.worker
    assert spec.plan == "small"  # the argument beats the site's plan
    assert (w.count, w.cpus) == (4, 2)  # site over the plan, the file over the site
    k = spec.kubernetes
    assert k.version == "1.30.4" and k.node.cgroup_driver == "systemd"
    assert k.node.restrict_oom_score_adj is True  # the file left it to the site
    assert k.node.ignore_preflight_errors == ("Swap",)  # a list is replaced, not appended to
    assert k.artifacts.source == f"local:{(tmp_path / 'spec' / 'mine').resolve()}"
    assert k.artifacts.image_tarballs == str((tmp_path / "etc" / "images").resolve())
    # The site set network.dns, so the environment (which only fills what is unset) does not.
    assert spec.network.dns == ("198.18.0.53",)


def test_a_null_in_the_spec_file_leaves_the_site_value(tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "name: demo\nplan: small\nkubernetes:\n  version:\n  node:\n")
    spec = load_spec(f, env=site_env(tmp_path))
    assert spec.kubernetes.version == "1.20.2" and spec.kubernetes.node.cgroup_driver == "cgroupfs"


def test_problems_in_site_values_name_the_file(tmp_path: Path) -> None:
    env = site_env(
        tmp_path,
        """
        kubernetes:
          cni: weave
          node: {cgroup_driver: systemd-ish, conntrack_max_per_core: many}
          nodes: {}
        """,
    )
    site = env["VKP_SITE_DEFAULTS"]
    f = write(tmp_path / "c.yaml", "name: demo\nplan: small\nkubernetes: {pod_cidr: 10.244.0.1/16}\n")
    p = problems(f, env)
    for field in (
        "kubernetes.cni",
        "kubernetes.node.cgroup_driver",
        "kubernetes.node.conntrack_max_per_core",
        "kubernetes.nodes",
    ):
        assert p[field].endswith(f"(the value came from {site} (VKP_SITE_DEFAULTS))"), field
    # The spec file's own mistake is not blamed on the site file.
    assert "host bits" in p["kubernetes.pod_cidr"] and site not in p["kubernetes.pod_cidr"]
    # Environment values still name their variable.
    env["VKP_NETWORK_GATEWAY"] = "not-an-address"
    assert "VKP_NETWORK_GATEWAY" in problems(f, env)["network.gateway"]


def test_a_site_file_cannot_name_a_cluster(tmp_path: Path) -> None:
    env = site_env(tmp_path, "name: everyone\nkubernetes: {dns: none}\n")
    p = problems(None, env, name="demo", plan="small")
    (where,) = [k for k in p if k.endswith(": name")]
    assert where == f"{env['VKP_SITE_DEFAULTS']}: name" and "cannot name" in p[where]


def test_a_missing_or_broken_site_file_says_which_and_why(tmp_path: Path) -> None:
    env = LAB_ENV | {"VKP_SITE_DEFAULTS": str(tmp_path / "nope.yaml")}
    assert "VKP_SITE_DEFAULTS" in problems(None, env, name="d", plan="small")[str(tmp_path / "nope.yaml")]
    env = site_env(tmp_path, "kubernetes: [1, 2\n")
    (where,) = problems(None, env, name="d", plan="small")
    assert where.startswith(env["VKP_SITE_DEFAULTS"] + ":")
    # Unset or empty: no site defaults at all.
    spec = load_spec(None, name="d", plan="small", env=LAB_ENV | {"VKP_SITE_DEFAULTS": ""})
    assert spec.kubernetes.version == "1.30.4"


def test_a_saved_spec_reads_back_without_the_site_file(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    spec = load_spec(None, name="demo", plan="small", env=env)
    (tmp_path / "etc" / "site.yaml").write_text("kubernetes: {version: 1.31.0, dns: coredns}\n")
    back = spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert back.kubernetes == spec.kubernetes and back.kubernetes.version == "1.20.2"
