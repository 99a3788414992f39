"""Fixtures shared by the suites that need the embedded lab.

In CI nothing may be skipped, so a missing prerequisite fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab import guest as lab_guests
from provisioner.lab import lab as lab_mod
from provisioner.lab import paths

# The vkp of the interpreter running the tests (the venv under test), whatever PATH says.
VKP = str(Path(sys.executable).parent / "vkp")


def _log(message: str) -> None:
    print(f"[lab] {message}")


class LabHandle:
    """The running lab's connection facts, read afresh each time (a test may restart the lab)."""

    def _state(self) -> dict[str, Any]:
        state = lab_mod.read_state()
        assert state is not None, "the lab is not up"
        return state

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self._state()['port']}"

    @property
    def username(self) -> str:
        return str(self._state()["username"])

    @property
    def thumbprint(self) -> str:
        return str(self._state()["thumbprint"])

    @property
    def password(self) -> str:
        return (paths.RUN / "password").read_text().strip()

    def wait_guests_gone(self, cluster: str, timeout: float = 180) -> None:
        """Until no lab guest of cluster's VMs is left. The hypervisor removes a guest after its VM
        is destroyed, as a real host frees a VM's resources after the task: later tests must not
        meet the stragglers (on the bridge, or in `vkp lab down`'s count)."""
        deadline = time.monotonic() + timeout
        left: list[str] = []
        while time.monotonic() < deadline:
            left = [g.hostname for g in lab_guests.list_guests(paths.GUESTS)]
            left = [h for h in left if h.startswith(f"{cluster}-")]
            if not left:
                return
            time.sleep(0.5)
        raise AssertionError(f"guests of {cluster} still there {timeout:.0f}s after its VMs went: {left}")

    def env(self) -> dict[str, str]:
        """The variables `vkp lab env` exports, as a dict for subprocess environments."""
        out = {}
        for line in paths.ENV_FILE.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = shlex.split(value)[0] if value else ""
        return out


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    """A running embedded lab; brought up if needed and taken down again if this session started it."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (they create a bridge and boot guests with systemd-nspawn)")
    was_up = lab_mod.status().get("up", False)
    lab_mod.up(lab_mod.LabOptions(), _log)
    yield LabHandle()
    if not was_up and lab_mod.read_state() is not None:
        lab_mod.down(_log)


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI every test must run: a skip there hides a missing install step.
    if os.environ.get("CI") and _skipped:
        print(f"\nCI: {len(_skipped)} test(s) skipped, which CI does not allow: {', '.join(_skipped)}")
        session.exitstatus = 1
