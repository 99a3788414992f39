"""Kubernetes artifacts: where kubeadm, kubelet and kubectl come from, and how each is verified.

The sources (upstream, a mirror, a local directory), their layouts for Kubernetes, the CNI
plugins and etcd, and what is trusted: see docs/architecture.md#bootstrap-artifacts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from provisioner import stop
from provisioner.errors import ArtifactError
from provisioner.ssh.commands import Cmd, Result


# What this module reads of the spec's kubernetes and etcd sections (provisioner.spec's
# KubernetesSpec and EtcdSpec fit): the spec's checks parse artifact sources with this module,
# so it names no spec type and the import goes one way.
class _ArtifactSettings(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def image_tarballs(self) -> str | None: ...


class KubernetesSettings(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def cni(self) -> str: ...
    @property
    def cni_plugins_version(self) -> str: ...
    @property
    def artifacts(self) -> _ArtifactSettings: ...


class EtcdSettings(Protocol):
    @property
    def artifact(self) -> str: ...


UPSTREAM_BASE = "https://dl.k8s.io/release"
BINARIES = ("kubeadm", "kubelet", "kubectl")
ETCD_UPSTREAM_BASE = "https://github.com/etcd-io/etcd/releases/download"
ETCD_BINARIES = ("etcd", "etcdctl")
CNI_PLUGINS_UPSTREAM_BASE = "https://github.com/containernetworking/plugins/releases/download"
# What the bridge CNI runs: the bridge itself, its address allocator, hostPort mappings, and
# the loopback interface every pod gets.
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
INSTALL_DIR = "/usr/local/bin"
# Under INSTALL_DIR, so the final rename never crosses a filesystem (and stays atomic).
STAGING_DIR = f"{INSTALL_DIR}/.vkp-staging"
SUMS_FILE = "SHA256SUMS"
# uname -m -> Kubernetes' name for the architecture.
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
PROBE_TIMEOUT = 5.0  # seconds, per request from the operator's machine
# curl on the node: bounded connect time, a stalled transfer (under 1 KiB/s for a minute) aborted
# rather than hanging the run, a few retries for transient failures.
_CURL = (
    "curl --fail --silent --show-error --location --proto =http,https "
    "--connect-timeout 10 --speed-limit 1024 --speed-time 60 --retry 3 --retry-delay 2"
)
FETCH_SUMS_TIMEOUT = 300.0
INSTALL_TIMEOUT = 3000.0

Log = Callable[[str], None]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# ELF e_machine values of the two architectures Kubernetes publishes here.
_ELF_MACHINES = {62: "amd64", 183: "arm64"}


# -- layouts: what a source serves, and where ------------------------------------------------


def provide_hint(version: str) -> str:
    return (
        "provide the artifacts one of two ways: a mirror with the dl.k8s.io layout "
        f"({{base}}/v{version}/bin/linux/{{amd64|arm64}}/kubeadm plus kubeadm.sha256, the same for "
        "kubelet and kubectl) as kubernetes.artifacts.source: https://mirror.example/k8s, or a "
        "directory on this machine holding kubeadm, kubelet, kubectl and their .sha256 files (or a "
        "SHA256SUMS) as kubernetes.artifacts.source: local:/path/to/dir. VKP_K8S_ARTIFACTS sets the "
        "same when the spec leaves it out. `vkp create-cluster --up-to runtime` stops before the "
        "Kubernetes phase on purpose; the phases before it stay as they are"
    )


def etcd_provide_hint(version: str) -> str:
    return (
        "provide the release one of three ways: a mirror with the etcd release layout "
        f"({{base}}/v{version}/etcd-v{version}-linux-{{amd64|arm64}}.tar.gz plus {{base}}/v{version}/"
        f"{SUMS_FILE}) as etcd.artifact: https://mirror.example/etcd, a directory on this machine "
        f"holding the tarball and {SUMS_FILE} as etcd.artifact: local:/path/to/dir, or etcd.artifact: "
        "package to install the distribution's etcd-server"
    )


def cni_plugins_provide_hint(version: str) -> str:
    return (
        "kubernetes.cni: bridge needs the standard CNI plugins (containernetworking/plugins) "
        f"v{version}: cni-plugins-linux-{{amd64|arm64}}-v{version}.tgz and its .sha256 (as published "
        f"beside it at {CNI_PLUGINS_UPSTREAM_BASE}/v{version}/), under cni-plugins/v{version}/ on the "
        "mirror or in the local: directory of kubernetes.artifacts.source (a local directory may "
        "also hold them flat)"
    )


@dataclass(frozen=True)
class Layout:
    """What a kind of source serves and where, and what its messages say about it.

    release_dir: a release's directory under the base, with {version} and {arch}.
    sums_file: one checksum file per release directory, or None for a <file>.sha256 beside each.
    upstream_dir: the release's directory under the upstream base, where it differs from a
    mirror's (a project's own release URLs rarely carry the product's name).
    """

    product: str
    upstream: str
    release_dir: str
    sums_file: str | None
    refetch: str  # where the operator fetches a damaged file again
    needed: str  # what cannot run when the artifacts are not there
    provide: Callable[[str], str]
    upstream_dir: str | None = None

    def sums_name(self, name: str) -> str:
        return self.sums_file or f"{name}.sha256"


K8S = Layout(
    product="Kubernetes",
    upstream=UPSTREAM_BASE,
    release_dir="v{version}/bin/linux/{arch}",
    sums_file=None,
    refetch="dl.k8s.io/release/v<version>/bin/linux/<arch>/",
    needed="The Kubernetes phase cannot run without kubeadm, kubelet and kubectl",
    provide=provide_hint,
)
ETCD = Layout(
    product="etcd",
    upstream=ETCD_UPSTREAM_BASE,
    release_dir="v{version}",
    sums_file=SUMS_FILE,
    refetch="github.com/etcd-io/etcd/releases/download/v<version>/",
    needed="The etcd phase cannot run without etcd and etcdctl",
    provide=etcd_provide_hint,
)


CNI = Layout(
    product="CNI plugins",
    upstream=CNI_PLUGINS_UPSTREAM_BASE,
    release_dir="cni-plugins/v{version}",
    upstream_dir="v{version}",
    sums_file=None,
    refetch="github.com/containernetworking/plugins/releases/download/v<version>/",
    needed="The bridge CNI (kubernetes.cni: bridge) cannot run without the CNI plugins",
    provide=cni_plugins_provide_hint,
)


def cni_plugins_tarball(version: str, arch: str) -> str:
    return f"cni-plugins-linux-{arch}-v{version}.tgz"


def cni_plugins_members() -> list[str]:
    """The paths of the plugins vkp installs inside the release tarball."""
    return [f"./{n}" for n in CNI_PLUGINS]


def etcd_tarball(version: str, arch: str) -> str:
    return f"etcd-v{version}-linux-{arch}.tar.gz"


def etcd_members(version: str, arch: str) -> list[str]:
    """The paths of etcd and etcdctl inside the release tarball."""
    return [f"etcd-v{version}-linux-{arch}/{n}" for n in ETCD_BINARIES]


# -- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactSource:
    """A parsed artifact source: kind is upstream, mirror or local; location a base URL or a dir."""

    kind: str
    location: str
    layout: Layout = field(default=K8S, repr=False)

    @classmethod
    def parse(cls, text: str, *, base_dir: Path | None = None, layout: Layout = K8S) -> ArtifactSource:
        """Parse the spec's value; ValueError saying what a valid one looks like.

        Old spellings keep working: a file:// URL or an absolute path is a local directory.
        A relative local path is taken relative to base_dir (the spec's directory), else cwd.
        """
        s = (text or "").strip()
        if s in ("", "upstream"):
            return cls("upstream", layout.upstream, layout)
        local: str | None = None
        if s.startswith("local:"):
            local = s[len("local:") :]
        elif s.startswith("file://"):
            local = urllib.parse.unquote(urllib.parse.urlsplit(s).path)
        elif s.startswith(("/", "~")):
            local = s
        if local is not None:
            if not local.strip():
                raise ValueError("local: needs a directory, e.g. local:/srv/k8s-artifacts")
            p = Path(local.strip()).expanduser()
            if not p.is_absolute():
                p = (base_dir or Path.cwd()) / p
            return cls("local", os.path.normpath(p), layout)
        parts = urllib.parse.urlsplit(s)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"must be upstream, a mirror URL (https://host/path, same layout as {layout.upstream}) "
                f"or local:/path/to/dir; got {s!r}"
            )
        if parts.username or parts.password:
            raise ValueError(
                "a mirror URL must not carry credentials (they would be stored with the spec and "
                "shown in logs); use a mirror that allows anonymous reads on the node network"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"a mirror URL is a base path without ?query or #fragment; got {s!r}")
        base = s.rstrip("/")
        return cls("upstream" if base == layout.upstream else "mirror", base, layout)

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    def describe(self) -> str:
        if self.kind == "upstream":
            return f"upstream ({self.location})"
        if self.kind == "mirror":
            return f"mirror {self.location}"
        return f"local directory {self.location} (on this machine)"

    def url(self, version: str, arch: str, name: str) -> str:
        """Where a remote source publishes name (name may end in .sha256)."""
        if not self.remote:
            raise ValueError("a local source has no URLs")
        layout = self.layout
        release = (layout.upstream_dir if self.kind == "upstream" else None) or layout.release_dir
        return f"{self.location}/{release.format(version=version, arch=arch)}/{name}"

    def directory(self, version: str, arch: str) -> Path:
        """The local directory holding the files: the upstream layout if present, else flat."""
        root = Path(self.location)
        nested = root / self.layout.release_dir.format(version=version, arch=arch)
        return nested if nested.is_dir() else root


def source_of(k8s: KubernetesSettings, *, base_dir: Path | None = None) -> ArtifactSource:
    try:
        return ArtifactSource.parse(k8s.artifacts.source, base_dir=base_dir)
    except ValueError as exc:
        raise ArtifactError(f"kubernetes.artifacts.source: {exc}") from None


def cni_plugins_source(k8s: KubernetesSettings, *, base_dir: Path | None = None) -> ArtifactSource:
    """The CNI plugins come from where the Kubernetes binaries do: upstream means their own
    project's releases; a mirror or local directory holds them under cni-plugins/."""
    k = source_of(k8s, base_dir=base_dir)
    if k.kind == "upstream":
        return ArtifactSource("upstream", CNI.upstream, CNI)
    return ArtifactSource(k.kind, k.location, CNI)


def etcd_source(etcd: EtcdSettings, *, base_dir: Path | None = None) -> ArtifactSource:
    """Where etcd comes from when etcd.artifact is not the distribution's package."""
    try:
        return ArtifactSource.parse(etcd.artifact, base_dir=base_dir, layout=ETCD)
    except ValueError as exc:
        raise ArtifactError(f"etcd.artifact: {exc}") from None


def node_arch(uname_m: str) -> str:
    arch = ARCHES.get(uname_m.strip())
    if arch is None:
        raise ArtifactError(
            f"the node's architecture {uname_m.strip()!r} has no Kubernetes binaries in the "
            f"{'/'.join(sorted(set(ARCHES.values())))} layout vkp installs from"
        )
    return arch


# -- checksums --------------------------------------------------------------------------------


def parse_checksum(text: str, name: str) -> str:
    """The SHA-256 of name from a .sha256 file ("<hex>" or "<hex>  name") or a SHA256SUMS file
    (one "<hex>  name" or "<hex> *name" per line). Lower-case hex; ValueError if absent."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) == 1 and _HEX64.fullmatch(lines[0]):
        return lines[0].lower()
    for ln in lines:
        parts = ln.split(None, 1)
        if len(parts) == 2 and _HEX64.fullmatch(parts[0]):
            listed = parts[1].strip().lstrip("*")
            if listed == name or listed.rsplit("/", 1)[-1] == name:
                return parts[0].lower()
    if len(lines) == 1 and _HEX64.fullmatch(lines[0].split(None, 1)[0]):
        raise ValueError(f"the checksum file names {lines[0].split(None, 1)[1]!r}, not {name!r}")
    raise ValueError(f"no SHA-256 for {name} in it (expected '<64 hex digits>' or '<hex>  {name}')")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(
    data: bytes, expected_sha256: str, *, name: str = "file", source: str = "", layout: Layout = K8S
) -> str:
    """The data's SHA-256 if it is expected_sha256; else ArtifactError naming both."""
    actual = sha256_hex(data)
    if actual != expected_sha256.lower():
        raise mismatch_error(name, source, expected_sha256.lower(), actual, layout=layout)
    return actual


def mismatch_error(
    name: str, source: str, expected: str, actual: str, *, where: str = "", layout: Layout = K8S
) -> ArtifactError:
    sums = layout.sums_file or ".sha256"
    return ArtifactError(
        f"{name} from {source or 'the artifact source'}{where} does not match its published checksum: "
        f"expected sha256 {expected}, got {actual}. Nothing was installed.",
        hint=f"the file is damaged or the source holds a different build than its {sums} says; "
        f"fetch the file and its {sums} again from the same release ({layout.refetch}) and re-run",
    )


# -- what is missing, and how to provide it --------------------------------------------------


def unavailable_error(source: ArtifactSource, version: str, what: str, reason: str) -> ArtifactError:
    layout = source.layout
    return ArtifactError(
        f"{layout.product} v{version} artifacts are not available: {what} could not be fetched from "
        f"{source.describe()}: {reason}. {layout.needed}, and nothing of it was installed.",
        hint=layout.provide(version),
    )


# curl's exit codes that mean "the source is not there" rather than "a file is bad".
_CURL_REASONS = {
    5: "the proxy's host name could not be resolved",
    6: "the host name could not be resolved (DNS)",
    7: "the connection was refused or there is no route to the host",
    28: "the connection timed out",
    35: "the TLS handshake failed",
    60: "the server's TLS certificate could not be verified",
}


def curl_reason(rc: int, stderr: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if rc == 22:
        m = re.search(r"error:?\s*(\d{3})", text)
        code = m.group(1) if m else "an HTTP error"
        return f"HTTP {code}" + (" (no such file there)" if code == "404" else "")
    if rc == 127:
        return "curl is not installed on the node (common.packages installs it)"
    known = _CURL_REASONS.get(rc)
    detail = f" ({text})" if text else ""
    return f"{known}{detail}" if known else f"curl exited {rc}{detail}"


# -- node side: commands and what they print ------------------------------------------------

# Positional pairs: name url. One line per file: "<name> <curl exit> <base64 of output>";
# stops at the first failure, since the source is then unreachable or incomplete.
_FETCH_SUMS_SCRIPT = (
    "set -u\n"
    'command -v curl >/dev/null 2>&1 || { echo "- 127 "; exit 0; }\n'
    'while [ "$#" -ge 2 ]; do\n'
    "  name=$1 url=$2; shift 2\n"
    f'  out=$({_CURL} --max-time 60 "$url" 2>&1); rc=$?\n'
    '  echo "$name $rc $(printf %s "$out" | base64 -w0)"\n'
    '  [ "$rc" -eq 0 ] || exit 0\n'
    "done\n"
)

# $1 download|staged, $2 install dir, $3 staging dir (staged) or "" (download makes its own),
# $4 members to unpack from each (verified) tar.gz and install instead of it, or "";
# then triples name url sha256 (url "-" when staged). Every file is fetched (or found staged)
# and verified before the first rename: a failure leaves the installed files as they were.
# Lines: "fetch-failed <name> <curl exit> <base64 stderr>", "missing <name>",
# "mismatch <name> <actual sha256>", "unpack-failed <name> <base64 stderr>",
# "unpacked <member name> <sha256>", "installed <name>".
_INSTALL_SCRIPT = (
    "set -u\n"
    "umask 077\n"
    "mode=$1 dir=$2 stage=$3 members=$4; shift 4\n"
    'if [ "$mode" = download ]; then\n'
    '  command -v curl >/dev/null 2>&1 || { echo "fetch-failed - 127 "; exit 10; }\n'
    '  stage=$(mktemp -d "$dir/.vkp-download.XXXXXX") || exit 3\n'
    "fi\n"
    "trap 'rm -rf -- \"$stage\"' EXIT\n"
    "names=\n"
    'while [ "$#" -ge 3 ]; do\n'
    "  name=$1 url=$2 sum=$3; shift 3\n"
    '  if [ "$mode" = download ]; then\n'
    f'    err=$({_CURL} --max-time 900 --output "$stage/$name" "$url" 2>&1); rc=$?\n'
    '    if [ "$rc" -ne 0 ]; then\n'
    '      echo "fetch-failed $name $rc $(printf %s "$err" | base64 -w0)"; exit 10\n'
    "    fi\n"
    '  elif [ ! -f "$stage/$name" ]; then echo "missing $name"; exit 12\n'
    "  fi\n"
    "  got=$(sha256sum < \"$stage/$name\" | cut -d' ' -f1)\n"
    '  if [ "$got" != "$sum" ]; then echo "mismatch $name $got"; exit 11; fi\n'
    '  names="$names $name"\n'
    "done\n"
    'if [ -n "$members" ]; then\n'
    '  mkdir "$stage/.unpacked" || exit 6\n'
    "  for name in $names; do\n"
    '    err=$(tar -xzf "$stage/$name" -C "$stage/.unpacked" --no-same-owner --no-same-permissions '
    "$members 2>&1) || {\n"
    '      echo "unpack-failed $name $(printf %s "$err" | base64 -w0)"; exit 13; }\n'
    "  done\n"
    "  names=\n"
    "  for m in $members; do\n"
    "    b=${m##*/}\n"
    '    mv -f -- "$stage/.unpacked/$m" "$stage/$b" || exit 6\n'
    "    got=$(sha256sum < \"$stage/$b\" | cut -d' ' -f1)\n"
    '    echo "unpacked $b $got"\n'
    '    names="$names $b"\n'
    "  done\n"
    "fi\n"
    "for name in $names; do\n"
    '  chown root:root "$stage/$name" && chmod 0755 "$stage/$name" || exit 4\n'
    "done\n"
    "for name in $names; do\n"
    '  mv -f -- "$stage/$name" "$dir/$name" || exit 5\n'
    '  echo "installed $name"\n'
    "done\n"
)


def fetch_sums_command(source: ArtifactSource, version: str, arch: str, names: Iterable[str]) -> Cmd:
    args: list[str] = []
    for n in names:
        args += [n, source.url(version, arch, source.layout.sums_name(n))]
    return Cmd.shell(_FETCH_SUMS_SCRIPT, *args)


def parse_fetched_sums(
    result: Result, source: ArtifactSource, version: str, arch: str, names: Iterable[str]
) -> dict[str, str]:
    """{name: published sha256} from fetch_sums_command's output; ArtifactError on any failure."""
    wanted = list(names)
    got: dict[str, str] = {}
    for line in result.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
            continue
        name, rc = parts[0], int(parts[1])
        out = base64.b64decode(parts[2].strip() or b"").decode(errors="replace") if len(parts) > 2 else ""
        target = source.layout.sums_name(name) if name != "-" else "the checksum files"
        url = source.url(version, arch, target) if name != "-" else source.location
        if rc != 0:
            raise unavailable_error(source, version, f"{target} ({url})", curl_reason(rc, out))
        try:
            got[name] = parse_checksum(out, name)
        except ValueError as exc:
            raise ArtifactError(
                f"{target} from {source.describe()} ({url}) is not a checksum file: {exc}",
                hint=(
                    f"a mirror must publish {source.layout.sums_file} in each release directory, as "
                    f"{source.layout.upstream} does"
                    if source.layout.sums_file
                    else "a mirror must publish <file>.sha256 next to each file, as dl.k8s.io does"
                ),
            ) from None
    missing = [n for n in wanted if n not in got]
    if missing:
        raise ArtifactError(
            f"reading the checksums of {', '.join(missing)} from {source.describe()} on the node gave "
            f"no answer (exit {result.exit_status}): {(result.stderr or result.stdout).strip()[-300:]}"
        )
    return got


def install_command(
    mode: str,
    plan: Mapping[str, tuple[str, str]],
    *,
    install_dir: str = INSTALL_DIR,
    unpack: Sequence[str] = (),
) -> Cmd:
    """mode download: plan is {name: (url, sha256)}; staged: {name: ("-", sha256)} in STAGING_DIR.

    unpack: paths inside the plan's tar.gz files; those members, under their base names, are
    installed instead of the archives (unpacked only after the archives verified).
    """
    if mode not in ("download", "staged"):
        raise ValueError(f"mode is download or staged, not {mode!r}")
    args: list[str] = [mode, install_dir, STAGING_DIR if mode == "staged" else "", " ".join(unpack)]
    for name, (url, digest) in plan.items():
        args += [name, url, digest]
    return Cmd.shell(_INSTALL_SCRIPT, *args)


def unpacked_sums(result: Result) -> dict[str, str]:
    """{member name: sha256} of what install_command unpacked (empty without unpack)."""
    out = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "unpacked":
            out[parts[1]] = parts[2]
    return out


def check_install(
    result: Result, source: ArtifactSource, version: str, arch: str, expected: Mapping[str, str], node: str
) -> list[str]:
    """The names install_command installed; ArtifactError naming file, source and checksums."""
    installed: list[str] = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "installed" and len(parts) == 2:
            installed.append(parts[1])
        elif parts[0] == "mismatch" and len(parts) == 3:
            raise mismatch_error(
                parts[1],
                source.describe(),
                expected.get(parts[1], "?"),
                parts[2],
                where=f" on {node}",
                layout=source.layout,
            )
        elif parts[0] == "unpack-failed" and len(parts) >= 2:
            err = base64.b64decode(parts[2]).decode(errors="replace") if len(parts) > 2 else ""
            raise ArtifactError(
                f"{parts[1]} from {source.describe()} matched its checksum but could not be unpacked on "
                f"{node}: {err.strip()[-300:]}. Nothing was installed.",
                hint=f"the archive does not hold what a {source.layout.product} v{version} release holds; "
                "check the source's tarball against the upstream release",
            )
        elif parts[0] == "fetch-failed" and len(parts) >= 3:
            name = parts[1]
            err = base64.b64decode(parts[3]).decode(errors="replace") if len(parts) > 3 else ""
            url = source.url(version, arch, name) if source.remote and name != "-" else source.location
            raise unavailable_error(source, version, f"{name} ({url})", curl_reason(int(parts[2]), err))
        elif parts[0] == "missing" and len(parts) == 2:
            raise ArtifactError(
                f"{parts[1]} was pushed to {node}:{STAGING_DIR} but is not there any more; nothing was "
                "installed",
                hint="re-run: the files are pushed again",
            )
    if result.exit_status != 0:
        raise ArtifactError(
            f"installing {', '.join(expected)} on {node} failed (exit {result.exit_status}); nothing was "
            f"installed: {(result.stderr or result.stdout).strip()[-300:]}"
        )
    return installed


# -- local sources: verified on this machine -------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    name: str
    path: Path
    sha256: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _published_sum(directory: Path, name: str) -> tuple[str, Path]:
    """(sha256, the file it came from): name.sha256 first, then SHA256SUMS."""
    own = directory / f"{name}.sha256"
    sums = directory / SUMS_FILE
    for candidate in (own, sums):
        if candidate.is_file():
            try:
                return parse_checksum(candidate.read_text(errors="replace"), name), candidate
            except ValueError as exc:
                if candidate == own or not own.is_file():
                    raise ArtifactError(f"{candidate}: {exc}") from None
    raise FileNotFoundError(f"neither {own.name} nor {SUMS_FILE}")


def _elf_arch(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None  # not an ELF binary: nothing to tell from it
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"machine {machine}")


def verify_local(
    source: ArtifactSource, version: str, arch: str, names: Iterable[str] = BINARIES
) -> dict[str, LocalFile]:
    """Every file of the set present, with a published checksum it matches, for arch.

    Checked here, on the operator's machine, before anything is pushed: a missing or damaged
    file stops the step with nothing installed anywhere.
    """
    directory = source.directory(version, arch)
    if not directory.is_dir():
        raise unavailable_error(source, version, "the directory", f"{directory} does not exist")
    out: dict[str, LocalFile] = {}
    for name in names:
        path = directory / name
        if not path.is_file():
            raise unavailable_error(source, version, name, f"{path} does not exist")
        try:
            expected, sums_file = _published_sum(directory, name)
        except FileNotFoundError as exc:
            raise unavailable_error(
                source, version, f"the checksum of {name}", f"{exc} in {directory}"
            ) from None
        actual = sha256_file(path)
        if actual != expected:
            raise mismatch_error(name, f"{source.describe()} ({path}, checksum from {sums_file.name})",
                                 expected, actual, layout=source.layout)  # fmt: skip
        built_for = _elf_arch(path)
        if built_for is not None and built_for != arch:
            raise ArtifactError(
                f"{path} is built for {built_for}, but the node is {arch}; nothing was installed",
                hint=f"put the {arch} binaries under {source.location}/v{version}/bin/linux/{arch}/",
            )
        out[name] = LocalFile(name, path, actual)
    return out


# -- the preflight on the operator's machine -------------------------------------------------


def _fetch_status(url: str, timeout: float) -> None:
    """Raise urllib/OS errors if url does not answer 2xx to HEAD (or GET where HEAD is refused)."""
    for method in ("HEAD", "GET"):
        req = urllib.request.Request(url, method=method, headers={"User-Agent": "vkp"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                if method == "GET":
                    resp.read(4096)
                return
        except urllib.error.HTTPError as exc:
            if method == "HEAD" and exc.code in (405, 501):
                continue
            raise


def _url_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (" (no such file there)" if exc.code == 404 else f" {exc.reason}")
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, socket.gaierror):
        return f"the host name could not be resolved (DNS: {inner.strerror or inner})"
    if isinstance(inner, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(inner, TimeoutError | socket.timeout):
        return "the connection timed out"
    if isinstance(inner, ssl.SSLError):
        return f"TLS failed ({inner})"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return str(inner)


def probe_source(spec: KubernetesSettings, log: Log, *, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast, from this machine, when the artifact source cannot serve the set.

    Remote: one request (HEAD) for kubeadm's .sha256 of the pinned version (amd64, then arm64
    if amd64 is absent), with a short timeout, and only to the configured source. Local: the
    directory holds every file and a checksum for each (hashing waits for the step). Raises
    ArtifactError (exit code 12) saying what is missing and how to provide it.
    """
    source = source_of(spec)
    version = spec.version
    if source.remote:
        _probe_remote(source, version, log, timeout)
    else:
        _probe_local(source, version, log)
    if spec.cni == "bridge" and not source.remote:
        _probe_local_cni_plugins(cni_plugins_source(spec), spec.cni_plugins_version, log)
    tarballs = spec.artifacts.image_tarballs
    if tarballs and not Path(tarballs).expanduser().is_dir():
        raise ArtifactError(
            f"kubernetes.artifacts.image_tarballs: {tarballs} is not a directory on this machine",
            hint="point it at a directory of image tarballs (*.tar, from `ctr images export` or "
            "`docker save`), or remove it to pull images from kubernetes.artifacts.image_repository",
        )


def _probe_remote(source: ArtifactSource, version: str, log: Log, timeout: float) -> None:
    last: tuple[str, BaseException] | None = None
    for arch in ("amd64", "arm64"):
        url = source.url(version, arch, "kubeadm.sha256")
        # Each request is short (timeout, cut to what is left of the run); a stop is seen
        # between them, and a request's failure after a stop is reported as the stop.
        stop.check(f"the artifact source ({url})")
        try:
            _fetch_status(url, max(0.5, stop.remaining(timeout) or timeout))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            stop.check(f"the artifact source ({url})")
            last = (url, exc)
            if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
                continue
            break
        else:
            log(f"artifacts: {source.describe()} serves Kubernetes v{version} ({url} answers)")
            return
    assert last is not None
    raise unavailable_error(
        source, version, f"kubeadm.sha256 ({last[0]}, checked from this machine)", _url_reason(last[1])
    )


def _probe_local(source: ArtifactSource, version: str, log: Log) -> None:
    root = Path(source.location)
    if not root.is_dir():
        raise unavailable_error(source, version, "the directory", f"{root} does not exist")
    first_missing: list[str] | None = None
    for arch in ("amd64", "arm64"):
        directory = source.directory(version, arch)
        missing = []
        for name in BINARIES:
            if not (directory / name).is_file():
                missing.append(name)
            elif not ((directory / f"{name}.sha256").is_file() or (directory / SUMS_FILE).is_file()):
                missing.append(f"{name}.sha256 (or {SUMS_FILE})")
        if not missing:
            log(f"artifacts: {source.describe()} holds kubeadm, kubelet, kubectl and their checksums")
            return
        first_missing = first_missing or missing
    raise unavailable_error(
        source, version, ", ".join(first_missing or []), f"not in {source.directory(version, 'amd64')}"
    )


def _probe_local_cni_plugins(source: ArtifactSource, version: str, log: Log) -> None:
    first_missing: list[str] | None = None
    for arch in ("amd64", "arm64"):
        directory = source.directory(version, arch)
        tarball = cni_plugins_tarball(version, arch)
        missing = []
        if not (directory / tarball).is_file():
            missing.append(tarball)
        elif not ((directory / f"{tarball}.sha256").is_file() or (directory / SUMS_FILE).is_file()):
            missing.append(f"{tarball}.sha256")
        if not missing:
            log(f"artifacts: {source.describe()} holds {tarball} and its checksum")
            return
        first_missing = first_missing or missing
    raise unavailable_error(
        source, version, ", ".join(first_missing or []), f"not in {source.directory(version, 'amd64')}"
    )
