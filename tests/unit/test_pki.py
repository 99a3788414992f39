"""The cluster PKI: chains, SANs, usages, lifetimes, key types, modes, reuse and reissue."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.bootstrap import pki as pki_mod
from provisioner.bootstrap.pki import PKI, PKIError, ensure_pki, list_certs
from provisioner.cli import main
from provisioner.errors import ExitCode, NotFound
from provisioner.plan import Plan, make_plan
from provisioner.spec import PKISpec, load_spec
from provisioner.state import ClusterState
from tests.unit.test_spec import LAB_ENV

ETCD_NODES = ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3"]
LEAVES = [
    "apiserver-etcd-client",
    "vkp-etcd-client",
    *(f"etcd-{kind}-{n}" for n in ETCD_NODES for kind in ("server", "peer")),
]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterState:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "clusters"))
    return ClusterState.create_or_load("demo")


def make(plan_name: str = "small") -> Plan:
    return make_plan(load_spec(None, name="demo", plan=plan_name, env=LAB_ENV))


@pytest.fixture
def plan() -> Plan:
    return make()


@pytest.fixture
def pki(state: ClusterState, plan: Plan) -> PKI:
    return ensure_pki(state, plan, PKISpec())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One default PKI for the tests that only read it (RSA keys take a while to make)."""
    home = tmp_path_factory.mktemp("clusters")
    return ensure_pki(ClusterState.create_or_load("demo", home=home), make(), PKISpec())


def cert(pki: PKI, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.cert_pem(name))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def with_address(plan: Plan, node: str, address: str) -> Plan:
    nodes = tuple(dataclasses.replace(n, address=address) if n.name == node else n for n in plan.nodes)
    return dataclasses.replace(plan, nodes=nodes)


# -- chains, names, usages, lifetimes --------------------------------------------------------


def test_every_leaf_is_signed_by_its_ca_and_etcd_leaves_not_by_the_cluster_ca(shared: PKI) -> None:
    ca, etcd_ca, fp_ca = cert(shared, "ca"), cert(shared, "etcd-ca"), cert(shared, "front-proxy-ca")
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes"
    assert etcd_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd-ca"
    assert fp_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-proxy-ca"
    for c in (ca, etcd_ca, fp_ca):
        c.verify_directly_issued_by(c)  # self-signed
    # Three distinct key pairs: a compromise of one CA must not forge certs of another.
    assert (
        len(
            {
                c.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                for c in (ca, etcd_ca, fp_ca)
            }
        )
        == 3
    )
    for name in LEAVES:
        leaf = cert(shared, name)
        leaf.verify_directly_issued_by(etcd_ca)
        with pytest.raises((ValueError, InvalidSignature)):
            leaf.verify_directly_issued_by(ca)


def test_etcd_server_and_peer_sans_per_node(shared: PKI, plan: Plan) -> None:
    for node in plan.by_role("etcd"):
        for kind in ("server", "peer"):
            c = cert(shared, f"etcd-{kind}-{node.name}")
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([node.name, "localhost"])
            assert sorted(str(i) for i in san.get_values_for_type(x509.IPAddress)) == sorted(
                [node.address, "127.0.0.1"]
            )
            assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node.name


def eku(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_key_usages_as_kubeadm_and_etcd_need(shared: PKI) -> None:
    for name in ("ca", "etcd-ca", "front-proxy-ca"):
        c = cert(shared, name)
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca is True
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    for n in ETCD_NODES:
        # clientAuth on the server cert too: etcd's gRPC gateway dials its own member with it.
        assert eku(cert(shared, f"etcd-server-{n}")) == {server, client}
        assert eku(cert(shared, f"etcd-peer-{n}")) == {server, client}
    for name in ("apiserver-etcd-client", "vkp-etcd-client"):
        assert eku(cert(shared, name)) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    for name in LEAVES:
        c = cert(shared, name)
        assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign
    client = cert(shared, "apiserver-etcd-client").subject
    assert client.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver-etcd-client"
    assert client.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"


def test_lifetimes_leaf_one_year_ca_ten_years(shared: PKI) -> None:
    now = dt.datetime.now(dt.UTC)
    slack = dt.timedelta(minutes=2)
    for name in ("ca", "etcd-ca", "front-proxy-ca"):
        assert abs(cert(shared, name).not_valid_after_utc - (now + dt.timedelta(days=3650))) < slack
    for name in LEAVES:
        c = cert(shared, name)
        assert abs(c.not_valid_after_utc - (now + dt.timedelta(days=365))) < slack
        assert c.not_valid_before_utc <= now


@pytest.mark.parametrize(
    ("spec", "plan_name", "check"),
    [
        (PKISpec("rsa", 2048), "small", lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
        (PKISpec("rsa", 4096), "dev", lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 4096),
        (
            PKISpec("ecdsa"),
            "small",
            lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.curve.name == "secp256r1",
        ),
    ],
    ids=["rsa2048", "rsa4096", "ecdsa-p256"],
)
def test_key_type_and_size(
    state: ClusterState, spec: PKISpec, plan_name: str, check: Callable[[object], bool]
) -> None:
    plan = make(plan_name)
    pki = ensure_pki(state, plan, spec)
    names = ["ca", "etcd-ca", "front-proxy-ca", "sa", "apiserver-etcd-client", "vkp-etcd-client"]
    names += [f"etcd-{k}-{n.name}" for n in plan.by_role("etcd") for k in ("server", "peer")]
    for name in names:
        key = serialization.load_pem_private_key(pki.key_pem(name), password=None)
        assert check(key), name
        if name != "sa":
            assert cert(pki, name).public_key() == key.public_key()
    assert (
        serialization.load_pem_public_key(pki.public_pem("sa"))
        == serialization.load_pem_private_key(pki.key_pem("sa"), password=None).public_key()
    )


def test_modes_keys_0600_certs_0644_dirs_0700(pki: PKI, state: ClusterState) -> None:
    root = state.path / "pki"
    assert mode(root) == 0o700 and mode(root / "etcd") == 0o700
    keys = [p for p in root.rglob("*.key")]
    assert len(keys) == 3 + 1 + len(LEAVES)
    assert all(mode(p) == 0o600 for p in keys)
    assert all(mode(p) == 0o644 for p in [*root.rglob("*.crt"), root / "sa.pub"])
    assert pki.path("etcd-ca") == root / "etcd/ca.crt"
    assert pki.key_path("vkp-etcd-client") == root / "etcd/vkp-client.key"
    assert pki.path("etcd-peer-demo-etcd-2") == root / "etcd/demo-etcd-2-peer.crt"
    assert pki.key_path("sa") == root / "sa.key" and pki.path("sa") == root / "sa.pub"


def test_private_keys_never_logged(state: ClusterState, plan: Plan, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pki = ensure_pki(state, plan, PKISpec("ecdsa"))
    text = caplog.text
    assert "etcd-ca created" in text
    assert "PRIVATE KEY" not in text and pki.key_pem("ca").decode().splitlines()[1] not in text


# -- reuse and reissue -----------------------------------------------------------------------


def test_rerun_changes_nothing(pki: PKI, state: ClusterState, plan: Plan) -> None:
    before = snapshot(pki.root)
    again = ensure_pki(state, plan, PKISpec())
    assert again.changes == []
    assert snapshot(pki.root) == before  # bytes and mtimes: nothing was even rewritten


def test_address_change_reissues_only_that_nodes_leaves(pki: PKI, state: ClusterState, plan: Plan) -> None:
    before = snapshot(pki.root)
    moved = with_address(plan, "demo-etcd-2", "198.18.0.99")
    again = ensure_pki(state, moved, PKISpec())
    assert sorted(n for n, _ in again.changes) == ["etcd-peer-demo-etcd-2", "etcd-server-demo-etcd-2"]
    assert all("SANs changed" in why for _, why in again.changes)
    after = snapshot(pki.root)
    changed = sorted(p for p in before if before[p] != after[p])
    assert changed == [
        "etcd/demo-etcd-2-peer.crt",
        "etcd/demo-etcd-2-peer.key",
        "etcd/demo-etcd-2-server.crt",
        "etcd/demo-etcd-2-server.key",
    ]
    c = cert(again, "etcd-server-demo-etcd-2")
    ips = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )
    assert sorted(map(str, ips)) == ["127.0.0.1", "198.18.0.99"]
    c.verify_directly_issued_by(cert(again, "etcd-ca"))  # same CA as before


def test_leaf_expiring_within_30_days_is_reissued(
    state: ClusterState, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(pki_mod, "LEAF_DAYS", 20)
        short = ensure_pki(state, plan, PKISpec())
    ca_before = short.cert_pem("etcd-ca")
    again = ensure_pki(state, plan, PKISpec())
    assert sorted(n for n, _ in again.changes) == sorted(LEAVES)
    assert all(why.startswith("expires ") for _, why in again.changes)
    assert again.cert_pem("etcd-ca") == ca_before
    assert all(c.days_left >= 364 for c in again.inventory())


def test_missing_ca_key_is_an_error_never_a_new_ca(pki: PKI, state: ClusterState, plan: Plan) -> None:
    ca_cert = pki.cert_pem("etcd-ca")
    pki.key_path("etcd-ca").unlink()
    with pytest.raises(PKIError, match="never replaces a CA"):
        ensure_pki(state, plan, PKISpec())
    assert pki.cert_pem("etcd-ca") == ca_cert and not pki.key_path("etcd-ca").exists()


def test_ca_cert_not_matching_its_key_is_an_error(pki: PKI, state: ClusterState, plan: Plan) -> None:
    pki.path("ca").write_bytes(pki.cert_pem("front-proxy-ca"))
    with pytest.raises(PKIError, match="does not belong"):
        ensure_pki(state, plan, PKISpec())


def test_lost_ca_cert_is_rebuilt_from_its_key_and_leaves_still_chain(
    pki: PKI, state: ClusterState, plan: Plan
) -> None:
    leaf_before = pki.cert_pem("etcd-server-demo-etcd-1")
    pki.path("etcd-ca").unlink()
    again = ensure_pki(state, plan, PKISpec())
    assert [n for n, _ in again.changes] == ["etcd-ca"]
    assert again.cert_pem("etcd-server-demo-etcd-1") == leaf_before
    cert(again, "etcd-server-demo-etcd-1").verify_directly_issued_by(cert(again, "etcd-ca"))


def test_key_type_change_reissues_leaves_keeps_cas(pki: PKI, state: ClusterState, plan: Plan) -> None:
    cas = {n: pki.cert_pem(n) for n in ("ca", "etcd-ca", "front-proxy-ca")}
    sa = pki.key_pem("sa")
    again = ensure_pki(state, plan, PKISpec("ecdsa"))
    assert sorted(n for n, _ in again.changes) == sorted(LEAVES)
    assert {n: again.cert_pem(n) for n in cas} == cas and again.key_pem("sa") == sa
    assert isinstance(cert(again, "vkp-etcd-client").public_key(), ec.EllipticCurvePublicKey)


def test_missing_sa_key_is_an_error(pki: PKI, state: ClusterState, plan: Plan) -> None:
    pki.key_path("sa").unlink()
    with pytest.raises(PKIError, match="service-account token"):
        ensure_pki(state, plan, PKISpec())


def test_sa_has_no_certificate(shared: PKI) -> None:
    with pytest.raises(KeyError):
        shared.cert_pem("sa")
    with pytest.raises(KeyError):
        shared.path("nonsense")


# -- inventory and `vkp certs` ---------------------------------------------------------------


def test_inventory_lists_every_certificate(shared: PKI, plan: Plan) -> None:
    inv = shared.inventory()
    assert [c.name for c in inv][:5] == [
        "ca",
        "etcd-ca",
        "front-proxy-ca",
        "apiserver-etcd-client",
        "vkp-etcd-client",
    ]
    assert sorted(c.name for c in inv) == sorted(["ca", "etcd-ca", "front-proxy-ca", *LEAVES])
    by = {c.name: c for c in inv}
    assert by["etcd-ca"].days_left in (3649, 3650) and by["vkp-etcd-client"].days_left in (364, 365)
    assert by["etcd-server-demo-etcd-1"].issuer == "CN=etcd-ca"
    assert "IP:198.18.0.10" in by["etcd-server-demo-etcd-1"].sans
    assert by["ca"].path == shared.path("ca")


def test_list_certs_before_and_after_pki(state: ClusterState, plan: Plan) -> None:
    assert list_certs("demo") == []
    ensure_pki(state, plan, PKISpec("ecdsa"))
    rows = list_certs("demo")
    assert len(rows) == 3 + len(LEAVES)
    json.dumps(rows)  # plain data
    assert {"name", "subject", "issuer", "not_after", "days_left", "sans", "path"} <= set(rows[0])
    with pytest.raises(NotFound):
        list_certs("nosuch")


def test_vkp_certs_text_and_json(state: ClusterState, plan: Plan) -> None:
    ensure_pki(state, plan, PKISpec("ecdsa"))
    env = {"VKP_STATE_DIR": os.environ["VKP_STATE_DIR"]}
    r = CliRunner().invoke(main, ["certs", "demo"], env=env)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SUBJECT", "EXPIRES", "DAYS", "LEFT"]
    assert any(line.startswith("etcd-peer-demo-etcd-3 ") for line in lines)
    assert "PRIVATE" not in r.output
    r = CliRunner().invoke(main, ["certs", "demo", "--output", "json"], env=env)
    d = json.loads(r.stdout)
    assert d["ok"] is True and len(d["certificates"]) == 3 + len(LEAVES)
    r = CliRunner().invoke(main, ["certs", "nosuch"], env=env)
    assert r.exit_code == ExitCode.NOT_FOUND


# -- renewal (vkp certs renew) ----------------------------------------------------------------


def test_renewal_issues_new_keys_and_serials_from_the_unchanged_cas(
    pki: PKI, state: ClusterState, plan: Plan
) -> None:
    from provisioner.bootstrap.pki_renew import renew_leaves, renewable

    names = renewable(plan, ["etcd", "kubernetes"])
    assert set(names) == set(LEAVES) | {"admin"}
    before = snapshot(pki.root)
    old = {n: cert(pki, n) for n in names if pki.path(n).is_file()}
    renewed = renew_leaves(state, plan, PKISpec(), names)

    after = snapshot(pki.root)
    for ca in ("ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key", "front-proxy-ca.crt", "sa.key"):
        assert after[ca] == before[ca], ca  # not even rewritten
    by_name = {r["name"]: r for r in renewed}
    now = dt.datetime.now(dt.UTC)
    for name in names:
        new = cert(pki, name)
        issuer = "etcd-ca" if name.startswith("etcd-") or "etcd-client" in name else "ca"
        new.verify_directly_issued_by(cert(pki, issuer))
        assert (new.not_valid_after_utc - now).days in (364, 365)
        assert by_name[name]["serial"] == format(new.serial_number, "X").zfill(len(by_name[name]["serial"]))
        if name in old:
            assert new.serial_number != old[name].serial_number
            assert by_name[name]["serial_before"] != by_name[name]["serial"]
            assert new.public_key() != old[name].public_key()
            assert new.subject == old[name].subject and pki_mod._sans(new) == pki_mod._sans(old[name])
    assert {c["name"]: c["serial"] for c in list_certs("demo")}["etcd-server-demo-etcd-1"] == (
        by_name["etcd-server-demo-etcd-1"]["serial"]
    )
    # What the next create-cluster run sees: nothing to reissue.
    assert ensure_pki(state, plan, PKISpec()).changes == []


def test_renewal_never_makes_a_ca(state: ClusterState, plan: Plan) -> None:
    from provisioner.bootstrap.pki_renew import renew_leaves

    with pytest.raises(PKIError, match="the etcd-ca CA is missing") as ei:
        renew_leaves(state, plan, PKISpec(), ["etcd-server-demo-etcd-1"])
    assert "never makes one" in (ei.value.hint or "")
    assert not (state.path / "pki" / "etcd" / "ca.key").exists()


def test_renewal_refuses_a_name_vkp_does_not_issue(pki: PKI, state: ClusterState, plan: Plan) -> None:
    from provisioner.bootstrap.pki_renew import renew_leaves, renewable

    with pytest.raises(PKIError, match="etcd-server-nosuch: not a certificate vkp issues"):
        renew_leaves(state, plan, PKISpec(), ["etcd-server-nosuch"])
    with pytest.raises(ValueError, match="unknown part"):
        renewable(plan, ["vsphere"])
