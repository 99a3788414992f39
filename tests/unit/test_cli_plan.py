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
