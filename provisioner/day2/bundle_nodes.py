"""What a support bundle takes from the nodes, over vkp's own SSH connections.

Each node is reached with the cluster's key and only its pinned host key (bootstrap/tools.py's
connection, as `vkp ssh` does), and only read from: journal excerpts of the services its role
runs, the end of cloud-init's output, and on Kubernetes nodes what kubeadm left (its flags and
kubelet configuration, the static pod manifests, any configuration an interrupted run left
behind, the journal's record of vkp's kubeadm runs). `kubectl get` runs on the first master
that answered, with the admin kubeconfig kubeadm wrote there, as the drain of a resize does.

Everything is bounded (lines and bytes per excerpt, seconds per command), and everything goes
through the bundle's scrubber before it is kept. A node that cannot be reached, or a command
that fails, is written down with why; it never stops the others.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Protocol

from provisioner import stop
from provisioner.bootstrap.steps.kubernetes import settings as k8s
from provisioner.errors import ProvisionerError
from provisioner.ssh.commands import Cmd, Result, sudo
from provisioner.state import NodeRecord

COMMAND_SECONDS = 60.0
CONNECT_SECONDS = 15.0  # a VM that is gone must not hold the bundle for minutes
FILE_BYTES = 256 * 1024  # per configuration file
# The services whose journals explain a role's failures.
UNITS = {"etcd": ("etcd",), "master": ("containerd", "kubelet"), "worker": ("containerd", "kubelet")}
CLOUD_INIT_OUTPUT = "/var/log/cloud-init-output.log"
KUBELET_DIR = "/var/lib/kubelet"
KUBEADM_FILES = (
    f"{KUBELET_DIR}/kubeadm-flags.env",
    f"{KUBELET_DIR}/config.yaml",
    k8s.INIT_DONE,
    k8s.JOIN_DONE,
    # Removed as soon as kubeadm has read them; one is there only after an interrupted run,
    # which is when it matters. Its token is scrubbed like every other.
    k8s.INIT_CONFIG,
    k8s.JOIN_CONFIG,
)
# What `kubectl get` the bundle keeps: its file under kubectl/, and the arguments.
KUBECTL_GETS = {
    "nodes.txt": ("get", "nodes", "-o", "wide"),
    "pods.txt": ("get", "pods", "--all-namespaces", "-o", "wide"),
    "events.txt": ("get", "events", "--all-namespaces", "-o", "wide"),
    "kubeadm-config.yaml": ("get", "configmap", "kubeadm-config", "--namespace", "kube-system", "-o", "yaml"),
}

# $1 unit, $2 lines, $3 bytes: this boot's last lines of the unit, at most that many bytes.
_JOURNAL = 'journalctl --no-pager -o short-iso -b -u "$1" -n "$2" 2>&1 | tail -c "$3"'
# $1 bytes, then paths: each existing file after a "#vkp-file PATH" line, cut at that size.
_FILES = r"""
max=$1
shift
for f in "$@" /etc/kubernetes/manifests/*.yaml; do
  [ -f "$f" ] || continue
  printf '#vkp-file %s\n' "$f"
  head -c "$max" -- "$f"
  echo
done
"""
# $1 bytes, $2 path: its last bytes; exit 3 when there is no such file (written down as skipped).
_TAIL = 'if [ -f "$2" ]; then tail -c "$1" -- "$2"; else exit 3; fi'
ABSENT = 3
# The directories that exist of those given, listed.
_LS = 'for d in "$@"; do if [ -d "$d" ]; then ls -la -- "$d"; fi; done'
# sudo writes every command it runs to the journal: when kubeadm ran, and with what arguments.
_KUBEADM_RUNS = (
    'journalctl --no-pager -o short-iso -b SYSLOG_IDENTIFIER=sudo 2>&1 | grep -F kubeadm | tail -n "$1"'
)


class Remote(Protocol):
    """What is used of a Connection (tests stand in for it)."""

    become: bool

    def open(self) -> Remote: ...

    def run(
        self, cmd: Cmd, *, check: bool = True, timeout: float = ..., stdin: bytes | None = None,
        retry_safe: bool = False,
    ) -> Result: ...  # fmt: skip

    def close(self) -> None: ...


class Sink(Protocol):
    """Where collected files and what went wrong go (the bundle)."""

    def add(self, path: str, content: str | bytes, source: str) -> None: ...

    def fail(self, what: str, source: str, reason: str) -> None: ...

    def skip(self, what: str, reason: str) -> None: ...


Log = Callable[[str], None]


def journal_cmd(unit: str, lines: int, max_bytes: int) -> Cmd:
    return Cmd.shell(_JOURNAL, unit, str(lines), str(max_bytes))


def files_cmd(paths: tuple[str, ...], max_bytes: int = FILE_BYTES) -> Cmd:
    return Cmd.shell(_FILES, str(max_bytes), *paths)


def split_files(stdout: str) -> dict[str, str]:
    """{path: content} from _FILES's output."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("#vkp-file "):
            current = line.removeprefix("#vkp-file ").rstrip("\n")
            out[current] = ""
        elif current is not None:
            out[current] += line
    return out


class NodeCollector:
    """One node's share of the bundle, over one connection."""

    def __init__(self, node: NodeRecord, conn: Remote, sink: Sink, *, lines: int, max_bytes: int) -> None:
        self.node, self.conn, self.sink = node, conn, sink
        self.lines, self.max_bytes = lines, max_bytes
        self.where = f"nodes/{node.name}"

    def _run(self, what: str, cmd: Cmd, *, absent_ok: bool = False) -> Result | None:
        """cmd as root; None (and the failure written down) when it could not be run at all.
        absent_ok: exit ABSENT means what it reads is not there, which is skipped, not failed."""
        source = f"{self.node.name}: {cmd.masked()}"
        try:
            res = self.conn.run(sudo(cmd) if self.conn.become else cmd, check=False, timeout=COMMAND_SECONDS)
        except ProvisionerError as exc:
            if stop.is_stop(exc):
                raise
            self.sink.fail(what, source, exc.message)
            return None
        if absent_ok and res.exit_status == ABSENT:
            self.sink.skip(what, "not on the node")
            return None
        if not res.ok:
            said = (res.stderr or res.stdout).strip()[-500:]
            self.sink.fail(what, source, f"exited {res.exit_status}" + (f": {said}" if said else ""))
        return res

    def journals(self) -> None:
        for unit in UNITS.get(self.node.role, ()):
            cmd = journal_cmd(unit, self.lines, self.max_bytes)
            res = self._run(f"{self.node.name} journal of {unit}", cmd)
            if res is not None and (res.stdout or res.ok):
                self.sink.add(
                    f"{self.where}/journal-{unit}.log", res.stdout, f"{self.node.name}: {cmd.masked()}"
                )

    def cloud_init(self) -> None:
        cmd = Cmd.shell(_TAIL, str(self.max_bytes), CLOUD_INIT_OUTPUT)
        res = self._run(f"{self.node.name} {CLOUD_INIT_OUTPUT}", cmd, absent_ok=True)
        if res is not None and res.ok:
            self.sink.add(
                f"{self.where}/cloud-init-output.log", res.stdout, f"{self.node.name}:{CLOUD_INIT_OUTPUT}"
            )

    def kubeadm(self) -> None:
        """What kubeadm left on a Kubernetes node, and when vkp ran it (sudo's journal lines)."""
        listing = Cmd.shell(_LS, k8s.K8S_DIR, k8s.VKP_DIR, k8s.MANIFESTS_DIR)
        res = self._run(f"{self.node.name} kubeadm's directories", listing)
        if res is not None and res.stdout:
            self.sink.add(f"{self.where}/kubeadm/ls.txt", res.stdout, f"{self.node.name}: {listing.masked()}")
        cmd = files_cmd(KUBEADM_FILES)
        res = self._run(f"{self.node.name} kubeadm's files", cmd)
        if res is not None and res.ok:
            for path, content in split_files(res.stdout).items():
                # The manifests keep their directory's name: kube-apiserver.yaml alone says less.
                parent = posixpath.basename(posixpath.dirname(path))
                name = f"{parent}-{posixpath.basename(path)}"
                self.sink.add(f"{self.where}/kubeadm/{name}", content, f"{self.node.name}:{path}")
        runs = Cmd.shell(_KUBEADM_RUNS, "100")
        res = self._run(f"{self.node.name} journal of kubeadm runs", runs)
        if res is not None and res.ok:
            self.sink.add(
                f"{self.where}/kubeadm/runs.log",
                res.stdout or "(no kubeadm run in this boot's journal)\n",
                f"{self.node.name}: {runs.masked()}",
            )

    def kubectl(self) -> None:
        for file, args in KUBECTL_GETS.items():
            cmd = k8s.kubectl_cmd(*args, "--request-timeout=20s")
            res = self._run(f"kubectl {' '.join(args[:2])} (on {self.node.name})", cmd)
            if res is not None and res.ok:
                self.sink.add(f"kubectl/{file}", res.stdout, f"{self.node.name}: {cmd.masked()}")
