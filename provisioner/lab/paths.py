"""Where the embedded lab keeps its things, and its fixed network.

CACHE survives `vkp lab down` (the simulator build and the guest image take minutes to
make); RUN is everything a running lab owns and is removed by `vkp lab down`.
"""

from __future__ import annotations

import os
from pathlib import Path

LAB_HOME = Path(os.environ.get("VKP_LAB_HOME", "/var/lib/vkp-lab"))
CACHE = LAB_HOME / "cache"
RUN = LAB_HOME / "run"
GUESTS = RUN / "guests"  # one directory per realized VM: overlay upper/work, seed, logs
# Kubernetes artifacts for lab clusters, in the layout of a `local:` artifact source: the lab's
# own build of Kubernetes from Debian's source (provisioner/lab/kubebuild.py), with a SHA-256
# for every file. Kept across `vkp lab down`, like the cache.
ARTIFACTS = LAB_HOME / "artifacts"
# The operator's kubectl for lab clusters: the lab's own v1.20.2 build (Debian's
# kubernetes-client is the same source, but its /usr/bin/kubectl collides with kubectl packages
# a machine may already have). `vkp lab env` puts this directory first on PATH.
BIN = LAB_HOME / "bin"
SITE_DEFAULTS = RUN / "site-defaults.yaml"  # VKP_SITE_DEFAULTS: what a lab node needs
HOST_SYSCTLS = RUN / "host-sysctls.json"  # this machine's values before `vkp lab up` changed them
ENV_FILE = RUN / "env"  # `vkp lab env` output, 0600 (holds the generated password)
STATE_FILE = RUN / "lab.json"  # how the running lab was started: port, hosts, pids

# RFC 2544 benchmarking range: never routed, so lab traffic cannot leave this machine.
BRIDGE = "vkplab0"
GATEWAY = "198.18.0.1"
PREFIX = 24
SUBNET = "198.18.0.0/24"
# Addresses vkp hands to cluster nodes in the lab; .2-.9 are left for lab services and
# .200-.250 for API virtual addresses (a multi-master cluster's endpoint must lie outside the pool).
POOL_START = "198.18.0.10"
POOL_END = "198.18.0.199"
VIP_START, VIP_END = 200, 250  # last octet: API virtual addresses `vkp lab env` offers
# Pods and services of lab clusters: the rest of the benchmarking range, never private ranges.
POD_CIDR = "198.19.0.0/17"
SERVICE_CIDR = "198.19.128.0/17"


def vip_candidates() -> list[str]:
    base = GATEWAY.rsplit(".", 1)[0]
    return [f"{base}.{i}" for i in range(VIP_START, VIP_END + 1)]

DEFAULT_PORT = 8989
