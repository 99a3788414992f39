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
# Kubernetes artifacts for lab clusters (kubeadm, kubelet, kubectl and their .sha256 files):
# nothing here can download them, so `vkp lab env` points clusters at this directory, where
# a user who has them can put them. Kept across `vkp lab down`, like the cache.
ARTIFACTS = LAB_HOME / "artifacts"
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

DEFAULT_PORT = 8989
