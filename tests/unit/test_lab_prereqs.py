"""What the lab says when it cannot start: no root, a port taken, packages missing without apt."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.errors import ExitCode, LabError
from provisioner.lab import lab as lab_mod
from provisioner.lab import prereqs


def test_without_root_lab_commands_say_why_and_exit_11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 1000)
    for args in (["lab", "up"], ["lab", "down"], ["lab", "prepare"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == ExitCode.LAB, args
        assert "needs root" in result.output and "sudo" in result.output


def test_missing_packages_without_apt_name_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs, "PACKAGES", {"no-such-package-vkp": "/nonexistent/vkp-tool"})
    monkeypatch.setattr(prereqs.shutil, "which", lambda _name: None)
    with pytest.raises(LabError, match="no-such-package-vkp"):
        prereqs.ensure_packages(lambda _m: None)


def test_a_taken_port_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_mod, "read_state", lambda: None)
    started: list[str] = []
    monkeypatch.setattr(lab_mod, "prepare", lambda log: started.append("prepare"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LabError, match=f"port {port}.*in use"):
            lab_mod.up(lab_mod.LabOptions(port=port), lambda _m: None)
    assert started == []
