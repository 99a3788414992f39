"""`vkp plans` and `vkp plan` as a user runs them: output, JSON, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from provisioner.cli import main
from provisioner.errors import ExitCode
from tests.unit.test_spec import LAB_ENV, REPO, write


def vkp(*args: str, env: dict[str, str] | None = None) -> Result:
    # Start from a clean slate: whatever VKP_* the developer's shell has must not leak in.
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("VKP_")}
    return CliRunner().invoke(main, list(args), env=clean | (env or {}), catch_exceptions=False)


def test_plans_lists_dev_small_prod() -> None:
    r = vkp("plans")
    assert r.exit_code == 0
    names = [
        line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip() and not line.startswith("Min")
    ]
    assert names == ["dev", "small", "prod"]
    assert "3 x 2 vCPU" in r.stdout and "Minimum per VM" in r.stdout


def test_plans_json() -> None:
    d = json.loads(vkp("plans", "--output", "json").stdout)
    assert d["ok"] is True
    small = next(p for p in d["plans"] if p["name"] == "small")
    assert (small["etcd"]["count"], small["master"]["count"], small["worker"]["count"]) == (3, 1, 2)
    assert d["minimums"]["master"]["memory_mb"] == 2048


def test_plan_from_the_environment_alone() -> None:
    r = vkp("plan", "demo", "--plan", "small", env=LAB_ENV)
    assert r.exit_code == 0, r.output
    assert "demo-etcd-1" in r.stdout and "demo-worker-2" in r.stdout
    assert "Nothing was created" in r.stderr
    assert LAB_ENV["VKP_VSPHERE_PASSWORD"] not in r.output


def test_plan_json_for_the_lab_spec() -> None:
    r = vkp(
        "plan",
        "-f",
        str(REPO / "inventory/lab.yaml"),
        "--hosts",
        "esx-1,esx-2,esx-3",
        "-o",
        "json",
        env=LAB_ENV,
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert d["ok"] is True and d["cluster"] == "lab"
    assert [n["role"] for n in d["nodes"]] == ["etcd"] * 3 + ["master"] + ["worker"] * 2
    assert set(d["nodes"][0]) == {"name", "role", "cpus", "memory_mb", "disk_gb", "address", "esxi_host"}
    assert len({n["esxi_host"] for n in d["nodes"] if n["role"] == "etcd"}) == 3
    assert LAB_ENV["VKP_VSPHERE_PASSWORD"] not in r.output


def test_plan_without_hosts_shows_a_dash() -> None:
    r = vkp("plan", "-f", str(REPO / "inventory/sample/cluster.yaml"))
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if line.startswith("prod-eu1-etcd-1"))
    assert row.split()[-1] == "-"


def test_bad_spec_exits_spec_and_lists_every_problem(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: small\ntopology: {etcd: {count: 2}, master: {count: 0}}\n")
    r = vkp("plan", "-f", str(f), env=LAB_ENV)
    assert r.exit_code == ExitCode.SPEC
    assert "topology.etcd.count: must be odd (1, 3, 5) so etcd keeps quorum; got 2" in r.stderr
    assert "topology.master.count:" in r.stderr
    assert r.stdout == ""


def test_bad_spec_json(tmp_path: Path) -> None:
    r = vkp("plan", "demo", "--plan", "medium-ish", "-o", "json", env=LAB_ENV)
    assert r.exit_code == ExitCode.SPEC
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["exit_code"] == ExitCode.SPEC
    assert [p["field"] for p in d["error"]["problems"]] == ["plan"]


def test_missing_file_is_a_spec_error() -> None:
    r = vkp("plan", "-f", "/nonexistent/cluster.yaml", env=LAB_ENV)
    assert r.exit_code == ExitCode.SPEC and "no such file" in r.stderr


def test_insecure_prints_a_warning() -> None:
    env = {k: v for k, v in LAB_ENV.items() if k != "VKP_VSPHERE_THUMBPRINT"} | {
        "VKP_VSPHERE_INSECURE": "true"
    }
    r = vkp("plan", "demo", "--plan", "dev", env=env)
    assert r.exit_code == 0 and "warning: vsphere.tls.insecure" in r.stderr


@pytest.mark.parametrize("command", ["plan", "plans"])
def test_help_explains_with_an_example(command: str) -> None:
    r = vkp(command, "--help")
    assert r.exit_code == 0 and "Example" in r.stdout and "vkp " in r.stdout


# -- create-cluster --dry-run ------------------------------------------------------------------


def _dry_run_env(tmp_path: Path, artifacts: Path) -> dict[str, str]:
    return LAB_ENV | {
        "VKP_API_ENDPOINT": "198.18.0.251",
        "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199",
        "VKP_K8S_ARTIFACTS": f"local:{artifacts}",
        "VKP_STATE_DIR": str(tmp_path / "state"),
    }


def test_dry_run_without_artifacts_completes_and_lists_what_is_missing(tmp_path: Path) -> None:
    env = _dry_run_env(tmp_path, tmp_path / "no-artifacts")
    r = vkp("create-cluster", "demo", "--plan", "prod", "--dry-run", env=env)
    assert r.exit_code == 0, r.output
    assert "resumes at" not in r.output
    section = r.stdout[r.stdout.index("artifacts this run needs:") :]
    assert "MISSING  kubeadm, kubelet, kubectl v1.30.4 (amd64)" in section
    assert "MISSING  Calico v3.28.2 tigera-operator.yaml" in section
    assert "hint: provide the artifacts" in section and "local:/path/to/dir" in section
    assert "a real run stops with exit code 12" in section
    assert "kubernetes.health" in r.stdout  # the dry run went on to the last step
    assert not (tmp_path / "state").exists()  # and wrote nothing

    j = vkp("create-cluster", "demo", "--plan", "prod", "--dry-run", "-o", "json", env=env)
    assert j.exit_code == 0, j.output
    d = json.loads(j.stdout)
    by_what = {a["what"]: a for a in d["artifacts"]}
    binaries = by_what["kubeadm, kubelet, kubectl v1.30.4 (amd64) and their checksums"]
    assert binaries["status"] == "missing" and "does not exist" in binaries["problem"]
    assert sorted(binaries["hosts"]) == sorted(n["name"] for n in d["plan"]["nodes"] if n["role"] != "etcd")
    assert by_what["Calico v3.28.2 tigera-operator.yaml"]["status"] == "missing"
    assert d["bootstrap"]["failed"] == 0


def test_dry_run_says_present_for_artifacts_that_are_there(tmp_path: Path) -> None:
    import hashlib

    art = tmp_path / "artifacts"
    (art / "calico/v3.28.2").mkdir(parents=True)
    (art / "calico/v3.28.2/tigera-operator.yaml").write_text("kind: List\n")
    for n in ("kubeadm", "kubelet", "kubectl"):
        (art / n).write_text(f"#!/bin/sh\necho {n}\n")
        (art / f"{n}.sha256").write_text(hashlib.sha256(f"#!/bin/sh\necho {n}\n".encode()).hexdigest())
    r = vkp(
        "create-cluster", "demo", "--plan", "prod", "--dry-run", "-o", "json", env=_dry_run_env(tmp_path, art)
    )
    assert r.exit_code == 0, r.output
    assert {a["status"] for a in json.loads(r.stdout)["artifacts"]} == {"present"}
