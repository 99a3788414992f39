"""The lab's Kubernetes build, the parts that need no Go toolchain: OCI image tarballs as
`ctr images import` reads them, the version flags, the layout, and a failed step's report."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from provisioner.bootstrap.steps.artifacts import tarball_refs
from provisioner.errors import LabError
from provisioner.lab import kubebuild, oci


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    f = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert f is not None
    data = f.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, "a blob's name is its digest"
    return data


def test_an_image_tarball_is_a_valid_oci_layout_with_the_containerd_name(tmp_path: Path) -> None:
    binary = tmp_path / "kube-proxy"
    binary.write_bytes(b"\x7fELF fake binary")
    img = oci.Image("k8s.gcr.io/kube-proxy:v1.20.2")
    img.file("/usr/local/bin/kube-proxy", binary)
    img.symlink("/usr/sbin/iptables", "xtables-legacy-multi")
    img.directory("/tmp", 0o1777)
    out = tmp_path / "kube-proxy.tar"
    digest = oci.write(img, out)

    assert tarball_refs(out) == ["k8s.gcr.io/kube-proxy:v1.20.2"], "vkp's images step reads the same name"
    with tarfile.open(out) as tar:
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        (entry,) = index["manifests"]
        assert entry["digest"] == digest and entry["mediaType"] == oci.MEDIA_MANIFEST
        manifest = json.loads(_blob(tar, digest))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        (layer_ref,) = manifest["layers"]
        layer = gzip.decompress(_blob(tar, layer_ref["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert any(e.startswith("PATH=") and "/usr/local/bin" in e for e in config["config"]["Env"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
        members = {m.name: m for m in lt.getmembers()}
    assert members["usr/local/bin/kube-proxy"].mode == 0o755
    assert members["usr/sbin/iptables"].issym()
    assert members["tmp"].mode == 0o1777
    assert {"usr", "usr/local", "usr/local/bin", "usr/sbin"} <= set(members), "parents come first"


def test_the_same_inputs_make_the_same_image(tmp_path: Path) -> None:
    src = tmp_path / "pause"
    src.write_bytes(b"pause")
    digests = set()
    for name in ("a.tar", "b.tar"):
        img = oci.Image("k8s.gcr.io/pause:3.2", entrypoint=["/pause"])
        img.file("/pause", src)
        digests.add(oci.write(img, tmp_path / name))
    assert len(digests) == 1
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_version_flags_name_the_vendored_packages_the_binaries_link() -> None:
    flags = kubebuild.ldflags()
    for pkg in ("component-base/version", "client-go/pkg/version"):
        assert f"-X k8s.io/kubernetes/vendor/k8s.io/{pkg}.gitVersion=v1.20.2" in flags
        assert f"-X k8s.io/kubernetes/vendor/k8s.io/{pkg}.gitMinor=20" in flags


def test_the_layout_is_what_a_local_source_reads(tmp_path: Path) -> None:
    from provisioner.bootstrap import artifacts as art

    lay = kubebuild.Layout(tmp_path)
    source = art.ArtifactSource.parse(f"local:{tmp_path}")
    lay.binaries.mkdir(parents=True)
    assert source.directory(kubebuild.VERSION, "amd64") == lay.binaries


def test_a_failed_step_names_itself_and_its_log(tmp_path: Path) -> None:
    steps = kubebuild._Steps(tmp_path / "logs", lambda _m: None)
    with pytest.raises(LabError) as ei:
        steps.run("go-build-kubelet", ["sh", "-c", "echo compiling; echo 'undefined: reflect2' >&2; exit 2"])
    log = tmp_path / "logs" / "go-build-kubelet.log"
    assert "`go-build-kubelet`" in ei.value.message and "undefined: reflect2" in ei.value.message
    assert str(log) in (ei.value.hint or "") and "undefined: reflect2" in log.read_text()


def test_image_file_names_are_plain() -> None:
    assert kubebuild.image_file_name("k8s.gcr.io/kube-apiserver:v1.20.2") == "kube-apiserver_v1.20.2.tar"
    assert kubebuild.image_file_name(kubebuild.WORKLOAD_IMAGE) == "busybox_debian-12.tar"
