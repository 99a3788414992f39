"""Logging in to the simulator the way vkp logs in to vCenter: verified TLS, then credentials."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from pyVmomi import vim

from provisioner.errors import AuthError, TLSVerifyError, VSphereError
from provisioner.vsphere.session import connect

pytestmark = pytest.mark.vcsim


def test_login_with_pinned_thumbprint_in_either_format(vcsim: Any) -> None:
    plain = vcsim.thumbprint.replace(":", "").lower()
    for tp in (vcsim.thumbprint, plain):
        with connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=tp) as s:
            assert s.server == vcsim.server
            assert s.content.about.apiType == "VirtualCenter"
            assert s.content.sessionManager.currentSession.userName == vcsim.user


def test_login_with_ca_file(vcsim: Any) -> None:
    ca = str(vcsim.run_dir / "vcsim.crt")
    with connect(vcsim.server, vcsim.user, vcsim.password, ca_file=ca) as s:
        assert s.content.sessionManager.currentSession is not None


def test_wrong_thumbprint_is_refused_before_login(vcsim: Any) -> None:
    wrong = "AB:" * 31 + "AB"
    with pytest.raises(TLSVerifyError) as err:
        connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=wrong)
    msg = str(err.value)
    assert wrong in msg and vcsim.thumbprint in msg  # both, so the user can compare
    assert "nothing was sent" in msg
    assert vcsim.password not in msg
    log = (vcsim.run_dir / "vcsim.log").read_text()
    assert vcsim.password not in log


def test_no_verification_choice_is_an_error(vcsim: Any) -> None:
    with pytest.raises(TLSVerifyError, match="thumbprint"):
        connect(vcsim.server, vcsim.user, vcsim.password)


def test_insecure_is_an_explicit_opt_in(vcsim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="provisioner.vsphere.session")
    with connect(vcsim.server, vcsim.user, vcsim.password, insecure=True) as s:
        assert s.content.about.apiType == "VirtualCenter"
    assert any("disabled" in r.message for r in caplog.records)


def test_wrong_password_is_an_auth_error_without_the_password(vcsim: Any) -> None:
    bad = vcsim.password + "-wrong"
    with pytest.raises(AuthError) as err:
        connect(vcsim.server, vcsim.user, bad, thumbprint=vcsim.thumbprint)
    assert bad not in str(err.value) and vcsim.password not in str(err.value)
    with pytest.raises(AuthError):
        connect(vcsim.server, "someone-else", vcsim.password, thumbprint=vcsim.thumbprint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_names_the_server(vcsim: Any) -> None:
    port = free_port()
    with pytest.raises(VSphereError, match=f"127.0.0.1:{port}"):
        connect(f"127.0.0.1:{port}", vcsim.user, vcsim.password, thumbprint=vcsim.thumbprint)


def test_call_logs_in_again_when_the_session_expired(vcsim: Any) -> None:
    with connect(vcsim.server, vcsim.user, vcsim.password, thumbprint=vcsim.thumbprint) as s:
        # What an expired session looks like: the server no longer knows the cookie.
        s.content.sessionManager.Logout()
        with pytest.raises(vim.fault.NotAuthenticated):
            s.content.rootFolder.childEntity  # noqa: B018
        names = s.call(lambda: [e.name for e in s.content.rootFolder.childEntity])
        assert names == ["DC0"]


def test_server_without_port_defaults_to_443() -> None:
    from provisioner.vsphere.session import split_server

    assert split_server("vc.example.com") == ("vc.example.com", 443)
    assert split_server("vc.example.com:8443") == ("vc.example.com", 8443)
    assert split_server("[fd00::1]:8443") == ("fd00::1", 8443)
