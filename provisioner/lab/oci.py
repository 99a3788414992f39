"""Single-layer OCI image tarballs, as `ctr images import` reads them.

The lab has no registry and nothing here can pull one, so it writes its images itself: an
oci-layout, an index.json whose manifest carries the containerd image-name annotation, and
the blobs (a gzipped layer, the config, the manifest). Everything is deterministic (fixed
mtimes and owners, sorted entries), so the same inputs give the same digest and a rebuilt
image is not a new image to the nodes that already have it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Entry:
    """One path in the layer: a file (data or src), a directory, or a symlink (target)."""

    path: str  # absolute, inside the image
    data: bytes | None = None
    src: Path | None = None
    mode: int = 0o755
    target: str | None = None
    directory: bool = False


@dataclass
class Image:
    ref: str  # e.g. k8s.gcr.io/kube-apiserver:v1.20.2
    entries: list[Entry] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    arch: str = "amd64"

    def file(self, path: str, src: Path, mode: int = 0o755) -> None:
        self.entries.append(Entry(path, src=src, mode=mode))

    def data(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.entries.append(Entry(path, data=data, mode=mode))

    def symlink(self, path: str, target: str) -> None:
        self.entries.append(Entry(path, target=target))

    def directory(self, path: str, mode: int = 0o755) -> None:
        self.entries.append(Entry(path, directory=True, mode=mode))


def _parents(paths: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


def _layer(entries: list[Entry]) -> bytes:
    """An uncompressed tar of the entries, parents first, owned by root, mtime 0."""
    buf = io.BytesIO()
    explicit_dirs = {e.path.strip("/") for e in entries if e.directory}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in _parents(e.path for e in entries):
            if d not in explicit_dirs:
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path.strip("/"))
            info.mode = e.mode
            if e.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.target is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.target, 0o777
                tar.addfile(info)
            else:
                data = e.data if e.data is not None else e.src.read_bytes()  # type: ignore[union-attr]
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write(image: Image, out: Path) -> str:
    """Write image as an OCI tarball at out (atomically); return the manifest digest."""
    layer = _layer(image.entries)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as z:
        z.write(layer)
    layer_gz = gz.getvalue()
    config: dict[str, object] = {"Env": image.env}
    if image.entrypoint:
        config["Entrypoint"] = image.entrypoint
    if image.cmd:
        config["Cmd"] = image.cmd
    config_doc = {
        "architecture": image.arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        layer_ref = _blob(tar, layer_gz)
        config_ref = _blob(tar, _json(config_doc))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, **config_ref},
            "layers": [{"mediaType": MEDIA_LAYER, **layer_ref}],
        }
        manifest_ref = _blob(tar, _json(manifest))
        tag = image.ref.rsplit(":", 1)[-1] if ":" in image.ref.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    **manifest_ref,
                    "annotations": {
                        "io.containerd.image.name": image.ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                    "platform": {"architecture": image.arch, "os": "linux"},
                }
            ],
        }
        layout = _json({"imageLayoutVersion": "1.0.0"})
        for name, data in (("oci-layout", layout), ("index.json", _json(index))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return str(manifest_ref["digest"])
