"""vSphere as an infrastructure (provisioner/infra.py): everything the lifecycle asks of vCenter.

A session from the spec, the saved spec or VKP_VSPHERE_* (login.py); the VM phase and its
dry run (machines.py); what a cluster owns, found by its id (ownership.py); destroying it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from provisioner import stop, view
from provisioner.infra import Holdings, Log, NodeCheck, NodeOutcome, SeenCluster
from provisioner.plan import Plan
from provisioner.spec import ClusterSpec
from provisioner.state import ClusterState
from provisioner.vsphere import census, find, login, machines, ownership, placement, vms, waits
from provisioner.vsphere.session import Session

DESTROY_SECONDS = 600


class VSphereProvider:
    """The vSphere infrastructure bound to one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

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
        return machines.provision_vms(
            spec, state, self.session, log, check=check, concurrency=concurrency, only=only
        )

    def resolve_id(self, name: str, wanted: str | None) -> str | None:
        return ownership.resolve_id(self.session.content, name, wanted)

    def find_owned(self, name: str, cluster_id: str | None) -> ownership.Owned:
        if not cluster_id:
            return ownership.Owned()
        return ownership.find_owned(self.session.content, name, cluster_id)

    def destroy(self, owned: Holdings, log: Log) -> list[str]:
        assert isinstance(owned, ownership.Owned)
        return destroy(self.session, owned, log)

    def destroy_actions(self, owned: Holdings) -> list[str]:
        assert isinstance(owned, ownership.Owned)
        return [e.what for e in destroy_effects(self.session, owned)[0]]

    def find_nodes(
        self, name: str, cluster_id: str, nodes: list[str], *, only_ids: Collection[str] | None = None
    ) -> ownership.Owned:
        by_name = {vm.name: vm for vm in ownership.find_owned(self.session.content, name, cluster_id).vms}
        found = [by_name[n] for n in nodes if n in by_name]
        return ownership.Owned(vms=[vm for vm in found if only_ids is None or vm._moId in only_ids])

    def machine_ids(self, name: str, cluster_id: str, nodes: list[str]) -> dict[str, str]:
        return {vm.name: vm._moId for vm in self.find_nodes(name, cluster_id, nodes).vms}

    def survey(self) -> list[SeenCluster]:
        return census.survey(self.session.content)

    def where(self) -> str:
        return f"vCenter {self.session.server}"


@dataclass(frozen=True)
class _Effect:
    """One change a delete makes: what it says (log and dry run alike), and how it is made."""

    what: str
    # Makes the change and waits for it until the deadline; returns what happened instead of
    # `what` when the change was not made (a folder found holding something not owned).
    run: Callable[[float], str | None]


def destroy_effects(session: Session, owned: ownership.Owned) -> tuple[list[_Effect], list[str]]:
    """The changes that destroy what the cluster owns, in order, and the folders kept.

    VMs are powered off and destroyed (already off, or already gone, is success), the rules
    removed, the folders left empty destroyed, deepest first. A folder holding something the
    cluster does not own is kept and loses the cluster's mark, so nothing later takes it for
    the cluster's; emptiness is looked at again just before a folder is destroyed, since
    destroying a folder destroys whatever is in it. Reads vCenter; changes nothing itself.
    The kept list is filled as the effects run (and as predicted for a dry run).
    """
    content = session.content
    effects: list[_Effect] = []
    props = {vm: find.props_of(content, vm, ["name", "runtime.powerState"]) for vm in owned.vms}
    names = {vm: str(p.get("name", vm._moId)) for vm, p in props.items()}
    on = [vm for vm, p in props.items() if p.get("runtime.powerState") == "poweredOn"]

    def each(fn: Callable[..., bool], vms_: list[Any], step: str) -> Callable[[float], str | None]:
        def one(vm: Any, deadline: float) -> None:
            name = names[vm]
            view.step(name, step, phase="delete")
            try:
                with view.waiting(name, f"waiting for vCenter to {step} it", deadline - time.monotonic()):
                    did = session.call(fn, content, vm, deadline=deadline)
            except BaseException as exc:
                view.done(name, step, "interrupted" if stop.is_stop(exc) else "failed")
                raise
            # False: already done (off, or gone), which the recap counts as ok.
            view.done(name, step, "changed" if did else "ok")

        def run(deadline: float) -> str | None:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda vm: one(vm, deadline), vms_))
            return None

        return run

    if on:
        effects.append(
            _Effect(
                f"power off {len(on)} VM(s): {', '.join(names[vm] for vm in on)}",
                each(waits.power_off_and_wait, on, "power off"),
            )
        )
    if owned.vms:
        effects.append(
            _Effect(
                f"destroy {len(owned.vms)} VM(s): {', '.join(names[vm] for vm in owned.vms)}",
                each(waits.destroy_and_wait, owned.vms, "destroy"),
            )
        )
    by_cluster: dict[Any, list[Any]] = {}
    for cl, rule in owned.rules:
        by_cluster.setdefault(cl, []).append(rule)
    for cl, rules in by_cluster.items():
        effects.append(
            _Effect(
                f"remove DRS rules {', '.join(r.name for r in rules)}",
                functools.partial(_remove_rules, content, cl, rules),
            )
        )
    empty, kept = ownership.split_folders(content, owned)
    kept_paths = list(kept.values())
    for folder, path in kept.items():
        effects.append(
            _Effect(
                f"keep folder {path} (unmarked): it holds objects this cluster does not own",
                functools.partial(_unmark, content, folder),
            )
        )
    # Only folders that carry the id: the parent they sit in (vkp/ by default) is shared by
    # every cluster and marked by none, so it stays, empty or not.
    for folder, path in empty.items():
        effects.append(
            _Effect(
                f"remove folder {path}", functools.partial(_destroy_folder, session, folder, path, kept_paths)
            )
        )
    return effects, kept_paths


def _remove_rules(content: Any, cl: Any, rules: list[Any], deadline: float) -> None:
    waits.wait_for_tasks(content, placement.remove_rules(cl, rules), deadline=deadline)


def _destroy_folder(session: Session, folder: Any, path: str, kept: list[str], deadline: float) -> str | None:
    content = session.content
    if find.props_of(content, folder, ["childEntity"]).get("childEntity"):
        # Something was put in it since it was looked at (or a folder inside it was kept).
        ownership.unmark_folder(content, folder)
        kept.append(path)
        return f"kept folder {path} (unmarked): it holds objects this cluster does not own"
    waits.wait_for_tasks(content, [session.call(vms.destroy_folder, folder)], deadline=deadline)
    return None


def _unmark(content: Any, folder: Any, _deadline: float) -> None:
    ownership.unmark_folder(content, folder)  # SetField is synchronous: no task to wait for


def destroy(session: Session, owned: ownership.Owned, log: Log) -> list[str]:
    """Carry out destroy_effects, stopping between them if the run is; returns the folders kept."""
    effects, kept = destroy_effects(session, owned)
    deadline = time.monotonic() + DESTROY_SECONDS
    for effect in effects:
        stop.check(effect.what)
        instead = effect.run(deadline)
        log(instead or f"done: {effect.what}")
    return kept


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

    @contextmanager
    def open_env(self, env: Mapping[str, str] | None = None) -> Iterator[VSphereProvider]:
        with login.session_for_env(env) as session:
            yield VSphereProvider(session)

    def planned_actions(self, spec: ClusterSpec, plan: Plan) -> list[str]:
        return machines.planned_actions(spec, plan)

    def nothing(self) -> ownership.Owned:
        return ownership.Owned()


VSPHERE = VSphere()
