"""A small Kubernetes API client for the operator's machine, standard library only.

vkp holds the cluster CA's key, so it does not need a kubeconfig from a node: it signs itself a
client certificate (group system:masters, valid for an hour, never written anywhere but a
private temporary file that is removed as soon as the TLS context has read it) and speaks to the
API through the cluster's endpoint, verifying the server against the same CA.

Used for what must work whichever node a step runs on, and after any interruption: creating
the run's bootstrap token (a Secret in kube-system, exactly what `kubeadm token create` makes),
waiting for an API server's /readyz, and the health report (nodes Ready, system pods running).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.bootstrap import interruptible
from provisioner.errors import ProvisionerError

CLIENT_CN = "vkp"
CLIENT_ORG = "system:masters"  # authorised before kubeadm has created any RBAC binding
CLIENT_VALIDITY = dt.timedelta(hours=1)
BACKDATE = dt.timedelta(minutes=5)
TIMEOUT = 10.0


class PKISource(Protocol):
    def cert_pem(self, name: str) -> bytes: ...

    def key_pem(self, name: str) -> bytes: ...


class KubeAPIError(ProvisionerError):
    """The API could not be asked (unreachable, TLS refused) or answered with an error."""


def client_certificate(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a short-lived client certificate signed by the cluster CA."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KubeAPIError(f"the cluster CA key is a {type(ca_key).__name__}; vkp signs with RSA or ECDSA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLIENT_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_CN),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CLIENT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class KubeAPI:
    """One API server URL, mutual TLS with the cluster CA."""

    def __init__(
        self, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, timeout: float = TIMEOUT
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"an API server URL is https://host:port; got {server!r}")
        self.server = server.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.timeout = timeout
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        # load_cert_chain reads files only: a private directory for the moment it takes.
        with tempfile.TemporaryDirectory(prefix="vkp-kube-") as d:
            cert_path, key_path = os.path.join(d, "client.crt"), os.path.join(d, "client.key")
            for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            ctx.load_cert_chain(cert_path, key_path)
        self._ctx = ctx

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        what = f"{method} {self.server}{path}"
        conn = interruptible.HTTPSConnection(
            self.host, self.port, context=self._ctx, timeout=self.timeout, what=what
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = content_type
            resp, raw = interruptible.exchange(conn, method, path, payload, headers)
        except (OSError, http.client.HTTPException) as exc:
            # ssl errors are OSErrors; their text names the certificate problem, never key material.
            raise KubeAPIError(f"{self.server}{path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        text = raw.decode(errors="replace")
        try:
            data: Any = json.loads(text) if text.strip().startswith(("{", "[")) else text
        except ValueError:
            data = text
        return resp.status, data

    def get(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise KubeAPIError(f"GET {self.server}{path}: HTTP {status}: {_message(data)}")
        return data

    def readyz(self) -> tuple[bool, str]:
        """(ready, what /readyz said); unreachable counts as not ready."""
        try:
            status, data = self.request("GET", "/readyz")
        except KubeAPIError as exc:
            return False, exc.message
        text = data if isinstance(data, str) else json.dumps(data)
        return status == 200, (text.strip() or f"HTTP {status}")[-300:]

    def create(self, path: str, obj: dict[str, Any]) -> bool:
        """POST obj; True if created, False if it already existed (409)."""
        status, data = self.request("POST", path, obj)
        if status == 409:
            return False
        if status not in (200, 201, 202):
            # The API echoes names, never Secret data, in its error messages.
            raise KubeAPIError(f"POST {self.server}{path}: HTTP {status}: {_message(data)}")
        return True

    def apply(self, path: str, obj: dict[str, Any], manager: str = CLIENT_CN) -> Any:
        """Server-side apply of obj at path (the object's own URL): created if absent, else its
        fields that obj sets are made so, and the fields others own are left alone."""
        query = f"?fieldManager={manager}&force=true"
        # JSON is YAML: the apply patch type takes either.
        status, data = self.request("PATCH", path + query, obj, content_type="application/apply-patch+yaml")
        if status not in (200, 201):
            raise KubeAPIError(f"apply {self.server}{path}: HTTP {status}: {_message(data)}")
        return data

    def delete(self, path: str) -> bool:
        """DELETE path; True if a deletion started, False if there was nothing (404)."""
        status, data = self.request("DELETE", path)
        if status == 404:
            return False
        if status not in (200, 202):
            raise KubeAPIError(f"DELETE {self.server}{path}: HTTP {status}: {_message(data)}")
        return True

    def find(self, path: str) -> Any:
        """GET path; None when it is not there (404)."""
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise KubeAPIError(f"GET {self.server}{path}: HTTP {status}: {_message(data)}")
        return data


def _message(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or data)[:300]
    return str(data)[:300]


def client(pki: PKISource, server: str, *, timeout: float = TIMEOUT) -> KubeAPI:
    ca = pki.cert_pem("ca")
    cert, key = client_certificate(ca, pki.key_pem("ca"))
    return KubeAPI(server, ca, cert, key, timeout=timeout)


# -- health (pure) ---------------------------------------------------------------------------


@dataclass
class Health:
    readyz: tuple[bool, str] = (False, "not asked")
    nodes: dict[str, str] = field(default_factory=dict)  # name -> Ready | NotReady (reason) | missing
    pods: dict[str, str] = field(default_factory=dict)  # namespace/name -> phase / what is wrong
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "readyz": {"ok": self.readyz[0], "detail": self.readyz[1]},
            "nodes": dict(self.nodes),
            "pods": dict(self.pods),
            "problems": list(self.problems),
        }


def assess(
    readyz: tuple[bool, str],
    nodes_doc: dict[str, Any] | None,
    pods_docs: Iterable[dict[str, Any]],
    expected_nodes: Sequence[str],
    namespaces: Sequence[str],
) -> Health:
    """What is not ready, in words: the endpoint, each expected node, each system pod."""
    h = Health(readyz=readyz)
    if not readyz[0]:
        h.problems.append(f"API /readyz through the endpoint: {readyz[1]}")
    present: dict[str, dict[str, Any]] = {}
    for item in (nodes_doc or {}).get("items", []):
        present[str(item.get("metadata", {}).get("name"))] = item
    for name in expected_nodes:
        item = present.get(name)
        if item is None:
            h.nodes[name] = "missing"
            h.problems.append(f"node {name}: not registered")
            continue
        cond = next(
            (c for c in item.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), None
        )
        if cond is not None and cond.get("status") == "True":
            h.nodes[name] = "Ready"
        else:
            why = (cond or {}).get("message") or (cond or {}).get("reason") or "no Ready condition yet"
            h.nodes[name] = f"NotReady ({why})"
            h.problems.append(f"node {name}: NotReady: {why}")
    seen_namespaces: set[str] = set()
    for doc in pods_docs:
        for pod in doc.get("items", []):
            meta, status = pod.get("metadata", {}), pod.get("status", {})
            ns = str(meta.get("namespace"))
            seen_namespaces.add(ns)
            key = f"{ns}/{meta.get('name')}"
            phase = status.get("phase", "Unknown")
            if phase == "Succeeded":
                h.pods[key] = phase
                continue
            waiting = [
                f"{c.get('name')}: {c['state']['waiting'].get('reason', 'waiting')}"
                for c in status.get("containerStatuses", []) or []
                if "waiting" in (c.get("state") or {})
            ]
            unready = [c.get("name") for c in status.get("containerStatuses", []) or [] if not c.get("ready")]
            if phase == "Running" and not unready:
                h.pods[key] = "Running"
                continue
            detail = "; ".join(waiting) or (
                f"containers not ready: {', '.join(map(str, unready))}" if unready else ""
            )
            h.pods[key] = phase + (f" ({detail})" if detail else "")
            h.problems.append(f"pod {key}: {h.pods[key]}")
    for ns in namespaces:
        if ns not in seen_namespaces:
            h.problems.append(f"namespace {ns}: no pods yet")
    return h
