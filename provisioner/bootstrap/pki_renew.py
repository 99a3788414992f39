"""`vkp certs renew`'s half on the operator's machine: vkp's leaves issued again from the
cluster's existing CAs (new keys and serials, a year from now), CAs unchanged.

Which leaves are vkp's, and how they are built, is pki.py's; the nodes get them from the
certs-renew playbook (playbooks/certs-renew.yaml).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.bootstrap.pki import (
    ADMIN_PROFILE,
    PKI,
    PKIError,
    PrivateKey,
    _issue,
    _key_bytes,
    _leaf_profiles,
    _load_cert,
    _load_key,
    _new_key,
    _same_public_key,
    pki_dir,
    serial_hex,
)
from provisioner.plan import Plan
from provisioner.spec import PKISpec
from provisioner.state import ClusterState, atomic_write, file_lock

log = logging.getLogger(__name__)

# Which of vkp's leaves `vkp certs renew` reissues for each part: the etcd members' own and
# vkp's client (etcd), and what the masters and the operator hold (kubernetes).
RENEW_PARTS = ("etcd", "kubernetes")


def renewable(plan: Plan, parts: list[str] | tuple[str, ...]) -> list[str]:
    """The names of vkp's leaves renewing parts reissues, in the order they are issued."""
    unknown = sorted(set(parts) - set(RENEW_PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(RENEW_PARTS)}")
    out: list[str] = []
    if "etcd" in parts:
        out += [
            p.name for p in _leaf_profiles(plan) if p.name.startswith("etcd-") or p.name == "vkp-etcd-client"
        ]
    if "kubernetes" in parts:
        out += ["apiserver-etcd-client", ADMIN_PROFILE.name]
    return out


def renew_leaves(
    state: ClusterState, plan: Plan, pki_spec: PKISpec, names: list[str]
) -> list[dict[str, Any]]:
    """Issue each named leaf again, whatever its expiry: a new key and serial, LEAF_DAYS from now,
    from the existing CA, which is never changed. PKIError if the CA is missing or expired.

    Returns, per leaf, its name, the serial before and after and the new not_after.
    """
    root = pki_dir(state)
    pki = PKI(root)
    profiles = {p.name: p for p in (*_leaf_profiles(plan), ADMIN_PROFILE)}
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise PKIError(f"{', '.join(unknown)}: not a certificate vkp issues for cluster {state.name}")
    now = dt.datetime.now(dt.UTC)
    out: list[dict[str, Any]] = []
    # CAs first, outside the lock: they are only read, and a missing one stops the run before
    # any leaf is written.
    cas = {i: _existing_ca(pki, i, now) for i in dict.fromkeys(profiles[n].issuer for n in names)}
    with file_lock(root):
        for name in names:
            profile = profiles[name]
            ca_cert, ca_key = cas[profile.issuer]
            before = serial_hex(_load_cert(pki.path(name))) if pki.path(name).is_file() else None
            key = _new_key(pki_spec)
            cert = _issue(profile, key, ca_cert, ca_key, now)
            # Key first, as _ensure_leaf: a crash in between leaves a mismatch the next run reissues.
            atomic_write(pki.key_path(name), _key_bytes(key), 0o600)
            atomic_write(pki.path(name), cert.public_bytes(serialization.Encoding.PEM), 0o644)
            pki.changes.append((name, "renewed"))
            log.info("pki: %s renewed", name)
            out.append(
                {
                    "name": name,
                    "serial_before": before,
                    "serial": serial_hex(cert),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
            )
    return out


def _existing_ca(pki: PKI, name: str, now: dt.datetime) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = pki.path(name), pki.key_path(name)
    if not (cert_path.is_file() and key_path.is_file()):
        raise PKIError(
            f"the {name} CA is missing ({cert_path}, {key_path})",
            hint="renewal issues leaves from the cluster's existing CAs and never makes one; restore "
            "the CA from a backup of the state directory",
        )
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if not _same_public_key(cert, key):
        raise PKIError(
            f"{cert_path} does not belong to {key_path}", hint="restore the matching pair from a backup"
        )
    if cert.not_valid_after_utc <= now:
        raise PKIError(
            f"the {name} CA ({cert_path}) expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            hint="CA rotation is a deliberate operation vkp does not do on its own",
        )
    return cert, key
