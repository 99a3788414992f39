"""vkp's command line over scripted nodes, for the progress view's terminal tests.

`python -m tests.unit.progress_driver [vkp arguments]` runs the real CLI, lifecycle and
playbook runner with two stand-ins: an infrastructure whose machines are there at once, and
nodes that are fakes.FakeHost answering every command. The playbook is a small one with
create-cluster's phases; its `kubeadm init` takes VKP_TEST_SLOW seconds (1.5 by default) so
that a wait is on screen, and fails on the node VKP_TEST_FAIL names. Nothing is contacted;
the cluster's state goes to VKP_STATE_DIR, which the caller sets.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provisioner import infra, stop
from provisioner.bootstrap import phases, runner
from provisioner.bootstrap.engine import Cluster, Facts, Run, StepGen, step
from provisioner.plan import Plan, make_plan
from provisioner.spec import ClusterSpec
from provisioner.ssh.commands import Cmd, Result
from provisioner.state import ClusterState, NodeRecord
from tests.unit import fakes
from tests.unit.test_spec import LAB_ENV

PLAYBOOK = """
- play: etcd
  phase: etcd
  hosts: etcd
  steps: [viewtest.configure]
- play: runtime
  phase: runtime
  hosts: master+worker
  steps: [viewtest.configure]
- play: kubernetes
  phase: kubernetes
  hosts: all
  steps: [viewtest.init, viewtest.verify]
"""


@step("viewtest.configure")
def _configure(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("configure", node.name))


@step("viewtest.init")
def _init(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("kubeadm", "init", "--node-name", node.name), timeout=900)


@step("viewtest.verify")
def _verify(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("verify", node.name), changes=False)


class Node(fakes.FakeHost):
    def _command(self, args: list[str]) -> Result:
        if args[:2] == ["kubeadm", "init"]:
            stop.sleep(float(os.environ.get("VKP_TEST_SLOW", "1.5")), "kubeadm init")
            if os.environ.get("VKP_TEST_FAIL") == self.name:
                return Result(1, "", "kubeadm: the control plane did not come up")
        return Result(0, "", "")

    def close(self) -> None:
        pass


class PKI:
    def cert_pem(self, name: str) -> bytes:
        return b"-----BEGIN CERTIFICATE-----\n"

    def key_pem(self, name: str) -> bytes:
        return b"-----BEGIN PRIVATE KEY-----\n"


class Machines:
    """The infrastructure: every node's machine is there (created) as soon as it is asked for."""

    def machines(
        self, spec: ClusterSpec, state: ClusterState, log: Any, *, concurrency: int, check: Any
    ) -> tuple[Plan, list[infra.NodeOutcome]]:
        plan = make_plan(spec)
        for n in plan.nodes:
            state.save_node(NodeRecord(name=n.name, role=n.role, address=n.address))
            log(f"{n.name}: cloned on - (0.0s)")
        return plan, [infra.NodeOutcome(n, created=True, changed=True) for n in plan.nodes]

    @contextlib.contextmanager
    def open(self, spec: ClusterSpec, env: Any = None) -> Iterator[Machines]:
        yield self


MACHINES = Machines()


def main() -> None:
    for k, v in LAB_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("VKP_API_ENDPOINT", "198.18.0.251")
    where = tempfile.mkdtemp(prefix="vkp-view-")
    atexit.register(shutil.rmtree, where, True)
    playbook = Path(where) / "cluster.yaml"
    playbook.write_text(PLAYBOOK)
    infra.INFRASTRUCTURES["vsphere"] = f"{__name__}:MACHINES"
    phases.PLAYBOOK = playbook
    stand_ins: dict[tuple[Any, str], Any] = {
        (phases, "ensure_pki"): lambda state, plan, pki: PKI(),
        (phases, "_probe_artifacts"): lambda spec, state, log: None,
        (phases, "connect_all"): lambda spec, state, nodes: {n.name: Node(n.name) for n in nodes},
        (runner, "gather_facts"): lambda conn, probes: conn.facts(list(probes)),
    }
    for (module, name), fn in stand_ins.items():
        vars(module)[name] = fn

    from provisioner.cli import main as vkp

    vkp(sys.argv[1:], prog_name="vkp")


if __name__ == "__main__":
    main()
