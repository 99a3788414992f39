"""The cluster's PKI: three CAs, the service-account key pair and the etcd certificates.

The layout of <state>/pki/, the names PKI.cert_pem/key_pem take, and when a certificate is reissued.
See docs/architecture.md#bootstrap-pki.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.errors import ProvisionerError
from provisioner.plan import Plan
from provisioner.spec import PKISpec
from provisioner.state import ClusterState, atomic_write, file_lock

log = logging.getLogger(__name__)

# kubeadm's defaults.
CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
# Guests' clocks may lag the operator's machine by a little; a cert "not yet valid" on a guest
# would fail the first handshake for no reason.
BACKDATE = dt.timedelta(minutes=5)

CA_NAMES = ("ca", "etcd-ca", "front-proxy-ca")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PKIError(ProvisionerError):
    """PKI material on disk is damaged or inconsistent in a way vkp must not paper over."""


@dataclass(frozen=True)
class CertInfo:
    name: str
    subject: str
    issuer: str
    not_after: dt.datetime
    days_left: int
    sans: list[str]
    path: Path
    serial: str = ""  # hex, upper case, as `openssl x509 -serial` prints it

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subject": self.subject,
            "issuer": self.issuer,
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left,
            "sans": list(self.sans),
            "path": str(self.path),
            "serial": self.serial,
        }


@dataclass(frozen=True)
class _Profile:
    """What a certificate must look like; comparing it with what is on disk decides a reissue."""

    name: str
    cn: str
    issuer: str  # name of the signing CA
    server: bool = False
    client: bool = False
    org: str | None = None
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    def san_set(self) -> set[str]:
        return {f"DNS:{d}" for d in self.dns} | {f"IP:{ipaddress.ip_address(i)}" for i in self.ips}


def _files(name: str) -> tuple[str, str]:
    """(certificate or public key, private key) relative to the pki directory."""
    fixed = {
        "ca": ("ca.crt", "ca.key"),
        "etcd-ca": ("etcd/ca.crt", "etcd/ca.key"),
        "front-proxy-ca": ("front-proxy-ca.crt", "front-proxy-ca.key"),
        "sa": ("sa.pub", "sa.key"),
        "apiserver-etcd-client": ("apiserver-etcd-client.crt", "apiserver-etcd-client.key"),
        "vkp-etcd-client": ("etcd/vkp-client.crt", "etcd/vkp-client.key"),
        "admin": ("admin.crt", "admin.key"),
    }
    if name in fixed:
        return fixed[name]
    for kind in ("server", "peer"):
        prefix = f"etcd-{kind}-"
        if name.startswith(prefix) and len(name) > len(prefix):
            node = name[len(prefix) :]
            if "/" in node or node.startswith("."):
                break
            return f"etcd/{node}-{kind}.crt", f"etcd/{node}-{kind}.key"
    raise KeyError(f"unknown PKI name {name!r}")


@dataclass
class PKI:
    """The PKI files of one cluster. Reading never generates anything."""

    root: Path
    # (name, reason) for every file ensure_pki wrote on this run; empty on an unchanged re-run.
    changes: list[tuple[str, str]] = field(default_factory=list)

    def path(self, name: str) -> Path:
        """The certificate file of name (for "sa": sa.pub)."""
        return self.root / _files(name)[0]

    def key_path(self, name: str) -> Path:
        """The private key file of name (0600)."""
        return self.root / _files(name)[1]

    def cert_pem(self, name: str) -> bytes:
        if name == "sa":
            raise KeyError("sa is a key pair without a certificate; use public_pem('sa')")
        return self.path(name).read_bytes()

    def key_pem(self, name: str) -> bytes:
        return self.key_path(name).read_bytes()

    def public_pem(self, name: str) -> bytes:
        """The public key in PEM (SubjectPublicKeyInfo): sa.pub for "sa", else from the cert."""
        if name == "sa":
            return self.path("sa").read_bytes()
        cert = x509.load_pem_x509_certificate(self.cert_pem(name))
        return cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def names(self) -> list[str]:
        """Every certificate present: CAs, then the fixed leaves, then etcd nodes' leaves by name."""
        fixed = (*CA_NAMES, "apiserver-etcd-client", "vkp-etcd-client", "admin")
        out = [n for n in fixed if self.path(n).is_file()]
        etcd = self.root / "etcd"
        if etcd.is_dir():
            nodes: list[str] = []
            for p in sorted(etcd.glob("*.crt")):
                for kind in ("server", "peer"):
                    suffix = f"-{kind}.crt"
                    if p.name.endswith(suffix) and len(p.name) > len(suffix):
                        nodes.append(f"etcd-{kind}-{p.name[: -len(suffix)]}")
            out += sorted(nodes, key=lambda n: (n.split("-", 2)[2], "peer" in n.split("-", 2)[1]))
        return out

    def inventory(self, now: dt.datetime | None = None) -> list[CertInfo]:
        """Every certificate with subject, issuer, expiry and SANs (no private material)."""
        now = now or dt.datetime.now(dt.UTC)
        out = []
        for name in self.names():
            cert = x509.load_pem_x509_certificate(self.cert_pem(name))
            not_after = cert.not_valid_after_utc
            out.append(
                CertInfo(
                    name=name,
                    subject=cert.subject.rfc4514_string(),
                    issuer=cert.issuer.rfc4514_string(),
                    not_after=not_after,
                    days_left=(not_after - now).days,
                    sans=sorted(_sans(cert)),
                    path=self.path(name),
                    serial=serial_hex(cert),
                )
            )
        return out


def pki_dir(state: ClusterState) -> Path:
    return state.path / "pki"


def load_pki(state: ClusterState) -> PKI:
    """The cluster's PKI as it is on disk (possibly empty); never creates anything."""
    return PKI(pki_dir(state))


def list_certs(name: str) -> list[dict[str, Any]]:
    """`vkp certs NAME`: every certificate of the cluster with its expiry; [] before the etcd phase."""
    state = ClusterState.load(name)
    root = pki_dir(state)
    if not root.is_dir():
        return []
    return [c.to_dict() for c in PKI(root).inventory()]


def ensure_pki(state: ClusterState, plan: Plan, pki_spec: PKISpec) -> PKI:
    """Create what is missing and reissue leaves that no longer fit; reuse everything else."""
    root = pki_dir(state)
    for d in (root, root / "etcd"):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    pki = PKI(root)
    now = dt.datetime.now(dt.UTC)
    # Two vkp processes on one cluster must not both create a CA: the second would overwrite
    # the first after leaves were already signed by it.
    with file_lock(root):
        cas = {
            "ca": _ensure_ca(pki, "ca", "kubernetes", pki_spec, now),
            "etcd-ca": _ensure_ca(pki, "etcd-ca", "etcd-ca", pki_spec, now),
            "front-proxy-ca": _ensure_ca(pki, "front-proxy-ca", "front-proxy-ca", pki_spec, now),
        }
        _ensure_sa(pki, pki_spec)
        for profile in _leaf_profiles(plan):
            ca_cert, ca_key = cas[profile.issuer]
            _ensure_leaf(pki, profile, ca_cert, ca_key, pki_spec, now)
    return pki


# O=system:masters, not kubeadm 1.29+'s kubeadm:cluster-admins: vkp signs this certificate
# itself with the cluster CA, and system:masters is a group the API server grants everything
# on every version (no RBAC binding needed, none to be missing before kubeadm init made it).
ADMIN_PROFILE = _Profile("admin", "kubernetes-admin", "ca", client=True, org="system:masters")


def ensure_admin(state: ClusterState, pki_spec: PKISpec) -> PKI:
    """The admin client certificate, issued by the existing cluster CA (reissued like any leaf).

    Never creates a CA: PKIError when the cluster has none yet (it is made in the etcd phase).
    """
    root = pki_dir(state)
    pki = PKI(root)
    if not (pki.path("ca").is_file() and pki.key_path("ca").is_file()):
        raise PKIError(
            f"cluster {state.name} has no cluster CA yet ({pki.path('ca')})",
            hint="it is made at the start of create-cluster's etcd phase; run create-cluster first",
        )
    now = dt.datetime.now(dt.UTC)
    with file_lock(root):
        ca_cert, ca_key = _load_cert(pki.path("ca")), _load_key(pki.key_path("ca"))
        _ensure_leaf(pki, ADMIN_PROFILE, ca_cert, ca_key, pki_spec, now)
    return pki


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as `openssl x509 -noout -serial` prints it (upper-case hex, even length)."""
    text = format(cert.serial_number, "X")
    return text if len(text) % 2 == 0 else "0" + text


def _leaf_profiles(plan: Plan) -> list[_Profile]:
    out = [
        # O system:masters as kubeadm issues it, so RBAC-era tooling that inspects it agrees.
        _Profile(
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            "etcd-ca",
            client=True,
            org="system:masters",
        ),
        _Profile("vkp-etcd-client", "vkp-etcd-client", "etcd-ca", client=True),
    ]
    for node in plan.by_role("etcd"):
        dns = (node.name, "localhost")
        ips = (node.address, "127.0.0.1")
        # clientAuth too, as kubeadm issues it: etcd's own gRPC gateway dials its member with
        # the server certificate, and client-cert-auth refuses a server-only one.
        out.append(
            _Profile(
                f"etcd-server-{node.name}", node.name, "etcd-ca", server=True, client=True, dns=dns, ips=ips
            )
        )
        out.append(
            _Profile(
                f"etcd-peer-{node.name}", node.name, "etcd-ca", server=True, client=True, dns=dns, ips=ips
            )
        )
    return out


# -- CAs and the service-account key ---------------------------------------------------------


def _ensure_ca(
    pki: PKI, name: str, cn: str, spec: PKISpec, now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = pki.path(name), pki.key_path(name)
    if key_path.is_file():
        key = _load_key(key_path)
        if cert_path.is_file():
            cert = _load_cert(cert_path)
            if not _same_public_key(cert, key):
                raise PKIError(
                    f"{cert_path} does not belong to {key_path}",
                    hint="restore the matching pair from a backup; vkp never replaces a CA",
                )
            if cert.not_valid_after_utc <= now:
                raise PKIError(
                    f"the {name} CA ({cert_path}) expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                    hint="CA rotation is a deliberate operation vkp does not do on its own",
                )
            return cert, key
        # Only the certificate is missing (keys are written first, so an interrupted first run
        # leaves exactly this): the same key and name make a CA every issued leaf still chains to.
        cert = _self_signed(cn, key, now)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        pki.changes.append((name, "certificate rebuilt from the existing CA key"))
        log.info("pki: %s certificate rebuilt from its existing key", name)
        return cert, key
    if cert_path.exists():
        raise PKIError(
            f"{key_path} is missing while {cert_path} exists",
            hint="restore the CA key from a backup; vkp never replaces a CA, since every certificate "
            "in the cluster chains to it",
        )
    key = _new_key(spec)
    cert = _self_signed(cn, key, now)
    atomic_write(key_path, _key_bytes(key), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    pki.changes.append((name, "created"))
    log.info("pki: %s created", name)
    return cert, key


def _self_signed(cn: str, key: PrivateKey, now: dt.datetime) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True, encipherment=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _ensure_sa(pki: PKI, spec: PKISpec) -> None:
    pub_path, key_path = pki.path("sa"), pki.key_path("sa")
    if key_path.is_file():
        key = _load_key(key_path)
        public = _public_bytes(key)
        if not pub_path.is_file():
            atomic_write(pub_path, public, 0o644)
            pki.changes.append(("sa", "public key derived from sa.key"))
        elif pub_path.read_bytes() != public:
            raise PKIError(
                f"{pub_path} does not belong to {key_path}",
                hint="remove sa.pub to have it derived again from sa.key",
            )
        return
    if pub_path.exists():
        raise PKIError(
            f"{key_path} is missing while {pub_path} exists",
            hint="restore sa.key from a backup; a new one would invalidate every service-account token",
        )
    key = _new_key(spec)
    atomic_write(key_path, _key_bytes(key), 0o600)
    atomic_write(pub_path, _public_bytes(key), 0o644)
    pki.changes.append(("sa", "created"))
    log.info("pki: service-account key pair created")


# -- leaves ----------------------------------------------------------------------------------


def _ensure_leaf(
    pki: PKI,
    profile: _Profile,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    spec: PKISpec,
    now: dt.datetime,
) -> None:
    cert_path, key_path = pki.path(profile.name), pki.key_path(profile.name)
    reason = _reissue_reason(cert_path, key_path, profile, ca_cert, spec, now)
    if reason is None:
        return
    key = _new_key(spec)
    cert = _issue(profile, key, ca_cert, ca_key, now)
    # Key first: a crash in between leaves a cert/key mismatch, which the next run reissues.
    atomic_write(key_path, _key_bytes(key), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    pki.changes.append((profile.name, reason))
    log.info("pki: %s issued (%s)", profile.name, reason)


def _reissue_reason(
    cert_path: Path,
    key_path: Path,
    profile: _Profile,
    ca_cert: x509.Certificate,
    spec: PKISpec,
    now: dt.datetime,
) -> str | None:
    if not cert_path.is_file() or not key_path.is_file():
        return "created"
    try:
        cert = _load_cert(cert_path)
        key = _load_key(key_path)
    except PKIError as exc:
        return f"unreadable: {exc.message}"
    if not _same_public_key(cert, key):
        return "key does not match the certificate"
    if not _signed_by(cert, ca_cert):
        return f"not issued by the current {profile.issuer}"
    have = _sans(cert)
    if have != profile.san_set():
        return f"SANs changed: {', '.join(sorted(have))} -> {', '.join(sorted(profile.san_set()))}"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    if _key_kind(key) != _key_kind_of_spec(spec):
        return f"key type {_key_kind(key)} -> {_key_kind_of_spec(spec)}"
    return None


def _issue(
    profile: _Profile, key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey, now: dt.datetime
) -> x509.Certificate:
    attrs = []
    if profile.org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, profile.cn))
    usages = []
    if profile.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if profile.client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True, cert_sign=False, encipherment=isinstance(key, rsa.RSAPrivateKey)
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if profile.dns or profile.ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in profile.dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in profile.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# -- helpers ---------------------------------------------------------------------------------


def _key_usage(*, digital_signature: bool, cert_sign: bool, encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key(spec: PKISpec) -> PrivateKey:
    if spec.key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if spec.key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.rsa_bits)
    raise PKIError(f"unknown key type {spec.key_type!r}", hint="pki.key_type is rsa or ecdsa")


def _key_kind(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return f"ecdsa-{key.curve.name}"


def _key_kind_of_spec(spec: PKISpec) -> str:
    return f"rsa-{spec.rsa_bits}" if spec.key_type == "rsa" else f"ecdsa-{ec.SECP256R1().name}"


def _key_bytes(key: PrivateKey) -> bytes:
    # PKCS#8 unencrypted: etcd, kube-apiserver and Python's ssl all read it, for RSA and EC alike.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_bytes(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_key(path: Path) -> PrivateKey:
    try:
        # The keys are vkp's own, written 0600 into the state; RSA's consistency check costs
        # ~75 ms a key and made every re-run spend about a second here. Whether a key belongs
        # to its certificate is still checked (_same_public_key).
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as exc:
        # The exception text from cryptography never includes key material, only the reason.
        raise PKIError(f"{path} is not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path} holds a {type(key).__name__}; vkp uses RSA or ECDSA keys")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise PKIError(f"{path} is not a readable PEM certificate ({exc})") from None


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, pub) == key.public_key().public_bytes(enc, pub)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {f"DNS:{d}" for d in ext.get_values_for_type(x509.DNSName)} | {
        f"IP:{i}" for i in ext.get_values_for_type(x509.IPAddress)
    }
