"""vkp installed from its wheel, outside the repository, as pipx or pip would install it.

Templates, playbooks, plans and sample specs are package data: a wheel that lacks one works in a
checkout and fails for every user who installs it. So the wheel is built, installed into a fresh
venv, and the commands that read package data run from a directory that is not the checkout,
with an environment that names nothing of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DATA = ("templates", "playbooks", "inventory")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        check=True,
        timeout=600,
    )
    (whl,) = dist.glob("vkp-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=900)
    yield venv / "bin" / "vkp"


def vkp(exe: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Nothing of the checkout or of the caller's vkp settings leaks in.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "VKP_STATE_DIR": str(cwd / "state"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_wheel_carries_every_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [
        p.relative_to(REPO).as_posix()
        for d in PACKAGE_DATA
        for p in (REPO / "provisioner" / d).rglob("*")
        if p.is_file()
    ]
    assert shipped, "no package data found in the checkout"
    missing = sorted(set(shipped) - names)
    assert not missing, f"in the checkout but not in the wheel: {missing}"
    # Nothing but the checkout's own modules: a stale build/ must not ship a module since removed.
    modules = {n for n in names if n.startswith("provisioner/") and n.endswith(".py")}
    stale = sorted(m for m in modules if not (REPO / m).is_file())
    assert not stale, f"in the wheel but not in the checkout: {stale}"


def test_installed_vkp_runs_from_anywhere(installed: Path, tmp_path: Path) -> None:
    site = vkp(installed, tmp_path, "--version")
    assert site.returncode == 0, site.stderr

    plans = vkp(installed, tmp_path, "plans", "-o", "json")
    assert plans.returncode == 0, plans.stderr
    assert '"dev"' in plans.stdout and '"prod"' in plans.stdout

    sample = vkp(installed, tmp_path, "spec", "sample")
    assert sample.returncode == 0, sample.stderr
    (tmp_path / "cluster.yaml").write_text(sample.stdout)
    plan = vkp(installed, tmp_path, "plan", "-f", "cluster.yaml")
    assert plan.returncode == 0, plan.stderr
    assert "prod-eu1-worker-1" in plan.stdout

    # The dry run renders every template and reads the playbook from the installed package.
    dry = vkp(installed, tmp_path, "create-cluster", "-f", "cluster.yaml", "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    assert '"dry_run": true' in dry.stdout and "kubeadm" in dry.stdout
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    python = installed.parent / "python"
    out = subprocess.run(
        [str(python), "-c", "import provisioner.resources as r; print(r.TEMPLATES)"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert os.path.isdir(out) and not out.startswith(str(REPO)), out
