"""HTTPS requests from the operator's machine (API server, etcd) that end when the run stops.

http.client blocks in connect, the TLS handshake and the response read, each up to its socket
timeout. A request made here looks at the stop flag before it starts and once connected, and a
stop shuts its socket down, so a SIGINT or the run's --timeout ends it at once with Interrupted
or Timeout (stop.check's), instead of after the timeout or as an unrelated network error.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl

from provisioner import stop


class HTTPSConnection(http.client.HTTPSConnection):
    """http.client's HTTPS connection, with its timeout cut to what is left of the run."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext, what: str) -> None:
        left = stop.remaining(timeout)
        assert left is not None  # capped by timeout
        # Never 0 (a non-blocking socket): a deadline that has just passed is stop.check's to report.
        super().__init__(host, port, timeout=max(0.5, left), context=context)
        self.what = what

    def connect(self) -> None:
        stop.check(self.what)
        super().connect()
        # A stop that came while connecting found no socket to shut down.
        stop.check(self.what)

    def _abandon(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop the
                # TLS state another thread may be reading with.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def exchange(
    conn: HTTPSConnection, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request and its whole response; what http.client raises, or the stop's error."""
    stop.check(conn.what)
    with stop.on_stop(conn._abandon):
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp, resp.read()
        except Exception:
            # A socket shut down by a stop shows as a reset or an empty reply: report the stop.
            stop.check(conn.what)
            raise
