"""The CNI plugins tarball (kubernetes.cni: bridge): its layout per source, the real install
script against a loopback mirror, kubernetes.cni_plugins on scripted hosts (installed as a set,
recorded, a re-run changes nothing), the probe before the phase; and kubernetes.images checked
against a SHA256SUMS beside the tarballs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap import runner
from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import run_playbook
from provisioner.bootstrap.steps.cni.bridge import CNI_PLUGINS_RELEASE_FILE
from provisioner.bootstrap.steps.containerd import CNI_BIN_DIR
from provisioner.errors import ArtifactError, ExitCode
from provisioner.plan import make_plan
from provisioner.spec import load_spec
from tests.unit.fakes import run_locally
from tests.unit.test_etcd_artifact import EtcdHost, FakePKI
from tests.unit.test_spec import LAB_ENV

V = "1.1.1"
TGZ = f"cni-plugins-linux-amd64-v{V}.tgz"
HEX_A = "a" * 64


def _tgz(*, names: tuple[str, ...] = art.CNI_PLUGINS, tag: str = "") -> bytes:
    """Like upstream's: every plugin at ./NAME, more of them than vkp installs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in (*names, "macvlan", "dhcp"):
            data = f"#!/bin/sh\necho {n} {V}{tag}\n".encode()
            info = tarfile.TarInfo(f"./{n}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o755, 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _publish(d: Path, data: bytes, *, sum_of: bytes | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / TGZ).write_bytes(data)
    (d / f"{TGZ}.sha256").write_text(f"{hashlib.sha256(sum_of or data).hexdigest()}  {TGZ}\n")


def _k8s_source(text: str) -> art.ArtifactSource:
    spec = load_spec(None, name="c", plan="dev", env=LAB_ENV | {"VKP_K8S_ARTIFACTS": text})
    return art.cni_plugins_source(spec.kubernetes)


# -- layout -----------------------------------------------------------------------------------


def test_upstream_mirror_and_local_layouts(tmp_path: Path) -> None:
    up = _k8s_source("upstream")
    assert up.url(V, "amd64", TGZ) == (
        "https://github.com/containernetworking/plugins/releases/download/v1.1.1/"
        "cni-plugins-linux-amd64-v1.1.1.tgz"
    )
    assert up.url(V, "arm64", up.layout.sums_name(art.cni_plugins_tarball(V, "arm64"))).endswith(
        "/download/v1.1.1/cni-plugins-linux-arm64-v1.1.1.tgz.sha256"
    )
    mirror = _k8s_source("https://mirror.example/k8s/")
    assert mirror.url(V, "amd64", TGZ) == f"https://mirror.example/k8s/cni-plugins/v1.1.1/{TGZ}"
    local = _k8s_source(f"local:{tmp_path}")
    assert local.directory(V, "amd64") == tmp_path  # flat
    (tmp_path / "cni-plugins" / f"v{V}").mkdir(parents=True)
    assert local.directory(V, "amd64") == tmp_path / "cni-plugins" / f"v{V}"
    assert art.cni_plugins_members() == ["./bridge", "./host-local", "./portmap", "./loopback"]


def test_the_real_install_script_installs_the_four_plugins_only_from_a_verified_tarball(
    loopback_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = loopback_mirror
    _publish(root / "cni-plugins" / f"v{V}", _tgz())
    src = art.cni_plugins_source(
        load_spec(None, name="c", plan="dev", env=LAB_ENV | {"VKP_K8S_ARTIFACTS": url}).kubernetes
    )
    sums = art.parse_fetched_sums(
        run_locally(art.fetch_sums_command(src, V, "amd64", [TGZ])), src, V, "amd64", [TGZ]
    )
    bindir = tmp_path / "cni-bin"
    bindir.mkdir()

    def install(digest: str) -> object:
        plan = {TGZ: (src.url(V, "amd64", TGZ), digest)}
        return run_locally(
            art.install_command("download", plan, install_dir=str(bindir), unpack=art.cni_plugins_members())
        )

    r = install(HEX_A)
    with pytest.raises(ArtifactError, match=f"expected sha256 {HEX_A}"):
        art.check_install(r, src, V, "amd64", {TGZ: HEX_A}, "local")  # type: ignore[arg-type]
    assert list(bindir.iterdir()) == []
    r = install(sums[TGZ])
    installed = art.check_install(r, src, V, "amd64", sums, "local")  # type: ignore[arg-type]
    assert sorted(installed) == sorted(art.CNI_PLUGINS)
    assert sorted(p.name for p in bindir.iterdir()) == sorted(art.CNI_PLUGINS)  # not macvlan, dhcp
    out = subprocess.run([str(bindir / "host-local")], capture_output=True, text=True, check=True).stdout
    assert out == f"host-local {V}\n"

    # A verified tarball without portmap installs none of them.
    for p in bindir.iterdir():
        p.unlink()
    _publish(root / "cni-plugins" / f"v{V}", _tgz(names=("bridge", "host-local", "loopback")))
    digest = hashlib.sha256((root / "cni-plugins" / f"v{V}" / TGZ).read_bytes()).hexdigest()
    with pytest.raises(ArtifactError, match="could not be unpacked"):
        art.check_install(install(digest), src, V, "amd64", {TGZ: digest}, "local")  # type: ignore[arg-type]
    assert list(bindir.iterdir()) == []


# -- the step on scripted hosts ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def fake_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))


PLAYS = [
    {
        "play": "kubernetes-artifacts",
        "phase": "kubernetes",
        "hosts": "master+worker",
        "steps": ["kubernetes.cni_plugins", "kubernetes.images"],
    }
]
PLAYBOOK = parse_playbook(PLAYS, source="artifacts.yaml", digest=json.dumps(PLAYS))


def _cluster(source: str, *, cni: str = "bridge", image_tarballs: str | None = None) -> Cluster:
    spec = load_spec(None, name="demo", plan="small", env=LAB_ENV | {"VKP_K8S_ARTIFACTS": source})
    k = spec.kubernetes
    k = dataclasses.replace(
        k, cni=cni, artifacts=dataclasses.replace(k.artifacts, image_tarballs=image_tarballs)
    )
    spec = dataclasses.replace(spec, kubernetes=k)
    return Cluster(spec=spec, plan=make_plan(spec), state=None, pki=FakePKI())  # type: ignore[arg-type]


def _hosts(cluster: Cluster, downloads: dict[str, bytes] | None = None) -> dict[str, EtcdHost]:
    nodes = cluster.plan.by_role("master") + cluster.plan.by_role("worker")
    return {n.name: EtcdHost(n.name, downloads or {}) for n in nodes}


def _quiet(_: str) -> None:
    pass


def test_local_tarball_is_pushed_verified_and_installed_once(tmp_path: Path) -> None:
    data = _tgz()
    _publish(tmp_path / "art" / "cni-plugins" / f"v{V}", data)
    cluster = _cluster(f"local:{tmp_path / 'art'}")
    hosts = _hosts(cluster)
    first = run_playbook(PLAYBOOK, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    assert first.count("failed") == 0
    for h in hosts.values():
        assert h.dirs[CNI_BIN_DIR] == ("755", "root:root")
        assert sorted(p for p in h.files if p.startswith(CNI_BIN_DIR)) == sorted(
            f"{CNI_BIN_DIR}/{n}" for n in art.CNI_PLUGINS
        )
        assert h.files[f"{CNI_BIN_DIR}/bridge"][1:] == ("755", "root:root")
        record = h.files[CNI_PLUGINS_RELEASE_FILE][0].decode()
        assert record.startswith(f"{TGZ} {hashlib.sha256(data).hexdigest()}\n")
        assert f"{art.STAGING_DIR}/{TGZ}" not in h.files
    for h in hosts.values():
        h.commands.clear()
    again = run_playbook(PLAYBOOK, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    assert again.count("changed") == 0
    assert all(h.commands == ["facts"] for h in hosts.values())  # nothing pushed, nothing run


def test_upstream_tarball_is_downloaded_by_each_node(tmp_path: Path) -> None:
    data = _tgz()
    base = f"https://github.com/containernetworking/plugins/releases/download/v{V}"
    sums = f"{hashlib.sha256(data).hexdigest()}  {TGZ}\n".encode()
    cluster = _cluster("upstream")
    hosts = _hosts(cluster, {f"{base}/{TGZ}": data, f"{base}/{TGZ}.sha256": sums})
    run_playbook(PLAYBOOK, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    for h in hosts.values():
        assert f"{CNI_BIN_DIR}/portmap" in h.files and CNI_PLUGINS_RELEASE_FILE in h.files


def test_a_mismatching_tarball_installs_nothing_anywhere(tmp_path: Path) -> None:
    _publish(tmp_path / "art", _tgz(), sum_of=b"another build")
    cluster = _cluster(f"local:{tmp_path / 'art'}")
    hosts = _hosts(cluster)
    with pytest.raises(ArtifactError) as ei:
        run_playbook(PLAYBOOK, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    assert ei.value.exit_code == ExitCode.ARTIFACTS
    assert TGZ in ei.value.message and hashlib.sha256(b"another build").hexdigest() in ei.value.message
    assert all(h.commands == [] for h in hosts.values())


@pytest.mark.parametrize("cni", ["calico", "flannel"])
def test_nothing_for_calico_or_flannel(tmp_path: Path, cni: str) -> None:
    cluster = _cluster(f"local:{tmp_path}/nothing-here", cni=cni)
    hosts = _hosts(cluster)
    report = run_playbook(PLAYBOOK, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    assert report.count("changed") == 0 and all(h.commands == [] for h in hosts.values())


def test_the_probe_before_the_phase_names_the_missing_tarball(tmp_path: Path) -> None:
    for n in art.BINARIES:
        (tmp_path / n).write_text(n)
        (tmp_path / f"{n}.sha256").write_text(hashlib.sha256(n.encode()).hexdigest())
    k8s = _cluster(f"local:{tmp_path}").spec.kubernetes
    with pytest.raises(ArtifactError) as ei:
        art.probe_source(k8s, _quiet)
    assert ei.value.exit_code == 12
    assert f"cni-plugins-linux-amd64-v{V}.tgz" in ei.value.message
    assert ei.value.hint is not None and f"cni-plugins/v{V}/" in ei.value.hint
    art.probe_source(_cluster(f"local:{tmp_path}", cni="calico").spec.kubernetes, _quiet)
    _publish(tmp_path, _tgz())
    art.probe_source(k8s, _quiet)


# -- image tarballs with a SHA256SUMS ---------------------------------------------------------


def _image(d: Path, name: str, ref: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = json.dumps({"manifests": [{"annotations": {"io.containerd.image.name": ref}}]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(buf.getvalue())
    return buf.getvalue()


IMAGE_PLAYS = [
    {"play": "images", "phase": "kubernetes", "hosts": "master+worker", "steps": ["kubernetes.images"]}
]
IMAGES = parse_playbook(IMAGE_PLAYS, source="images.yaml", digest=json.dumps(IMAGE_PLAYS))


def test_images_listed_in_sha256sums_are_imported(tmp_path: Path) -> None:
    d = tmp_path / "images"
    a = _image(d, "pause.tar", "k8s.gcr.io/pause:3.2")
    b = _image(d, "kube-proxy.tar", "k8s.gcr.io/kube-proxy:v1.20.2")
    (d / "SHA256SUMS").write_text(
        f"{hashlib.sha256(a).hexdigest()}  pause.tar\n{hashlib.sha256(b).hexdigest()} *kube-proxy.tar\n"
    )
    cluster = _cluster("upstream", cni="calico", image_tarballs=str(d))
    hosts = _hosts(cluster)
    run_playbook(IMAGES, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    for h in hosts.values():
        assert {"put /var/lib/vkp/images/pause.tar", "put /var/lib/vkp/images/kube-proxy.tar"} <= set(
            h.commands
        )


@pytest.mark.parametrize("problem", ["mismatch", "unlisted"])
def test_a_tarball_not_matching_or_not_in_sha256sums_stops_before_anything_is_pushed(
    tmp_path: Path, problem: str
) -> None:
    d = tmp_path / "images"
    a = _image(d, "pause.tar", "k8s.gcr.io/pause:3.2")
    _image(d, "kube-proxy.tar", "k8s.gcr.io/kube-proxy:v1.20.2")
    listed = f"{hashlib.sha256(a).hexdigest()}  pause.tar\n"
    if problem == "mismatch":
        listed += f"{HEX_A}  kube-proxy.tar\n"
    (d / "SHA256SUMS").write_text(listed)
    cluster = _cluster("upstream", cni="calico", image_tarballs=str(d))
    hosts = _hosts(cluster)
    with pytest.raises(ArtifactError) as ei:
        run_playbook(IMAGES, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    msg = ei.value.message
    assert ei.value.exit_code == 12 and str(d / "kube-proxy.tar") in msg
    assert "nothing was imported" in msg.lower()
    if problem == "mismatch":
        actual = hashlib.sha256((d / "kube-proxy.tar").read_bytes()).hexdigest()
        assert f"expected sha256 {HEX_A}, got {actual}" in msg and str(d / "SHA256SUMS") in msg
    else:
        assert "is not listed in" in msg
    assert all(h.commands == [] for h in hosts.values())


def test_without_sha256sums_images_are_imported_as_before(tmp_path: Path) -> None:
    d = tmp_path / "images"
    _image(d, "pause.tar", "k8s.gcr.io/pause:3.2")
    cluster = _cluster("upstream", cni="calico", image_tarballs=str(d))
    hosts = _hosts(cluster)
    run_playbook(IMAGES, cluster, hosts, phases={"kubernetes"}, log=_quiet)
    assert all("put /var/lib/vkp/images/pause.tar" in h.commands for h in hosts.values())
