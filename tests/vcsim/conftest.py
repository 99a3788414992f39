"""The vCenter simulator, built and started once for the vcsim suite.

Never skips: without Go or govmomi's source the fixture fails and says what to install, so a
CI run cannot pass by testing nothing.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.errors import LabError
from provisioner.lab import paths, simulator

USER = "vkp-admin@vsphere.local"
HOSTS = 3


@dataclass(frozen=True)
class Vcsim:
    server: str
    user: str
    password: str
    thumbprint: str
    port: int
    hosts: int
    pid: int
    run_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    t = time.monotonic()
    try:
        binary = simulator.build(paths.CACHE, lambda m: print(m))
    except LabError as exc:
        pytest.fail(f"cannot build the vCenter simulator:\n{exc}", pytrace=False)
    print(f"simulator binary ready in {time.monotonic() - t:.1f}s: {binary}")
    return binary


@pytest.fixture(scope="session")
def start_vcsim(
    vcsim_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Vcsim]]:
    """Start simulators on demand (e.g. with -delay/-fail); all are stopped at session end."""
    pids: list[int] = []

    def start(
        *,
        hosts: int = HOSTS,
        delays: dict[str, int] | None = None,
        fails: list[tuple[str, int]] | None = None,
    ) -> Vcsim:
        run_dir = tmp_path_factory.mktemp("vcsim")
        cert, _key = simulator.make_certificate(run_dir)
        password = secrets.token_urlsafe(18)
        port = free_port()
        t = time.monotonic()
        pid = simulator.start(
            vcsim_binary,
            run_dir,
            port=port,
            hosts=hosts,
            username=USER,
            password=password,
            delays=delays or {},
            fails=fails or [],
        )
        print(f"simulator on port {port} serving after {time.monotonic() - t:.2f}s")
        pids.append(pid)
        return Vcsim(
            server=f"127.0.0.1:{port}",
            user=USER,
            password=password,
            thumbprint=simulator.thumbprint(cert.read_bytes()),
            port=port,
            hosts=hosts,
            pid=pid,
            run_dir=run_dir,
        )

    yield start
    for pid in pids:
        simulator.stop(pid)


@pytest.fixture(scope="session")
def vcsim(start_vcsim: Callable[..., Vcsim]) -> Vcsim:
    return start_vcsim()
