"""vCenter's address and certificate thumbprint as text: the one parser of each (pure, no I/O).

The spec loader, the session builder and the error messages all go through these, so an
address written "[fd00::10]:8443" is the same host and port everywhere, and a thumbprint
written "ab:cd..." or "ABCD..." compares equal wherever it is checked.
"""

from __future__ import annotations

import ipaddress
import re

DEFAULT_PORT = 443


def split_server(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host', 'host:port', '[v6]', '[v6]:port', a bare IPv6 address, or a URL such as
    https://vc.example.com/sdk -> (host, port). ValueError says what is wrong."""
    s = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text.strip(), flags=re.I).split("/", 1)[0]
    if not s:
        raise ValueError("no vCenter address given")
    m = re.fullmatch(r"\[([^\]]+)\](?::([0-9]{1,5}))?", s)
    if m:
        host, port = m.group(1), m.group(2)
    elif s.count(":") == 1:
        host, port = s.split(":")
        if not re.fullmatch(r"[0-9]{1,5}", port):
            raise ValueError(f"invalid vCenter address {text!r}: the port must be a number")
    elif s.count(":") > 1:
        host, port = s, None  # a bare IPv6 address: its colons are not a port separator
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid vCenter address {text!r}: write an IPv6 address with a port as [address]:port"
            ) from None
    else:
        host, port = s, None
    if port is None:
        return host, default_port
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid vCenter address {text!r}: port {port} is not a TCP port")
    return host, int(port)


def join_server(host: str, port: int) -> str:
    """(host, port) -> 'host:port', bracketing an IPv6 address so split_server reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def thumbprint_hex(text: str) -> str | None:
    """'ab:CD:...', 'abcd...' or 'ab cd ...' -> 64 lowercase hex digits; None if not SHA-256."""
    digits = re.sub(r"[\s:]", "", text).lower()
    return digits if re.fullmatch(r"[0-9a-f]{64}", digits) else None


def format_thumbprint(hexdigits: str) -> str:
    """64 hex digits -> 'AB:CD:...' as vCenter shows it."""
    h = hexdigits.upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))
