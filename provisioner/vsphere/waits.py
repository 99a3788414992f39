"""Waiting for vCenter through the PropertyCollector, never by sleep-polling.

One collector per session, reused by every wait (a _Feed). The objects waited on are put in a
ListView (one per kind of wait: tasks, a VM's guest address...) with one filter over it, so a
new wait costs one ModifyListView, not a collector, a filter and their teardown. One thread per
session (the pump) calls WaitForUpdatesEx, since its versions belong to the collector and two
callers would steal each other's updates; it keeps the last values of every watched object,
and waiters wake on each update. maxWaitSeconds is bounded so the pump's call returns within
seconds when nothing changes (vCenter's idle-connection timers never fire mid-wait), and
waiters look at their deadline and the run's stop flag (provisioner.stop: SIGINT, SIGTERM,
--timeout) at least once a second. Objects stay in the view until the session ends; the
collector, its filters and the views go with one call each at logout (close_feed).

Deadlines are absolute time.monotonic() values (time.monotonic() + timeout), so a chain of
waits shares one budget.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from provisioner import stop
from provisioner.errors import TaskFailed, Timeout, VSphereError
from provisioner.vsphere import vms
from provisioner.vsphere.faults import fault_text

_pcq = vmodl.query.PropertyCollector
# Short enough that Ctrl-C ends a wait within the 5 s a user waits; one cheap call per slice.
MAX_WAIT_SECONDS = 2
PUMP_ATTEMPTS = 3  # WaitForUpdatesEx failures in a row before every wait of the feed fails
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


def _content(si_or_content: Any) -> Any:
    """The ServiceContent of a ServiceInstance, a Session, or the content itself."""
    if isinstance(si_or_content, vim.ServiceInstanceContent):
        return si_or_content
    return si_or_content.content


class _Feed:
    """One session's collector and the last values of every object watched through it."""

    def __init__(self, content: Any) -> None:
        self.content = content
        self.changed = threading.Condition()  # guards values and error; notified on each update
        self.setup = threading.Lock()  # one thread at a time creates views and adds to them
        self.collector: Any = None
        self.views: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.members: dict[tuple[Any, tuple[str, ...]], set[str]] = {}
        self.values: dict[str, dict[str, Any]] = {}  # object moid -> property path -> value
        self.error: BaseException | None = None
        self.closed = False
        self.pump: threading.Thread | None = None

    def watch(self, objs: Sequence[Any], obj_type: Any, paths: Sequence[str]) -> None:
        """Make the feed report paths of objs (all of obj_type) from now on."""
        key = (obj_type, tuple(sorted(set(paths))))
        with self.setup:
            if self.collector is None:
                self.collector = self.content.propertyCollector.CreatePropertyCollector()
            have = self.members.setdefault(key, set())
            new = [o for o in objs if o._moId not in have]
            if not new:
                return
            view = self.views.get(key)
            if view is None:
                # Made empty, then filled: objects entering a watched view are reported the
                # same way by vCenter and by govmomi's simulator (which reports a new filter's
                # initial state only once something changes).
                view = self.content.viewManager.CreateListView(obj=[])
                self.views[key] = view
                spec = _pcq.FilterSpec(
                    objectSet=[
                        _pcq.ObjectSpec(
                            obj=view,
                            skip=True,
                            selectSet=[_pcq.TraversalSpec(type=vim.view.ListView, path="view", skip=False)],
                        )
                    ],
                    propSet=[_pcq.PropertySpec(type=obj_type, pathSet=list(key[1]))],
                )
                self.collector.CreateFilter(spec, partialUpdates=False)
            # vCenter returns what it could not add; govmomi's simulator faults instead.
            try:
                unresolved = list(view.ModifyListView(add=new) or [])
            except vmodl.fault.ManagedObjectNotFound as exc:
                unresolved = [exc.obj] if exc.obj is not None else list(new)
            have.update(o._moId for o in new)
            if unresolved:
                with self.changed:
                    for o in unresolved:
                        self.values[o._moId] = {LEFT: True}
                    self.changed.notify_all()
            if self.pump is None:
                self.pump = threading.Thread(target=self._pump, name="vsphere-feed", daemon=True)
                self.pump.start()

    def _pump(self) -> None:
        version = ""
        failures = 0
        while not self.closed:
            try:
                update = self.collector.WaitForUpdatesEx(
                    version, _pcq.WaitOptions(maxWaitSeconds=MAX_WAIT_SECONDS)
                )
                failures = 0
            except Exception as exc:  # noqa: BLE001 - handed to every waiter, which reports it
                failures += 1
                if failures < PUMP_ATTEMPTS and not self.closed:
                    # A dropped pooled connection is re-made by the next call; the version
                    # is still the collector's, so nothing is missed.
                    time.sleep(1.0)
                    continue
                with self.changed:
                    if not self.closed:
                        self.error = exc
                    # Every wait on it now fails; the next wait of the session makes a new feed.
                    self.closed = True
                    self.changed.notify_all()
                return
            if update is None:
                continue
            version = update.version
            with self.changed:
                for fs in update.filterSet or []:
                    for obj in fs.objectSet or []:
                        seen = self.values.setdefault(obj.obj._moId, {})
                        if obj.kind == "leave":
                            seen[LEFT] = True
                        for c in obj.changeSet or []:
                            seen[c.name] = None if c.op == "remove" else c.val
                self.changed.notify_all()

    def until(self, decide: Callable[[], Any], deadline: float, what: Callable[[], str]) -> Any:
        """Wait (holding self.changed) until decide() returns something truthy, and return it;
        None once the deadline passed. Raises when the run is stopping or the feed broke."""
        with self.changed:
            while True:
                if self.error is not None:
                    raise VSphereError(f"waiting for {what()}: the vCenter session broke: {self.error}")
                if self.closed:
                    raise VSphereError(f"waiting for {what()}: the vCenter session was closed")
                result = decide()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                stop.check(what())
                self.changed.wait(timeout=min(1.0, left))

    def close(self) -> None:
        self.closed = True
        # Destroying the collector takes its filters along; the views go one by one.
        with contextlib.suppress(Exception):
            if self.collector is not None:
                self.collector.DestroyPropertyCollector()
        for view in self.views.values():
            with contextlib.suppress(Exception):
                view.DestroyView()


_feeds: dict[int, _Feed] = {}
_feeds_lock = threading.Lock()


def _feed(content: Any) -> _Feed:
    """The session's feed (keyed by its SOAP stub, which every object of the session shares)."""
    key = id(content.propertyCollector._stub)
    with _feeds_lock:
        feed = _feeds.get(key)
        if feed is None or feed.closed:
            feed = _feeds[key] = _Feed(content)
        return feed


def close_feed(content: Any) -> None:
    """End the session's feed: called as the session logs out."""
    with _feeds_lock:
        feed = _feeds.pop(id(content.propertyCollector._stub), None)
    if feed is not None:
        feed.close()


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
    feed = _feed(_content(si_or_content))
    feed.watch(task_list, vim.Task, ["info"])
    infos: dict[str, Any] = {}
    done: set[str] = set()
    results: dict[str, Any] = {}
    failures: list[TaskFailure] = []

    def finished() -> list[tuple[Any, Any]]:
        # Runs holding the feed's lock: only reads what the pump wrote.
        out = []
        for task in task_list:
            moid = task._moId
            info = feed.values.get(moid, {}).get("info")
            if info is not None:
                infos[moid] = info
            if moid in done or info is None:
                continue
            if info.state in (vim.TaskInfo.State.success, vim.TaskInfo.State.error):
                done.add(moid)
                out.append((task, info))
        return out

    while len(done) < len(task_list):
        ended = feed.until(finished, deadline, lambda: _pending_text(task_list, infos, done))
        if not ended:
            raise Timeout(_timeout_text(task_list, infos, done), hint="the tasks keep running in vCenter")
        for task, info in ended:
            if info.state == vim.TaskInfo.State.success:
                results[task._moId] = info.result
                if on_done is not None:
                    on_done(task, info.result)
            else:
                failures.append(TaskFailure(task, _describe(info), info.error))
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
    feed = _feed(content)
    seen: dict[str, Any] = {}

    def decide() -> Any:
        seen.clear()
        seen.update(feed.values.get(obj._moId, {}))
        # vCenter reports a deleted object as a "leave" update: waiting on would only end in a
        # timeout that hides the real cause.
        if seen.get(LEFT):
            raise VSphereError(_gone(obj, seen, what))
        if not seen:
            return None  # the filter has not reported the object yet
        return predicate({p: seen.get(p) for p in path_list})

    try:
        feed.watch([obj], type(obj), ["name", *path_list])
    except vmodl.fault.ManagedObjectNotFound as exc:
        raise VSphereError(_gone(obj, seen, what)) from exc
    result = feed.until(decide, deadline, lambda: f"{what} of {_kind(obj)} {seen.get('name') or obj._moId}")
    if result:
        return result
    last = ", ".join(f"{p}={_short(seen.get(p))}" for p in path_list)
    raise Timeout(
        f"{_kind(obj)} {seen.get('name') or obj._moId!r}: "
        f"no {what} after {time.monotonic() - started:.0f}s (last seen: {last})"
    )


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
