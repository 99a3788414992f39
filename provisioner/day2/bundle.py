"""`vkp support-bundle`: one tar.gz to attach to a bug report, with every secret scrubbed.

What it holds (under one top directory, listed in its index.json with where each file came from
and what could not be collected, and why):

- logs/: vkp's run logs of the cluster (<state>/logs/*.log);
- state/: the saved spec, state.json (nodes, phases), the playbooks' resume records, the
  generated inventory and pinned host keys (public), and a listing of the state directory
  (names, modes and sizes only: keys and certificates themselves never go in);
- describe.json: `describe-cluster -o json` (needs_repair included), certs.json: each
  certificate's expiry (`vkp certs`);
- nodes/NODE/: journal excerpts of the services the node's role runs (this boot, the last
  --lines lines, bounded in bytes), the end of cloud-init's output, and on Kubernetes nodes
  what kubeadm left there (day2/bundle_nodes.py);
- kubectl/: `kubectl get` of nodes, pods and events, and kubeadm's ClusterConfiguration.

Every file passes logs.mask() (the one scrubber, the run logs' too): the vCenter password,
bootstrap tokens, PEM private keys and the secret fields of kubeconfigs and kubeadm
configurations; on top, the literal lines of every private key in the state directory, so a key
that somehow went in without its PEM frame is still caught. The file is written 0600.

It works on whatever exists: a create that failed half way gives a bundle of what was made, and
an unreachable node is written down in the index, not a failure of the command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import logs, stop
from provisioner.day2.bundle_nodes import CONNECT_SECONDS, UNITS, NodeCollector, Remote
from provisioner.errors import ProvisionerError
from provisioner.state import ClusterState, NodeRecord, atomic_write

Log = Callable[[str], None]
LINES = 2000  # journal lines per service
EXCERPT_BYTES = 2 * 1024 * 1024  # at most, per journal excerpt
PARALLEL = 4  # nodes collected at once: SSH waits, not CPU
ROLE_ORDER = {"etcd": 0, "master": 1, "worker": 2}
# Kept from the state directory as they are (scrubbed): none holds a secret of its own.
STATE_FILES = ("spec.yaml", "state.json", "hosts.yaml", "bootstrap.json", "ssh/known_hosts")


class BundleError(ProvisionerError):
    """The bundle cannot be written where it was asked to go."""


@dataclass
class Bundle:
    """The files collected so far, each scrubbed as it comes in, and what could not be."""

    root: str  # the directory every member is under
    secrets: frozenset[str] = frozenset()  # literal values to scrub on top of logs.mask's own
    members: dict[str, bytes] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scrub(self, text: str) -> str:
        return logs.mask(text, also=self.secrets)

    def add(self, path: str, content: str | bytes, source: str) -> None:
        text = content.decode(errors="replace") if isinstance(content, bytes) else content
        data = self.scrub(text).encode()
        with self._lock:
            self.members[path] = data
            self.files.append({"path": path, "source": source, "bytes": len(data)})

    def add_json(self, path: str, doc: Any, source: str) -> None:
        self.add(path, json.dumps(doc, indent=2, default=str) + "\n", source)

    def fail(self, what: str, source: str, reason: str) -> None:
        with self._lock:
            self.failed.append({"what": what, "source": source, "reason": self.scrub(reason)})

    def skip(self, what: str, reason: str) -> None:
        with self._lock:
            self.skipped.append({"what": what, "reason": reason})

    def tar(self, index: dict[str, Any]) -> bytes:
        """The tar.gz: index.json first, then every file in the order collected."""
        out = io.BytesIO()
        now = time.time()
        index_data = (json.dumps(index, indent=2) + "\n").encode()
        with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for path, data in [("index.json", index_data), *sorted(self.members.items(), key=_member_order)]:
                info = tarfile.TarInfo(f"{self.root}/{path}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def _member_order(item: tuple[str, bytes]) -> str:
    return item[0]


# -- what to scrub ---------------------------------------------------------------------------


def key_lines(state_dir: Path) -> set[str]:
    """The body lines of every private key under the state directory (PKI keys, the SSH login
    key, the nodes' host keys). Short lines (a base64 tail such as "Kw==") are left out: they
    could be anywhere in ordinary text, and a key's frame is masked whole anyway."""
    found: set[str] = set()
    for p in state_dir.rglob("*"):
        if not p.is_file() or p.name.endswith((".pub", ".crt")) or p.suffix in (".json", ".yaml", ".log"):
            continue
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        if "PRIVATE KEY-----" not in text:
            continue
        found.update(
            line.strip() for line in text.splitlines() if len(line.strip()) >= 16 and "-----" not in line
        )
    return found


def _passwords(spec: Mapping[str, Any], env: Mapping[str, str]) -> set[str]:
    """The vCenter password from the variable the saved spec names (whatever it is called) and
    the default one; logs.mask adds every other *PASSWORD* variable of the environment."""
    cred = ((spec.get("vsphere") or {}).get("credentials") or {}) if isinstance(spec, dict) else {}
    names = {str(cred.get("password_env") or ""), "VKP_VSPHERE_PASSWORD"}
    return {env[n] for n in names if n and env.get(n)}


# -- the local state -------------------------------------------------------------------------


def _listing(state_dir: Path) -> str:
    lines = []
    for p in sorted(state_dir.rglob("*")):
        with contextlib.suppress(OSError):
            st = p.lstat()
            size = "" if stat.S_ISDIR(st.st_mode) else str(st.st_size)
            lines.append(f"{stat.filemode(st.st_mode)} {size:>9} {p.relative_to(state_dir)}")
    return "\n".join(lines) + "\n"


def collect_local(state: ClusterState, bundle: Bundle, env: Mapping[str, str], log: Log) -> None:
    """The run logs, the state's files, describe-cluster and the certificates' expiries."""
    from provisioner.bootstrap.pki import list_certs
    from provisioner.cluster import describe_cluster

    log_dir = state.path / "logs"
    run_logs = sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []
    for p in run_logs:
        bundle.add(f"logs/{p.name}", p.read_bytes(), str(p))
    if not run_logs:
        bundle.skip("run logs", f"none in {log_dir}")
    for rel in STATE_FILES:
        p = state.path / rel
        if p.is_file():
            bundle.add(f"state/{rel.replace('/', '-')}", p.read_bytes(), str(p))
        elif rel == "spec.yaml":
            bundle.skip("the saved spec", "not saved: the first run never got a vCenter session")
    for p in sorted((state.path / "playbooks").glob("*.json")):
        bundle.add(f"state/playbooks/{p.name}", p.read_bytes(), str(p))
    bundle.add("state/files.txt", _listing(state.path), f"listing of {state.path}")
    log(f"{len(run_logs)} run log(s) and the state's files")
    for path, what, fn in (
        ("describe.json", "vkp describe-cluster -o json", lambda: describe_cluster(state.name, env)),
        ("certs.json", "vkp certs -o json", lambda: list_certs(state.name)),
    ):
        try:
            bundle.add_json(path, fn(), what)
        except ProvisionerError as exc:
            if stop.is_stop(exc):
                raise
            bundle.fail(path, what, exc.message)
    log("describe-cluster and the certificates' expiries")


# -- the nodes -------------------------------------------------------------------------------


def _connect(state: ClusterState, node: NodeRecord) -> Remote:
    from provisioner.bootstrap import tools

    conn = tools.connection(state, node.name)
    conn.connect_deadline = CONNECT_SECONDS
    return conn.open()


def collect_nodes(
    state: ClusterState,
    bundle: Bundle,
    log: Log,
    *,
    lines: int,
    connect: Callable[[ClusterState, NodeRecord], Remote] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every node's share, PARALLEL at a time; {node: {role, address, reachable, reason}}."""
    nodes = sorted(state.nodes.values(), key=lambda n: (ROLE_ORDER.get(n.role, 9), n.name))
    kubernetes = state.phase("kubernetes") is not None
    report: dict[str, dict[str, Any]] = {}
    reachable: dict[str, Remote] = {}
    lock = threading.Lock()

    def one(node: NodeRecord) -> None:
        entry: dict[str, Any] = {"role": node.role, "address": node.address, "reachable": False}
        report[node.name] = entry
        try:
            conn = (connect or _connect)(state, node)
        except (ProvisionerError, OSError) as exc:
            if stop.is_stop(exc):
                raise
            why = exc.message if isinstance(exc, ProvisionerError) else f"{type(exc).__name__}: {exc}"
            entry["reason"] = bundle.scrub(why)
            log(f"{node.name}: unreachable, recorded in the index: {why.splitlines()[0]}")
            return
        with lock:
            reachable[node.name] = conn
        entry["reachable"] = True
        units = ", ".join(UNITS.get(node.role, ()))
        log(f"{node.name}: collecting journals ({units}) and cloud-init's output")
        collector = NodeCollector(node, conn, bundle, lines=lines, max_bytes=EXCERPT_BYTES)
        collector.journals()
        collector.cloud_init()
        if kubernetes and node.role in ("master", "worker"):
            collector.kubeadm()

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            for f in [pool.submit(one, n) for n in nodes]:
                f.result()
        if not kubernetes:
            bundle.skip("kubectl get nodes, pods, events", "the kubernetes phase never ran")
        else:
            _kubectl(nodes, reachable, bundle, log, lines)
    finally:
        for conn in reachable.values():
            conn.close()
    return report


def _kubectl(
    nodes: Iterable[NodeRecord], reachable: Mapping[str, Remote], bundle: Bundle, log: Log, lines: int
) -> None:
    masters = [n for n in nodes if n.role == "master"]
    first = next((n for n in masters if n.name in reachable), None)
    if first is None:
        why = "no master answered SSH" if masters else "the cluster has no master"
        bundle.fail("kubectl get nodes, pods, events", "a master's admin kubeconfig", why)
        return
    log(f"{first.name}: kubectl get nodes, pods, events")
    NodeCollector(first, reachable[first.name], bundle, lines=lines, max_bytes=EXCERPT_BYTES).kubectl()


# -- the command -----------------------------------------------------------------------------


def default_output(name: str, now: dt.datetime | None = None) -> Path:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"vkp-support-{name}-{stamp}.tar.gz")


def _check_output(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise BundleError(
            f"{path} already exists; a support bundle never overwrites a file",
            hint="remove it, or give another --output",
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BundleError(f"--output {path}: directory {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BundleError(
            f"--output {path}: directory {parent} is not writable", hint="pick a directory you can write"
        )


def support_bundle(
    name: str,
    log: Log,
    *,
    output: Path | None = None,
    lines: int = LINES,
    env: Mapping[str, str] | None = None,
    connect: Callable[[ClusterState, NodeRecord], Remote] | None = None,
) -> dict[str, Any]:
    """Collect the bundle of cluster NAME into output (a new file, 0600); what it holds, where."""
    env = os.environ if env is None else env
    started = time.monotonic()
    state = ClusterState.load(name)
    target = output or default_output(name)
    _check_output(target)
    spec: dict[str, Any] = {}
    if state.has_spec():
        with contextlib.suppress(ProvisionerError, ValueError):
            spec = state.load_spec_dict()
    now = dt.datetime.now(dt.UTC)
    bundle = Bundle(
        root=default_output(name, now).name.removesuffix(".tar.gz"),
        secrets=frozenset(_passwords(spec, env) | key_lines(state.path)),
    )
    log(f"support bundle of cluster {name} ({len(state.nodes)} node(s)) into {target}")
    collect_local(state, bundle, env, log)
    nodes = collect_nodes(state, bundle, log, lines=lines, connect=connect)
    stop.check("the support bundle")
    index = {
        "cluster": name,
        "cluster_id": state.cluster_id,
        "created_at": now.isoformat(),
        "vkp_version": _version(),
        "limits": {"journal_lines": lines, "excerpt_bytes": EXCERPT_BYTES},
        "scrubbed": "vCenter password, bootstrap tokens, PEM private keys, kubeconfig and kubeadm "
        "secret fields (client-key-data, token, ...), the state's private key lines",
        "nodes": nodes,
        "files": sorted(bundle.files, key=lambda f: f["path"]),
        "failed": bundle.failed,
        "skipped": bundle.skipped,
    }
    data = bundle.tar(index)
    atomic_write(target, data, 0o600)
    seconds = time.monotonic() - started
    unreachable = sorted(n for n, e in nodes.items() if not e["reachable"])
    log(f"wrote {target} ({len(data)} bytes, {len(bundle.files) + 1} files) in {seconds:.1f}s")
    return {
        "cluster": name,
        "path": str(target.resolve()),
        "bytes": len(data),
        "seconds": round(seconds, 2),
        "files": len(bundle.files) + 1,
        "nodes": {
            n: "collected" if e["reachable"] else f"unreachable: {e['reason']}" for n, e in nodes.items()
        },
        "unreachable": unreachable,
        "failed": bundle.failed,
        "skipped": bundle.skipped,
    }


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("vkp")
    except metadata.PackageNotFoundError:
        return None
