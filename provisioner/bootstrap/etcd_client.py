"""A tiny etcd v3 client for health checks from the operator's machine, standard library only.

It speaks etcd 3.4's gRPC gateway (JSON over HTTPS on the client port), with mutual TLS: the
server certificate must chain to the etcd CA and carry the endpoint's address as a SAN, and
vkp presents its own etcd client certificate. Keys and values travel base64-encoded, as the
gateway requires for protobuf bytes fields.

Used by the etcd play's health step: every member healthy, the member list equal to the plan,
and a write through one member read back through another (proof the cluster agrees, not only
that each process is up); and by repair, which replaces a member (member remove, member add).
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.bootstrap import interruptible
from provisioner.bootstrap.pki import PKI
from provisioner.errors import ProvisionerError

# Overwritten by every check, so repeated checks leave one key behind rather than many.
HEALTH_KEY = "vkp/health-check"


class EtcdError(ProvisionerError):
    """An etcd endpoint could not be asked: unreachable, TLS refused, or an unexpected answer."""


class EtcdUnhealthy(ProvisionerError):
    """The cluster answered but is not what the plan says; carries the per-endpoint report."""

    def __init__(self, report: HealthReport) -> None:
        self.report = report
        super().__init__(
            "etcd is not healthy:\n  " + "\n  ".join(report.problems),
            hint="check `journalctl -u etcd` on the named members; a re-run retries the etcd phase",
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["report"] = self.report.to_dict()
        return d


@dataclass(frozen=True)
class Member:
    name: str  # empty for a member that was added but has not started yet
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    id: str  # uint64 as a decimal string, as the gateway sends it


@dataclass
class HealthReport:
    endpoints: dict[str, str] = field(default_factory=dict)  # endpoint -> "healthy" or what is wrong
    members: list[Member] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    round_trip: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "endpoints": dict(self.endpoints),
            "members": [m.name for m in self.members],
            "expected": list(self.expected),
            "round_trip": self.round_trip,
            "problems": list(self.problems),
        }


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode("ascii")


def _unb64(s: str) -> str:
    return base64.b64decode(s, validate=True).decode()


class EtcdClient:
    """One etcd endpoint (https://HOST:PORT) over mutual TLS."""

    def __init__(
        self,
        endpoint: str,
        ca_pem_path: str | Path,
        cert_path: str | Path,
        key_path: str | Path,
        timeout: float = 5,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"etcd endpoint must be https://HOST:PORT, got {endpoint!r}")
        self.endpoint = endpoint
        self.host = url.hostname
        self.port = url.port or 2379
        self.timeout = timeout
        # check_hostname matches an IP literal against the certificate's IP SANs, which is what
        # etcd server certificates carry (their address and 127.0.0.1).
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_pem_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert_path), str(key_path))
        self._ctx = ctx

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        conn = interruptible.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self._ctx, what=f"etcd {self.endpoint}{path}"
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            resp, raw = interruptible.exchange(conn, method, path, payload, headers)
        except ssl.SSLCertVerificationError as exc:
            raise EtcdError(
                f"{self.endpoint}: server certificate refused ({exc.verify_message})",
                hint="the member's certificate must be issued by this cluster's etcd CA for this address",
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise EtcdError(f"{self.endpoint}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise EtcdError(f"{self.endpoint}{path}: HTTP {resp.status}, not JSON: {raw[:200]!r}") from None
        return resp.status, data

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = self._request("POST", path, body)
        if status != 200 or not isinstance(data, dict):
            msg = (data.get("message") or data.get("error")) if isinstance(data, dict) else data
            raise EtcdError(f"{self.endpoint}{path}: HTTP {status}: {msg}")
        return data

    def health(self) -> bool:
        """True when the member reports itself healthy (it has a leader); False when it answers
        unhealthy. Raises EtcdError when it cannot be asked at all."""
        # etcd answers 503 with {"health": "false"} when it has no leader: still an answer.
        status, data = self._request("GET", "/health")
        if status not in (200, 503) or not isinstance(data, dict) or "health" not in data:
            raise EtcdError(f"{self.endpoint}/health: unexpected answer HTTP {status}: {data!r}")
        return status == 200 and str(data["health"]).lower() == "true"

    def members(self) -> list[Member]:
        """The cluster's members as this endpoint sees them."""
        data = self._call("/v3/cluster/member/list", {})
        return [
            Member(
                name=m.get("name", ""),
                peer_urls=tuple(m.get("peerURLs", ())),
                client_urls=tuple(m.get("clientURLs", ())),
                id=str(m.get("ID", "")),
            )
            for m in data.get("members", [])
        ]

    def member_remove(self, member_id: str) -> None:
        """Remove a member by its id (through a member other than that one)."""
        self._call("/v3/cluster/member/remove", {"ID": member_id})

    def member_add(self, peer_url: str) -> Member:
        """Add a member that will start at peer_url; the new member, unnamed until it starts."""
        data = self._call("/v3/cluster/member/add", {"peerURLs": [peer_url]})
        m = data.get("member") or {}
        return Member(
            name=m.get("name", ""),
            peer_urls=tuple(m.get("peerURLs", ())),
            client_urls=tuple(m.get("clientURLs", ())),
            id=str(m.get("ID", "")),
        )

    def put(self, key: str, value: str) -> None:
        self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str) -> str | None:
        """The value of key (linearizable read), or None when it does not exist."""
        data = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        if not kvs:
            return None
        # The gateway leaves out empty fields, so an empty value arrives without "value".
        return _unb64(kvs[0].get("value", ""))


def check_cluster(endpoints: list[str], expected_member_names: list[str], pki: PKI) -> HealthReport:
    """Check the cluster through vkp's own client cert; the report if all is well, else EtcdUnhealthy.

    Every endpoint must answer healthy, the member names must equal the planned ones exactly,
    and a value written through the first endpoint must be read back through the last.
    """
    if not endpoints:
        raise ValueError("check_cluster needs at least one endpoint")
    report = HealthReport(expected=sorted(expected_member_names))
    clients = {
        ep: EtcdClient(ep, pki.path("etcd-ca"), pki.path("vkp-etcd-client"), pki.key_path("vkp-etcd-client"))
        for ep in endpoints
    }
    healthy: list[str] = []
    for ep, client in clients.items():
        try:
            ok = client.health()
        except EtcdError as exc:
            report.endpoints[ep] = exc.message
            report.problems.append(exc.message)
            continue
        if ok:
            report.endpoints[ep] = "healthy"
            healthy.append(ep)
        else:
            report.endpoints[ep] = "unhealthy (no leader or not serving)"
            report.problems.append(f"{ep}: reports unhealthy (no leader or not serving)")

    if healthy:
        try:
            report.members = clients[healthy[0]].members()
        except EtcdError as exc:
            report.problems.append(exc.message)
        else:
            _compare_members(report, healthy[0])
        writer, reader = clients[healthy[0]], clients[healthy[-1]]
        token = secrets.token_hex(8)
        try:
            writer.put(HEALTH_KEY, token)
            got = reader.get(HEALTH_KEY)
        except EtcdError as exc:
            report.problems.append(f"write/read round trip: {exc.message}")
        else:
            report.round_trip = got == token
            if not report.round_trip:
                report.problems.append(
                    f"wrote {HEALTH_KEY}={token} through {writer.endpoint}, "
                    f"read back {got!r} through {reader.endpoint}"
                )
    else:
        report.problems.append("no endpoint is healthy: members and round trip not checked")

    if report.problems:
        raise EtcdUnhealthy(report)
    return report


def _compare_members(report: HealthReport, via: str) -> None:
    names = [m.name for m in report.members if m.name]
    unstarted = [m.id for m in report.members if not m.name]
    missing = sorted(set(report.expected) - set(names))
    unexpected = sorted(set(names) - set(report.expected))
    if missing:
        report.problems.append(f"members missing (per {via}): {', '.join(missing)}")
    if unexpected:
        report.problems.append(f"members not in the plan (per {via}): {', '.join(unexpected)}")
    if unstarted:
        report.problems.append(f"members added but never started (ids): {', '.join(unstarted)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        report.problems.append(f"member names used more than once: {', '.join(dupes)}")
