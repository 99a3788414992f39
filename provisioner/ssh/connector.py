"""SSH to one node with paramiko: pinned host keys only, one reusable connection per node.

Trust: only the node's entry in the cluster's known_hosts (written from the host keys vkp
generated and handed to the VM) is accepted; an unknown host is rejected (RejectPolicy) and
nothing is ever added. A different key raises HostKeyMismatch and is never retried: waiting
does not make an impostor legitimate.

Reachability: a freshly booted VM refuses connections, or drops them mid-banner, until sshd
is up. open() retries exactly those failures through the one retry helper, up to a deadline.

Deadlines and stops: every command has a deadline (commands.COMMAND_TIMEOUT unless the caller
gives a longer one; there is no "wait forever"), and every wait here (connecting, sending stdin,
waiting for the exit status) also ends within stop.POLL seconds when the run stops (SIGINT,
SIGTERM, the run's --timeout), raising what stop.check raises. An open connection registers for
the stop: its socket is shut down, so whatever paramiko is blocked on returns at once, and the
abandoned commands are left to the node.

Files: put() and get() run over the exec channel (content on stdin / stdout) rather than
SFTP, because SFTP writes as the login user while the targets (/etc/..., keys owned by root
or etcd) need root; streaming through `sudo sh` writes the temp file next to the target
directly, with no staging copy of a secret anywhere, in one round trip.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from provisioner import stop
from provisioner.errors import CommandFailed, HostKeyMismatch, SSHError, Timeout
from provisioner.retry import retry_call
from provisioner.ssh.commands import COMMAND_TIMEOUT, Cmd, Result, bounded, sudo

log = logging.getLogger(__name__)
# paramiko logs every refused banner while sshd starts as an ERROR with a traceback; vkp
# reports connection attempts itself, so keep paramiko's from reaching the terminal.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
}
_READ_CHUNK = 65536
# paramiko's sendall slices what is left after every packet (32 KiB): handed a whole kubelet
# (100 MB) at once, that copying is quadratic and held uploads to about 2 MB/s. Fed in pieces
# of this size, the copies stay small.
_SEND_CHUNK = 256 * 1024
# Above this size put() asks for the remote checksum before sending, so an unchanged large
# file (a binary) is not transferred; below it one round trip both checks and writes.
_CHECK_FIRST_BYTES = 256 * 1024
# put()'s deadline grows with the file: the ordinary command deadline plus the time the content
# takes at this rate, far below any network vkp runs on (a 100 MB kubelet gets 400 s), so only a
# stalled transfer reaches it.
_MIN_UPLOAD_RATE = 1024 * 1024  # bytes per second
# paramiko's own per-phase waits while connecting, each further capped by the connect deadline.
_TCP_CONNECT_TIMEOUT = 10.0
_HANDSHAKE_TIMEOUT = 15.0

# $1 target, $2 octal mode, $3 owner ("" to leave it), $4 sha256 of the content, $5 check|write.
# mktemp makes the temp file 0600 next to the target, so the rename is atomic and the content
# is never readable by others, whatever its final mode.
_PUT_SCRIPT = r"""
set -eu
dst=$1 mode=$2 owner=$3 sum=$4 action=$5
same=no
if [ -f "$dst" ] && [ "$(sha256sum < "$dst" | cut -d' ' -f1)" = "$sum" ] \
   && [ "$(stat -c %a -- "$dst")" = "$mode" ]; then
  same=yes
  if [ -n "$owner" ]; then
    case $owner in *:*) fmt=%U:%G ;; *) fmt=%U ;; esac
    [ "$(stat -c "$fmt" -- "$dst")" = "$owner" ] || same=no
  fi
fi
if [ "$action" = check ] || [ "$same" = yes ]; then
  [ "$action" = check ] || cat > /dev/null
  [ "$same" = yes ] && echo unchanged || echo differs
  exit 0
fi
tmp=$(mktemp "$dst.vkp-XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
[ -z "$owner" ] || chown -- "$owner" "$tmp"
chmod -- "$mode" "$tmp"
mv -f -- "$tmp" "$dst"
trap - EXIT
echo changed
"""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256:... fingerprint, comparable with `ssh-keygen -lf`."""
    return str(key.fingerprint)


# What paramiko says when authentication ended without an answer to the key; a refused key is
# "Authentication failed." alone.
_AUTH_CUT_SHORT = ("Authentication timeout.", "Authentication failed: transport shut down or saw EOF")


def is_transient(exc: BaseException) -> bool:
    """Failures that mean 'sshd is not answering yet', worth another try before the deadline."""
    if isinstance(exc, AuthenticationException) and str(exc) in _AUTH_CUT_SHORT:
        # sshd did not answer the key in time, or closed the connection before it did (busy:
        # MaxStartups, LoginGraceTime; or restarting): that says nothing about the key.
        return True
    if isinstance(exc, HostKeyMismatch | BadHostKeyException | AuthenticationException):
        return False
    if isinstance(exc, NoValidConnectionsError | TimeoutError | ConnectionError | EOFError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    if isinstance(exc, SSHException):
        # sshd accepted the TCP connection but was not ready to speak SSH (still starting,
        # or MaxStartups dropping us): paramiko reports these only by message.
        text = str(exc).lower()
        return any(s in text for s in ("banner", "connection reset", "eof", "not active"))
    return False


class Connection:
    """One node's SSH connection; open once, run many commands over it, close at the end."""

    def __init__(
        self,
        name: str,
        address: str,
        user: str,
        private_key_path: str | Path,
        known_hosts_path: str | Path,
        *,
        port: int = 22,
        connect_deadline: float = 120,
        become: bool | None = None,
    ) -> None:
        self.name, self.address, self.user, self.port = name, address, user, port
        self.private_key_path = Path(private_key_path)
        self.known_hosts_path = Path(known_hosts_path)
        self.connect_deadline = connect_deadline
        # put/get need root for their targets; a root login needs no sudo (and may lack it).
        self.become = (user != "root") if become is None else become
        self.round_trips = 0
        self.connect_attempts = 0
        self._client: paramiko.SSHClient | None = None
        self._sock: socket.socket | None = None
        # Holds this connection's registration with the stop flag while it is open.
        self._stop_registration: contextlib.ExitStack | None = None
        self._lock = threading.Lock()

    @property
    def _where(self) -> str:
        return f"{self.name} ({self.address}:{self.port})"

    # -- connecting -------------------------------------------------------------------------

    def _pinned_keys(self) -> paramiko.HostKeys:
        try:
            known = paramiko.HostKeys(str(self.known_hosts_path))
        except (OSError, SSHException) as exc:
            raise SSHError(f"cannot read known_hosts {self.known_hosts_path}: {exc}") from exc
        for lookup in (f"[{self.address}]:{self.port}", self.address, self.name):
            entry = known.lookup(lookup)
            if entry:
                # Registered under the name paramiko will look up for this address and port.
                pinned = paramiko.HostKeys()
                server_name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
                for keytype in entry:
                    pinned.add(server_name, keytype, entry[keytype])
                return pinned
        raise SSHError(
            f"no pinned host key for node {self._where} in {self.known_hosts_path}; vkp does not "
            "connect to hosts it has not pinned",
            hint="host keys are pinned when the VMs are created; re-running create-cluster rewrites "
            "known_hosts",
        )

    @property
    def _connecting(self) -> str:
        return f"SSH to node {self._where}"

    def _attempt(
        self, pinned: paramiko.HostKeys, pkey: paramiko.PKey, started: float, timeout: float
    ) -> paramiko.SSHClient:
        self.connect_attempts += 1
        client = paramiko.SSHClient()
        for hostname, keys in pinned.items():
            for keytype, key in keys.items():
                client.get_host_keys().add(hostname, keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        left = max(1.0, timeout - (time.monotonic() - started))
        try:
            # The socket is ours, not paramiko's, so a stop can shut it down (see _abandon) while
            # paramiko waits for the banner or the authentication answer.
            self._sock = _tcp_connect(
                self.address, self.port, min(_TCP_CONNECT_TIMEOUT, left), self._connecting
            )
            client.connect(
                self.address,
                port=self.port,
                username=self.user,
                pkey=pkey,
                sock=self._sock,
                timeout=min(_TCP_CONNECT_TIMEOUT, left),
                banner_timeout=min(_HANDSHAKE_TIMEOUT, left),
                auth_timeout=min(_HANDSHAKE_TIMEOUT, left),
                allow_agent=False,
                look_for_keys=False,
            )
        except BadHostKeyException as exc:
            client.close()
            raise self._mismatch(exc.key, exc.expected_key) from None
        except BaseException:
            client.close()
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            # paramiko reports a socket shut down by a stop as a lost banner or a closed
            # connection: say that the run stopped instead.
            stop.check(self._connecting)
            raise
        transport = client.get_transport()
        if transport is not None:
            # Long plays (an etcd restart, an image pull) leave the connection idle; keepalives
            # stop NAT and firewalls from dropping it in the meantime.
            transport.set_keepalive(30)
        return client

    def _mismatch(self, presented: paramiko.PKey, expected: paramiko.PKey) -> HostKeyMismatch:
        return HostKeyMismatch(
            f"node {self._where} presented host key {fingerprint(presented)} ({presented.get_name()}), "
            f"but vkp pinned {fingerprint(expected)} ({expected.get_name()}) for it "
            f"in {self.known_hosts_path}. "
            "The connection was closed before authenticating; nothing was sent.",
            hint="something else may be answering on that address (an address conflict or an attack), "
            "or the VM was rebuilt outside vkp. Check which VM holds the address in vCenter; if the node "
            "was replaced on purpose, delete and recreate it with vkp so a new key is generated and "
            "pinned. Do not edit known_hosts to accept a key you have not verified.",
        )

    def open(self) -> Connection:
        """Connect (retrying while sshd is not up yet, until connect_deadline); idempotent.

        The time allowed is also cut to what is left of the run's --timeout, and a stop ends the
        wait (Interrupted or Timeout from stop.check)."""
        with self._lock:
            if self._client is not None and self._is_active(self._client):
                return self
            self._close_client()
            stop.check(self._connecting)
            self.connect_attempts = 0
            timeout = stop.remaining(self.connect_deadline)
            assert timeout is not None  # capped by connect_deadline
            pinned = self._pinned_keys()
            try:
                pkey = paramiko.PKey.from_path(str(self.private_key_path))
            except (OSError, SSHException) as exc:
                raise SSHError(f"cannot load the cluster SSH key {self.private_key_path}: {exc}") from exc
            started = time.monotonic()

            def on_retry(attempt: int, exc: BaseException) -> None:
                log.debug("%s: SSH not ready (attempt %d): %s", self._where, attempt, exc)

            if self._stop_registration is None:
                self._stop_registration = contextlib.ExitStack()
                self._stop_registration.enter_context(stop.on_stop(self._abandon))
            try:
                self._client = retry_call(
                    lambda: self._attempt(pinned, pkey, started, timeout),
                    retry_on=is_transient,
                    deadline=timeout,
                    what=self._connecting,
                    # A refused connection costs nothing to retry, and sshd on a booting VM comes
                    # up at an unknown moment: a short cap keeps us from sleeping past it.
                    initial=0.25,
                    maximum=1.0,
                    on_retry=on_retry,
                )
            except AuthenticationException as exc:
                if is_transient(exc):
                    raise Timeout(
                        f"node {self._where} did not finish SSH authentication within "
                        f"{timeout:.0f} s ({self.connect_attempts} attempts): {exc}",
                        hint="the node's sshd answers but too slowly: check its load and sshd",
                    ) from exc
                raise SSHError(
                    f"node {self._where} rejected the cluster key for user {self.user!r}: {exc}",
                    hint="cloud-init installs the key on first boot: check the VM's user-data and "
                    "/var/log/cloud-init.log on the node",
                ) from exc
            except (OSError, EOFError, SSHException) as exc:
                if not is_transient(exc):
                    raise SSHError(f"cannot connect to node {self._where}: {exc}") from exc
                raise Timeout(
                    f"node {self._where} did not answer SSH within {timeout:.0f} s "
                    f"({self.connect_attempts} attempts; last error: {exc})",
                    hint="check that the VM is powered on, has its address, and that sshd started "
                    "(the VM console or /var/log/cloud-init.log)",
                ) from exc
            return self

    @staticmethod
    def _is_active(client: paramiko.SSHClient) -> bool:
        transport = client.get_transport()
        return transport is not None and transport.is_active()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _abandon(self) -> None:
        """On a stop (called from the stopping thread, possibly a signal handler): shut the
        socket down so paramiko's reads and waits on it return now.

        Only shutdown: it takes no lock another thread may hold, and unlike close() it cannot
        hand the descriptor number to a new socket while paramiko's thread still reads it."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._close_client()
            if self._stop_registration is not None:
                self._stop_registration.close()
                self._stop_registration = None

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- running ----------------------------------------------------------------------------

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        stdin: bytes | None = None,
        retry_safe: bool = False,
    ) -> Result:
        """Run cmd; CommandFailed (with the masked command) on a non-zero exit when check.

        timeout: seconds from sending the command to its exit status (stdin included); past it
        the channel is abandoned and Timeout (exit code 13) names the node and the command.
        There is no unbounded wait: None is refused.
        If the connection has dropped before the command was sent it is reopened; if it drops
        while the command runs, the command is run again only when retry_safe (idempotent).
        """
        status, out, err = self._exec(cmd, timeout=bounded(timeout), stdin=stdin, retry_safe=retry_safe)
        result = Result(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and status != 0:
            raise CommandFailed(self.name, cmd.masked(), status, result.stdout, result.stderr)
        return result

    def _waiting_for(self, cmd: Cmd) -> str:
        return f"`{cmd.masked()}` on node {self._where}"

    def _exec(
        self, cmd: Cmd, *, timeout: float, stdin: bytes | None, retry_safe: bool
    ) -> tuple[int, bytes, bytes]:
        what = self._waiting_for(cmd)
        for attempt in (1, 2):
            stop.check(what)
            transport = self._transport()
            try:
                # A stop shuts the socket down (see _abandon), which ends this wait too.
                chan = transport.open_session(timeout=min(30.0, timeout))
            except (SSHException, EOFError, OSError):
                # A stop shut the socket down: that is the error, not the dropped connection.
                stop.check(what)
                # Nothing was sent yet, so reopening and trying again cannot run anything twice.
                if attempt == 2:
                    raise
                self._reconnect("before running", cmd)
                continue
            try:
                return self._exec_on(chan, cmd, timeout, stdin)
            except (SSHException, EOFError, OSError) as exc:
                stop.check(what)
                if attempt == 2 or not retry_safe:
                    raise SSHError(
                        f"connection to node {self._where} dropped while running `{cmd.masked()}`"
                        + ("" if retry_safe else "; not re-run because the step did not mark it retry_safe"),
                        hint="re-run the command: finished steps are skipped",
                    ) from exc
                self._reconnect("while running", cmd)
        raise AssertionError("unreachable")

    def _reconnect(self, when: str, cmd: Cmd) -> None:
        log.warning("%s: connection dropped %s `%s`; reconnecting", self._where, when, cmd.masked())
        self.close()
        self.open()

    def _transport(self) -> paramiko.Transport:
        if self._client is None or not self._is_active(self._client):
            self.open()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def _timed_out(self, cmd: Cmd, timeout: float) -> Timeout:
        return Timeout(
            f"node {self._where}: `{cmd.masked()}` did not finish within {timeout:g} s",
            hint="the command was abandoned (its channel closed) and may still be running on the node; "
            "check the node before re-running",
        )

    def _exec_on(
        self, chan: paramiko.Channel, cmd: Cmd, timeout: float, stdin: bytes | None
    ) -> tuple[int, bytes, bytes]:
        self.round_trips += 1
        what = self._waiting_for(cmd)
        end = time.monotonic() + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            # Blocking channel calls wake at least every POLL seconds to look at the stop flag
            # and the deadline (readers just wait again; see _drain).
            chan.settimeout(stop.POLL)
            chan.exec_command(cmd.render())
            # Both streams are drained concurrently: reading one to the end first would stall the
            # command once the other fills paramiko's window.
            readers = [
                threading.Thread(target=_drain, args=(chan, chan.recv, out), daemon=True),
                threading.Thread(target=_drain, args=(chan, chan.recv_stderr, err), daemon=True),
            ]
            for r in readers:
                r.start()
            if stdin is not None:
                self._send(chan, stdin, end, cmd, timeout)
            chan.shutdown_write()
            if not stop.wait(chan.status_event, max(0.0, end - time.monotonic()), what):
                raise self._timed_out(cmd, timeout)
            # The status can come before the output ends (a daemon the command started holds its
            # stdout open): the same deadline bounds that wait.
            for r in readers:
                while r.is_alive():
                    stop.check(what)
                    if time.monotonic() >= end:
                        raise self._timed_out(cmd, timeout)
                    r.join(min(stop.POLL, max(0.0, end - time.monotonic())))
            status = chan.recv_exit_status()
            if status == -1 and not chan.get_transport().is_active():
                # paramiko closes the channel without an exit status when the connection dies.
                raise EOFError("the SSH connection closed before the command reported its exit status")
            return status, b"".join(out), b"".join(err)
        finally:
            # Also what abandons a command past its deadline: the readers see the channel
            # closed and end.
            chan.close()

    def _send(self, chan: paramiko.Channel, data: bytes, end: float, cmd: Cmd, timeout: float) -> None:
        """Write data to the command's stdin within the deadline, looking at the stop flag
        between packets; returns early if the command exits without reading it all."""
        what = self._waiting_for(cmd)
        view = memoryview(data)
        for i in range(0, len(view), _SEND_CHUNK):
            chunk = bytes(view[i : i + _SEND_CHUNK])
            sent = 0
            while sent < len(chunk):
                stop.check(what)
                if time.monotonic() >= end:
                    raise self._timed_out(cmd, timeout)
                try:
                    n = chan.send(chunk[sent:])
                except TimeoutError:
                    continue  # the window stayed full for POLL seconds: look at the flag again
                except OSError:
                    return  # the command exited without reading all of it; its status says why
                if n == 0:
                    return  # the channel closed or reached EOF: the same
                sent += n

    # -- files ------------------------------------------------------------------------------

    def _privileged(self, cmd: Cmd) -> Cmd:
        return sudo(cmd) if self.become else cmd

    def put(
        self, data: bytes, path: str, *, mode: int, owner: str | None = None, timeout: float | None = None
    ) -> bool:
        """Write data to path atomically with mode (and owner); False if it was already so.

        Content, mode and owner are compared on the node; an identical file is not touched.
        timeout: the default grows with the size of data (see _MIN_UPLOAD_RATE).
        """
        if timeout is None:
            timeout = COMMAND_TIMEOUT + len(data) / _MIN_UPLOAD_RATE
        digest = hashlib.sha256(data).hexdigest()
        args = (path, format(mode, "o"), owner or "", digest)
        if len(data) > _CHECK_FIRST_BYTES:
            # Hashing the file on the node reads it at disk speed: the same allowance.
            check = self.run(
                self._privileged(Cmd.shell(_PUT_SCRIPT, *args, "check")), retry_safe=True, timeout=timeout
            )
            if check.stdout.strip() == "unchanged":
                return False
        # Writing the same content again is harmless, so a dropped connection may retry it.
        write = self._privileged(Cmd.shell(_PUT_SCRIPT, *args, "write"))
        result = self.run(write, stdin=data, retry_safe=True, timeout=timeout)
        return result.stdout.strip() == "changed"

    def get(self, path: str, *, timeout: float = COMMAND_TIMEOUT) -> bytes:
        """The content of a file on the node (read as root when become)."""
        cmd = self._privileged(Cmd("cat", "--", path))
        status, out, err = self._exec(cmd, timeout=bounded(timeout), stdin=None, retry_safe=True)
        if status != 0:
            raise CommandFailed(self.name, cmd.masked(), status, "", err.decode(errors="replace"))
        return out


def _drain(chan: paramiko.Channel, recv: Callable[[int], bytes], sink: list[bytes]) -> None:
    while True:
        try:
            chunk = recv(_READ_CHUNK)
        except TimeoutError:
            # Nothing arrived for POLL seconds (the channel's timeout): keep reading until the
            # channel closes, which _exec_on makes sure of in every outcome.
            if chan.closed:
                return
            continue
        if not chunk:
            return
        sink.append(chunk)


def _tcp_connect(host: str, port: int, timeout: float, what: str) -> socket.socket:
    """A connected TCP socket (blocking, as paramiko wants it), within timeout seconds.

    The connect is non-blocking and waited for in slices of stop.POLL, so a stop ends it at
    once instead of after the kernel's connect timeout; TimeoutError past timeout, OSError
    (ECONNREFUSED, EHOSTUNREACH...) as the kernel reports it, for is_transient to judge.
    """
    end = time.monotonic() + timeout
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                raise OSError(code, os.strerror(code))
            if code != 0:
                with selectors.DefaultSelector() as sel:
                    sel.register(sock, selectors.EVENT_WRITE)
                    while not sel.select(min(stop.POLL, max(0.0, end - time.monotonic()))):
                        stop.check(what)
                        if time.monotonic() >= end:
                            raise TimeoutError(errno.ETIMEDOUT, f"TCP connect timed out after {timeout:g} s")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
            sock.setblocking(True)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last if last is not None else OSError(errno.EHOSTUNREACH, f"no address for {host}")
