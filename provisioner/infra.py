"""The seam between a cluster's lifecycle and the infrastructure its machines run on.

The lifecycle (provisioner/cluster.py: create, delete, resize, describe) runs over these
interfaces and imports no infrastructure: an Infrastructure is picked by name (get()), opens
a Provider bound to one session, and the Provider makes, finds and destroys the machines.
vSphere's is provisioner/vsphere/provider.py; a second infrastructure implements the same
two protocols in a module of its own and adds one line to INFRASTRUCTURES.

A Provider's machines answer SSH with their pinned host keys before machines() returns; the
check itself is the lifecycle's (a NodeCheck it passes in: ssh_check() for a real run), so every
infrastructure verifies nodes the same way and tests can stand in for the network.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner import view
from provisioner.errors import SSHError
from provisioner.plan import NodePlan, Plan
from provisioner.spec import ClusterSpec
from provisioner.ssh.commands import Cmd
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState

Log = Callable[[str], None]
# Does the node answer SSH as itself, with its pinned host key, cloud-init done? Raises (an
# SSHError, a Timeout...) if not; deadline: seconds it may take.
NodeCheck = Callable[[NodePlan, float], None]

# name -> "module:attribute" of its Infrastructure; imported only when asked for.
INFRASTRUCTURES = {"vsphere": "provisioner.vsphere.provider:VSPHERE"}


@dataclass
class NodeOutcome:
    """One node's machine after machines(): where it runs, what the run did to it."""

    node: NodePlan
    machine: Any = None  # the infrastructure's handle on it
    esxi_host: str | None = None  # the physical host it runs on, if the infrastructure says
    created: bool = False
    changed: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SeenNode:
    """A machine the infrastructure holds for a cluster, as it reports it (no local state needed)."""

    name: str
    role: str | None  # from the machine's mark; None when it carries none
    power_state: str | None
    address: str | None
    # "guest": reported by the running guest; "config": the address vkp gave it at creation.
    address_source: str | None
    host: str | None  # the physical host it runs on
    machine_id: str  # the infrastructure's id for it (a vSphere moid)
    path: str | None  # where it is in the infrastructure's inventory


@dataclass(frozen=True)
class SeenRule:
    """A placement rule of a cluster (vSphere: a DRS anti-affinity rule)."""

    name: str
    where: str  # the compute cluster it is on
    members: tuple[str, ...]  # the machines it keeps apart, by name


@dataclass
class SeenCluster:
    """One cluster id as the infrastructure knows it, read from the marks vkp puts on objects."""

    name: str
    cluster_id: str
    nodes: list[SeenNode] = field(default_factory=list)
    rules: list[SeenRule] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # where its machines live
    datacenters: list[str] = field(default_factory=list)

    def roles(self) -> dict[str, int]:
        """How many machines of each role, etcd, master, worker first."""
        order = {"etcd": 0, "master": 1, "worker": 2}
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.role or "unmarked"] = counts.get(n.role or "unmarked", 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])))


class Holdings(Protocol):
    """What an infrastructure holds for one cluster id (machines, rules, folders...)."""

    def counts(self) -> dict[str, int]: ...

    def empty(self) -> bool: ...

    def summary(self) -> str:
        """One line, e.g. "3 VM(s), 1 rule(s), 1 folder(s)"."""
        ...

    def names(self) -> list[str]:
        """Each object, as a user would look for it ("VM demo-worker-1", "folder demo")."""
        ...


class Provider(Protocol):
    """An infrastructure bound to one session (opened by Infrastructure.open*)."""

    def machines(
        self,
        spec: ClusterSpec,
        state: ClusterState,
        log: Log,
        *,
        concurrency: int,
        check: NodeCheck,
        only: Collection[str] | None = None,
    ) -> tuple[Plan, list[NodeOutcome]]:
        """Make sure every node of the spec has its machine, booted with its cloud-init and
        passing check; preflight refusals raise PreflightError before anything is made.
        only: act on these nodes alone (a repair); the others' machines are taken as they are."""
        ...

    def resolve_id(self, name: str, wanted: str | None) -> str | None:
        """The one cluster id carrying name (wanted, if given, must be among them)."""
        ...

    def find_owned(self, name: str, cluster_id: str | None) -> Holdings:
        """Everything that carries cluster_id (nothing when it is None)."""
        ...

    def destroy(self, owned: Holdings, log: Log) -> list[str]:
        """Destroy what find_owned found; returns the containers kept because they hold
        something the cluster does not own."""
        ...

    def destroy_actions(self, owned: Holdings) -> list[str]:
        """What destroy would do, in order; reads the infrastructure, changes nothing."""
        ...

    def find_nodes(
        self, name: str, cluster_id: str, nodes: list[str], *, only_ids: Collection[str] | None = None
    ) -> Holdings:
        """The machines of these nodes (of this cluster id only), to destroy on a shrink or a
        repair; only_ids: of those, only the machines with these ids (a repair's old machine)."""
        ...

    def machine_ids(self, name: str, cluster_id: str, nodes: list[str]) -> dict[str, str]:
        """The id of each of these nodes' machines (of this cluster id), by node name."""
        ...

    def survey(self) -> list[SeenCluster]:
        """Every cluster the infrastructure holds anything of, by name and id; read-only."""
        ...

    def where(self) -> str:
        """The infrastructure this provider is bound to, as a user names it (vCenter's address)."""
        ...


class Infrastructure(Protocol):
    def open(
        self, spec: ClusterSpec, env: Mapping[str, str] | None = None
    ) -> AbstractContextManager[Provider]:
        """A session for the spec (credentials from env or a prompt)."""
        ...

    def open_cluster(
        self, name: str, env: Mapping[str, str] | None = None
    ) -> AbstractContextManager[Provider]:
        """A session for an existing cluster: its saved spec's, else the environment's."""
        ...

    def open_env(self, env: Mapping[str, str] | None = None) -> AbstractContextManager[Provider]:
        """A session from the environment alone (no cluster named, no spec)."""
        ...

    def planned_actions(self, spec: ClusterSpec, plan: Plan) -> list[str]:
        """What machines() would do for a cluster that has nothing yet; contacts nothing."""
        ...

    def nothing(self) -> Holdings:
        """No holdings (a cluster that never reached the infrastructure)."""
        ...


def get(name: str = "vsphere") -> Infrastructure:
    module, _, attr = INFRASTRUCTURES[name].partition(":")
    infra: Infrastructure = getattr(importlib.import_module(module), attr)
    return infra


def ssh_check(spec: ClusterSpec, state: ClusterState, cluster: str) -> NodeCheck:
    """The node check of a real run: log in with the cluster's key, trusting only the node's
    pinned host key; the node must name itself and have finished cloud-init."""

    def check(node: NodePlan, deadline: float) -> None:
        key_path, _ = state.ssh_keypair()
        with Connection(
            node.name,
            node.address,
            spec.ssh.user,
            key_path,
            state.known_hosts_path,
            port=spec.ssh.port,
            connect_deadline=deadline,
        ) as conn:
            result = conn.run(Cmd("hostname"))
            if result.stdout.strip() != node.name:
                raise SSHError(f"{node.name} ({node.address}) answers as {result.stdout.strip()!r}")
            # sshd answers before cloud-init is done with the node (it even restarts sshd):
            # bootstrapping then would race with it. retry_safe: the wait may span that restart.
            with view.waiting(node.name, "waiting for cloud-init to finish", deadline):
                done = conn.run(
                    Cmd("cloud-init", "status", "--wait"), check=False, timeout=deadline, retry_safe=True
                )
            if done.exit_status not in (0, 2):  # 2: done, with recoverable errors (cloud-init 23.4+)
                said = (done.stdout + done.stderr).strip()[-400:]
                raise SSHError(
                    f"{node.name}: cloud-init did not finish cleanly: {said}",
                    hint=f"see /var/log/cloud-init.log on the node (vkp ssh {cluster} {node.name})",
                )

    return check
