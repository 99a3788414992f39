"""etcd from a release tarball (etcd.artifact: local:/dir) instead of the distribution package.

The lab has no etcd releases to download, so the test packs the etcd the guest image carries
into the upstream release layout (etcd-vX-linux-amd64.tar.gz + SHA256SUMS), as a site
mirroring etcd releases would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from provisioner.lab import lab as lab_mod
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab


def release_dir(image_root: Path, target: Path) -> str:
    version = subprocess.run(
        [str(image_root / "usr/bin/etcd"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    name = f"etcd-v{version}-linux-amd64"
    tarball = target / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for binary in ("etcd", "etcdctl"):
            tar.add(image_root / "usr/bin" / binary, arcname=f"{name}/{binary}")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    (target / "SHA256SUMS").write_text(f"{digest}  {tarball.name}\n")
    return version


def test_etcd_from_a_local_release(lab: LabHandle, tmp_path: Path) -> None:
    state = lab_mod.read_state()
    assert state is not None
    artifacts = tmp_path / "etcd-releases"
    artifacts.mkdir()
    version = release_dir(Path(state["image_root"]), artifacts)
    spec = {
        "name": "art",
        "plan": "dev",
        "vsphere": {
            "datacenter": "DC0",
            "cluster": "DC0_C0",
            "datastore": "LocalDS_0",
            "network": "VM Network",
            "template": "debian-12",
        },
        "network": {"pool": "198.18.0.140-198.18.0.160", "prefix": 24, "gateway": "198.18.0.1"},
        "etcd": {"artifact": f"local:{artifacts}", "version": version},
    }
    path = tmp_path / "art.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, **lab.env(), "VKP_STATE_DIR": str(tmp_path / "state")}

    def vkp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VKP, *args], env=env, capture_output=True, text=True, timeout=600)

    try:
        r = vkp("create-cluster", "-f", str(path), "--yes", "--up-to", "etcd")
        assert r.returncode == 0, r.stderr
        unit = vkp(
            "ssh", "art", "art-etcd-1", "--", "systemctl cat etcd; stat -c '%a %U' /usr/local/bin/etcd"
        )
        assert "ExecStart=/usr/local/bin/etcd " in unit.stdout and "755 root" in unit.stdout, unit.stdout
        health = vkp("etcdctl", "art", "--", "endpoint", "health")
        # etcdctl 3.4 prints endpoint health on stderr.
        assert health.returncode == 0 and "is healthy" in health.stdout + health.stderr, health.stderr
        again = vkp("create-cluster", "-f", str(path), "--yes", "--up-to", "etcd", "-o", "json")
        assert again.returncode == 0 and json.loads(again.stdout)["changed"] == 0, again.stderr
    finally:
        vkp("delete-cluster", "art", "--yes")
