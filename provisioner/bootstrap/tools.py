"""`vkp ssh` and `vkp etcdctl`: an operator's way onto the nodes with the cluster's own trust.

Both connect with the cluster's SSH key and only the node's pinned host key, exactly as the
bootstrap does. etcdctl runs on the first etcd node, against every member, with vkp's etcd
client certificate: the certificate, its key and the etcd CA travel on the command's standard
input into a private temporary directory (tmpfs where the node has one), which is removed when
etcdctl exits. They never appear in an argument list or in a log, and nothing stays behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Sequence
from typing import Any

import paramiko

from provisioner.bootstrap.pki import load_pki
from provisioner.bootstrap.steps.etcd import url
from provisioner.errors import NotFound, ProvisionerError, SSHError
from provisioner.ssh.commands import Cmd
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState, NodeRecord

ETCD_CLIENT_PORT = 2379

# Shell, for scripts that get etcd client files on their standard input (etcdctl_bundle: each
# after a line "#vkp-file NAME"): they are unpacked into $c, a directory only the user can read,
# in memory where the node has it, and removed when the script exits however it ends, after the
# script's own cleanup(), which it defines before this.
UNPACK_CLIENT_FILES = r"""
umask 077
base=/tmp
for b in "${XDG_RUNTIME_DIR:-}" /dev/shm; do
  if [ -n "$b" ] && [ -d "$b" ] && [ -w "$b" ]; then base=$b; break; fi
done
c=$(mktemp -d "$base/vkp-etcdctl.XXXXXX")
trap 'rm -rf -- "$c"; cleanup' EXIT
trap 'exit 130' INT TERM HUP
awk -v d="$c" '/^#vkp-file /{f = d "/" $2; next} {print > f}'
"""

# $1: endpoints; the rest: etcdctl's arguments. Standard input: the client files.
_ETCDCTL_SCRIPT = (
    "set -eu\ncleanup() { :; }\n"
    + UNPACK_CLIENT_FILES
    + r"""eps=$1
shift
set +e
ETCDCTL_API=3 etcdctl --endpoints="$eps" --cacert="$c/ca.crt" \
  --cert="$c/client.crt" --key="$c/client.key" "$@"
rc=$?
exit $rc
"""
)


def _ssh_settings(state: ClusterState) -> tuple[str, int]:
    saved: dict[str, Any] = {}
    with contextlib.suppress(NotFound):
        saved = state.load_spec_dict().get("ssh") or {}
    return str(saved.get("user") or "vkp"), int(saved.get("port") or 22)


def _node(state: ClusterState, node: str) -> NodeRecord:
    nodes = state.nodes
    if node not in nodes:
        known = ", ".join(sorted(nodes)) or "none yet"
        raise NotFound("node", node, hint=f"nodes of cluster {state.name}: {known}")
    record = nodes[node]
    if not record.address:
        raise SSHError(f"node {node} has no address recorded yet", hint="re-run create-cluster to finish it")
    return record


def connection(state: ClusterState, node: str) -> Connection:
    """An unopened connection to node with the cluster's key and pinned host keys."""
    record = _node(state, node)
    user, port = _ssh_settings(state)
    key_path, _ = state.ssh_keypair()
    assert record.address is not None
    return Connection(
        record.name, record.address, user, key_path, state.known_hosts_path, port=port, connect_deadline=30
    )


def _transport(conn: Connection) -> paramiko.Transport:
    # The interactive paths need a raw channel (a pty, streaming), which Connection.run does not
    # offer; the transport is still the one opened with the pinned key.
    transport = conn._transport()
    return transport


def _stream(chan: paramiko.Channel, *, stdin: bytes | None, forward_stdin: bool) -> int:
    """Copy the channel's stdout/stderr to ours as it arrives; the remote exit status."""

    def feed() -> None:
        # OSError: the remote command stopped reading, or our stdin cannot be read (closed, or
        # replaced by a test harness); either way the remote side gets end-of-file.
        try:
            if stdin is not None:
                chan.sendall(stdin)
            elif forward_stdin:
                while chunk := os.read(sys.stdin.fileno(), 65536):
                    chan.sendall(chunk)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()

    threading.Thread(target=feed, daemon=True).start()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    while True:
        select.select([chan], [], [], 1.0)
        got = False
        while chan.recv_ready():
            out.write(chan.recv(65536))
            got = True
        while chan.recv_stderr_ready():
            err.write(chan.recv_stderr(65536))
            got = True
        if got:
            out.flush()
            err.flush()
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
    return chan.recv_exit_status()


@contextlib.contextmanager
def _raw_terminal() -> Iterator[None]:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _interactive(chan: paramiko.Channel) -> int:
    size = shutil.get_terminal_size()
    chan.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns, height=size.lines)
    chan.invoke_shell()

    def resize(*_: object) -> None:
        s = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            chan.resize_pty(width=s.columns, height=s.lines)

    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        with _raw_terminal():
            stdin_fd, out = sys.stdin.fileno(), sys.stdout.buffer
            while True:
                ready, _, _ = select.select([chan, stdin_fd], [], [])
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    out.write(data)
                    out.flush()
                if stdin_fd in ready:
                    data = os.read(stdin_fd, 4096)
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
    finally:
        signal.signal(signal.SIGWINCH, previous)
    return chan.recv_exit_status()


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def ssh(name: str, node: str, command: Sequence[str] = ()) -> int:
    """Open a shell on node (with a pty, when stdin is a terminal) or run command there with its
    output streamed; the remote exit status. The command is given to the remote shell as ssh
    does: its words joined by spaces."""
    return ssh_in(ClusterState.load(name), node, command)


def ssh_in(state: ClusterState, node: str, command: Sequence[str] = ()) -> int:
    """ssh() for a cluster state already loaded."""
    name = state.name
    conn = connection(state, node).open()
    try:
        chan = _transport(conn).open_session(timeout=30)
        try:
            if not command:
                if not _stdin_is_tty():
                    raise ProvisionerError(
                        "no terminal for an interactive shell",
                        hint=f"give a command: vkp ssh {name} {node} -- CMD",
                    )
                return _interactive(chan)
            chan.exec_command(" ".join(command))
            return _stream(chan, stdin=None, forward_stdin=not _stdin_is_tty())
        finally:
            chan.close()
    finally:
        conn.close()


def etcd_members(state: ClusterState) -> list[NodeRecord]:
    members = sorted((n for n in state.nodes.values() if n.role == "etcd"), key=lambda n: n.name)
    if not members or any(not m.address for m in members):
        raise NotFound("etcd nodes", state.name, hint="create the cluster (at least --up-to etcd) first")
    return members


def etcdctl_bundle(ca: bytes, cert: bytes, key: bytes) -> bytes:
    """What the remote script reads from stdin: the three files, each after its name line."""
    parts = [(b"ca.crt", ca), (b"client.crt", cert), (b"client.key", key)]
    return b"".join(b"#vkp-file " + n + b"\n" + d.rstrip(b"\n") + b"\n" for n, d in parts)


def etcdctl_command(endpoints: Sequence[str], args: Sequence[str]) -> Cmd:
    return Cmd.shell(_ETCDCTL_SCRIPT, ",".join(endpoints), *args)


def etcdctl(name: str, args: Sequence[str]) -> int:
    """Run `etcdctl ARGS` (API v3) on the first etcd node against all members with vkp's client
    certificate; output streamed, the exit status returned."""
    return etcdctl_in(ClusterState.load(name), args)


def etcdctl_in(state: ClusterState, args: Sequence[str]) -> int:
    """etcdctl() for a cluster state already loaded."""
    members = etcd_members(state)
    pki = load_pki(state)
    try:
        bundle = etcdctl_bundle(
            pki.cert_pem("etcd-ca"), pki.cert_pem("vkp-etcd-client"), pki.key_pem("vkp-etcd-client")
        )
    except FileNotFoundError as exc:
        raise NotFound(
            "etcd client certificate",
            str(exc.filename),
            hint="the etcd phase makes it: vkp create-cluster ... --up-to etcd",
        ) from None
    endpoints = [url(m.address or "", ETCD_CLIENT_PORT) for m in members]
    cmd = etcdctl_command(endpoints, args)
    conn = connection(state, members[0].name).open()
    try:
        chan = _transport(conn).open_session(timeout=30)
        try:
            chan.exec_command(cmd.render())
            return _stream(chan, stdin=bundle, forward_stdin=False)
        finally:
            chan.close()
    finally:
        conn.close()
