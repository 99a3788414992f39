"""The sample app's images, built for real from this machine's Debian packages (as `vkp lab
prepare` builds them): what their entrypoints need is in their layers, the nodes' checks accept
the directory, a rebuild happens only when needed, and, as root, the three processes run from
the images' own files (chroot) and keep a vote across a new API process."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import sampleapp
from provisioner.bootstrap.steps import artifacts as artifact_steps
from provisioner.lab import appimages, kubebuild

KUBE_LINE = "pause_3.2.tar"  # a Kubernetes image already in the directory


def _layer(tarball: Path) -> tuple[dict[str, Any], dict[str, tarfile.TarInfo], bytes]:
    """(image config, {path: member}, the layer's bytes) of a single-layer OCI tarball."""
    with tarfile.open(tarball) as tar:

        def blob(digest: str) -> bytes:
            f = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert f is not None
            return f.read()

        index = json.loads(blob_of(tar, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        (layer_ref,) = manifest["layers"]
        layer = gzip.decompress(blob(layer_ref["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
        members = {"/" + m.name: m for m in lt.getmembers()}
    return config, members, layer


def blob_of(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None
    return f.read()


def _resolve(members: dict[str, tarfile.TarInfo], path: str) -> tarfile.TarInfo:
    """The member path leads to inside the layer, following its links as the kernel would."""
    for _ in range(10):
        m = members.get(path)
        assert m is not None, f"{path} is not in the image"
        if not m.issym():
            return m
        path = (
            m.linkname
            if m.linkname.startswith("/")
            else os.path.normpath(f"{os.path.dirname(path)}/{m.linkname}")
        )
    raise AssertionError(f"{path}: too many links")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    images = kubebuild.Layout(artifacts).images
    images.mkdir(parents=True)
    (images / KUBE_LINE).write_bytes(b"not really pause")
    digest = artifact_steps.art.sha256_file(images / KUBE_LINE)
    (images / "SHA256SUMS").write_text(f"{digest}  {KUBE_LINE}\n")
    record = appimages.build(artifacts, tmp_path_factory.mktemp("cache"), lambda _m: None)
    return artifacts, record


def test_each_entrypoint_and_everything_it_loads_is_in_its_image(built: tuple[Path, dict[str, Any]]) -> None:
    artifacts, record = built
    images = kubebuild.Layout(artifacts).images
    assert set(record["images"]) == set(sampleapp.image_refs().values())
    for ref, name in record["images"].items():
        config, members, _ = _layer(images / name)
        entrypoint = config["config"]["Entrypoint"][0]
        binary = _resolve(members, entrypoint)
        assert binary.isfile() and binary.mode & 0o111, (ref, entrypoint)
        host_binary = Path(entrypoint).resolve()
        for lib in kubebuild.shared_libraries(host_binary):
            assert _resolve(members, str(lib)).isfile(), (ref, f"{lib} is missing")
    _, app, _ = _layer(images / record["images"][sampleapp.image_refs()["app"]])
    for name in sampleapp.APP_FILES:
        assert _resolve(app, f"/app/{name}").isfile()
    version = appimages.python_version()
    assert f"/usr/lib/python{version}/http/server.py" in app, "the standard library the app imports"
    assert not any(p.startswith(f"/usr/lib/python{version}/test/") for p in app), "no test suite"


def test_the_directory_passes_the_nodes_checks_and_keeps_the_kubernetes_lines(
    built: tuple[Path, dict[str, Any]],
) -> None:
    artifacts, record = built
    images = kubebuild.Layout(artifacts).images
    sums = artifact_steps._image_sums(images)
    assert sums is not None and KUBE_LINE in sums
    verified = dict(artifact_steps._verified_tarballs(str(images), artifact_steps._stamp(images)))
    for ref, name in record["images"].items():
        assert verified[images / name] == record["files"][name]
        assert artifact_steps.tarball_refs(images / name) == [ref]


def test_a_rebuild_happens_only_when_a_tarball_is_gone_and_gives_the_same_image(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    artifacts, record = built
    said: list[str] = []
    assert appimages.build(artifacts, tmp_path, said.append) == record and said == [], "nothing to do"
    images = kubebuild.Layout(artifacts).images
    first = images / next(iter(record["files"]))
    first.unlink()  # what the Kubernetes build's reassembly of the directory does
    again = appimages.build(artifacts, tmp_path, said.append)
    assert said and again["files"] == record["files"], "the same inputs give the same tarballs"
    assert first.is_file()


# -- the images' own files, run (root: chroot) --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port}")


@pytest.fixture
def roots(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> Iterator[dict[str, Path]]:
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("running the images' files needs root (chroot)")
    artifacts, record = built
    out = {}
    for kind, ref in sampleapp.image_refs().items():
        _, _, layer = _layer(kubebuild.Layout(artifacts).images / record["images"][ref])
        root = tmp_path / kind
        with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
            # Our own tarball, modes kept: /data is 0777 in the image (an emptyDir on a node).
            lt.extractall(root, **({"filter": "fully_trusted"} if hasattr(tarfile, "tar_filter") else {}))  # type: ignore[arg-type]
        out[kind] = root
    yield out


def test_the_images_files_run_the_app_and_a_vote_outlives_the_api_process(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [str(shutil.which("chroot")), "--userspec=65534:65534", str(roots[kind]), *args]
        env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **(env or {})}
        log = tmp_path / f"{kind}-{len(procs)}.log"
        with log.open("wb") as out:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        _wait_port(port, p, log)
        return p

    def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()

    redis_port, api_port, ui_port = _free_port(), _free_port(), _free_port()
    try:
        start("redis", redis_port, "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                      "--dir", "/data", "--appendonly", "yes", "--save", "")  # fmt: skip
        api_env = {"VKP_SAMPLE_REDIS": f"127.0.0.1:{redis_port}", "VKP_SAMPLE_PORT": str(api_port)}
        api = start("app", api_port, "/usr/bin/python3", "/app/api.py", env=api_env)
        ui_env = {"VKP_SAMPLE_API": f"127.0.0.1:{api_port}", "VKP_SAMPLE_PORT": str(ui_port)}
        start("app", ui_port, "/usr/bin/python3", "/app/ui.py", env=ui_env)
        status, _ = call(ui_port, "POST", "/vote", urllib.parse.urlencode({"id": "le-bistro"}).encode())
        assert status == 303
        api.terminate()
        api.wait(10)
        api = start("app", api_port, "/usr/bin/python3", "/app/api.py", env=api_env)
        status, body = call(ui_port, "GET", "/api/votes")
        assert (status, json.loads(body)) == (200, {"votes": {"le-bistro": 1}})
        status, page = call(ui_port, "GET", "/")
        assert status == 200 and b'id="votes-le-bistro">1<' in page
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
