"""The etcd client against a real local HTTPS server with mutual TLS, speaking etcd 3.4's gateway JSON.

The server side uses the certificates ensure_pki made, exactly as etcd on a member would: its
server certificate and key, and the etcd CA to demand and verify the client's certificate.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioner.bootstrap.etcd_client import (
    HEALTH_KEY,
    EtcdClient,
    EtcdError,
    EtcdUnhealthy,
    check_cluster,
)
from provisioner.bootstrap.pki import PKI, ensure_pki
from provisioner.plan import Plan, make_plan
from provisioner.spec import PKISpec, load_spec
from provisioner.state import ClusterState
from tests.unit.test_spec import LAB_ENV

NODES = ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3"]


def make_plan_for(cluster: str) -> Plan:
    return make_plan(load_spec(None, name=cluster, plan="small", env=LAB_ENV))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clusters")


@pytest.fixture(scope="module")
def pki(home: Path) -> PKI:
    # ECDSA keys: quick to make, and the same code paths as RSA for TLS.
    return ensure_pki(ClusterState.create_or_load("demo", home=home), make_plan_for("demo"), PKISpec("ecdsa"))


@pytest.fixture(scope="module")
def other_pki(home: Path) -> PKI:
    """Another cluster's PKI: its etcd CA must not be trusted by the demo cluster's client."""
    plan = make_plan_for("other")
    return ensure_pki(ClusterState.create_or_load("other", home=home), plan, PKISpec("ecdsa"))


@dataclasses.dataclass
class Cluster:
    """What the fake members share: the key space and the member list (what etcd's raft agrees on)."""

    store: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    members: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class FakeEtcd:
    def __init__(
        self,
        cert: Path,
        key: Path,
        ca: Path,
        cluster: Cluster,
        host: str = "127.0.0.1",
    ) -> None:
        self.cluster = cluster
        self.healthy = True
        self.client_subjects: list[str] = []
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED  # etcd's --client-cert-auth=true
        ctx.load_cert_chain(str(cert), str(key))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, doc: dict[str, Any]) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def note_client(self) -> None:
                assert isinstance(self.connection, ssl.SSLSocket)
                der = self.connection.getpeercert(binary_form=True)
                assert der is not None  # CERT_REQUIRED: no handshake completes without one
                cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                fake.client_subjects.append(str(cn[0].value))

            def do_GET(self) -> None:
                self.note_client()
                if self.path != "/health":
                    self.reply(404, {"error": "not found"})
                elif fake.healthy:
                    self.reply(200, {"health": "true"})
                else:
                    self.reply(503, {"health": "false"})

            def do_POST(self) -> None:
                self.note_client()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.bodies.append((self.path, body))
                header = {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437"}
                c = fake.cluster
                if self.path == "/v3/cluster/member/list":
                    self.reply(200, {"header": header, "members": c.members})
                elif self.path == "/v3/kv/put":
                    key = base64.b64decode(body["key"], validate=True)
                    c.store[key] = base64.b64decode(body.get("value", ""), validate=True)
                    self.reply(200, {"header": header})
                elif self.path == "/v3/kv/range":
                    key = base64.b64decode(body["key"], validate=True)
                    if key not in c.store:
                        self.reply(200, {"header": header})  # etcd leaves out kvs and count
                        return
                    kv: dict[str, Any] = {"key": body["key"], "create_revision": "2", "version": "1"}
                    if c.store[key]:
                        kv["value"] = base64.b64encode(c.store[key]).decode()
                    self.reply(200, {"header": header, "kvs": [kv], "count": "1"})
                else:
                    self.reply(404, {"error": "Not Found", "code": 5, "message": "Not Found"})

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.endpoint = f"https://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def member(name: str, n: int) -> dict[str, Any]:
    ip = f"198.18.0.{9 + n}"
    return {
        "ID": str(10276657743932975437 + n),
        "name": name,
        "peerURLs": [f"https://{ip}:2380"],
        "clientURLs": [f"https://{ip}:2379"],
    }


@pytest.fixture
def servers() -> Iterator[list[FakeEtcd]]:
    started: list[FakeEtcd] = []
    yield started
    for s in started:
        s.close()


def start(
    servers: list[FakeEtcd], pki: PKI, node: str, cluster: Cluster, host: str = "127.0.0.1"
) -> FakeEtcd:
    s = FakeEtcd(
        pki.path(f"etcd-server-{node}"),
        pki.key_path(f"etcd-server-{node}"),
        pki.path("etcd-ca"),
        cluster,
        host,
    )
    servers.append(s)
    return s


def start_cluster(servers: list[FakeEtcd], pki: PKI) -> tuple[Cluster, list[FakeEtcd]]:
    cluster = Cluster(members=[member(n, i) for i, n in enumerate(NODES, 1)])
    return cluster, [start(servers, pki, n, cluster) for n in NODES]


def client(pki: PKI, endpoint: str, name: str = "vkp-etcd-client") -> EtcdClient:
    return EtcdClient(endpoint, pki.path("etcd-ca"), pki.path(name), pki.key_path(name), timeout=5)


# -- the client ------------------------------------------------------------------------------


def test_client_presents_its_cert_and_verifies_the_server(servers: list[FakeEtcd], pki: PKI) -> None:
    s = start(servers, pki, "demo-etcd-1", Cluster())
    assert client(pki, s.endpoint).health() is True
    assert s.client_subjects == ["vkp-etcd-client"]
    # kube-apiserver's client cert is accepted the same way: it comes from the same etcd CA.
    assert client(pki, s.endpoint, "apiserver-etcd-client").health() is True
    assert s.client_subjects[-1] == "kube-apiserver-etcd-client"


def test_server_cert_from_another_ca_is_refused(servers: list[FakeEtcd], pki: PKI, other_pki: PKI) -> None:
    # A member presenting a certificate from some other etcd CA (the other cluster's), even for
    # the right address, is not one of ours.
    s = start(servers, other_pki, "other-etcd-1", Cluster())
    with pytest.raises(EtcdError, match="server certificate refused") as exc:
        client(pki, s.endpoint).health()
    # Both CAs are named CN=etcd-ca (as every kubeadm cluster's is): only the signature tells.
    assert "the member's certificate must be issued by this cluster's etcd CA" in (exc.value.hint or "")
    assert s.client_subjects == []  # nothing was sent to it


def test_server_cert_must_name_the_address_connected_to(
    servers: list[FakeEtcd], pki: PKI, home: Path
) -> None:
    # Right CA, wrong address: demo-etcd-1's cert names 198.18.0.10 and 127.0.0.1, not 127.0.0.2.
    s = start(servers, pki, "demo-etcd-1", Cluster(), host="127.0.0.2")
    with pytest.raises(EtcdError, match="IP address mismatch"):
        client(pki, s.endpoint).health()
    # The same CA with the address in the cert's IP SANs is accepted.
    plan = make_plan_for("demo")
    nodes = tuple(
        dataclasses.replace(n, address="127.0.0.2") if n.name == "demo-etcd-1" else n for n in plan.nodes
    )
    moved = ensure_pki(
        ClusterState.create_or_load("moved", home=home),
        dataclasses.replace(plan, nodes=nodes),
        PKISpec("ecdsa"),
    )
    s2 = start(servers, moved, "demo-etcd-1", Cluster(), host="127.0.0.2")
    assert client(moved, s2.endpoint).health() is True


def test_server_refuses_a_client_without_a_cert_from_the_etcd_ca(
    servers: list[FakeEtcd], pki: PKI, other_pki: PKI
) -> None:
    s = start(servers, pki, "demo-etcd-1", Cluster())
    # Trusting the right CA but presenting another cluster's client cert: the member says no.
    stranger = EtcdClient(
        s.endpoint,
        pki.path("etcd-ca"),
        other_pki.path("vkp-etcd-client"),
        other_pki.key_path("vkp-etcd-client"),
    )
    with pytest.raises(EtcdError):
        stranger.health()


def test_put_get_base64_round_trip(servers: list[FakeEtcd], pki: PKI) -> None:
    cluster = Cluster()
    s = start(servers, pki, "demo-etcd-1", cluster)
    c = client(pki, s.endpoint)
    key, value = "/vkp/ünï code?", "héllo ✓ >>>???\n"  # base64 of these has + and /
    c.put(key, value)
    path, body = s.bodies[-1]
    assert path == "/v3/kv/put"
    assert body == {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }
    assert any(ch in body["value"] for ch in "+/")
    assert cluster.store[key.encode()] == value.encode()
    assert c.get(key) == value
    assert c.get("/vkp/absent") is None
    c.put("/vkp/empty", "")
    assert c.get("/vkp/empty") == ""


def test_members_decoded(servers: list[FakeEtcd], pki: PKI) -> None:
    cluster, (s, *_) = start_cluster(servers, pki)
    cluster.members.append({"ID": "42", "peerURLs": ["https://198.18.0.99:2380"]})  # added, not started
    ms = client(pki, s.endpoint).members()
    assert [m.name for m in ms] == [*NODES, ""]
    assert ms[0].peer_urls == ("https://198.18.0.10:2380",) and ms[0].client_urls == (
        "https://198.18.0.10:2379",
    )
    assert ms[0].id == "10276657743932975438" and ms[-1].client_urls == ()


def test_unhealthy_member_and_unreachable_endpoint(servers: list[FakeEtcd], pki: PKI) -> None:
    s = start(servers, pki, "demo-etcd-1", Cluster())
    s.healthy = False
    assert client(pki, s.endpoint).health() is False
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EtcdError, match="ConnectionRefused"):
        client(pki, f"https://127.0.0.1:{port}").health()


def test_endpoint_must_be_https(pki: PKI) -> None:
    with pytest.raises(ValueError):
        client(pki, "http://127.0.0.1:2379")


# -- check_cluster ---------------------------------------------------------------------------


def test_check_cluster_healthy(servers: list[FakeEtcd], pki: PKI) -> None:
    cluster, members = start_cluster(servers, pki)
    endpoints = [s.endpoint for s in members]
    report = check_cluster(endpoints, NODES, pki)
    assert report.ok and report.round_trip
    assert report.endpoints == dict.fromkeys(endpoints, "healthy")
    assert sorted(m.name for m in report.members) == NODES
    # Written through the first member, read back through the last.
    assert [p for p, _ in members[0].bodies] == ["/v3/cluster/member/list", "/v3/kv/put"]
    assert [p for p, _ in members[-1].bodies] == ["/v3/kv/range"]
    assert HEALTH_KEY.encode() in cluster.store
    assert all(s.client_subjects and set(s.client_subjects) == {"vkp-etcd-client"} for s in members)


def test_check_cluster_names_the_unhealthy_and_unreachable_endpoints(
    servers: list[FakeEtcd], pki: PKI
) -> None:
    _, members = start_cluster(servers, pki)
    members[1].healthy = False
    members[2].close()
    servers.remove(members[2])
    endpoints = [s.endpoint for s in members]
    with pytest.raises(EtcdUnhealthy) as exc:
        check_cluster(endpoints, NODES, pki)
    r = exc.value.report
    assert r.endpoints[endpoints[0]] == "healthy"
    assert "unhealthy" in r.endpoints[endpoints[1]]
    assert endpoints[2] in r.endpoints[endpoints[2]] and "Connection" in r.endpoints[endpoints[2]]
    text = str(exc.value)
    assert endpoints[1] in text and endpoints[2] in text
    assert exc.value.to_dict()["report"]["ok"] is False


def test_check_cluster_member_list_must_equal_the_plan(servers: list[FakeEtcd], pki: PKI) -> None:
    cluster, members = start_cluster(servers, pki)
    cluster.members[2] = member("demo-etcd-9", 9)
    with pytest.raises(EtcdUnhealthy) as exc:
        check_cluster([s.endpoint for s in members], NODES, pki)
    problems = exc.value.report.problems
    assert any("missing" in p and "demo-etcd-3" in p for p in problems)
    assert any("not in the plan" in p and "demo-etcd-9" in p for p in problems)
    assert exc.value.report.round_trip is True  # the rest was still checked


def test_check_cluster_round_trip_must_agree(servers: list[FakeEtcd], pki: PKI) -> None:
    # Three members that each keep their own key space: every one healthy, no agreement.
    members_list = [member(n, i) for i, n in enumerate(NODES, 1)]
    members = [start(servers, pki, n, Cluster(members=members_list)) for n in NODES]
    with pytest.raises(EtcdUnhealthy) as exc:
        check_cluster([s.endpoint for s in members], NODES, pki)
    r = exc.value.report
    assert r.round_trip is False
    assert (
        len(r.problems) == 1 and "read back None" in r.problems[0] and members[-1].endpoint in r.problems[0]
    )
