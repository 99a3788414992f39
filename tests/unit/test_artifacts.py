"""Artifact sources, checksums and the node-side install script, without any Kubernetes binary.

The install script is run here for real (sh, curl, sha256sum) against a tiny HTTP server on
loopback, installing into a temporary directory: the same script the lab test runs on a guest.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap.artifacts import ArtifactSource, parse_checksum, probe_source, verify
from provisioner.bootstrap.engine import ArtifactNeed, Cluster, Executor, Facts
from provisioner.bootstrap.steps import registry
from provisioner.bootstrap.steps.artifacts import normalize_ref, tarball_refs
from provisioner.errors import ArtifactError, ExitCode
from provisioner.plan import make_plan
from provisioner.spec import ArtifactsSpec, KubernetesSpec, load_spec
from provisioner.ssh.commands import Result
from tests.unit.fakes import run_locally
from tests.unit.test_spec import LAB_ENV

HEX_A = "a" * 64
HEX_B = "b" * 64


# -- sources ----------------------------------------------------------------------------------


def test_upstream_layout() -> None:
    src = ArtifactSource.parse("upstream")
    assert src.kind == "upstream" and src.remote
    assert (
        src.url("1.30.4", "amd64", "kubelet") == "https://dl.k8s.io/release/v1.30.4/bin/linux/amd64/kubelet"
    )
    assert src.url("1.30.4", "arm64", "kubeadm.sha256").endswith("/v1.30.4/bin/linux/arm64/kubeadm.sha256")
    # The upstream URL written out is the same source.
    assert ArtifactSource.parse("https://dl.k8s.io/release/").kind == "upstream"
    assert ArtifactSource.parse("").kind == "upstream"


def test_mirror_layout_is_the_same() -> None:
    src = ArtifactSource.parse("http://198.18.0.1:8080/k8s/")
    assert (src.kind, src.location) == ("mirror", "http://198.18.0.1:8080/k8s")
    assert (
        src.url("1.31.0", "amd64", "kubectl") == "http://198.18.0.1:8080/k8s/v1.31.0/bin/linux/amd64/kubectl"
    )
    assert src.describe() == "mirror http://198.18.0.1:8080/k8s"


def test_local_sources_and_old_spellings(tmp_path: Path) -> None:
    assert ArtifactSource.parse("local:/srv/k8s") == ArtifactSource("local", "/srv/k8s")
    assert ArtifactSource.parse("file:///srv/k8s") == ArtifactSource("local", "/srv/k8s")
    assert ArtifactSource.parse("/srv/k8s/") == ArtifactSource("local", "/srv/k8s")
    rel = ArtifactSource.parse("local:art/../k8s", base_dir=tmp_path)
    assert rel == ArtifactSource("local", str(tmp_path / "k8s"))
    assert not rel.remote and "on this machine" in rel.describe()
    with pytest.raises(ValueError, match="no URLs"):
        rel.url("1.30.4", "amd64", "kubelet")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ftp://mirror/k8s", "local:/path/to/dir"),
        ("mirror.example.com/k8s", "upstream, a mirror URL"),
        ("https:///k8s", "upstream, a mirror URL"),
        ("https://user:secret@mirror/k8s", "credentials"),
        ("https://mirror/k8s?token=x", "without ?query"),
        ("local:", "needs a directory"),
    ],
)
def test_source_parsing_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        ArtifactSource.parse(text)


def test_local_directory_prefers_the_upstream_layout(tmp_path: Path) -> None:
    src = ArtifactSource("local", str(tmp_path))
    assert src.directory("1.30.4", "amd64") == tmp_path
    nested = tmp_path / "v1.30.4/bin/linux/amd64"
    nested.mkdir(parents=True)
    assert src.directory("1.30.4", "amd64") == nested
    assert src.directory("1.30.4", "arm64") == tmp_path


def test_node_arch() -> None:
    assert art.node_arch("x86_64\n") == "amd64"
    assert art.node_arch("aarch64") == "arm64"
    with pytest.raises(ArtifactError, match="s390x"):
        art.node_arch("s390x")


# -- checksums --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"{HEX_A}\n",
        f"{HEX_A.upper()}",
        f"{HEX_A}  kubelet\n",
        f"{HEX_A} *kubelet\n",
        f"{HEX_B}  kubeadm\n{HEX_A}  kubelet\n{HEX_B}  kubectl\n",
        f"# SHA256SUMS\n{HEX_B}  ./bin/kubeadm\n{HEX_A}  ./bin/kubelet\n",
    ],
)
def test_checksum_formats(text: str) -> None:
    assert parse_checksum(text, "kubelet") == HEX_A


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"{HEX_A}  kubeadm\n", "names 'kubeadm', not 'kubelet'"),
        ("<html>404 Not Found</html>", "no SHA-256 for kubelet"),
        ("abc123  kubelet", "no SHA-256 for kubelet"),
        ("", "no SHA-256 for kubelet"),
    ],
)
def test_checksum_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_checksum(text, "kubelet")


def test_verify_names_file_source_and_both_checksums() -> None:
    data = b"kubelet build"
    good = hashlib.sha256(data).hexdigest()
    assert verify(data, good.upper(), name="kubelet", source="mirror http://m/k8s") == good
    with pytest.raises(ArtifactError) as ei:
        verify(data, HEX_A, name="kubelet", source="mirror http://m/k8s")
    assert ei.value.exit_code == ExitCode.ARTIFACTS
    msg = ei.value.message
    assert msg.startswith("kubelet from mirror http://m/k8s does not match its published checksum")
    assert f"expected sha256 {HEX_A}, got {good}" in msg
    assert "Nothing was installed" in msg


# -- local sources ----------------------------------------------------------------------------


def _files(tag: str = "") -> dict[str, bytes]:
    return {n: f"#!/bin/sh\necho {n}{tag}\n".encode() for n in art.BINARIES}


def _write(d: Path, files: dict[str, bytes], *, sums: str = "each") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (d / n).write_bytes(data)
    lines = {n: f"{hashlib.sha256(data).hexdigest()}  {n}\n" for n, data in files.items()}
    if sums == "each":
        for n, line in lines.items():
            (d / f"{n}.sha256").write_text(line)
    else:
        (d / "SHA256SUMS").write_text("".join(lines.values()))


def test_local_flat_with_sha256sums(tmp_path: Path) -> None:
    files = _files()
    _write(tmp_path, files, sums="SHA256SUMS")
    got = art.verify_local(ArtifactSource("local", str(tmp_path)), "1.30.4", "amd64")
    assert {n: f.sha256 for n, f in got.items()} == {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    assert got["kubelet"].path == tmp_path / "kubelet"


def test_local_upstream_layout_with_sha256_files(tmp_path: Path) -> None:
    nested = tmp_path / "v1.30.4/bin/linux/amd64"
    _write(nested, _files())
    got = art.verify_local(ArtifactSource("local", str(tmp_path)), "1.30.4", "amd64")
    assert got["kubeadm"].path == nested / "kubeadm"


def test_local_mismatch_names_the_file_and_both_checksums(tmp_path: Path) -> None:
    _write(tmp_path, _files(), sums="SHA256SUMS")
    (tmp_path / "kubelet").write_bytes(b"tampered")
    with pytest.raises(ArtifactError) as ei:
        art.verify_local(ArtifactSource("local", str(tmp_path)), "1.30.4", "amd64")
    msg = ei.value.message
    assert msg.startswith(f"kubelet from local directory {tmp_path}")
    assert "checksum from SHA256SUMS" in msg
    assert f"got {hashlib.sha256(b'tampered').hexdigest()}" in msg
    assert f"expected sha256 {hashlib.sha256(_files()['kubelet']).hexdigest()}" in msg


def test_local_missing_file_or_checksum_says_how_to_provide_it(tmp_path: Path) -> None:
    src = ArtifactSource("local", str(tmp_path))
    _write(tmp_path, _files())
    (tmp_path / "kubectl.sha256").unlink()
    with pytest.raises(ArtifactError) as ei:
        art.verify_local(src, "1.30.4", "amd64")
    assert "the checksum of kubectl" in ei.value.message
    assert ei.value.hint is not None and "--up-to runtime" in ei.value.hint
    (tmp_path / "kubeadm").unlink()
    with pytest.raises(ArtifactError, match="kubeadm could not be fetched"):
        art.verify_local(src, "1.30.4", "amd64")


def test_local_binary_for_another_architecture_is_refused(tmp_path: Path) -> None:
    files = _files()
    # An ELF header whose e_machine is 183 (aarch64).
    files["kubelet"] = b"\x7fELF\x02\x01\x01" + bytes(11) + (183).to_bytes(2, "little") + bytes(40)
    _write(tmp_path, files)
    with pytest.raises(ArtifactError, match="built for arm64, but the node is amd64"):
        art.verify_local(ArtifactSource("local", str(tmp_path)), "1.30.4", "amd64")
    assert art.verify_local(ArtifactSource("local", str(tmp_path)), "1.30.4", "arm64")


# -- what the node prints ---------------------------------------------------------------------


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


SRC = ArtifactSource.parse("http://198.18.0.1:9/k8s")


def test_fetched_sums_parse_and_failures() -> None:
    out = "\n".join(f"{n} 0 {_b64(HEX_A + '  ' + n)}" for n in art.BINARIES)
    assert art.parse_fetched_sums(Result(0, out, ""), SRC, "1.30.4", "amd64", art.BINARIES) == dict.fromkeys(
        art.BINARIES, HEX_A
    )
    refused = f"kubeadm 7 {_b64('curl: (7) Failed to connect')}"
    with pytest.raises(ArtifactError) as ei:
        art.parse_fetched_sums(Result(0, refused, ""), SRC, "1.30.4", "amd64", art.BINARIES)
    assert (
        "kubeadm.sha256 (http://198.18.0.1:9/k8s/v1.30.4/bin/linux/amd64/kubeadm.sha256)" in ei.value.message
    )
    assert "connection was refused" in ei.value.message
    not_found = f"kubeadm 22 {_b64('curl: (22) The requested URL returned error: 404')}"
    with pytest.raises(ArtifactError, match=r"HTTP 404 \(no such file there\)"):
        art.parse_fetched_sums(Result(0, not_found, ""), SRC, "1.30.4", "amd64", art.BINARIES)
    with pytest.raises(ArtifactError, match="curl is not installed"):
        art.parse_fetched_sums(Result(0, "- 127 ", ""), SRC, "1.30.4", "amd64", art.BINARIES)
    html = f"kubeadm 0 {_b64('<html>hi</html>')}"
    with pytest.raises(ArtifactError, match="is not a checksum file"):
        art.parse_fetched_sums(Result(0, html, ""), SRC, "1.30.4", "amd64", art.BINARIES)


def test_check_install_reports() -> None:
    expected = {"kubelet": HEX_A}
    assert art.check_install(
        Result(0, "installed kubelet\n", ""), SRC, "1.30.4", "amd64", expected, "n1"
    ) == ["kubelet"]
    with pytest.raises(ArtifactError) as ei:
        art.check_install(
            Result(11, f"mismatch kubelet {HEX_B}\n", ""), SRC, "1.30.4", "amd64", expected, "n1"
        )
    assert ei.value.message.startswith("kubelet from mirror http://198.18.0.1:9/k8s on n1")
    assert f"expected sha256 {HEX_A}, got {HEX_B}" in ei.value.message


# -- the install script, run for real on this machine ----------------------------------------


def test_install_script_installs_a_verified_set_or_nothing(
    loopback_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = loopback_mirror
    files = _files()
    _write(root / "v1.30.4/bin/linux/amd64", files)
    src = ArtifactSource.parse(url)
    sums = art.parse_fetched_sums(
        run_locally(art.fetch_sums_command(src, "1.30.4", "amd64", art.BINARIES)),
        src,
        "1.30.4",
        "amd64",
        art.BINARIES,
    )
    assert sums == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    bindir = tmp_path / "bin"
    bindir.mkdir()

    bad = dict(sums, kubelet=HEX_A)
    plan = {n: (src.url("1.30.4", "amd64", n), s) for n, s in bad.items()}
    r = run_locally(art.install_command("download", plan, install_dir=str(bindir)))
    with pytest.raises(ArtifactError, match=f"expected sha256 {HEX_A}, got {sums['kubelet']}"):
        art.check_install(r, src, "1.30.4", "amd64", bad, "local")
    assert list(bindir.iterdir()) == [], "kubeadm verified, but nothing may be installed"

    plan = {n: (src.url("1.30.4", "amd64", n), s) for n, s in sums.items()}
    r = run_locally(art.install_command("download", plan, install_dir=str(bindir)))
    assert art.check_install(r, src, "1.30.4", "amd64", sums, "local") == list(art.BINARIES)
    assert sorted(p.name for p in bindir.iterdir()) == sorted(art.BINARIES)  # no staging left
    for n in art.BINARIES:
        assert (bindir / n).stat().st_mode & 0o777 == 0o755
        assert (
            subprocess.run([str(bindir / n)], capture_output=True, text=True, check=True).stdout == f"{n}\n"
        )

    plan = {"kubectl": (src.url("1.30.4", "amd64", "kubectl-missing"), HEX_A)}
    r = run_locally(art.install_command("download", plan, install_dir=str(bindir)))
    with pytest.raises(ArtifactError, match="HTTP 404"):
        art.check_install(r, src, "1.30.4", "amd64", {"kubectl": HEX_A}, "local")


# -- the preflight ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _k8s(source: str, **kw: str) -> KubernetesSpec:
    return KubernetesSpec(artifacts=ArtifactsSpec(source=source, **kw))


def test_probe_source_against_a_closed_port() -> None:
    source = f"http://127.0.0.1:{_closed_port()}/k8s"
    with pytest.raises(ArtifactError) as ei:
        probe_source(_k8s(source), lambda _: None, timeout=2)
    err = ei.value
    assert err.exit_code == ExitCode.ARTIFACTS == 12
    assert err.message.startswith("Kubernetes v1.30.4 artifacts are not available: kubeadm.sha256")
    assert f"{source}/v1.30.4/bin/linux/amd64/kubeadm.sha256" in err.message
    assert "the connection was refused" in err.message
    assert err.hint is not None
    assert (
        "--up-to runtime" in err.hint and "local:/path/to/dir" in err.hint and "VKP_K8S_ARTIFACTS" in err.hint
    )


def test_probe_source_on_a_loopback_mirror(loopback_mirror: tuple[Path, str]) -> None:
    root, url = loopback_mirror
    lines: list[str] = []
    with pytest.raises(ArtifactError, match="HTTP 404"):
        probe_source(_k8s(url), lines.append)
    # An arm64-only mirror is fine: the probe does not know the nodes' architecture yet.
    _write(root / "v1.30.4/bin/linux/arm64", _files())
    probe_source(_k8s(url), lines.append)
    answered = f"{url}/v1.30.4/bin/linux/arm64/kubeadm.sha256"
    assert lines == [f"artifacts: mirror {url} serves Kubernetes v1.30.4 ({answered} answers)"]


def test_probe_source_local(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        probe_source(_k8s(f"local:{tmp_path}/nope"), lambda _: None)
    _write(tmp_path, _files())
    (tmp_path / "kubelet.sha256").unlink()
    with pytest.raises(ArtifactError, match=r"kubelet.sha256 \(or SHA256SUMS\)"):
        probe_source(_k8s(f"local:{tmp_path}"), lambda _: None)
    _write(tmp_path, _files(), sums="SHA256SUMS")
    probe_source(_k8s(f"local:{tmp_path}"), lambda _: None)
    with pytest.raises(ArtifactError, match="image_tarballs"):
        probe_source(_k8s(f"local:{tmp_path}", image_tarballs=str(tmp_path / "images")), lambda _: None)


# -- the steps in a dry run (what check_steps does before a real run) -------------------------


def _dry(step_name: str, source: str, **kw: str) -> list[str]:
    return _dry_needs(step_name, source, **kw)[0]


def _dry_needs(step_name: str, source: str, **kw: str) -> tuple[list[str], list[ArtifactNeed]]:
    env = LAB_ENV | {"VKP_K8S_ARTIFACTS": source}
    spec = load_spec(None, name="dry", plan="dev", env=env)
    if kw:
        spec = dataclasses.replace(spec, kubernetes=_k8s(source, **kw))
    plan = make_plan(spec)
    cluster = Cluster(spec=spec, plan=plan, state=None, pki=None)  # type: ignore[arg-type]
    sdef = registry()[step_name]
    node = plan.by_role("worker")[0]
    res = Executor(None, Facts.unknown(), dry_run=True).run_step(
        sdef, sdef.fn(node, cluster, Facts.unknown()), node.name
    )
    assert res.status == "changed", res.error
    return res.actions, res.artifacts


def test_binaries_dry_run_shows_download_and_install() -> None:
    actions = _dry("kubernetes.binaries", "http://198.18.0.1:8080/k8s")
    assert actions[0] == (
        "needs kubeadm, kubelet, kubectl v1.30.4 (amd64) and their checksums from "
        "http://198.18.0.1:8080/k8s/v1.30.4/bin/linux/amd64/"
    )
    assert "http://198.18.0.1:8080/k8s/v1.30.4/bin/linux/amd64/kubelet.sha256" in actions[1]
    assert "download /usr/local/bin" in actions[2] and "/v1.30.4/bin/linux/amd64/kubectl" in actions[2]


def test_binaries_dry_run_with_a_missing_local_source_lists_it_and_goes_on(tmp_path: Path) -> None:
    actions, needs = _dry_needs("kubernetes.binaries", f"local:{tmp_path}/not-there-yet")
    assert actions[0].startswith("needs kubeadm, kubelet, kubectl v1.30.4 (amd64)")
    assert any("push kubelet" in a for a in actions)
    assert "staged" in actions[-1]
    (need,) = needs
    assert (need.status, need.source) == (
        "missing",
        f"local directory {tmp_path}/not-there-yet (on this machine)",
    )
    assert need.problem is not None and "does not exist" in need.problem
    assert need.hint is not None and "local:/path/to/dir" in need.hint


def test_binaries_dry_run_with_a_local_source_says_present(tmp_path: Path) -> None:
    _write(tmp_path, _files(), sums="SHA256SUMS")
    _, needs = _dry_needs("kubernetes.binaries", f"local:{tmp_path}")
    assert [n.status for n in needs] == ["present"]


def _docker_save(path: Path, tags: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        data = json.dumps([{"Config": "c.json", "RepoTags": tags, "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_image_tarball_names(tmp_path: Path) -> None:
    _docker_save(tmp_path / "pause.tar", ["registry.k8s.io/pause:3.9", "busybox:1.36"])
    assert tarball_refs(tmp_path / "pause.tar") == [
        "docker.io/library/busybox:1.36",
        "registry.k8s.io/pause:3.9",
    ]
    oci = tmp_path / "oci.tar"
    with tarfile.open(oci, "w") as tar:
        data = json.dumps(
            {"manifests": [{"annotations": {"io.containerd.image.name": "registry.k8s.io/etcd:3.5.12-0"}}]}
        ).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert tarball_refs(oci) == ["registry.k8s.io/etcd:3.5.12-0"]
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ArtifactError, match="not a readable image tarball"):
        tarball_refs(tmp_path / "junk.tar")
    assert normalize_ref("calico/node:v3.28.1") == "docker.io/calico/node:v3.28.1"
    assert normalize_ref("localhost:5000/x:1") == "localhost:5000/x:1"


def test_images_step_does_nothing_without_tarballs_and_imports_them_when_set(tmp_path: Path) -> None:
    assert _dry_images(None) == []
    _docker_save(tmp_path / "pause.tar", ["registry.k8s.io/pause:3.9"])
    actions = _dry_images(str(tmp_path))
    assert any("push " in a and "pause.tar" in a for a in actions)
    assert any("ctr -n k8s.io images import /var/lib/vkp/images/pause.tar" in a for a in actions)


def _dry_images(tarballs: str | None) -> list[str]:
    spec = load_spec(None, name="dry", plan="dev", env=LAB_ENV)
    k8s = KubernetesSpec(artifacts=ArtifactsSpec(image_tarballs=tarballs))
    spec = dataclasses.replace(spec, kubernetes=k8s)
    plan = make_plan(spec)
    cluster = Cluster(spec=spec, plan=plan, state=None, pki=None)  # type: ignore[arg-type]
    sdef = registry()["kubernetes.images"]
    node = plan.by_role("worker")[0]
    res = Executor(None, Facts.unknown(), dry_run=True).run_step(
        sdef, sdef.fn(node, cluster, Facts.unknown()), node.name
    )
    assert res.status in ("ok", "changed"), res.error
    return res.actions
