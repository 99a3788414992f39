"""vSphere as an infrastructure (provisioner/infra.py): everything the lifecycle asks of vCenter.

A session from the spec, the saved spec or VKP_VSPHERE_* (login.py); the VM phase and its
dry run (machines.py); what a cluster owns, found by its id (ownership.py); destroying it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from provisioner.infra import Holdings, Log, NodeCheck, NodeOutcome
from provisioner.plan import Plan
from provisioner.spec import ClusterSpec
from provisioner.state import ClusterState
from provisioner.vsphere import login, machines, ownership, placement, vms, waits
from provisioner.vsphere.session import Session

DESTROY_SECONDS = 600


class VSphereProvider:
    """The vSphere infrastructure bound to one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def machines(
        self, spec: ClusterSpec, state: ClusterState, log: Log, *, concurrency: int, check: NodeCheck
    ) -> tuple[Plan, list[NodeOutcome]]:
        return machines.provision_vms(spec, state, self.session, log, check=check, concurrency=concurrency)

    def resolve_id(self, name: str, wanted: str | None) -> str | None:
        return ownership.resolve_id(self.session.content, name, wanted)

    def find_owned(self, name: str, cluster_id: str | None) -> ownership.Owned:
        if not cluster_id:
            return ownership.Owned()
        return ownership.find_owned(self.session.content, name, cluster_id)

    def destroy(self, owned: Holdings, log: Log) -> list[str]:
        assert isinstance(owned, ownership.Owned)
        return destroy(self.session, owned, log)

    def remove_nodes(self, name: str, cluster_id: str, nodes: list[str], log: Log) -> list[str]:
        content = self.session.content
        by_name = {vm.name: vm for vm in ownership.find_owned(content, name, cluster_id).vms}
        doomed = [by_name[n] for n in nodes if n in by_name]
        deadline = time.monotonic() + DESTROY_SECONDS
        for vm in doomed:
            waits.power_off_and_wait(content, vm, deadline=deadline)
        if doomed:
            waits.wait_for_tasks(
                content, [self.session.call(vms.destroy, vm) for vm in doomed], deadline=deadline
            )
        return [n for n in nodes if n in by_name]


def destroy(session: Session, owned: ownership.Owned, log: Log) -> list[str]:
    """Power off and destroy the VMs, remove the rules, destroy the folders left empty.

    Returns the folders kept because they hold something the cluster does not own; they lose
    the cluster's mark, so nothing later takes them for the cluster's.
    """
    content = session.content
    deadline = time.monotonic() + DESTROY_SECONDS
    on = [vm for vm in owned.vms if vm.runtime.powerState == "poweredOn"]
    if on:
        waits.wait_for_tasks(content, [session.call(vms.power_off, vm) for vm in on], deadline=deadline)
        log(f"powered off {len(on)} VM(s)")
    if owned.vms:
        with ThreadPoolExecutor(max_workers=8) as pool:
            tasks = list(pool.map(lambda vm: session.call(vms.destroy, vm), owned.vms))
        waits.wait_for_tasks(content, tasks, deadline=deadline)
        log(f"destroyed {len(owned.vms)} VM(s)")
    by_cluster: dict[Any, list[Any]] = {}
    for cl, rule in owned.rules:
        by_cluster.setdefault(cl, []).append(rule)
    for cl, rules in by_cluster.items():
        waits.wait_for_tasks(content, placement.remove_rules(cl, rules), deadline=deadline)
        log(f"removed rules {', '.join(r.name for r in rules)}")
    empty, kept = ownership.split_folders(content, owned)
    for folder, path in kept.items():
        log(f"kept folder {path}: it holds objects this cluster does not own")
        ownership.unmark_folder(content, folder)
    # Only folders that carry the id: the parent they sit in (vkp/ by default) is shared by
    # every cluster and marked by none, so it stays, empty or not.
    for folder, path in empty.items():
        waits.wait_for_tasks(content, [session.call(vms.destroy_folder, folder)], deadline=deadline)
        log(f"removed folder {path}")
    return list(kept.values())


class VSphere:
    """The vSphere infrastructure: opens sessions; plans without one."""

    @contextmanager
    def open(self, spec: ClusterSpec, env: Mapping[str, str] | None = None) -> Iterator[VSphereProvider]:
        with login.session_for(spec, env) as session:
            yield VSphereProvider(session)

    @contextmanager
    def open_cluster(self, name: str, env: Mapping[str, str] | None = None) -> Iterator[VSphereProvider]:
        with login.session_for_cluster(name, env) as session:
            yield VSphereProvider(session)

    def planned_actions(self, spec: ClusterSpec, plan: Plan) -> list[str]:
        return machines.planned_actions(spec, plan)

    def nothing(self) -> ownership.Owned:
        return ownership.Owned()


VSPHERE = VSphere()
