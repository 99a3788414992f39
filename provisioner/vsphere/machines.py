"""create-cluster's vSphere half: resolve, preflight, clone, place, boot, verify.

What happens to each node's VM is decided by node_actions() from the VM's facts, as a
sequence of described actions (clone, resize, write cloud-init, power on, wait for the
address, check the node, erase the user data). A run carries them out (VMPhase); a dry run
(planned_actions) takes the same decisions for "no VM yet" and lists their descriptions
without contacting vCenter, so what a dry run shows is what a first run does.

VMs go through their actions in parallel; only the calls that load vCenter (clones,
reconfigures, power-ons) are bounded by --concurrency, while waits hold no slot, so one slow
guest does not hold back the clones of the others.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Generator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from provisioner import stop, view
from provisioner.bootstrap.cloudinit import cloud_init_documents
from provisioner.errors import Interrupted, PreflightError, ProvisionerError
from provisioner.infra import NodeCheck, NodeOutcome
from provisioner.plan import NodePlan, Plan, make_plan
from provisioner.spec import ClusterSpec
from provisioner.state import ClusterState, NodeRecord
from provisioner.vsphere import find, ownership, placement, specs, vms, waits
from provisioner.vsphere.session import Session

Log = Callable[[str], None]

VM_FACTS = [
    "runtime.host",
    "runtime.powerState",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.instanceUuid",
    "config.extraConfig",
]
# How long a powered-on node that never answered SSH (an interrupted first boot) gets to
# answer before it is powered off and booted again with its cloud-init data.
UNVERIFIED_PROBE_SECONDS = 90.0


# -- what is known of a node's VM, and what to do about it -------------------------------------


@dataclass(frozen=True)
class VMFacts:
    exists: bool
    cpus: int | None = None
    memory_mb: int | None = None
    powered_on: bool = False
    has_userdata: bool = False  # guestinfo.userdata (with the node's private host key) is set
    verified: bool = False  # the node answered SSH with its pinned key once
    mac: str | None = None
    host: Any = None
    instance_uuid: str | None = None


NO_VM = VMFacts(exists=False)


def _facts(props: dict[str, Any]) -> VMFacts:
    extra = {o.key: o.value for o in props.get("config.extraConfig") or []}
    macs = [
        d.macAddress
        for d in props.get("config.hardware.device") or []
        if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ]
    return VMFacts(
        exists=True,
        cpus=props.get("config.hardware.numCPU"),
        memory_mb=props.get("config.hardware.memoryMB"),
        powered_on=props.get("runtime.powerState") == "poweredOn",
        has_userdata=bool(extra.get(specs.GUESTINFO_USERDATA)),
        verified=extra.get(specs.NODE_VERIFIED) == "TRUE",
        mac=str(macs[0]) if macs else None,
        host=props.get("runtime.host"),
        instance_uuid=props.get("config.instanceUuid"),
    )


@dataclass(frozen=True)
class Clone:
    """Outcome: the new VM's facts."""

    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        kind = "linked clone" if spec.vsphere.linked_clone else "full clone"
        host = node.esxi_host or "a host of the cluster (placed when the hosts are known)"
        return (
            f"{kind} of {spec.vsphere.template} into {plan.folder} on {host} "
            f"({node.cpus} vCPU, {node.memory_mb} MB, ownership mark of the cluster's id)"
        )

    def as_planned(self, node: NodePlan) -> Any:
        return VMFacts(exists=True, cpus=node.cpus, memory_mb=node.memory_mb)


@dataclass(frozen=True)
class Resize:
    cpus: int
    memory_mb: int

    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return f"reconfigure to {self.cpus} vCPU, {self.memory_mb} MB"


@dataclass(frozen=True)
class ProbeFirstBoot:
    """Outcome: True if the node answers now (else it was powered off)."""

    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return (
            f"its first boot was cut short: wait up to {UNVERIFIED_PROBE_SECONDS:.0f}s for it to answer, "
            "else power it off to boot it again"
        )

    def as_planned(self, node: NodePlan) -> Any:
        return True


@dataclass(frozen=True)
class WriteCloudInit:
    new_instance: bool = False  # cloud-init redoes a first boot only for an unseen instance id

    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        again = ", as a new instance" if self.new_instance else ""
        return (
            f"write guestinfo cloud-init: {node.address}/{spec.network.prefix} via {spec.network.gateway}, "
            f"SSH user {spec.ssh.user} with the cluster's key, the node's pinned host key{again}"
        )


@dataclass(frozen=True)
class PowerOn:
    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return "power on"


@dataclass(frozen=True)
class WaitForAddress:
    address: str

    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return f"wait for VMware Tools to report {self.address}"


@dataclass(frozen=True)
class CheckNode:
    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return f"check SSH: answers as {node.name} with its pinned host key, cloud-init done"


@dataclass(frozen=True)
class EraseUserdata:
    def describe(self, spec: ClusterSpec, plan: Plan, node: NodePlan) -> str:
        return "erase the guestinfo user data (it carries the host key) and mark the node verified"


Action = (
    Clone | Resize | ProbeFirstBoot | WriteCloudInit | PowerOn | WaitForAddress | CheckNode | EraseUserdata
)


# What the live view calls each action, and whether doing it changes the VM (the recap's counts).
STEP_NAMES: dict[type, tuple[str, bool]] = {
    Clone: ("clone", True),
    Resize: ("resize", True),
    ProbeFirstBoot: ("probe first boot", False),
    WriteCloudInit: ("write cloud-init", True),
    PowerOn: ("power on", True),
    WaitForAddress: ("guest address", False),
    CheckNode: ("check SSH", False),
    EraseUserdata: ("erase user data", True),
}


def node_actions(node: NodePlan, facts: VMFacts) -> Generator[Action, Any, None]:
    """What to do for node, given its VM's facts; each action's outcome is sent back in."""
    if not facts.exists:
        facts = yield Clone()
    if (facts.cpus, facts.memory_mb) != (node.cpus, node.memory_mb):
        # Check, then change: covers VMs adopted from an earlier size, and clones whose
        # config the server did not apply with the clone.
        yield Resize(node.cpus, node.memory_mb)
    booted = facts.powered_on
    cut_short = False
    if booted and not facts.has_userdata and not facts.verified:
        booted = yield ProbeFirstBoot()
        cut_short = not booted
    holds_userdata = facts.has_userdata
    if not booted:
        yield WriteCloudInit(new_instance=cut_short)
        holds_userdata = True
        yield PowerOn()
    yield WaitForAddress(node.address)
    yield CheckNode()
    if holds_userdata or not facts.verified:
        # The userdata carried the node's private host key; it must not linger in VM
        # properties. The same call records that the node answered with its pinned key.
        yield EraseUserdata()


def planned_actions(spec: ClusterSpec, plan: Plan) -> list[str]:
    """What the VM phase does for a cluster with nothing in vCenter yet; contacts nothing."""
    lines = [f"folder {plan.folder}: create it, marked with the cluster's id"]
    for node in plan.nodes:
        steps = node_actions(node, NO_VM)
        outcome: Any = None
        while True:
            try:
                action = steps.send(outcome)
            except StopIteration:
                break
            lines.append(f"{node.name}: {action.describe(spec, plan, node)}")
            outcome = action.as_planned(node) if isinstance(action, (Clone, ProbeFirstBoot)) else None
    if spec.placement.anti_affinity:
        for rule in plan.anti_affinity_rules:
            lines.append(f"DRS anti-affinity rule {rule.name}: {', '.join(rule.vms)}")
    return lines


# -- resolve and preflight -----------------------------------------------------------------------


@dataclass
class Resolved:
    """The vCenter objects a spec names, each resolved to exactly one."""

    datacenter: Any
    cluster: Any
    datastore: Any
    network: Any
    pool: Any
    template: Any
    hosts: list[Any]
    host_names: dict[str, str]  # host moid -> name
    folder_path: str
    folder: Any | None  # None until created
    folder_owner: str | None = None  # the cluster id the folder is marked with, if any
    template_name: str = ""
    template_snapshot: Any = None  # its current snapshot, None if it has none
    template_nic: Any = None


def resolve(content: Any, spec: ClusterSpec, folder_path: str) -> Resolved:
    vs = spec.vsphere
    problems: list[ProvisionerError] = []

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ProvisionerError as exc:
            problems.append(exc)
            return None

    dc = find.datacenter(content, _required(vs.datacenter))
    cluster = attempt(lambda: find.cluster(content, dc, _required(vs.cluster)))
    datastore = attempt(lambda: find.datastore(content, dc, _required(vs.datastore)))
    network = attempt(lambda: find.network_target(content, find.network(content, dc, _required(vs.network))))
    template = attempt(lambda: find.template(content, dc, _required(vs.template)))
    pool = attempt(lambda: find.resource_pool(content, dc, cluster, vs.resource_pool)) if cluster else None
    if problems:
        raise PreflightError([str(p) for p in problems])
    named = find.named_hosts(cluster)
    hosts = [h for _name, h in named]
    host_names = {h._moId: name for name, h in named}
    if spec.placement.hosts:
        wanted = set(spec.placement.hosts)
        hosts = [h for h in hosts if host_names[h._moId] in wanted]
        missing = wanted - {host_names[h._moId] for h in hosts}
        if missing:
            raise PreflightError(
                [f"placement.hosts: {', '.join(sorted(missing))} not in cluster {cluster.name}"]
            )
    folder = find.folder(content, dc, folder_path)
    owner = ownership.folder_owner(content, folder) if folder is not None else None
    # What every clone needs of the template, read once, not once per VM.
    t = find.props_of(content, template, ["name", "snapshot", "config.hardware.device"])
    snapshot = t.get("snapshot")
    nics = [
        d for d in t.get("config.hardware.device") or [] if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ]
    return Resolved(
        dc,
        cluster,
        datastore,
        network,
        pool,
        template,
        hosts,
        host_names,
        folder_path,
        folder,
        owner,
        template_name=t.get("name") or _required(vs.template),
        template_snapshot=snapshot.currentSnapshot if snapshot is not None else None,
        template_nic=nics[0] if nics else None,
    )


def _required(value: str | None) -> str:
    # validate() guarantees these are set; this narrows the type for the checker.
    assert value is not None
    return value


def marked_vms(folder: Any | None, cluster_name: str) -> dict[str, Any]:
    """The VMs in the cluster's folder that carry an ownership mark of cluster_name (of any
    id: preflight refuses the ones of another id), by name."""
    if folder is None:
        return {}
    out = {}
    for vm in find.vms_in_folder(folder):
        extra = {o.key: o.value for o in vm.config.extraConfig or []} if vm.config else {}
        if extra.get(specs.OWNER_CLUSTER_NAME) == cluster_name:
            out[vm.name] = vm
    return out


def preflight(content: Any, inv: Resolved, plan: Plan, state: ClusterState, owned: dict[str, Any]) -> None:
    """Read-only checks that stop create-cluster before it creates anything."""
    problems = []
    if inv.template_nic is None:
        problems.append(
            f"template {inv.template_name!r} has no network adapter: a node's address is given to "
            "the adapter it is cloned with; add one (vmxnet3) to the template"
        )
    if inv.template_snapshot is None:
        problems.append(
            f"template {inv.template_name!r} has no snapshot, so linked clones are impossible; "
            "take a snapshot of it, or set vsphere.linked_clone: false for (slow) full clones"
        )
    for name, vm in owned.items():
        extra = {o.key: o.value for o in vm.config.extraConfig or []}
        other_id = extra.get(specs.OWNER_CLUSTER_ID)
        if other_id != state.cluster_id:
            problems.append(
                f"VM {name} belongs to another cluster named {plan.cluster!r} (id {other_id}), "
                "not the one in the local state; run `vkp delete-cluster` for it first"
            )
    # The cluster's own folder (named after it): a same-named cluster's in the same place is
    # not ours to share.
    if inv.folder_owner not in (None, state.cluster_id):
        problems.append(
            f"folder {inv.folder_path} was created for another cluster named {plan.cluster!r} "
            f"(id {inv.folder_owner}); delete that one first (vkp delete-cluster {plan.cluster} "
            f"--cluster-id {inv.folder_owner}), or set vsphere.folder to another parent folder"
        )
    names = {n.name for n in plan.nodes}
    ips = find.all_vm_guest_ips(content)
    owned_ids = {vm._moId for vm in owned.values()}
    for node in plan.nodes:
        holders = {moid: name for moid, name in ips.get(node.address, {}).items() if moid not in owned_ids}
        if holders:
            problems.append(
                f"address {node.address} (planned for {node.name}) is already used by VM "
                + ", ".join(sorted(holders.values()))
            )
    # vCenter wants VM names unique per folder; the same name elsewhere (another cluster of
    # the same name, in its own folder) is allowed.
    in_folder = {vm.name for vm in find.vms_in_folder(inv.folder)} if inv.folder is not None else set()
    taken = in_folder & names - set(owned)
    for name in sorted(taken):
        problems.append(
            f"a VM named {name} already exists in {inv.folder_path} and is not part of this cluster"
        )
    if problems:
        raise PreflightError(problems)


# -- the run ------------------------------------------------------------------------------------


class VMPhase:
    def __init__(
        self,
        session: Session,
        spec: ClusterSpec,
        plan: Plan,
        inv: Resolved,
        state: ClusterState,
        log: Log,
        check: NodeCheck,
        concurrency: int = 8,
        deadline: float = 600.0,
    ) -> None:
        self.session, self.spec, self.plan, self.inv, self.state = session, spec, plan, inv, state
        self.log = log
        self.check = check
        self.slots = threading.BoundedSemaphore(concurrency)
        self.deadline = deadline
        self.hosts_by_name = {inv.host_names[h._moId]: h for h in inv.hosts}

    def run(self, owned: dict[str, Any], only: Collection[str] | None = None) -> list[NodeOutcome]:
        """Every node's actions; only: the nodes to act on (a repair's), the others' VMs are
        taken as they are (they still count for the placement rules)."""
        content = self.session.content
        if self.inv.folder is None:
            self.inv.folder = vms.ensure_folder_path(content, self.inv.datacenter, self.inv.folder_path)
            ownership.mark_folder(content, self.inv.folder, self.plan.cluster, self.state.cluster_id)
            self.log(f"folder {self.inv.folder_path} created")
        elif self._adoptable_folder(owned):
            # Created by a run stopped before it could mark it: it holds only this cluster's VMs.
            ownership.mark_folder(content, self.inv.folder, self.plan.cluster, self.state.cluster_id)
        outcomes: list[NodeOutcome] = []
        errors: list[ProvisionerError] = []
        acting = [n for n in self.plan.nodes if only is None or n.name in only]
        for n in self.plan.nodes:
            if n not in acting:
                outcomes.append(NodeOutcome(n, machine=owned.get(n.name)))
        for n in acting:
            view.node(n.name, n.role)
        with ThreadPoolExecutor(max_workers=max(1, len(acting))) as pool:
            futures = {pool.submit(self._node, n, owned.get(n.name)): n for n in acting}
            for fut in as_completed(futures):
                node = futures[fut]
                try:
                    outcomes.append(fut.result())
                except ProvisionerError as exc:
                    exc.message = f"{node.name}: {exc.message}"
                    errors.append(exc)
                    if not stop.is_stop(exc):
                        self.log(f"FAILED {exc.message}")
        # A stop is reported as itself (exit 130/143, or the run's deadline naming what a node
        # waited for), not as "N VMs failed".
        stopped = [e for e in errors if stop.is_stop(e)]
        if stopped:
            raise stopped[0]
        stop.check("the anti-affinity rules")
        # Rules once the VMs exist; DRS applies them to later placements and migrations.
        present = {o.node.name: o.machine for o in outcomes if o.machine is not None}
        rules = {
            rule.role: [present[v] for v in rule.vms if v in present]
            for rule in self.plan.anti_affinity_rules
        }
        if self.spec.placement.anti_affinity and rules:
            cid = self.state.cluster_id
            tasks = placement.ensure_rules(self.inv.cluster, self.plan.cluster, cid, rules)
            if tasks:
                waits.wait_for_tasks(content, tasks, deadline=time.monotonic() + 120)
                names = placement.rule_names(self.plan.cluster, cid)
                self.log(
                    f"anti-affinity rules: {', '.join(names[r.role] for r in self.plan.anti_affinity_rules)}"
                )
        if errors:
            failed = ProvisionerError(
                f"{len(errors)} of {len(acting)} VMs failed:\n  "
                + "\n  ".join(e.message for e in errors),
                hint="fix the cause and run create-cluster again: it resumes with what exists",
            )
            # The exit code says what kind of failure it was (vCenter, SSH, timeout...).
            failed.exit_code = errors[0].exit_code
            raise failed
        order = {n.name: i for i, n in enumerate(self.plan.nodes)}
        return sorted(outcomes, key=lambda o: order[o.node.name])

    def _adoptable_folder(self, owned: dict[str, Any]) -> bool:
        content = self.session.content
        if self.inv.folder_owner is not None:
            return False
        inside = find.vms_in_folder(self.inv.folder)
        subfolders = find.props_of(content, self.inv.folder, ["childEntity"]).get("childEntity") or []
        return len(subfolders) == len(inside) and {v._moId for v in inside} <= {
            v._moId for v in owned.values()
        }

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One vCenter operation under the concurrency bound; returns its task's result."""
        with self.slots:
            stop.check("a free slot for a vCenter operation")
            task = self.session.call(fn)
            return waits.wait_for_tasks(
                self.session.content, [task], deadline=time.monotonic() + self.deadline
            )[0]

    def _read(self, node: NodePlan, vm: Any, out: NodeOutcome) -> VMFacts:
        # Everything the actions need to know about the VM, in one round trip.
        facts = _facts(find.props_of(self.session.content, vm, VM_FACTS))
        out.machine = vm
        out.esxi_host = self.inv.host_names.get(facts.host._moId) if facts.host is not None else None
        self.state.save_node(
            NodeRecord(
                name=node.name,
                role=node.role,
                address=node.address,
                esxi_host=out.esxi_host,
                moid=vm._moId,
                instance_uuid=facts.instance_uuid,
            )
        )
        return facts

    def _node(self, node: NodePlan, vm: Any | None) -> NodeOutcome:
        out = NodeOutcome(node)
        t0 = time.monotonic()
        facts = self._read(node, vm, out) if vm is not None else NO_VM
        steps = node_actions(node, facts)
        userdata = facts.has_userdata
        booting: dict[str, float] = {}  # when the cloud-init write began: boot time runs from there
        outcome: Any = None
        while True:
            try:
                action = steps.send(outcome)
            except StopIteration:
                break
            if isinstance(action, WriteCloudInit):
                userdata = True
            label, changes = STEP_NAMES[type(action)]
            view.step(node.name, label, phase="vms")
            try:
                outcome = self._do(action, node, out, facts, booting)
            except BaseException as exc:
                # Whatever failed, and however (a stop, a task, the check): user data carries
                # the node's private host key and must not stay in the VM's properties.
                view.done(node.name, label, "interrupted" if stop.is_stop(exc) else "failed")
                if userdata and out.machine is not None:
                    self._erase_userdata(node, out.machine)
                raise
            # A first boot probed in vain ends with the VM powered off: a change.
            changes = changes or (isinstance(action, ProbeFirstBoot) and outcome is False)
            view.done(node.name, label, "changed" if changes else "ok")
            if isinstance(action, Clone):
                facts = outcome
            elif isinstance(action, EraseUserdata):
                userdata = False
        self.log(
            f"{node.name}: {node.address} answers SSH with its pinned host key ({time.monotonic() - t0:.1f}s)"
        )
        return out

    def _do(
        self, action: Action, node: NodePlan, out: NodeOutcome, facts: VMFacts, booting: dict[str, float]
    ) -> Any:
        vm = out.machine
        t = time.monotonic()
        if isinstance(action, Clone):
            host = self.hosts_by_name.get(node.esxi_host or "")
            vm = self._clone(node, host)
            out.created = out.changed = True
            out.seconds["clone"] = time.monotonic() - t
            self.log(
                f"{node.name}: cloned on {node.esxi_host if host else '-'} ({out.seconds['clone']:.1f}s)"
            )
            return self._read(node, vm, out)
        if isinstance(action, Resize):
            self._call(lambda: vms.reconfigure(vm, specs.resize_spec(action.cpus, action.memory_mb)))
            out.changed = True
        elif isinstance(action, ProbeFirstBoot):
            return self._probe_unverified(node, vm)
        elif isinstance(action, WriteCloudInit):
            booting["since"] = t
            if facts.mac is None:
                raise ProvisionerError(
                    f"VM {node.name} has no network adapter for its address {node.address}",
                    hint="delete the VM (vkp delete-cluster, or in vCenter) and run create-cluster again",
                )
            metadata, userdata = self._cloud_init(node, facts.mac, new_instance=action.new_instance)
            config = vim.vm.ConfigSpec(
                extraConfig=specs.option_values(specs.guestinfo_extra_config(metadata, userdata))
            )
            self._call(lambda: vms.reconfigure(vm, config))
        elif isinstance(action, PowerOn):
            self._call(lambda: vms.power_on(vm))
            out.changed = True
            out.seconds["power_on"] = time.monotonic() - booting.get("since", t)
            self.log(f"{node.name}: powered on")
        elif isinstance(action, WaitForAddress):
            what = f"waiting for VMware Tools to report {action.address}"
            with view.waiting(node.name, what, self.deadline):
                deadline = time.monotonic() + self.deadline
                waits.wait_for_guest_ip(self.session.content, vm, expected=action.address, deadline=deadline)
            out.seconds["address"] = time.monotonic() - t
        elif isinstance(action, CheckNode):
            with view.waiting(node.name, "waiting for SSH (host key pinned)", self.deadline):
                self.check(node, self.deadline)
            out.seconds["ssh"] = time.monotonic() - t
        elif isinstance(action, EraseUserdata):
            self._call(lambda: vms.reconfigure(vm, specs.redact_userdata_spec(verified=True)))
            out.changed = True
        return None

    def _erase_userdata(self, node: NodePlan, vm: Any) -> None:
        """Take the node's private host key out of the VM's properties, whatever went wrong.

        Shielded from the stop flag (it runs on the way out of an interrupt) and bounded by
        its own short deadline. A node whose first boot this cuts short is booted again by the
        next run (see _probe_unverified).
        """
        try:
            with stop.shielded():
                task = self.session.call(vms.reconfigure, vm, specs.redact_userdata_spec(verified=False))
                waits.wait_for_tasks(self.session.content, [task], deadline=time.monotonic() + 30)
        except Exception as exc:  # noqa: BLE001 - the original failure is the one to report
            self.log(
                f"WARNING {node.name}: could not erase its cloud-init data (with its host key) from "
                f"the VM's properties: {exc}; run create-cluster or delete-cluster again to erase it"
            )

    def _probe_unverified(self, node: NodePlan, vm: Any) -> bool:
        """A powered-on VM without cloud-init data that never answered SSH: an earlier run
        stopped during its first boot and erased the data. True if it answers now; otherwise it
        is powered off, so the caller boots it again with fresh data."""
        try:
            probe_deadline = time.monotonic() + UNVERIFIED_PROBE_SECONDS
            with view.waiting(node.name, "waiting for its first boot to answer", UNVERIFIED_PROBE_SECONDS):
                waits.wait_for_guest_ip(
                    self.session.content, vm, expected=node.address, deadline=probe_deadline
                )
                self.check(node, UNVERIFIED_PROBE_SECONDS)
            return True
        except ProvisionerError as exc:
            if isinstance(exc, Interrupted) or stop.stopping():
                raise
            why = exc.message.splitlines()[0].split(". ")[0]
            self.log(f"{node.name}: did not finish its first boot ({why}); booting it again")
        self._call(lambda: vms.power_off(vm))
        return False

    def _clone(self, node: NodePlan, host: Any | None) -> Any:
        extra = {
            **specs.ownership_extra_config(self.plan.cluster, self.state.cluster_id, node.role),
            # Disks must show stable serials to the guest: the vSphere CSI driver finds volumes by them.
            "disk.EnableUUID": "TRUE",
        }
        spec = specs.clone_spec(
            cpus=node.cpus,
            memory_mb=node.memory_mb,
            snapshot=self.inv.template_snapshot,
            pool=self.inv.pool,
            host=host,
            datastore=self.inv.datastore,
            nic=self.inv.template_nic,
            network=self.inv.network,
            extra_config=extra,
            linked=self.spec.vsphere.linked_clone,
        )
        folder = self.inv.folder
        return self._call(lambda: vms.clone(self.inv.template, folder, node.name, spec))

    def _cloud_init(self, node: NodePlan, mac: str, *, new_instance: bool = False) -> tuple[str, str]:
        """The node's cloud-init documents. new_instance: its first boot ran without user data
        (erased by an interrupted run), and cloud-init does a first boot's work only for an
        instance id it has not seen."""
        net = self.spec.network
        _priv_path, public = self.state.ssh_keypair()
        host_private, host_public = self.state.host_key(node.name)
        assert net.prefix is not None and net.gateway is not None  # validate() requires both
        return cloud_init_documents(
            node_name=node.name,
            address=node.address,
            prefix=net.prefix,
            gateway=net.gateway,
            dns=list(net.dns),
            mac=mac,
            ssh_user=self.spec.ssh.user,
            ssh_public_key=public,
            host_key_private=host_private,
            host_key_public=host_public,
            instance_id=f"{self.state.cluster_id}-{node.name}"
            + (f"-{uuid.uuid4().hex[:8]}" if new_instance else ""),
        )


def provision_vms(
    spec: ClusterSpec,
    state: ClusterState,
    session: Session,
    log: Log,
    *,
    check: NodeCheck,
    concurrency: int = 8,
    only: Collection[str] | None = None,
) -> tuple[Plan, list[NodeOutcome]]:
    """The VM phase over the spec's nodes; only: the nodes to act on (vkp repair's), the
    others' VMs are looked at (preflight, placement rules) and left as they are."""
    content = session.content
    plan = make_plan(spec)
    inv = resolve(content, spec, plan.folder)
    if not inv.hosts:
        raise PreflightError([f"cluster {inv.cluster.name} has no connected host outside maintenance mode"])
    plan = make_plan(spec, hosts=[inv.host_names[h._moId] for h in inv.hosts])
    owned = marked_vms(inv.folder, spec.name)
    preflight(content, inv, plan, state, owned)
    log(f"preflight ok: {len(plan.nodes)} VMs, {len(owned)} already there, {len(inv.hosts)} ESXi hosts")
    for n in plan.nodes:
        state.host_key(n.name)  # generated once, before the VM exists, so it can be pinned
    state.write_known_hosts([(n.name, n.address) for n in plan.nodes])
    outcomes = VMPhase(session, spec, plan, inv, state, log, check, concurrency=concurrency).run(owned, only)
    state.write_hosts_inventory()
    return plan, outcomes
