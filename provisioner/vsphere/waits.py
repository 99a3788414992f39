"""Waiting for vCenter through the PropertyCollector, never by sleep-polling.

Each wait creates a PropertyCollector of its own (for the calling thread) and destroys it
afterwards: WaitForUpdatesEx versions belong to a collector, so two threads sharing one
would steal each other's updates. maxWaitSeconds is bounded so a wait notices its deadline
and the run's stop flag (provisioner.stop: SIGINT, SIGTERM, --timeout) within seconds even
when nothing changes, and vCenter's idle-connection timers never fire mid-wait.

Deadlines are absolute time.monotonic() values (time.monotonic() + timeout), so a chain of
waits shares one budget.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from provisioner import stop
from provisioner.errors import TaskFailed, Timeout, VSphereError
from provisioner.vsphere import vms

_pcq = vmodl.query.PropertyCollector
# Short enough that Ctrl-C ends a wait within the 5 s a user waits; one cheap call per slice.
MAX_WAIT_SECONDS = 2
LEFT = "<left>"  # marks an object that no longer exists


@dataclass(frozen=True)
class TaskFailure:
    task: Any
    what: str  # e.g. "VirtualMachine.clone on debian-12"
    fault: Any  # the vmodl.MethodFault vCenter reported

    @property
    def message(self) -> str:
        return f"{self.what}: {fault_text(self.fault)}"


class TasksFailed(TaskFailed):
    """One or more tasks ended in error; the others' results are kept in .results."""

    def __init__(self, failures: list[TaskFailure], results: dict[str, Any]) -> None:
        self.failures = failures
        self.results = results  # task moid -> result, for the tasks that succeeded
        lines = [f.message for f in failures]
        head = "a vSphere task failed" if len(lines) == 1 else f"{len(lines)} vSphere tasks failed"
        super().__init__(f"{head}:\n  " + "\n  ".join(lines))

    @property
    def fault(self) -> Any:
        return self.failures[0].fault


def fault_text(fault: Any) -> str:
    """vCenter's fault type and message, e.g. "vim.fault.DuplicateName: The name 'x' already exists."."""
    # pyVmomi names fault classes "vim.fault.X" / "vmodl.fault.X": the name to look up in
    # the API reference. msg carries the LocalizedMethodFault's localizedMessage.
    kind = type(fault).__name__
    msg = getattr(fault, "msg", None) or ""
    return f"{kind}: {msg}" if msg else kind


def _content(si_or_content: Any) -> Any:
    """The ServiceContent of a ServiceInstance, a Session, or the content itself."""
    if isinstance(si_or_content, vim.ServiceInstanceContent):
        return si_or_content
    return si_or_content.content


def _remaining(deadline: float) -> int:
    """Seconds to wait in the next WaitForUpdatesEx: at least 1 (0 would mean "don't wait")."""
    return max(1, min(MAX_WAIT_SECONDS, int(deadline - time.monotonic() + 0.999)))


class _Watch:
    """A private collector with one filter; iterate to get (object, {property: value}) updates."""

    def __init__(self, content: Any, objs: Sequence[Any], obj_type: Any, paths: Sequence[str]) -> None:
        self.collector = content.propertyCollector.CreatePropertyCollector()
        try:
            spec = _pcq.FilterSpec(
                objectSet=[_pcq.ObjectSpec(obj=o, skip=False) for o in objs],
                propSet=[_pcq.PropertySpec(type=obj_type, pathSet=list(paths))],
            )
            self.collector.CreateFilter(spec, partialUpdates=False)
        except BaseException:
            self.close()
            raise
        self.version = ""

    def next(self, deadline: float, what: str) -> list[tuple[Any, dict[str, Any]]]:
        """The changes since the last call; [] when nothing changed within the bounded wait.

        An object that was deleted comes back with the single change {LEFT: True}. Raises
        when the run is stopping (what: what the caller waits for, for the message).
        """
        stop.check(what)
        update = self.collector.WaitForUpdatesEx(
            self.version, _pcq.WaitOptions(maxWaitSeconds=_remaining(deadline))
        )
        if update is None:
            return []
        self.version = update.version
        out = []
        for fs in update.filterSet or []:
            for obj in fs.objectSet or []:
                changes = {c.name: (None if c.op == "remove" else c.val) for c in obj.changeSet or []}
                if obj.kind == "leave":
                    changes = {LEFT: True}
                out.append((obj.obj, changes))
        return out

    def close(self) -> None:
        # A lost session has already taken the collector with it.
        with contextlib.suppress(Exception):
            self.collector.DestroyPropertyCollector()


def _describe(info: Any) -> str:
    what = info.descriptionId or info.name or "task"
    entity = info.entityName or ""
    moid = info.entity._moId if info.entity is not None else ""
    # vCenter gives the entity's name; show the moid too, which stays unambiguous.
    if moid and moid != entity:
        entity = f"{entity} ({moid})" if entity else moid
    return f"{what} on {entity}" if entity else what


def wait_for_tasks(
    si_or_content: Any,
    tasks: Iterable[Any],
    *,
    deadline: float,
    on_done: Callable[[Any, Any], None] | None = None,
) -> list[Any]:
    """Wait until every task has finished; return their results in the order of tasks.

    on_done(task, result) is called as each task succeeds (e.g. to record a clone in the
    state dir while the others still run). A failed task does not stop the wait: the others
    keep running in vCenter anyway, so all are awaited and then TasksFailed (a TaskFailed)
    names every failure with vCenter's fault type and message. Past the deadline, Timeout
    names the tasks still running.
    """
    task_list = list(tasks)
    if not task_list:
        return []
    content = _content(si_or_content)
    infos: dict[str, Any] = {}
    done: set[str] = set()
    results: dict[str, Any] = {}
    failures: list[TaskFailure] = []
    watch = _Watch(content, task_list, vim.Task, ["info"])
    try:
        while len(done) < len(task_list):
            if time.monotonic() >= deadline:
                raise Timeout(_timeout_text(task_list, infos, done), hint="the tasks keep running in vCenter")
            for task, changes in watch.next(deadline, _pending_text(task_list, infos, done)):
                info = changes.get("info")
                if info is None:
                    continue
                moid = task._moId
                infos[moid] = info
                if moid in done:
                    continue
                if info.state == vim.TaskInfo.State.success:
                    done.add(moid)
                    results[moid] = info.result
                    if on_done is not None:
                        on_done(task, info.result)
                elif info.state == vim.TaskInfo.State.error:
                    done.add(moid)
                    failures.append(TaskFailure(task, _describe(info), info.error))
    finally:
        watch.close()
    if failures:
        raise TasksFailed(failures, results)
    return [results[t._moId] for t in task_list]


def _pending_text(tasks: list[Any], infos: dict[str, Any], done: set[str]) -> str:
    pending = [
        _describe(infos[t._moId]) if t._moId in infos else t._moId for t in tasks if t._moId not in done
    ]
    return "vSphere task(s) " + ", ".join(pending)


def _timeout_text(tasks: list[Any], infos: dict[str, Any], done: set[str]) -> str:
    pending = []
    for t in tasks:
        if t._moId in done:
            continue
        info = infos.get(t._moId)
        if info is None:
            pending.append(f"{t._moId} (no state seen)")
        else:
            progress = f", {info.progress}%" if info.progress is not None else ""
            pending.append(f"{_describe(info)} ({info.state}{progress})")
    head = f"{len(pending)} of {len(tasks)} vSphere task(s) not finished by the deadline"
    return f"{head}: {'; '.join(pending)}"


def wait_for_property(
    content: Any,
    obj: Any,
    paths: str | Sequence[str],
    predicate: Callable[[dict[str, Any]], Any],
    deadline: float,
    *,
    what: str,
) -> Any:
    """Wait until predicate(current values of paths on obj) returns something truthy; return it.

    Past the deadline, Timeout says what was awaited (what) on which object and the values
    last seen.
    """
    path_list = [paths] if isinstance(paths, str) else list(paths)
    started = time.monotonic()
    seen: dict[str, Any] = {}
    watch = _Watch(content, [obj], type(obj), ["name", *path_list])
    try:
        while True:
            # vCenter reports a deleted object as a "leave" update; govmomi's simulator fails
            # the wait with ManagedObjectNotFound. Either way, waiting on would only end in a
            # timeout that hides the real cause.
            try:
                updates = watch.next(deadline, f"{what} of {_kind(obj)} {seen.get('name') or obj._moId}")
            except vmodl.fault.ManagedObjectNotFound as exc:
                raise VSphereError(_gone(obj, seen, what)) from exc
            for _obj, changes in updates:
                if changes.get(LEFT):
                    raise VSphereError(_gone(obj, seen, what))
                seen.update(changes)
            result = predicate({p: seen.get(p) for p in path_list})
            if result:
                return result
            if time.monotonic() >= deadline:
                last = ", ".join(f"{p}={_short(seen.get(p))}" for p in path_list)
                raise Timeout(
                    f"{_kind(obj)} {seen.get('name') or obj._moId!r}: "
                    f"no {what} after {time.monotonic() - started:.0f}s (last seen: {last})"
                )
    finally:
        watch.close()


def _gone(obj: Any, seen: dict[str, Any], what: str) -> str:
    return f"{_kind(obj)} {seen.get('name') or obj._moId!r} was deleted while waiting for {what}"


def _kind(obj: Any) -> str:
    return type(obj).__name__.split(".")[-1]


def _short(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, vim.vm.GuestInfo.NicInfo):
        return f"{value.macAddress or '?'}: {list(value.ipAddress or [])}"
    return repr(value)


def guest_addresses(values: dict[str, Any]) -> list[str]:
    """Addresses a guest reports: guest.ipAddress first, then every NIC's, without duplicates."""
    out: list[str] = []
    if values.get("guest.ipAddress"):
        out.append(values["guest.ipAddress"])
    for nic in values.get("guest.net") or []:
        for addr in nic.ipAddress or []:
            if addr and addr not in out:
                out.append(addr)
    return out


def wait_for_guest_ip(content: Any, vm: Any, *, expected: str | None, deadline: float) -> str:
    """The VM's guest IP address once VMware Tools reports it (expected, if given).

    With expected, waits until that address is among those reported (another address, e.g.
    a DHCP lease before cloud-init set the static one, is not the answer); otherwise returns
    guest.ipAddress, falling back to the first NIC address, skipping IPv6 link-local ones.
    """

    def predicate(values: dict[str, Any]) -> str | None:
        addresses = guest_addresses(values)
        if expected is not None:
            return expected if expected in addresses else None
        usable = [a for a in addresses if not a.lower().startswith("fe80:")]
        return usable[0] if usable else None

    what = f"guest IP address {expected}" if expected else "guest IP address"
    result: str = wait_for_property(
        content, vm, ["guest.ipAddress", "guest.net"], predicate, deadline, what=what
    )
    return result


# -- "already in the requested state is success" -------------------------------------------


def _already(fault: Any, state: str) -> bool:
    if not isinstance(fault, vim.fault.InvalidPowerState):
        return False
    # vCenter names the state it found; only that state is "already done", never a guess.
    return fault.existingState is None or str(fault.existingState) == state


def _power(content: Any, vm: Any, call: Callable[[Any], Any], state: str, deadline: float) -> bool:
    """True when the power operation ran, False when the VM already was in state."""
    try:
        task = call(vm)
        wait_for_tasks(content, [task], deadline=deadline)
    except TasksFailed as exc:
        if _already(exc.fault, state):
            return False
        raise
    except vim.fault.InvalidPowerState as fault:
        if _already(fault, state):
            return False
        raise
    return True


def power_on_and_wait(content: Any, vm: Any, *, deadline: float) -> bool:
    """Power vm on; already on is success. True if it was powered on now."""
    return _power(content, vm, vms.power_on, "poweredOn", deadline)


def power_off_and_wait(content: Any, vm: Any, *, deadline: float) -> bool:
    """Power vm off; already off is success. True if it was powered off now."""
    return _power(content, vm, vms.power_off, "poweredOff", deadline)


def destroy_and_wait(content: Any, vm: Any, *, deadline: float) -> bool:
    """Destroy vm (it must be off); a VM that no longer exists is success. True if destroyed now."""
    try:
        task = vms.destroy(vm)
        wait_for_tasks(content, [task], deadline=deadline)
    except vmodl.fault.ManagedObjectNotFound:
        return False
    except TasksFailed as exc:
        if isinstance(exc.fault, vmodl.fault.ManagedObjectNotFound):
            return False
        raise
    return True
