"""A verified, authenticated vSphere API session.

TLS is always verified one of three ways: a CA bundle, a pinned SHA-256 thumbprint, or an
explicit insecure opt-in. A pinned thumbprint is compared to the certificate on every TLS
connection right after the handshake, before a byte of HTTP (let alone credentials) is sent.
pyvmomi's own `thumbprint=` is not used: 9.1 only checks it when normal CA verification
fails, so a CA-valid certificate would skip the pin.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from provisioner import stop
from provisioner.errors import AuthError, Timeout, TLSVerifyError, VSphereError
from provisioner.vsphere import endpoint, waits

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = endpoint.DEFAULT_PORT
# Seconds the TCP connect, TLS handshake and login may take together per socket operation: an
# address that swallows packets (a firewall, a wrong route) is reported in this time instead
# of hanging a pipeline until it is killed.
CONNECT_TIMEOUT = 20.0
# Seconds any later socket read may block. Waits use WaitForUpdatesEx with a bounded
# maxWaitSeconds, far below this, and long work runs as tasks, so only a hung server trips it.
SOAP_TIMEOUT = 120.0
# Idle pooled connections are dropped after this many seconds, before vCenter or a proxy
# closes them under us ("Remote end closed connection without response").
POOL_IDLE_SECONDS = 60

THUMBPRINT_HINT = (
    "read the thumbprint vCenter presents with "
    "`openssl s_client -connect HOST:PORT </dev/null 2>/dev/null "
    "| openssl x509 -noout -fingerprint -sha256`, "
    "check it against the vCenter appliance (VAMI or `govc about.cert -thumbprint`), and pass that one; "
    "for the embedded lab `vkp lab env` prints it"
)


def normalize_thumbprint(text: str) -> str:
    """'ab:CD:...' or 'abcd...' -> 64 lowercase hex digits; TLSVerifyError if not SHA-256."""
    digits = endpoint.thumbprint_hex(text)
    if digits is None:
        raise TLSVerifyError(
            f"the pinned thumbprint {text!r} is not a SHA-256 thumbprint (64 hex digits, colons optional)",
            hint=THUMBPRINT_HINT,
        )
    return digits


format_thumbprint = endpoint.format_thumbprint


def split_server(server: str) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' -> (host, port); VSphereError when it is not an address."""
    try:
        return endpoint.split_server(server)
    except ValueError as exc:
        raise VSphereError(str(exc)) from None


class _PinMismatch(ssl.SSLError):
    pass


class _PinnedContext(ssl.SSLContext):
    """Accepts exactly one certificate, by SHA-256 thumbprint, checked at every handshake."""

    expected: str
    presented: str | None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True)
        presented = hashlib.sha256(der or b"").hexdigest()
        if presented != self.expected:
            self.presented = presented
            sock.close()
            raise _PinMismatch(f"certificate thumbprint {format_thumbprint(presented)} is not the pinned one")
        return sock


def _pinned_context(expected: str) -> _PinnedContext:
    ctx = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    # The pin replaces chain and name checks: it names the one certificate we accept.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.expected = expected
    ctx.presented = None
    return ctx


def _ssl_context(server: str, thumbprint: str | None, ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if thumbprint:
        return _pinned_context(normalize_thumbprint(thumbprint))
    if ca_file:
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSVerifyError(
                f"cannot load the CA file {ca_file!r}: {exc}",
                hint="pass a PEM file with vCenter's CA certificate",
            ) from exc
    if insecure:
        # For the log only: the CLI warns the user once per run (output.warn, from the spec's
        # warnings); at warning level, Python's last-resort handler printed it a second time.
        log.info(
            "TLS verification of %s is disabled (insecure): anyone on the path can impersonate it",
            server,
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    raise TLSVerifyError(
        f"no way to verify the TLS certificate of {server} was given",
        hint="pass the CA that signed vCenter's certificate (ca_file / --ca-file), or pin its SHA-256 "
        "thumbprint (thumbprint / --thumbprint), or, knowingly, disable verification (insecure / --insecure)",
    )


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _scrub(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text


def connect(
    server: str,
    user: str,
    password: str,
    *,
    thumbprint: str | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
    timeout: float = CONNECT_TIMEOUT,
) -> Session:
    """Log in to vCenter at server ('host' or 'host:port') over verified TLS.

    The connect and login are bounded by timeout (and by what is left of the run's
    --timeout); once logged in, each call's socket reads are bounded by SOAP_TIMEOUT.
    """
    host, port = split_server(server)
    where = endpoint.join_server(host, port)
    ctx = _ssl_context(where, thumbprint, ca_file, insecure)
    stop.check(f"vCenter {where} to answer")
    timeout = stop.remaining(timeout) or timeout
    # pyVmomi's version discovery (the first request SmartConnect makes) opens its connection
    # without a timeout, so a server that accepts and never answers would hang it forever; the
    # process default covers that one. Nothing else opens sockets while a session is made.
    previous_default = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        si = SmartConnect(
            host=host,
            port=port,
            user=user,
            pwd=password,
            sslContext=ctx,
            httpConnectionTimeout=timeout,
            connectionPoolTimeout=POOL_IDLE_SECONDS,
        )
    except vim.fault.InvalidLogin as exc:
        raise AuthError(
            f"vCenter {where} rejected the login of user {user!r} (wrong user name or password)",
            hint="check the user name and password (give the password by environment or file, never argv)",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - pyvmomi wraps socket and TLS errors in many ways
        raise _connect_error(exc, where, ctx, password, timeout) from None
    finally:
        socket.setdefaulttimeout(previous_default)
    _set_read_timeout(si, SOAP_TIMEOUT)
    return Session(si, where, user, password)


def _set_read_timeout(si: Any, seconds: float) -> None:
    # pyvmomi takes one timeout for the whole session; the short one that bounds the login
    # would cut off a legitimately slow call later (a large property retrieval), so the stub's
    # setting and the pooled connection's socket get the longer one now.
    stub = si._stub
    args = getattr(stub, "schemeArgs", None)
    if isinstance(args, dict):
        args["timeout"] = seconds
    for conn, _ in getattr(stub, "pool", []):
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)


def _connect_error(
    exc: BaseException, where: str, ctx: ssl.SSLContext, password: str, timeout: float
) -> Exception:
    if isinstance(ctx, _PinnedContext) and ctx.presented is not None:
        return TLSVerifyError(
            f"{where} presented a certificate with SHA-256 thumbprint {format_thumbprint(ctx.presented)}, "
            f"but the pinned thumbprint is {format_thumbprint(ctx.expected)}; nothing was sent to it",
            hint=THUMBPRINT_HINT,
        )
    chain = _causes(exc)
    if any(isinstance(e, (TimeoutError, socket.timeout)) for e in chain) or "timed out" in str(exc):
        return Timeout(
            f"vCenter at {where} did not answer within {timeout:.0f} s (connect, TLS handshake and login)",
            hint="check the address and port, that vCenter is up, and that no firewall drops the traffic",
        )
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return TLSVerifyError(
                f"the TLS certificate of {where} did not verify: {e.verify_message or e}",
                hint="pass the CA that signed it (ca_file), or pin its SHA-256 thumbprint; "
                + THUMBPRINT_HINT,
            )
    for e in chain:
        if isinstance(e, (ConnectionRefusedError, socket.gaierror, TimeoutError, socket.timeout, OSError)):
            return VSphereError(
                f"cannot reach vCenter at {where}: {_scrub(str(e) or type(e).__name__, password)}",
                hint="check the address and port, that vCenter is up, and that nothing blocks the way",
            )
    text = _scrub(getattr(exc, "msg", None) or str(exc) or type(exc).__name__, password)
    if "is down or is not a VIM server" in text or "Remote end closed" in text:
        return VSphereError(
            f"cannot reach vCenter at {where}: {text}",
            hint="check the address and port, that vCenter is up, and that nothing blocks the way",
        )
    return VSphereError(f"connecting to vCenter at {where} failed: {text}")


class Session:
    """A logged-in vSphere API session; `call` logs in again once if the session expired."""

    def __init__(self, si: Any, server: str, user: str, password: str) -> None:
        self.si = si
        self.server = server
        self.user = user
        self._password = password
        self.content = si.RetrieveContent()

    def __repr__(self) -> str:
        return f"Session(server={self.server!r}, user={self.user!r})"

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call fn(*args); if vCenter says the session is gone, log in again and retry once."""
        try:
            return fn(*args, **kwargs)
        except vim.fault.NotAuthenticated:
            log.info("vCenter session on %s expired; logging in again", self.server)
            self.relogin()
            return fn(*args, **kwargs)

    def relogin(self) -> None:
        try:
            self.content.sessionManager.Login(self.user, self._password)
        except vim.fault.InvalidLogin as exc:
            raise AuthError(
                f"vCenter {self.server} rejected the login of user {self.user!r} when renewing the session"
            ) from exc

    def logout(self) -> None:
        # The waits' collector first: it belongs to this session and ends with it.
        waits.close_feed(self.content)
        try:
            Disconnect(self.si)
        except (vmodl.MethodFault, OSError, Exception) as exc:  # noqa: BLE001 - best effort at exit
            log.debug("logout from %s: %s", self.server, exc)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.logout()
