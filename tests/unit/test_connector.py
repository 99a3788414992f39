"""The connector against paramiko's own server side, in-process on loopback.

The fake stands in only for what the lab cannot produce on demand: a node presenting the
wrong host key, sshd appearing after the first attempts, a connection dropping mid-command.
Commands it receives run in a real local shell, so quoting, exit codes, stdin and put()'s
remote script are exercised for real.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import stat
import subprocess
import threading
import time

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from provisioner.errors import CommandFailed, HostKeyMismatch, SSHError, Timeout
from provisioner.ssh.commands import Cmd, Secret
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState


class _Handler(paramiko.ServerInterface):
    def __init__(self, server: FakeSSHD) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.server.authorized.get_base64()
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.server.commands.append(command.decode())
        threading.Thread(target=self.server.execute, args=(channel, command.decode()), daemon=True).start()
        return True


class FakeSSHD:
    def __init__(self, host_key: paramiko.PKey, authorized: paramiko.PKey, port: int = 0) -> None:
        self.host_key, self.authorized = host_key, authorized
        self.commands: list[str] = []
        self.drop_next_exec = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            self.transports.append(t)
            threading.Thread(target=self._handshake, args=(t,), daemon=True).start()

    def _handshake(self, t: paramiko.Transport) -> None:
        # The client hangs up mid-handshake on purpose in the mismatch test.
        with contextlib.suppress(EOFError, OSError, paramiko.SSHException):
            t.start_server(server=_Handler(self))

    def execute(self, chan: paramiko.Channel, command: str) -> None:
        if self.drop_next_exec:
            self.drop_next_exec = False
            time.sleep(0.2)
            chan.get_transport().close()
            return
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)

        def feed() -> None:
            assert proc.stdin is not None
            while data := chan.recv(65536):
                try:
                    proc.stdin.write(data)
                except BrokenPipeError:
                    break
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()

        def pump(src, send) -> None:
            while data := src.read1(65536):
                send(data)

        threads = [
            threading.Thread(target=feed, daemon=True),
            threading.Thread(target=pump, args=(proc.stdout, chan.sendall), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, chan.sendall_stderr), daemon=True),
        ]
        for t in threads:
            t.start()
        rc = proc.wait()
        threads[1].join()
        threads[2].join()
        chan.send_exit_status(rc if rc >= 0 else 128 - rc)  # killed by a signal, as sh reports it
        chan.close()

    def close(self) -> None:
        # close() alone does not wake the thread blocked in accept(), which keeps the port
        # listening (and answering with an SSH banner) for the rest of the test session.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for t in self.transports:
            t.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path):
    st = ClusterState.create_or_load("demo", home=tmp_path / "state")
    key_path, _ = st.ssh_keypair()
    host_pem, _ = st.host_key("n1")
    st.write_known_hosts([("n1", "127.0.0.1")])
    host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_pem))
    login = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    return st, host_key, login


@pytest.fixture
def sshd(cluster):
    _, host_key, login = cluster
    server = FakeSSHD(host_key, login)
    yield server
    server.close()


def connection(st: ClusterState, port: int, **kw) -> Connection:
    key_path, _ = st.ssh_keypair()
    return Connection("n1", "127.0.0.1", "vkp", key_path, st.known_hosts_path, port=port, become=False, **kw)


def test_pinned_key_accepted_and_run(cluster, sshd):
    st, *_ = cluster
    with connection(st, sshd.port) as c:
        r = c.run(Cmd("printf", "%s|", "a b", "$(id)", "it's"))
        assert r.exit_status == 0 and r.stdout == "a b|$(id)|it's|"
        r2 = c.run(Cmd.shell('cat; echo err >&2; exit 3'), stdin=b"in", check=False)
        assert (r2.exit_status, r2.stdout, r2.stderr) == (3, "in", "err\n")
        assert c.round_trips == 2 and len(sshd.transports) == 1  # one connection, reused


def test_command_failed_carries_masked_command(cluster, sshd, caplog):
    st, *_ = cluster
    caplog.set_level(logging.DEBUG)
    with connection(st, sshd.port) as c, pytest.raises(CommandFailed) as ei:
        c.run(Cmd.shell('echo "bad token" >&2; exit 7', Secret("tok-S3CRET")))
    err = ei.value
    assert err.exit_status == 7 and err.host == "n1" and "bad token" in str(err)
    assert "tok-S3CRET" not in str(err) and "********" in err.command
    assert "tok-S3CRET" in sshd.commands[0]  # the node did get the real value
    assert "tok-S3CRET" not in caplog.text


def test_large_output_on_both_streams_does_not_stall(cluster, sshd):
    st, *_ = cluster
    with connection(st, sshd.port) as c:
        r = c.run(Cmd.shell("head -c 3000000 /dev/zero >&2; head -c 3000000 /dev/zero"), timeout=30)
        assert len(r.stdout) == 3_000_000 and len(r.stderr) == 3_000_000


def test_run_timeout(cluster, sshd):
    st, *_ = cluster
    with connection(st, sshd.port) as c, pytest.raises(Timeout, match="did not finish"):
        c.run(Cmd("sleep", "5"), timeout=0.5)


def test_other_host_key_is_a_mismatch_and_not_retried(cluster):
    st, _, login = cluster
    other_pem, _ = st.host_key("another-node")
    impostor = FakeSSHD(paramiko.Ed25519Key.from_private_key(io.StringIO(other_pem)), login)
    try:
        c = connection(st, impostor.port, connect_deadline=20)
        started = time.monotonic()
        with pytest.raises(HostKeyMismatch) as ei:
            c.open()
        assert time.monotonic() - started < 5
        assert c.connect_attempts == 1
        msg = str(ei.value)
        entry = paramiko.HostKeys(str(st.known_hosts_path)).lookup("n1")
        assert entry is not None
        pinned = entry["ssh-ed25519"]
        presented = impostor.host_key
        assert "n1" in msg and "127.0.0.1" in msg
        assert pinned.fingerprint in msg and presented.fingerprint in msg
        assert "SHA256:" in msg and ei.value.hint
        assert impostor.commands == []
    finally:
        impostor.close()


def test_unpinned_host_is_refused_without_connecting(cluster, tmp_path):
    st, *_ = cluster
    key_path, _ = st.ssh_keypair()
    c = Connection("n9", "127.0.0.9", "vkp", key_path, st.known_hosts_path, become=False)
    with pytest.raises(SSHError, match="no pinned host key"):
        c.open()
    assert c.connect_attempts == 0


def test_refused_then_server_appears(cluster):
    st, host_key, login = cluster
    port = free_port()
    servers: list[FakeSSHD] = []
    timer = threading.Timer(1.5, lambda: servers.append(FakeSSHD(host_key, login, port=port)))
    timer.start()
    try:
        c = connection(st, port, connect_deadline=20)
        started = time.monotonic()
        with c:
            assert c.run(Cmd("echo", "up")).stdout == "up\n"
        assert c.connect_attempts > 1
        assert 1.4 < time.monotonic() - started < 20
    finally:
        timer.join()
        for s in servers:
            s.close()


def test_nothing_listening_times_out_at_the_deadline(cluster):
    st, *_ = cluster
    c = connection(st, free_port(), connect_deadline=1.5)
    started = time.monotonic()
    with pytest.raises(Timeout, match="did not answer SSH within"):
        c.open()
    assert c.connect_attempts > 1 and time.monotonic() - started < 10


def test_dropped_connection_is_rerun_only_when_retry_safe(cluster, sshd):
    st, *_ = cluster
    with connection(st, sshd.port) as c:
        sshd.drop_next_exec = True
        with pytest.raises(SSHError, match="not re-run"):
            c.run(Cmd("echo", "once"))
        sshd.drop_next_exec = True
        assert c.run(Cmd("echo", "again"), retry_safe=True).stdout == "again\n"
        assert len(sshd.transports) == 3
        # A connection found dead before a command is sent is reopened regardless.
        sshd.transports[-1].close()
        time.sleep(0.2)
        assert c.run(Cmd("echo", "fresh")).stdout == "fresh\n"


def test_put_atomic_mode_and_skip_when_same(cluster, sshd, tmp_path):
    st, *_ = cluster
    target = tmp_path / "dir with space" / "etcd.conf"
    target.parent.mkdir()
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    with connection(st, sshd.port) as c:
        assert c.put(b"one\n", str(target), mode=0o640, owner=me) is True
        assert target.read_bytes() == b"one\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o640
        trips = c.round_trips
        assert c.put(b"one\n", str(target), mode=0o640, owner=me) is False
        assert c.round_trips == trips + 1
        os.chmod(target, 0o644)  # drifted mode is repaired even with the same content
        assert c.put(b"one\n", str(target), mode=0o640) is True
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
        assert c.put(b"two\n", str(target), mode=0o600) is True
        assert target.read_bytes() == b"two\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o600
        assert c.get(str(target)) == b"two\n"
        big = os.urandom(600_000)
        assert c.put(big, str(target), mode=0o600) is True
        trips = c.round_trips
        assert c.put(big, str(target), mode=0o600) is False
        assert c.round_trips == trips + 1  # large: checked first, content not sent again
        assert c.get(str(target)) == big
        assert sorted(p.name for p in target.parent.iterdir()) == ["etcd.conf"]
        with pytest.raises(CommandFailed):
            c.get(str(tmp_path / "missing"))
        with pytest.raises(CommandFailed):
            c.put(b"x", str(tmp_path / "no-such-dir" / "f"), mode=0o600)


def test_an_auth_timeout_is_retried_a_refused_key_is_not() -> None:
    from paramiko.ssh_exception import AuthenticationException

    from provisioner.ssh.connector import is_transient

    # What paramiko raises when sshd does not answer the key in time (a busy or restarting node).
    assert is_transient(AuthenticationException("Authentication timeout."))
    # ...or closes the connection before answering it (a busy sshd under MaxStartups).
    assert is_transient(AuthenticationException("Authentication failed: transport shut down or saw EOF"))
    assert not is_transient(AuthenticationException("Authentication failed."))
