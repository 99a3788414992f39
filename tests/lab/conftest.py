"""Fixtures for lab tests: the guest image and the bridge, made once per session.

Lab tests never skip: on a machine that cannot run the lab (not root, a tool missing) they
fail and say what is missing, so a CI run cannot pass by testing nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from provisioner.lab import image, network, paths

_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "setsid": "util-linux",
    "chroot": "coreutils",
}


def _require_lab_host() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("lab tests must run as root (network namespaces, bridge, nspawn)")
    missing = sorted({pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None})
    if missing:
        problems.append("missing packages: " + " ".join(missing) + " (apt-get install them)")
    if problems:
        pytest.fail("the lab cannot run here:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def lab_image() -> Path:
    """The guest image root under paths.CACHE: built on first use (about 2 minutes), then reused."""
    _require_lab_host()
    started = time.monotonic()
    root = image.build_image(paths.CACHE, log=lambda m: print(f"[lab image] {m}", flush=True))
    print(f"[lab image] {root} ready after {time.monotonic() - started:.1f} s", flush=True)
    return root


@pytest.fixture(scope="session")
def lab_bridge() -> str:
    _require_lab_host()
    network.ensure_bridge()
    return paths.BRIDGE
