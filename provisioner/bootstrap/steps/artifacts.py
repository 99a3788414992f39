"""Kubernetes artifacts on masters and workers: kubeadm, kubelet, kubectl, and image tarballs.

kubernetes.binaries checks first: the installed files' SHA-256 (from the facts) against the
checksums the source publishes. Only files that differ are fetched, and a set is installed
only when every file in it has verified (provisioner/bootstrap/artifacts.py has the layouts and
the install script). A second run downloads nothing and changes nothing.

kubernetes.images imports image tarballs (kubernetes.artifacts.image_tarballs) into containerd's
k8s.io namespace, for sites whose nodes cannot pull from any registry; without that setting it
does nothing and the images are pulled from kubernetes.artifacts.image_repository.

etcd_binaries (run by etcd.configure when etcd.artifact is not the package) installs etcd and
etcdctl from a verified release tarball the same way.

Pinned manifests (the Calico operator, the vSphere CSI driver) come from the same source as the
binaries: upstream from the project's tagged release, or a mirror or local directory under the
same relative paths.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Probe,
    Run,
    StepGen,
    Upload,
    Warn,
    step,
)
from provisioner.errors import ArtifactError, CommandFailed
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

UNAME = Cmd("uname", "-m")
IMAGES_DIR = "/var/lib/vkp/images"
CTR_IMAGES = Cmd("ctr", "-n", "k8s.io", "images", "list", "-q")
DRY_RUN_ARCH = "amd64"  # a dry run has no node to ask; what it shows is for this architecture


def _installed(path: str) -> str:
    return f"{art.INSTALL_DIR}/{path}"


def _binary_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    probes: list[Probe] = [Check(UNAME)]
    return probes + [File(_installed(n)) for n in art.BINARIES]


def _arch(facts: Facts) -> str:
    if not facts.known:
        return DRY_RUN_ARCH
    uname = facts.check(UNAME)
    if not uname.ok:
        raise ArtifactError(f"`uname -m` failed on the node (exit {uname.exit_status})")
    return art.node_arch(uname.stdout)


@step("kubernetes.binaries", probes=_binary_probes)
def binaries(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """kubeadm, kubelet and kubectl of the pinned version in /usr/local/bin (0755 root:root), each
    verified against its published SHA-256; the set is installed only when all of it verified."""
    k8s = cluster.spec.kubernetes
    source = art.source_of(k8s)
    version = k8s.version
    arch = _arch(facts)
    if source.remote:
        yield from _from_remote(node, facts, source, version, arch)
    else:
        yield from _from_local(node, facts, source, version, arch)


def _up_to_date(facts: Facts, name: str, digest: str) -> bool:
    return facts.known and facts.file(_installed(name)).matches(
        kind="file", mode=0o755, owner="root:root", sha256=digest
    )


def _from_remote(
    node: NodePlan, facts: Facts, source: art.ArtifactSource, version: str, arch: str
) -> Generator[Any, Any, None]:
    fetched = yield Run(
        art.fetch_sums_command(source, version, arch, art.BINARIES),
        check=False,
        changes=False,
        retry_safe=True,
        timeout=art.FETCH_SUMS_TIMEOUT,
    )
    if not facts.known:
        # Dry run: nothing was fetched; show the install of the whole set.
        expected = {n: f"<sha256 from {n}.sha256>" for n in art.BINARIES}
    else:
        expected = art.parse_fetched_sums(fetched, source, version, arch, art.BINARIES)
    todo = {
        n: (source.url(version, arch, n), digest)
        for n, digest in expected.items()
        if not _up_to_date(facts, n, digest)
    }
    if not todo:
        return
    result = yield Run(art.install_command("download", todo), check=False, timeout=art.INSTALL_TIMEOUT)
    if facts.known:
        art.check_install(result, source, version, arch, expected, node.name)


@functools.lru_cache(maxsize=4)
def _verified_local(
    location: str,
    version: str,
    arch: str,
    stamp: tuple[tuple[str, int, int], ...],
    layout: art.Layout = art.K8S,
    names: tuple[str, ...] = art.BINARIES,
) -> dict[str, art.LocalFile]:
    # Hashing a kubelet costs a second or so; nodes of one run share the result. stamp (size and
    # mtime of every file in the directory) makes a changed file be hashed again.
    return art.verify_local(art.ArtifactSource("local", location, layout), version, arch, names)


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    if not directory.is_dir():
        return ()
    out = []
    for p in sorted(directory.iterdir()):
        if p.is_file():
            st = p.stat()
            out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _from_local(
    node: NodePlan, facts: Facts, source: art.ArtifactSource, version: str, arch: str
) -> Generator[Any, Any, None]:
    def check() -> dict[str, art.LocalFile]:
        stamp = _stamp(source.directory(version, arch))
        return _verified_local(source.location, version, arch, stamp)

    files: dict[str, art.LocalFile] | None = yield Local(
        f"verify kubeadm, kubelet, kubectl v{version} ({arch}) in {source.describe()} against their "
        "published SHA-256",
        check,
    )
    if files is None:
        # Dry run: the directory was not read; show what a first run pushes and installs.
        yield EnsureDir(art.STAGING_DIR, 0o700, "root:root")
        for n in art.BINARIES:
            yield Local(f"push {n} to {node.name}:{art.STAGING_DIR}/{n} (0600)", lambda: None, changes=True)
        plan = {n: ("-", f"<sha256 of {n}>") for n in art.BINARIES}
        yield Run(art.install_command("staged", plan), check=False)
        return
    todo = {n: f for n, f in files.items() if not _up_to_date(facts, n, f.sha256)}
    if not todo:
        return
    yield EnsureDir(art.STAGING_DIR, 0o700, "root:root")
    for n, f in todo.items():
        # Verified again on the node before the rename, so a file changed between the check
        # above and this read is refused there.
        yield Upload(f.path.read_bytes(), f"{art.STAGING_DIR}/{n}", 0o600, "root:root")
    plan = {n: ("-", f.sha256) for n, f in todo.items()}
    result = yield Run(art.install_command("staged", plan), check=False, timeout=art.INSTALL_TIMEOUT)
    art.check_install(result, source, version, arch, {n: f.sha256 for n, f in todo.items()}, node.name)


# -- etcd from a release tarball --------------------------------------------------------------

# What the installed etcd binaries came from: the tarball's name and SHA-256, then each binary's
# SHA-256. The tarball's checksum says nothing about the binaries in it, so this record is what
# lets a re-run see that the installed files are that release's, and change nothing.
ETCD_RELEASE_FILE = "/var/lib/vkp/etcd-release"
ETCD_RELEASE = Check(Cmd("cat", ETCD_RELEASE_FILE))


def etcd_probes() -> list[Probe]:
    probes: list[Probe] = [Check(UNAME), ETCD_RELEASE]
    return probes + [File(_installed(n)) for n in art.ETCD_BINARIES]


def _etcd_record(tarball: str, digest: str, binaries: dict[str, str]) -> str:
    return "".join(f"{n} {d}\n" for n, d in [(tarball, digest), *sorted(binaries.items())])


def _etcd_up_to_date(facts: Facts, tarball: str, digest: str) -> bool:
    if not facts.known:
        return False
    lines = facts.check(ETCD_RELEASE.cmd).stdout.splitlines()
    recorded = dict(ln.split(" ", 1) for ln in lines if " " in ln)
    return recorded.get(tarball) == digest and all(
        n in recorded and _up_to_date(facts, n, recorded[n]) for n in art.ETCD_BINARIES
    )


def etcd_binaries(node: NodePlan, cluster: Cluster, facts: Facts) -> Generator[Any, Any, None]:
    """etcd and etcdctl of etcd.version in /usr/local/bin (0755 root:root), from the release
    tarball, unpacked and installed only after the tarball matched the release's SHA256SUMS."""
    etcd = cluster.spec.etcd
    source = art.etcd_source(etcd)
    version = etcd.version
    arch = _arch(facts)
    tarball = art.etcd_tarball(version, arch)
    members = art.etcd_members(version, arch)
    if source.remote:
        fetched = yield Run(
            art.fetch_sums_command(source, version, arch, [tarball]),
            check=False,
            changes=False,
            retry_safe=True,
            timeout=art.FETCH_SUMS_TIMEOUT,
        )
        if facts.known:
            digest = art.parse_fetched_sums(fetched, source, version, arch, [tarball])[tarball]
        else:
            digest = f"<sha256 of {tarball} from {art.SUMS_FILE}>"
        if _etcd_up_to_date(facts, tarball, digest):
            return
        plan = {tarball: (source.url(version, arch, tarball), digest)}
        result = yield Run(
            art.install_command("download", plan, unpack=members), check=False, timeout=art.INSTALL_TIMEOUT
        )
    else:

        def check() -> dict[str, art.LocalFile]:
            stamp = _stamp(source.directory(version, arch))
            return _verified_local(source.location, version, arch, stamp, art.ETCD, (tarball,))

        files: dict[str, art.LocalFile] | None = yield Local(
            f"verify {tarball} in {source.describe()} against the release's {art.SUMS_FILE}", check
        )
        local = files[tarball] if files is not None else None
        digest = local.sha256 if local is not None else f"<sha256 of {tarball}>"
        if _etcd_up_to_date(facts, tarball, digest):
            return
        yield EnsureDir(art.STAGING_DIR, 0o700, "root:root")
        if local is None:
            # Dry run: the directory was not read; show what a first run pushes.
            yield Local(f"push {tarball} to {node.name}:{art.STAGING_DIR}/{tarball} (0600)", lambda: None,
                        changes=True)  # fmt: skip
        else:
            # Verified again on the node before it is unpacked, so a file changed between the
            # check above and this read is refused there.
            yield Upload(local.path.read_bytes(), f"{art.STAGING_DIR}/{tarball}", 0o600, "root:root")
        result = yield Run(
            art.install_command("staged", {tarball: ("-", digest)}, unpack=members),
            check=False,
            timeout=art.INSTALL_TIMEOUT,
        )
    binaries = dict.fromkeys(art.ETCD_BINARIES, "<sha256>")
    if facts.known:
        art.check_install(result, source, version, arch, {tarball: digest}, node.name)
        binaries = art.unpacked_sums(result)
    yield EnsureDir("/var/lib/vkp", 0o700, "root:root")
    yield Upload(_etcd_record(tarball, digest, binaries), ETCD_RELEASE_FILE, 0o644, "root:root")


# -- images -----------------------------------------------------------------------------------


def _tarballs(cluster: Cluster) -> list[Path]:
    configured = cluster.spec.kubernetes.artifacts.image_tarballs
    if not configured:
        return []
    d = Path(configured).expanduser()
    if not d.is_dir():
        raise ArtifactError(
            f"kubernetes.artifacts.image_tarballs: {d} is not a directory on this machine",
            hint="point it at a directory of image tarballs (*.tar), or remove it to pull the images",
        )
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(".tar"))


def _image_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    try:
        tars = _tarballs(cluster)
    except ArtifactError:
        return []  # the step reports it
    if not tars:
        return []
    probes: list[Probe] = [Check(CTR_IMAGES)]
    return probes + [File(f"{IMAGES_DIR}/{t.name}") for t in tars]


def normalize_ref(ref: str) -> str:
    """An image name as containerd lists it: docker.io/library/ for short Docker Hub names."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def tarball_refs(path: Path) -> list[str]:
    """The image names a tarball holds (OCI index annotations or docker-save RepoTags); [] when
    it names none, and then the tarball is imported whenever its copy on the node changes."""
    refs: list[str] = []
    try:
        with tarfile.open(path) as tar:
            for member_name in ("index.json", "manifest.json"):
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    continue
                f = tar.extractfile(member)
                if f is None or member.size > 4 << 20:
                    continue
                doc = json.load(io.TextIOWrapper(f, encoding="utf-8"))
                if member_name == "index.json" and isinstance(doc, dict):
                    for m in doc.get("manifests") or []:
                        ann = m.get("annotations") or {}
                        name = ann.get("io.containerd.image.name")
                        if isinstance(name, str) and name:
                            refs.append(name)
                elif isinstance(doc, list):
                    for entry in doc:
                        refs += [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    except (tarfile.TarError, OSError, ValueError, AttributeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable image tarball ({exc})",
            hint="make it with `ctr -n k8s.io images export` or `docker save`",
        ) from None
    return sorted({normalize_ref(r) for r in refs})


@step("kubernetes.images", probes=_image_probes)
def images(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Image tarballs from kubernetes.artifacts.image_tarballs imported into containerd (k8s.io);
    nothing when that is not set (the images are pulled from image_repository)."""
    try:
        tars = _tarballs(cluster)
    except ArtifactError as exc:
        if facts.known:
            raise
        yield Warn(str(exc))  # a dry run reports it; the real run stops on it
        return
    if not tars:
        return
    listed = facts.check(CTR_IMAGES)
    present = set(listed.stdout.split()) if facts.known and listed.ok else set()
    yield EnsureDir("/var/lib/vkp", 0o700, "root:root")
    yield EnsureDir(IMAGES_DIR, 0o700, "root:root")
    for tar in tars:
        target = f"{IMAGES_DIR}/{tar.name}"
        if not facts.known:
            yield Local(f"push {tar} to {node.name}:{target} (0600)", lambda: None, changes=True)
            yield Run(Cmd("ctr", "-n", "k8s.io", "images", "import", target))
            continue
        refs = tarball_refs(tar)
        data = tar.read_bytes()
        changed = yield Upload(data, target, 0o600, "root:root")
        if not changed and (not refs or set(refs) <= present):
            continue
        r = yield Run(Cmd("ctr", "-n", "k8s.io", "images", "import", target), check=False, timeout=1800)
        if not r.ok:
            raise CommandFailed(node.name, f"ctr -n k8s.io images import {target}", r.exit_status, r.stdout,
                                r.stderr)  # fmt: skip


# -- pinned manifests (the CNI's and the vSphere drivers') -----------------------------------


@dataclass(frozen=True)
class Fetch:
    """A pinned manifest: a URL the first master downloads, or a file on this machine."""

    what: str
    url: str | None
    local: Path | None
    dest: str


def pinned_manifest(cluster: Cluster, what: str, upstream: str, mirror_path: str, dest: str) -> Fetch:
    """Upstream from the project's own tagged release; a mirror or local source under mirror_path.

    Neither project publishes a checksum for these manifests, so integrity rests on the pinned
    tag and verified HTTPS (or, for a mirror, on the mirror the site trusts for its binaries).
    """
    src = art.source_of(cluster.spec.kubernetes)
    kind, location = src.kind, src.location
    if kind == "upstream":
        return Fetch(what, upstream, None, dest)
    if kind == "mirror":
        return Fetch(what, f"{location}/{mirror_path}", None, dest)
    return Fetch(what, None, Path(location) / mirror_path, dest)


_FETCH_SCRIPT = (
    'set -eu; tmp="$2.part"; '
    "curl --fail --silent --show-error --location --proto =https,http --connect-timeout 10 "
    "--speed-limit 1024 --speed-time 60 "
    '--retry 3 --retry-delay 2 -o "$tmp" -- "$1"; chmod 600 -- "$tmp"; mv -f -- "$tmp" "$2"'
)


def fetch_manifest(f: Fetch) -> StepGen:
    if f.local is not None:
        try:
            data = f.local.read_bytes()
        except OSError as exc:
            raise ArtifactError(
                f"{f.what}: cannot read {f.local} ({exc.strerror})",
                hint="a local artifact source carries the pinned add-on manifests under the same "
                "relative paths as a mirror",
            ) from None
        yield Upload(data, f.dest, 0o600, "root:root")
    else:
        assert f.url is not None
        yield Run(Cmd.shell(_FETCH_SCRIPT, f.url, f.dest), retry_safe=True, timeout=300)
