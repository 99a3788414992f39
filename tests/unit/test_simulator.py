"""Pure parts of the lab simulator module: option parsing, certificates, thumbprints."""

from __future__ import annotations

import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from provisioner.errors import TLSVerifyError
from provisioner.lab import simulator
from provisioner.vsphere.session import format_thumbprint, normalize_thumbprint, split_server


def test_parse_delay() -> None:
    assert simulator.parse_delay("CloneVM_Task=2000") == ("CloneVM_Task", 2000)
    assert simulator.parse_delay(" PowerOnVM_Task = 0 ") == ("PowerOnVM_Task", 0)


@pytest.mark.parametrize(
    "bad", ["CloneVM_Task", "CloneVM_Task=", "=100", "CloneVM_Task=-1", "Clone VM=1", "X=1.5"]
)
def test_parse_delay_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="METHOD=MILLISECONDS"):
        simulator.parse_delay(bad)


def test_parse_fail() -> None:
    assert simulator.parse_fail("CloneVM_Task:2") == ("CloneVM_Task", 2)
    assert simulator.parse_fail("Login:1") == ("Login", 1)


@pytest.mark.parametrize(
    "bad", ["CloneVM_Task", "CloneVM_Task:0", "CloneVM_Task:x", ":2", "CloneVM_Task=2"]
)
def test_parse_fail_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="METHOD:K"):
        simulator.parse_fail(bad)


def test_certificate_and_thumbprint(tmp_path: Path) -> None:
    cert_path, key_path = simulator.make_certificate(tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]

    tp = simulator.thumbprint(pem)
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()
    assert tp == ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert len(tp) == 95 and tp == tp.upper()


def test_thumbprint_normalization() -> None:
    tp = "AB:" * 31 + "CD"
    assert normalize_thumbprint(tp) == "ab" * 31 + "cd"
    assert normalize_thumbprint(tp.replace(":", "").lower()) == "ab" * 31 + "cd"
    assert format_thumbprint("ab" * 31 + "cd") == tp
    with pytest.raises(TLSVerifyError, match="SHA-256"):
        normalize_thumbprint("AB:CD")  # SHA-1 length or garbage is refused


def test_split_server() -> None:
    assert split_server("vc.example.com") == ("vc.example.com", 443)
    assert split_server("vc.example.com:8443") == ("vc.example.com", 8443)
    assert split_server("[fd00::1]:8443") == ("fd00::1", 8443)
