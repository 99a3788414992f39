"""Benchmark: the VM phase of create-cluster against the critical path of one VM.

Restarts the embedded lab with CloneVM_Task delayed 2000 ms and PowerOnVM_Task 1000 ms (as a
busy vCenter would answer), then, in one run and side by side:
  1. one VM alone through the same pipeline (clone + power on + address + SSH): the critical path;
  2. a 9-VM cluster (3 etcd, 3 masters, 3 workers) through create-cluster --up-to vms.
Prints wall times, their ratio (goal: under 1.5) and SOAP calls per VM. Leaves the lab up
without the delays. Needs root.

  .venv/bin/python bench/vm_phase.py
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any

from pyVmomi import SoapAdapter

from provisioner import cluster, provision
from provisioner.lab import lab as lab_mod
from provisioner.plan import make_plan
from provisioner.spec import load_spec
from provisioner.state import ClusterState

CALLS: collections.Counter[str] = collections.Counter()
_invoke = SoapAdapter.SoapStubAdapter.InvokeMethod


def counting_invoke(self: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N803
    CALLS[info.wsdlName] += 1
    return _invoke(self, mo, info, args, outerStub)


SoapAdapter.SoapStubAdapter.InvokeMethod = counting_invoke  # type: ignore[method-assign]


def lab_env() -> dict[str, str]:
    from provisioner.lab import paths

    env = {}
    for line in paths.ENV_FILE.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v.strip("'")
    return env


def quiet(_: str) -> None:
    pass


def main() -> int:
    lab_mod.down(quiet)
    lab_mod.up(lab_mod.LabOptions(delays={"CloneVM_Task": 2000, "PowerOnVM_Task": 1000}), quiet)
    os.environ.update(lab_env())
    os.environ["VKP_STATE_DIR"] = tempfile.mkdtemp(prefix="vkp-bench-")
    os.environ["VKP_API_ENDPOINT"] = "198.18.0.240"
    try:
        # 1. One VM alone: the critical path.
        spec = load_spec(None, name="one", plan="dev", env=os.environ)
        state = ClusterState.create_or_load("one")
        with provision.session_for(spec) as session:
            inv = provision.resolve(session.content, spec, f"vkp/{spec.name}")
            plan = make_plan(spec, hosts=[h.name for h in inv.hosts])
            plan = dataclasses.replace(plan, nodes=plan.nodes[:1], anti_affinity_rules=())
            for n in plan.nodes:
                state.host_key(n.name)
            state.write_known_hosts([(n.name, n.address) for n in plan.nodes])
            t = time.monotonic()
            (one,) = provision.VMPhase(session, spec, plan, inv, state, quiet).run({})
            critical = time.monotonic() - t
        cluster.delete_cluster("one", quiet)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in one.seconds.items())
        print(f"critical path, one VM:            {critical:6.1f} s   ({stages})")

        # 2. Nine VMs through create-cluster.
        spec9 = load_spec(None, name="nine", plan="prod", env=os.environ)
        CALLS.clear()
        t = time.monotonic()
        result = cluster.create_cluster(spec9, quiet, up_to="vms")
        wall = time.monotonic() - t
        calls = sum(CALLS.values())
        vms = len(result["nodes"])
        vm_phase = result["phases"][0]["seconds"]
        print(f"VM phase, {vms} VMs (create-cluster): {vm_phase:6.1f} s   (whole command {wall:.1f} s)")
        print(f"ratio VM phase / critical path:   {vm_phase / critical:6.2f}    (goal < 1.5)")
        for n in result["nodes"]:
            print(f"  {n['name']:<14} " + ", ".join(f"{k} {v:.1f}s" for k, v in n["seconds"].items()))
        print(f"SOAP calls: {calls} in all, {calls / vms:.1f} per VM")
        for method, n in CALLS.most_common():
            print(f"  {method:<32} {n:4d}")
        cluster.delete_cluster("nine", quiet)
    finally:
        lab_mod.down(quiet)
        lab_mod.up(lab_mod.LabOptions(), quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
