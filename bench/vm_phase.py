"""Benchmark: SOAP calls per VM in the VM phase of create-cluster, by method, against the simulator.

Starts a vCenter simulator of its own (as the vcsim tests do: needs Go and govmomi's source,
not root, not the lab), plays the hardware it lacks (tests/vcsim/hardware.py: guests report
their addresses), stands in for the SSH check (no guest answers SSH here; the lab suite
covers it), and runs the VM phase through the vSphere provider for a cluster of the given
plan (prod: 9 VMs with anti-affinity rules). Counts the calls of the phase's own session:
resolve, preflight, clones, reconfigures, power-ons, waits and rules.

  .venv/bin/python bench/vm_phase.py [--plan prod]
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyVmomi import SoapAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import infra  # noqa: E402
from provisioner.lab import paths, simulator  # noqa: E402
from provisioner.plan import NodePlan  # noqa: E402
from provisioner.spec import load_spec  # noqa: E402
from provisioner.state import ClusterState  # noqa: E402
from tests.vcsim import hardware  # noqa: E402

CALLS: collections.defaultdict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_invoke = SoapAdapter.SoapStubAdapter.InvokeMethod


def counting_invoke(self: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N803
    CALLS[id(self)][info.wsdlName] += 1  # by stub: the hardware's own session is not counted
    return _invoke(self, mo, info, args, outerStub)


SoapAdapter.SoapStubAdapter.InvokeMethod = counting_invoke  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_ssh(node: NodePlan, deadline: float) -> None:
    """The SSH check's stand-in: the simulator's guests do not run sshd."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="prod")
    args = parser.parse_args()
    binary = simulator.build(paths.CACHE, print)
    run_dir = Path(tempfile.mkdtemp(prefix="vkp-bench-vcsim-"))
    cert, _key = simulator.make_certificate(run_dir)
    user, password, port = "vkp-admin@vsphere.local", secrets.token_urlsafe(18), free_port()
    pid = simulator.start(
        binary, run_dir, port=port, hosts=3, username=user, password=password, delays={}, fails=[]
    )
    thumbprint = simulator.thumbprint(cert.read_bytes())
    env = {
        "VKP_VSPHERE_SERVER": f"127.0.0.1:{port}",
        "VKP_VSPHERE_USER": user,
        "VKP_VSPHERE_PASSWORD": password,
        "VKP_VSPHERE_THUMBPRINT": thumbprint,
        "VKP_VSPHERE_DATACENTER": "DC0",
        "VKP_VSPHERE_CLUSTER": "DC0_C0",
        "VKP_VSPHERE_DATASTORE": "LocalDS_0",
        "VKP_VSPHERE_NETWORK": "VM Network",
        "VKP_VSPHERE_TEMPLATE": "debian-12",
        "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199",
        "VKP_NETWORK_PREFIX": "24",
        "VKP_NETWORK_GATEWAY": "198.18.0.1",
        "VKP_NETWORK_DNS": "198.18.0.1",
        "VKP_API_ENDPOINT": "198.18.0.240",
        "VKP_STATE_DIR": tempfile.mkdtemp(prefix="vkp-bench-state-"),
    }
    os.environ.update(env)
    try:
        spec = load_spec(None, name="bench", plan=args.plan, env=os.environ)
        state = ClusterState.create_or_load("bench")
        with (
            hardware.running(env["VKP_VSPHERE_SERVER"], user, password, thumbprint),
            infra.get().open(spec, os.environ) as provider,
        ):
            CALLS.clear()
            t = time.monotonic()
            _plan, outcomes = provider.machines(spec, state, lambda _m: None, concurrency=8, check=no_ssh)
            wall = time.monotonic() - t
            stub = provider.session.si._stub  # type: ignore[attr-defined]
            calls = collections.Counter(CALLS[id(stub)])
        n = len(outcomes)
        total = sum(calls.values())
        print(f"VM phase, {n} VMs (plan {args.plan}) in {wall:.1f} s on the simulator")
        print(f"SOAP calls: {total} in all, {total / n:.1f} per VM")
        for method, count in calls.most_common():
            print(f"  {method:<34} {count:4d}  ({count / n:.1f} per VM)")
    finally:
        simulator.stop(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
