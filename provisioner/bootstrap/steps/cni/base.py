"""What a cluster network (kubernetes.cni) is to vkp: a name, the release vkp pins, what the
first master applies, and where its pods run. Each one is a module of this package with a
template directory templates/cni/<name>/, listed once in REGISTRY (steps/cni/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.steps.artifacts import Fetch
from provisioner.bootstrap.steps.kubernetes.settings import VKP_DIR

CNI_DIR = f"{VKP_DIR}/cni"  # what kubernetes.cni applies, on the first master (0700, root)


@dataclass(frozen=True)
class Addon:
    """What kubernetes.cni applies from the first master, in order: an upstream manifest at a
    pinned version (server-side), the CRDs it must have established, then vkp's rendered files
    ([(path under CNI_DIR, text)])."""

    files: list[tuple[str, str]]
    fetch: Fetch | None = None
    crds: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CNI:
    name: str  # kubernetes.cni
    # The release vkp pins (kubernetes.cni_version overrides it); None for one with no
    # release of its own.
    pinned: str | None
    # (cluster, version) -> what the first master applies; None: nothing cluster-wide, the
    # network is made on each node by the CNI's own steps.
    addon: Callable[[Cluster, str], Addon] | None = None
    namespace: str | None = None  # where its pods run, for the health check
