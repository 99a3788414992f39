"""`vkp etcd snapshot`: a consistent etcd snapshot, checked, on the operator's machine.

The snapshot is taken through one healthy member with `etcdctl snapshot save` run on that
member's node, as `vkp etcdctl` runs etcdctl: vkp's etcd client certificate, its key and the
etcd CA reach the node on standard input into a private temporary directory (tmpfs where there
is one), removed when the command exits; they never appear in an argument list or a log. The
snapshot file itself waits in a 0700 directory of the login user under /var/tmp (a snapshot is
as large as the database, too large for tmpfs) until it is copied here over SFTP, then that
directory is removed.

On the node, `snapshot status` (etcdutl's where the node has etcdutl, etcd 3.5 and later;
etcdctl's otherwise, as Debian's etcd-client 3.4 has only etcdctl) reads the file back: its
hash, revision and key count. Here, the copy's SHA-256 must equal the one computed on the node.
The file is kept 0600 in a 0700 directory with two files beside it: NAME.sha256 (sha256sum's
format) and NAME.json, the metadata a restore checks (vkp's cluster id, the etcd cluster and
member it came from, etcd's version, revision, keys).

A snapshot holds every Secret of the cluster: it is never world-readable, and `vkp state export`
leaves the snapshots directory out (it is large, and a backup belongs in backup storage).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from provisioner.bootstrap.etcd_client import EtcdClient, EtcdError
from provisioner.bootstrap.pki import PKI, load_pki
from provisioner.bootstrap.steps.etcd import CLIENT_PORT, url
from provisioner.bootstrap.tools import UNPACK_CLIENT_FILES, etcdctl_bundle
from provisioner.errors import ExitCode, NotFound, ProvisionerError, SSHError
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState, atomic_write, private_dir

Log = Callable[[str], None]

SNAPSHOTS_DIR = "snapshots"  # in the cluster's state directory
METADATA_FORMAT = 1
SNAPSHOT_TIMEOUT = 900.0  # etcd writes a few hundred MB/s; the default 2 GB quota in seconds
REMOTE_PREFIX = "/var/tmp/vkp-etcd-snapshot."
# Default names: the UTC time the snapshot was taken (sortable), a counter on a collision.
_DEFAULT_NAME = re.compile(r"\d{8}T\d{6}Z(-\d+)?\.db")


class SnapshotInvalid(ProvisionerError):
    """A snapshot file that cannot be trusted as it is: missing sidecar files, a checksum that
    does not match, metadata that does not read, or etcd's own check failing."""

    exit_code = ExitCode.SPEC


class TargetExists(ProvisionerError):
    """--file names a file that exists: the command line did not say to replace it (exit 2)."""

    exit_code = ExitCode.USAGE


class SnapshotRefused(ProvisionerError):
    """A sound snapshot that is not this cluster's: restoring it would replace this cluster's
    data with another's."""

    exit_code = ExitCode.PREFLIGHT


# $1: the member's client URL. Standard input: the CA, the client certificate and its key, each
# after a line "#vkp-file NAME". Prints "dir", "sha256", "status" and "endpoint" lines.
_SNAPSHOT_SCRIPT = (
    r"""set -eu
d=""
ok=no
cleanup() { if [ "$ok" != yes ] && [ -n "$d" ]; then rm -rf -- "$d"; fi; }
"""
    + UNPACK_CLIENT_FILES
    + r"""ep=$1
# What a run killed before its clean-up left: this user's, over an hour old.
find /var/tmp -maxdepth 1 -name 'vkp-etcd-snapshot.*' -user "$(id -u)" -mmin +60 \
  -exec rm -rf -- {} + 2>/dev/null || true
d=$(mktemp -d /var/tmp/vkp-etcd-snapshot.XXXXXX)
ctl() {
  ETCDCTL_API=3 etcdctl --endpoints="$ep" --cacert="$c/ca.crt" --cert="$c/client.crt" \
    --key="$c/client.key" "$@"
}
ctl snapshot save "$d/snapshot.db" >&2
if command -v etcdutl >/dev/null 2>&1; then
  st=$(etcdutl snapshot status -w json "$d/snapshot.db")
else
  st=$(ETCDCTL_API=3 etcdctl snapshot status -w json "$d/snapshot.db")
fi
es=$(ctl endpoint status -w json)
echo "dir $d"
echo "sha256 $(sha256sum < "$d/snapshot.db" | cut -d' ' -f1)"
echo "status $(printf %s "$st" | tr -d '\n')"
echo "endpoint $(printf %s "$es" | tr -d '\n')"
ok=yes
"""
)


def snapshot_command(endpoint: str) -> Cmd:
    return Cmd.shell(_SNAPSHOT_SCRIPT, endpoint)


def cert_bundle(pki: PKI) -> bytes:
    """What the node's script reads on stdin (the format `vkp etcdctl` uses)."""
    try:
        return etcdctl_bundle(
            pki.cert_pem("etcd-ca"), pki.cert_pem("vkp-etcd-client"), pki.key_pem("vkp-etcd-client")
        )
    except FileNotFoundError as exc:
        raise NotFound(
            "etcd client certificate",
            str(exc.filename),
            hint="the etcd phase makes it: vkp create-cluster ... --up-to etcd",
        ) from None


@dataclass(frozen=True)
class Taken:
    """What the node said about the snapshot it wrote."""

    remote_dir: str
    sha256: str
    hash: int
    revision: int
    keys: int
    size: int
    etcd_cluster_id: str
    member_id: str
    etcd_version: str


def parse_taken(node: str, stdout: str) -> Taken:
    lines = dict(ln.split(" ", 1) for ln in stdout.splitlines() if " " in ln)
    try:
        remote_dir = lines["dir"].strip()
        sha = lines["sha256"].strip()
        status = json.loads(lines["status"])
        endpoints = json.loads(lines["endpoint"])
        ep = endpoints[0]["Status"] if isinstance(endpoints, list) else endpoints["Status"]
        header = ep["header"]
        taken = Taken(
            remote_dir=remote_dir,
            sha256=sha,
            hash=int(status["hash"]),
            revision=int(status["revision"]),
            keys=int(status["totalKey"]),
            size=int(status.get("totalSize", 0)),
            etcd_cluster_id=format(int(header["cluster_id"]), "x"),
            member_id=format(int(header["member_id"]), "x"),
            etcd_version=str(ep.get("version", "")),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SnapshotInvalid(
            f"{node}: etcd's answer about the snapshot does not read ({type(exc).__name__}: {exc}); "
            f"output: {stdout[-400:]!r}",
            hint="run `vkp etcdctl NAME -- endpoint status -w json` to see what etcd says",
        ) from None
    if not remote_dir.startswith(REMOTE_PREFIX) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise SnapshotInvalid(f"{node}: unexpected snapshot location or checksum: {remote_dir!r} {sha!r}")
    if taken.keys <= 0 or taken.revision <= 0:
        raise SnapshotInvalid(
            f"{node}: etcd reports the snapshot empty (revision {taken.revision}, {taken.keys} keys)",
            hint="a cluster's etcd always holds keys; check `vkp etcdctl NAME -- endpoint status`",
        )
    return taken


class NodeLink(Protocol):
    """What taking a snapshot needs of a node's connection."""

    name: str

    def run(
        self, cmd: Cmd, *, check: bool = ..., timeout: float = ..., stdin: bytes | None = ...
    ) -> Result: ...

    def download(self, remote: str, into: IO[bytes]) -> None: ...

    def close(self) -> None: ...


class _SSHLink:
    """A node's pinned SSH connection, with SFTP for the file (streamed, never held in memory)."""

    def __init__(self, state: ClusterState, node: str) -> None:
        from provisioner.bootstrap.tools import connection

        self.name = node
        self._conn = connection(state, node).open()

    def run(
        self, cmd: Cmd, *, check: bool = True, timeout: float = 300.0, stdin: bytes | None = None
    ) -> Result:
        return self._conn.run(cmd, check=check, timeout=timeout, stdin=stdin)

    def download(self, remote: str, into: IO[bytes]) -> None:
        import paramiko

        try:
            sftp = paramiko.SFTPClient.from_transport(self._conn._transport())
            if sftp is None:
                raise SSHError(f"{self.name}: the SSH server offers no SFTP")
            try:
                sftp.getfo(remote, into)
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(
                f"{self.name}: copying {remote} failed: {exc}",
                hint="the node needs an SFTP server (openssh-sftp-server); run the snapshot again",
            ) from None

    def close(self) -> None:
        self._conn.close()


# -- choosing the member ----------------------------------------------------------------------


def _healthy(endpoint: str, pki: PKI) -> bool:
    client = EtcdClient(
        endpoint, pki.path("etcd-ca"), pki.path("vkp-etcd-client"), pki.key_path("vkp-etcd-client")
    )
    try:
        return client.health()
    except EtcdError:
        return False


def choose_member(state: ClusterState, pki: PKI, log: Log) -> tuple[str, str]:
    """(node name, client URL) of the first member, by name, that answers healthy."""
    from provisioner.bootstrap.tools import etcd_members

    tried = []
    for m in etcd_members(state):
        endpoint = url(m.address or "", CLIENT_PORT)
        if _healthy(endpoint, pki):
            return m.name, endpoint
        log(f"{m.name}: not healthy at {endpoint}; trying the next member")
        tried.append(m.name)
    raise ProvisionerError(
        f"no etcd member of cluster {state.name} answers healthy ({', '.join(tried)}): a snapshot "
        "needs a member with a leader",
        hint=f"vkp etcdctl {state.name} -- endpoint health; `journalctl -u etcd` on the members",
    )


# -- files here -------------------------------------------------------------------------------


def snapshots_dir(state: ClusterState) -> Path:
    return state.path / SNAPSHOTS_DIR


def sidecars(path: Path) -> tuple[Path, Path]:
    """(checksum file, metadata file) of a snapshot file."""
    return path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")


def _default_target(directory: Path, now: dt.datetime) -> Path:
    stem = now.strftime("%Y%m%dT%H%M%SZ")
    target, n = directory / f"{stem}.db", 1
    while target.exists():
        n += 1
        target = directory / f"{stem}-{n}.db"
    return target


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _partial(target: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """A 0600 temporary file beside target; removed unless the block renamed it."""
    tmp = target.with_name(f".{target.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield tmp, f
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove the oldest snapshots vkp named in directory beyond the newest keep (with their
    checksum and metadata files); the snapshot files removed. Files of other names are left."""
    if keep < 1 or not directory.is_dir():
        return []
    ours = sorted(
        (p for p in directory.iterdir() if _DEFAULT_NAME.fullmatch(p.name) and p.is_file()),
        key=lambda p: (p.stat().st_mtime_ns, p.name),
    )
    gone = ours[: max(0, len(ours) - keep)]
    for p in gone:
        for f in (p, *sidecars(p)):
            f.unlink(missing_ok=True)
    return gone


# -- taking one -------------------------------------------------------------------------------


def take_snapshot(
    name: str,
    log: Log,
    *,
    file: Path | None = None,
    keep: int | None = None,
    link: Callable[[ClusterState, str], NodeLink] | None = None,
) -> dict[str, Any]:
    """Take a snapshot of cluster name's etcd and keep it here; the result document.

    file: where to write it (default <state>/snapshots/<UTC time>.db); never an existing file.
    keep: afterwards, remove the oldest snapshots of the default directory beyond this many.
    link: how to reach a node (tests pass a scripted one).
    """
    started = time.monotonic()
    state = ClusterState.load(name)
    if file is not None and (file.exists() or file.is_symlink()):
        raise TargetExists(
            f"{file} already exists; vkp does not replace a file with a snapshot",
            hint="name another file with --file, or leave --file out for the default directory",
        )
    pki = load_pki(state)
    bundle = cert_bundle(pki)
    member, endpoint = choose_member(state, pki, log)
    default_dir = snapshots_dir(state)
    if file is None:
        directory = private_dir(default_dir)
        target = _default_target(directory, dt.datetime.now(dt.UTC))
    else:
        target = file.absolute()
        if not target.parent.is_dir():
            raise NotFound("directory", str(target.parent), hint="create it first, or pick another --file")
    node = (link or _SSHLink)(state, member)
    try:
        log(f"{member}: etcdctl snapshot save through {endpoint}")
        r = node.run(snapshot_command(endpoint), check=True, timeout=SNAPSHOT_TIMEOUT, stdin=bundle)
        taken = parse_taken(member, r.stdout)
        try:
            log(f"{member}: copying the snapshot ({taken.size} bytes) to {target}")
            with _partial(target) as (tmp, f):
                node.download(f"{taken.remote_dir}/snapshot.db", f)
                f.flush()
                os.fsync(f.fileno())
                got = sha256_file(tmp)
                if got != taken.sha256:
                    raise SnapshotInvalid(
                        f"the copy of the snapshot from {member} has SHA-256 {got}, the node's file "
                        f"{taken.sha256}: it changed on the way",
                        hint="run the snapshot again",
                    )
                os.replace(tmp, target)
        finally:
            node.run(Cmd("rm", "-rf", "--", taken.remote_dir), check=False, timeout=60)
    finally:
        node.close()
    taken_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    meta = {
        "format": METADATA_FORMAT,
        "file": target.name,
        "cluster": state.name,
        "cluster_id": state.cluster_id,
        "etcd_cluster_id": taken.etcd_cluster_id,
        "member": member,
        "member_id": taken.member_id,
        "endpoint": endpoint,
        "etcd_version": taken.etcd_version,
        "revision": taken.revision,
        "keys": taken.keys,
        "hash": taken.hash,
        "size": target.stat().st_size,
        "sha256": taken.sha256,
        "taken_at": taken_at,
    }
    sums, meta_file = sidecars(target)
    atomic_write(sums, f"{taken.sha256}  {target.name}\n", 0o600)
    atomic_write(meta_file, json.dumps(meta, indent=2) + "\n", 0o600)
    pruned = prune(default_dir, keep) if keep is not None else []
    for p in pruned:
        log(f"removed the older snapshot {p.name} (--keep {keep})")
    return {
        "cluster": state.name,
        "path": str(target),
        "sha256": taken.sha256,
        "revision": taken.revision,
        "keys": taken.keys,
        "size": meta["size"],
        "member": member,
        "etcd_version": taken.etcd_version,
        "checksum_file": str(sums),
        "metadata_file": str(meta_file),
        "pruned": [str(p) for p in pruned],
        "seconds": round(time.monotonic() - started, 2),
    }


# -- reading one back (restore) ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    path: Path
    sha256: str
    metadata: dict[str, Any]

    @property
    def revision(self) -> int:
        return int(self.metadata.get("revision", 0))


def verify_snapshot(path: Path, state: ClusterState) -> Snapshot:
    """The snapshot at path, after checking that it is whole and this cluster's.

    SnapshotInvalid (exit 3): no such file, its checksum or metadata file missing or unreadable,
    or its SHA-256 not the one they record. SnapshotRefused (exit 5): another cluster's.
    """
    if not path.is_file():
        raise NotFound("snapshot file", str(path), hint=f"list them: ls {snapshots_dir(state)}")
    sums, meta_file = sidecars(path)
    missing = [p.name for p in (sums, meta_file) if not p.is_file()]
    if missing:
        raise SnapshotInvalid(
            f"{path}: {' and '.join(missing)} missing beside it; vkp restores only a snapshot whose "
            "checksum and metadata (which cluster it is of) it can check",
            hint="copy the snapshot together with its .sha256 and .json files, as `vkp etcd "
            "snapshot` wrote them",
        )
    try:
        recorded = sums.read_text().split()[0]
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, IndexError) as exc:
        raise SnapshotInvalid(f"{sums.name} or {meta_file.name} does not read: {exc}") from None
    actual = sha256_file(path)
    if actual != recorded or actual != meta.get("sha256"):
        raise SnapshotInvalid(
            f"{path} has SHA-256 {actual}, but {sums.name} records {recorded} and {meta_file.name} "
            f"{meta.get('sha256')}: the file is not the snapshot that was taken (changed or cut short)",
            hint="restore from another copy of the snapshot, or another snapshot",
        )
    if meta.get("cluster_id") != state.cluster_id:
        raise SnapshotRefused(
            f"{path} is a snapshot of cluster {meta.get('cluster')!r} (id {meta.get('cluster_id')}), "
            f"not of cluster {state.name!r} (id {state.cluster_id}); restoring it would replace "
            f"{state.name}'s data with another cluster's",
            hint=f"restore one of {state.name}'s own snapshots: ls {snapshots_dir(state)}",
        )
    return Snapshot(path=path.absolute(), sha256=actual, metadata=meta)
