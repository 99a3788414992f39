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
import hashlib
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
    Need,
    Probe,
    Run,
    StepGen,
    Upload,
    step,
)
from provisioner.errors import ArtifactError, CommandFailed
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

UNAME = Cmd("uname", "-m")
IMAGES_DIR = "/var/lib/vkp/images"
# Importing an image tarball unpacks every layer into containerd's store: a few GB of control
# plane and add-on images on a slow datastore take many minutes, not seconds.
IMPORT_TIMEOUT = 1800.0
# A pinned add-on manifest is at most a few hundred KB: one attempt gets a minute, and the SSH
# command's deadline covers curl's retries (4 attempts and their delays fit in it).
MANIFEST_MAX_TIME = 60
MANIFEST_TIMEOUT = 300.0
CTR_IMAGES = Cmd("ctr", "-n", "k8s.io", "images", "list", "-q")
DRY_RUN_ARCH = "amd64"  # a dry run has no node to ask; what it shows is for this architecture


def _installed(path: str) -> str:
    return f"{art.INSTALL_DIR}/{path}"


def _binary_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    probes: list[Probe] = [Check(UNAME)]
    return probes + [File(_installed(n)) for n in art.BINARIES]


def arch_of(facts: Facts) -> str:
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
    arch = arch_of(facts)
    if source.remote:
        yield from _from_remote(node, facts, source, version, arch)
    else:
        yield from _from_local(node, facts, source, version, arch)


def _up_to_date(facts: Facts, name: str, digest: str, directory: str = art.INSTALL_DIR) -> bool:
    return facts.known and facts.file(f"{directory}/{name}").matches(
        kind="file", mode=0o755, owner="root:root", sha256=digest
    )


def _set_name(version: str, arch: str) -> str:
    return f"kubeadm, kubelet, kubectl v{version} ({arch}) and their checksums"


def _from_remote(
    node: NodePlan, facts: Facts, source: art.ArtifactSource, version: str, arch: str
) -> Generator[Any, Any, None]:
    yield Need(_set_name(version, arch), source.url(version, arch, ""))
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

    files: dict[str, art.LocalFile] | None = yield Need(_set_name(version, arch), source.describe(), check)
    if files is None:
        # Dry run: show what a first run pushes and installs.
        yield EnsureDir(art.STAGING_DIR, 0o700, "root:root")
        for n in art.BINARIES:
            yield Local(f"push {n} to {node.name}:{art.STAGING_DIR}/{n} (0600)", lambda: None, changes=True)
        plan = {n: ("-", f"<sha256 of {n}>") for n in art.BINARIES}
        yield Run(art.install_command("staged", plan), check=False, timeout=art.INSTALL_TIMEOUT)
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


# -- release tarballs: etcd's, the CNI plugins' (steps/cni/bridge.py) -------------------------

# What the installed binaries came from: the tarball's name and SHA-256, then each binary's
# SHA-256. The tarball's checksum says nothing about the binaries in it, so this record is what
# lets a re-run see that the installed files are that release's, and change nothing.
ETCD_RELEASE_FILE = "/var/lib/vkp/etcd-release"
ETCD_RELEASE = Check(Cmd("cat", ETCD_RELEASE_FILE))


@dataclass(frozen=True)
class Release:
    """A release tarball some of whose members are installed, as a set, into install_dir."""

    source: art.ArtifactSource
    version: str
    tarball: str
    members: tuple[str, ...]  # paths inside the tarball
    install_dir: str
    record: Check  # `cat` of the file recording what was installed
    make_dir: bool = False  # install_dir is vkp's to create (/usr/local/bin is the system's)

    @property
    def binaries(self) -> list[str]:
        return [m.rsplit("/", 1)[-1] for m in self.members]

    @property
    def record_file(self) -> str:
        return str(self.record.cmd.args[-1])


def release_probes(install_dir: str, record: Check, binaries: tuple[str, ...]) -> list[Probe]:
    probes: list[Probe] = [Check(UNAME), record, File(install_dir)]
    return probes + [File(f"{install_dir}/{n}") for n in binaries]


def _install_dir(rel: Release) -> StepGen:
    if rel.make_dir:
        yield EnsureDir(rel.install_dir, 0o755, "root:root")


def etcd_probes() -> list[Probe]:
    return release_probes(art.INSTALL_DIR, ETCD_RELEASE, art.ETCD_BINARIES)


def _release_record(tarball: str, digest: str, binaries: dict[str, str]) -> str:
    return "".join(f"{n} {d}\n" for n, d in [(tarball, digest), *sorted(binaries.items())])


def _release_up_to_date(facts: Facts, rel: Release, digest: str) -> bool:
    if not facts.known:
        return False
    lines = facts.check(rel.record.cmd).stdout.splitlines()
    recorded = dict(ln.split(" ", 1) for ln in lines if " " in ln)
    return recorded.get(rel.tarball) == digest and all(
        n in recorded and _up_to_date(facts, n, recorded[n], rel.install_dir) for n in rel.binaries
    )


def install_release(node: NodePlan, facts: Facts, rel: Release, arch: str) -> Generator[Any, Any, None]:
    """The release's members in rel.install_dir (0755 root:root), unpacked and installed only
    after the tarball matched its published SHA-256; then the record of what was installed."""
    source, version, tarball = rel.source, rel.version, rel.tarball
    sums = source.layout.sums_name(tarball)
    members = list(rel.members)
    if source.remote:
        yield Need(f"{tarball} and {sums}", source.url(version, arch, ""))
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
            digest = f"<sha256 of {tarball} from {sums}>"
        if _release_up_to_date(facts, rel, digest):
            return
        yield from _install_dir(rel)
        plan = {tarball: (source.url(version, arch, tarball), digest)}
        result = yield Run(
            art.install_command("download", plan, install_dir=rel.install_dir, unpack=members),
            check=False,
            timeout=art.INSTALL_TIMEOUT,
        )
    else:

        def check() -> dict[str, art.LocalFile]:
            stamp = _stamp(source.directory(version, arch))
            return _verified_local(source.location, version, arch, stamp, source.layout, (tarball,))

        files: dict[str, art.LocalFile] | None = yield Need(f"{tarball} and {sums}", source.describe(), check)
        local = files[tarball] if files is not None else None
        digest = local.sha256 if local is not None else f"<sha256 of {tarball}>"
        if _release_up_to_date(facts, rel, digest):
            return
        yield from _install_dir(rel)
        yield EnsureDir(art.STAGING_DIR, 0o700, "root:root")
        if local is None:
            # Dry run: show what a first run pushes.
            yield Local(f"push {tarball} to {node.name}:{art.STAGING_DIR}/{tarball} (0600)", lambda: None,
                        changes=True)  # fmt: skip
        else:
            # Verified again on the node before it is unpacked, so a file changed between the
            # check above and this read is refused there.
            yield Upload(local.path.read_bytes(), f"{art.STAGING_DIR}/{tarball}", 0o600, "root:root")
        result = yield Run(
            art.install_command(
                "staged", {tarball: ("-", digest)}, install_dir=rel.install_dir, unpack=members
            ),
            check=False,
            timeout=art.INSTALL_TIMEOUT,
        )
    binaries = dict.fromkeys(rel.binaries, "<sha256>")
    if facts.known:
        art.check_install(result, source, version, arch, {tarball: digest}, node.name)
        binaries = art.unpacked_sums(result)
    yield EnsureDir("/var/lib/vkp", 0o700, "root:root")
    yield Upload(_release_record(tarball, digest, binaries), rel.record_file, 0o644, "root:root")


def etcd_binaries(node: NodePlan, cluster: Cluster, facts: Facts) -> Generator[Any, Any, None]:
    """etcd and etcdctl of etcd.version in /usr/local/bin (0755 root:root), from the release
    tarball, unpacked and installed only after the tarball matched the release's SHA256SUMS."""
    etcd = cluster.spec.etcd
    version = etcd.version
    arch = arch_of(facts)
    rel = Release(
        art.etcd_source(etcd),
        version,
        art.etcd_tarball(version, arch),
        tuple(art.etcd_members(version, arch)),
        art.INSTALL_DIR,
        ETCD_RELEASE,
    )
    yield from install_release(node, facts, rel, arch)


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


def _image_sums(directory: Path) -> dict[str, str] | None:
    """{tarball name: sha256} from the directory's SHA256SUMS (sha256sum's format), or None when
    there is none."""
    sums = directory / art.SUMS_FILE
    if not sums.is_file():
        return None
    out: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise ArtifactError(
                f"{sums}, line {n}: not a sha256sum line ('<64 hex digits>  NAME'): {line.strip()[:120]!r}",
                hint=f"make it with `sha256sum *.tar > {art.SUMS_FILE}` in {directory}",
            )
        out[parts[1].strip().lstrip("*").rsplit("/", 1)[-1]] = parts[0].lower()
    return out


@functools.lru_cache(maxsize=4)
def _verified_tarballs(
    directory: str, stamp: tuple[tuple[str, int, int], ...]
) -> tuple[tuple[Path, str | None], ...]:
    # Every node of a run imports the same tarballs: they are hashed once. stamp (size and mtime
    # of every file) makes a changed file be hashed again.
    d = Path(directory)
    tars = sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(".tar"))
    sums = _image_sums(d)
    if sums is None:
        return tuple((t, None) for t in tars)
    sums_file = d / art.SUMS_FILE
    for t in tars:
        if t.name not in sums:
            raise ArtifactError(
                f"{t} is not listed in {sums_file}: with a {art.SUMS_FILE} there, every tarball must "
                "have its checksum in it; nothing was imported",
                hint=f"add its line (`sha256sum {t.name} >> {art.SUMS_FILE}` where it was made) or "
                "remove the tarball",
            )
        actual = art.sha256_file(t)
        if actual != sums[t.name]:
            raise _image_mismatch(t, sums_file, sums[t.name], actual)
    return tuple((t, sums[t.name]) for t in tars)


def _image_mismatch(path: Path, sums_file: Path, expected: str, actual: str) -> ArtifactError:
    return ArtifactError(
        f"{path} does not match {sums_file}: expected sha256 {expected}, got {actual}. Nothing was imported.",
        hint="the tarball is damaged or another build than the one listed; copy or export it again "
        f"(and its {art.SUMS_FILE} line) and re-run",
    )


def checked_tarballs(cluster: Cluster) -> list[tuple[Path, str | None]]:
    """The image tarballs with the SHA-256 their directory's SHA256SUMS lists (None without one),
    every one verified before any is pushed; ArtifactError (exit 12) on a tarball that is not
    listed or does not match."""
    tars = _tarballs(cluster)
    if not tars:
        return []
    d = tars[0].parent
    return list(_verified_tarballs(str(d), _stamp(d)))


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
    """Image tarballs from kubernetes.artifacts.image_tarballs imported into containerd (k8s.io),
    each checked against the directory's SHA256SUMS when it has one; nothing when that setting is
    not there (the images are pulled from image_repository)."""
    configured = cluster.spec.kubernetes.artifacts.image_tarballs
    if not configured:
        return
    directory = Path(configured).expanduser()
    has_sums = (directory / art.SUMS_FILE).is_file()
    checked: list[tuple[Path, str | None]] | None = yield Need(
        "image tarballs (*.tar" + (f", each checked against {art.SUMS_FILE})" if has_sums else ")"),
        f"{directory} (on this machine)",
        lambda: checked_tarballs(cluster),
    )
    if checked is None:
        # Dry run: show what a first run pushes and imports (the Need above says what is missing).
        for tar in sorted(directory.glob("*.tar")) if directory.is_dir() else []:
            target = f"{IMAGES_DIR}/{tar.name}"
            yield Local(f"push {tar} to {node.name}:{target} (0600)", lambda: None, changes=True)
            yield Run(Cmd("ctr", "-n", "k8s.io", "images", "import", target), timeout=IMPORT_TIMEOUT)
        return
    if not checked:
        return
    listed = facts.check(CTR_IMAGES)
    present = set(listed.stdout.split()) if facts.known and listed.ok else set()
    yield EnsureDir("/var/lib/vkp", 0o700, "root:root")
    yield EnsureDir(IMAGES_DIR, 0o700, "root:root")
    for tar, expected in checked:
        target = f"{IMAGES_DIR}/{tar.name}"
        refs = tarball_refs(tar)
        data = tar.read_bytes()
        if expected is not None and (actual := hashlib.sha256(data).hexdigest()) != expected:
            # Changed since it was verified: what is pushed must be what was checked.
            raise _image_mismatch(tar, tar.parent / art.SUMS_FILE, expected, actual)
        changed = yield Upload(data, target, 0o600, "root:root")
        if not changed and (not refs or set(refs) <= present):
            continue
        r = yield Run(
            Cmd("ctr", "-n", "k8s.io", "images", "import", target), check=False, timeout=IMPORT_TIMEOUT
        )
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
    f"--speed-limit 1024 --speed-time 60 --max-time {MANIFEST_MAX_TIME} "
    '--retry 3 --retry-delay 2 -o "$tmp" -- "$1"; chmod 600 -- "$tmp"; mv -f -- "$tmp" "$2"'
)


def _read_manifest(f: Fetch) -> bytes:
    assert f.local is not None
    try:
        return f.local.read_bytes()
    except OSError as exc:
        raise ArtifactError(
            f"{f.what}: cannot read {f.local} ({exc.strerror})",
            hint="a local artifact source carries the pinned add-on manifests under the same "
            "relative paths as a mirror",
        ) from None


def fetch_manifest(f: Fetch) -> StepGen:
    if f.local is not None:
        data = yield Need(f.what, f"{f.local} (on this machine)", lambda: _read_manifest(f))
        if data is None:
            # Dry run: show the push a first run makes.
            yield Local(f"push {f.local} to {f.dest} (0600)", lambda: None, changes=True)
        else:
            yield Upload(data, f.dest, 0o600, "root:root")
    else:
        assert f.url is not None
        yield Need(f.what, f.url)
        yield Run(Cmd.shell(_FETCH_SCRIPT, f.url, f.dest), retry_safe=True, timeout=MANIFEST_TIMEOUT)
