"""vCenter's address and thumbprint: one parser each, and what reaches the connection."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.errors import VSphereError
from provisioner.spec import load_spec
from provisioner.vsphere import endpoint, login, session
from tests.unit.test_spec import LAB_ENV


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("vc.example.com", "vc.example.com", 443),
        ("vc.example.com:8443", "vc.example.com", 8443),
        ("https://vc.example.com/sdk", "vc.example.com", 443),
        ("[fd00::10]:8443", "fd00::10", 8443),
        ("[fd00::10]", "fd00::10", 443),
        ("fd00::10", "fd00::10", 443),
        ("10.0.0.5:8989", "10.0.0.5", 8989),
    ],
)
def test_addresses_split_and_join_back(text: str, host: str, port: int) -> None:
    assert endpoint.split_server(text) == (host, port)
    assert endpoint.split_server(endpoint.join_server(host, port)) == (host, port)


@pytest.mark.parametrize("text", ["", "vc:https", "vc:70000", "fd00::10:zz", "vc:٤٤٣"])
def test_bad_addresses_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="vCenter address|no vCenter"):
        endpoint.split_server(text)
    with pytest.raises(VSphereError):
        session.split_server(text)


def test_one_thumbprint_reading_everywhere() -> None:
    hexd = "ab" * 32
    for text in (hexd, hexd.upper(), ":".join(["AB"] * 32), " ".join(["ab"] * 32)):
        assert endpoint.thumbprint_hex(text) == hexd
        assert session.normalize_thumbprint(text) == hexd
    assert endpoint.format_thumbprint(hexd) == ":".join(["AB"] * 32)
    assert endpoint.thumbprint_hex("ab" * 20) is None  # SHA-1 is not a pin


def test_an_ipv6_vcenter_with_a_port_is_dialled_at_that_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, the spec's host and port were joined as "fd00::10:8443" and read back as host
    # "fd00::10:8443", port 443.
    spec = load_spec(None, name="demo", plan="dev", env=LAB_ENV | {"VKP_VSPHERE_SERVER": "[fd00::10]:8443"})
    assert (spec.vsphere.server, spec.vsphere.port) == ("fd00::10", 8443)
    dialled: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_smart_connect(**kw: Any) -> None:
        dialled.update(kw)
        raise Stop

    monkeypatch.setattr(session, "SmartConnect", fake_smart_connect)
    with pytest.raises(VSphereError):
        login.session_for(spec, LAB_ENV)
    assert (dialled["host"], dialled["port"]) == ("fd00::10", 8443)


def test_without_local_state_the_environment_names_vcenter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    vs = login.vsphere_from_env(
        {"VKP_VSPHERE_SERVER": "[fd00::10]:8443", "VKP_VSPHERE_THUMBPRINT": "ab" * 32}
    )
    assert (vs.server, vs.port, vs.tls.thumbprint) == ("fd00::10", 8443, "ab" * 32)
    with pytest.raises(Exception, match="VKP_VSPHERE_SERVER"):
        login.session_for_cluster("demo", {})
