"""create-cluster's vSphere half: connect, preflight, clone, place, boot, pin SSH.

The order of work per VM is a small pipeline (clone -> guestinfo -> power on -> address ->
SSH -> redact userdata). VMs run through it in parallel; only the calls that load vCenter
(clones, reconfigures, power-ons) are bounded by --concurrency, while waits hold no slot, so
one slow guest does not hold back the clones of the others.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from provisioner import stop
from provisioner.bootstrap.cloudinit import cloud_init_documents
from provisioner.errors import AuthError, Interrupted, PreflightError, ProvisionerError, SSHError
from provisioner.plan import NodePlan, Plan, make_plan
from provisioner.plan import folder_path as plan_folder
from provisioner.spec import TLS, ClusterSpec, VSphereSpec
from provisioner.ssh.commands import Cmd
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState, NodeRecord
from provisioner.vsphere import find, ownership, placement, specs, vms, waits
from provisioner.vsphere.endpoint import join_server
from provisioner.vsphere.session import Session, connect, split_server

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

# Credentials typed at a prompt, by vCenter: a run that needs several sessions (resize then
# converge) asks once. Never written anywhere.
_prompted: dict[str, tuple[str, str]] = {}
# How long a powered-on node that never answered SSH (an interrupted first boot) gets to
# answer before it is powered off and booted again with its cloud-init data.
UNVERIFIED_PROBE_SECONDS = 90.0


def session_for(spec: ClusterSpec, env: Mapping[str, str] | None = None) -> Session:
    """Log in to the spec's vCenter; credentials come from the environment or a prompt, never the file."""
    if spec.vsphere.tls.insecure:
        print(f"warning: {spec.warnings()[0]}", file=sys.stderr)
    return login(spec.vsphere, env)


def session_for_cluster(name: str, env: Mapping[str, str] | None = None) -> Session:
    """The vCenter of an existing cluster: its saved spec's, or, when the local state is gone
    (or holds no spec it can read), the one VKP_VSPHERE_* name."""
    from provisioner.spec import spec_from_dict

    env = os.environ if env is None else env
    if ClusterState.exists(name):
        state = ClusterState.load(name)
        if state.has_spec():
            try:
                spec = spec_from_dict(state.load_spec_dict())
            except ProvisionerError:
                spec = None  # saved by an older vkp: the environment says where vCenter is
            if spec is not None:
                return session_for(spec, env)
    return login(vsphere_from_env(env), env)


def vsphere_from_env(env: Mapping[str, str]) -> VSphereSpec:
    """vCenter's address and how to verify it, from VKP_VSPHERE_* alone (no spec at hand)."""
    server = env.get("VKP_VSPHERE_SERVER")
    if not server:
        raise ProvisionerError(
            "cannot reach vCenter: no server (the local state is gone or has none)",
            hint="set VKP_VSPHERE_SERVER, VKP_VSPHERE_USER, VKP_VSPHERE_PASSWORD and VKP_VSPHERE_THUMBPRINT",
        )
    host, port = split_server(server)
    return VSphereSpec(
        server=host,
        port=port,
        tls=TLS(
            thumbprint=env.get("VKP_VSPHERE_THUMBPRINT") or None,
            ca_file=env.get("VKP_VSPHERE_CA_FILE") or None,
            insecure=env.get("VKP_VSPHERE_INSECURE", "").lower() in ("1", "true", "yes"),
        ),
    )


def login(vs: VSphereSpec, env: Mapping[str, str] | None = None) -> Session:
    """The one way from vCenter settings to a session: credentials from the environment
    variables the settings name (or a prompt on a terminal, asked once per run), TLS verified
    as the settings say."""
    env = os.environ if env is None else env
    assert vs.server is not None  # validate() and vsphere_from_env() require it
    user = env.get(vs.credentials.user_env)
    password = env.get(vs.credentials.password_env)
    if (not user or not password) and vs.server in _prompted:
        user, password = user or _prompted[vs.server][0], password or _prompted[vs.server][1]
    if not user or not password:
        if not sys.stdin.isatty():
            raise AuthError(
                f"no vCenter credentials: set {vs.credentials.user_env} and {vs.credentials.password_env}",
                hint='for the embedded lab: eval "$(vkp lab env)"',
            )
        # Prompts go to stderr: stdout carries the one JSON document of -o json.
        if not user:
            sys.stderr.write(f"vCenter user for {vs.server}: ")
            sys.stderr.flush()
            user = sys.stdin.readline().strip()
        password = password or getpass.getpass(f"password for {user}@{vs.server}: ", stream=sys.stderr)
        _prompted[vs.server] = (user, password)
    return connect(
        join_server(vs.server, vs.port),
        user,
        password,
        thumbprint=vs.tls.thumbprint,
        ca_file=vs.tls.ca_file,
        insecure=vs.tls.insecure,
    )


@dataclass
class Inventory:
    """The vCenter objects a spec names, each resolved to exactly one."""

    datacenter: Any
    cluster: Any
    datastore: Any
    network: Any
    pool: Any
    template: Any
    hosts: list[Any]
    folder_path: str
    folder: Any | None  # None until created
    folder_owner: str | None = None  # the cluster id the folder is marked with, if any

    @property
    def template_nic(self) -> Any:
        nics = [
            d
            for d in self.template.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]
        return nics[0]


def resolve(content: Any, spec: ClusterSpec, folder_path: str) -> Inventory:
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
    hosts = find.hosts(cluster)
    if spec.placement.hosts:
        wanted = set(spec.placement.hosts)
        hosts = [h for h in hosts if h.name in wanted]
        missing = wanted - {h.name for h in hosts}
        if missing:
            raise PreflightError(
                [f"placement.hosts: {', '.join(sorted(missing))} not in cluster {cluster.name}"]
            )
    folder = find.folder(content, dc, folder_path)
    owner = ownership.folder_owner(content, folder) if folder is not None else None
    return Inventory(dc, cluster, datastore, network, pool, template, hosts, folder_path, folder, owner)


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


def preflight(content: Any, inv: Inventory, plan: Plan, state: ClusterState, owned: dict[str, Any]) -> None:
    """Read-only checks that stop create-cluster before it creates anything."""
    problems = []
    snapshot = inv.template.snapshot
    if snapshot is None or snapshot.currentSnapshot is None:
        problems.append(
            f"template {inv.template.name!r} has no snapshot, so linked clones are impossible; "
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


@dataclass
class NodeOutcome:
    node: NodePlan
    vm: Any = None
    esxi_host: str | None = None
    created: bool = False
    changed: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


class VMPhase:
    def __init__(
        self,
        session: Session,
        spec: ClusterSpec,
        plan: Plan,
        inv: Inventory,
        state: ClusterState,
        log: Log,
        concurrency: int = 8,
        deadline: float = 600.0,
    ) -> None:
        self.session, self.spec, self.plan, self.inv, self.state = session, spec, plan, inv, state
        self.log = log
        self.slots = threading.BoundedSemaphore(concurrency)
        self.deadline = deadline
        self.hosts_by_name = {h.name: h for h in inv.hosts}
        self.host_names = {h._moId: h.name for h in inv.hosts}

    def run(self, owned: dict[str, Any]) -> list[NodeOutcome]:
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
        with ThreadPoolExecutor(max_workers=max(1, len(self.plan.nodes))) as pool:
            futures = {pool.submit(self._node, n, owned.get(n.name)): n for n in self.plan.nodes}
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
        present = {o.node.name: o.vm for o in outcomes if o.vm is not None}
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
                f"{len(errors)} of {len(self.plan.nodes)} VMs failed:\n  "
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

    def _node(self, node: NodePlan, vm: Any | None) -> NodeOutcome:
        out = NodeOutcome(node)
        t0 = time.monotonic()
        host = self.hosts_by_name.get(node.esxi_host or "")
        if vm is None:
            vm = self._clone(node, host)
            out.created = out.changed = True
            out.seconds["clone"] = time.monotonic() - t0
            self.log(f"{node.name}: cloned on {host.name if host else '-'} ({out.seconds['clone']:.1f}s)")
        out.vm = vm
        # Everything this pipeline needs to know about the VM, in one round trip.
        facts = find.props_of(self.session.content, vm, VM_FACTS)
        host_ref = facts.get("runtime.host")
        out.esxi_host = self.host_names.get(host_ref._moId) if host_ref is not None else None
        self._record(node, vm, out.esxi_host, facts.get("config.instanceUuid"))
        if (facts.get("config.hardware.numCPU"), facts.get("config.hardware.memoryMB")) != (
            node.cpus,
            node.memory_mb,
        ):
            # Check, then change: covers VMs adopted from an earlier size, and clones whose
            # config the server did not apply with the clone.
            self._call(lambda: vms.reconfigure(vm, specs.resize_spec(node.cpus, node.memory_mb)))
            out.changed = True
        extra = {o.key: o.value for o in facts.get("config.extraConfig") or []}
        has_userdata = bool(extra.get(specs.GUESTINFO_USERDATA))
        powered_on = facts.get("runtime.powerState") == "poweredOn"
        rebooted = False
        if powered_on and not has_userdata and extra.get(specs.NODE_VERIFIED) != "TRUE":
            powered_on = self._probe_unverified(node, vm)
            rebooted = not powered_on
        if not powered_on:
            t = time.monotonic()
            mac = next(
                d.macAddress
                for d in facts.get("config.hardware.device") or []
                if isinstance(d, vim.vm.device.VirtualEthernetCard)
            )
            metadata, userdata = self._cloud_init(node, str(mac), new_instance=rebooted)
            has_userdata = True
            try:
                self._call(
                    lambda: vms.reconfigure(
                        vm,
                        vim.vm.ConfigSpec(
                            extraConfig=_options(specs.guestinfo_extra_config(metadata, userdata))
                        ),
                    )
                )
                self._call(lambda: vms.power_on(vm))
            except BaseException:
                self._erase_userdata(node, vm)
                raise
            out.changed = True
            out.seconds["power_on"] = time.monotonic() - t
            self.log(f"{node.name}: powered on")
        t = time.monotonic()
        try:
            waits.wait_for_guest_ip(
                self.session.content, vm, expected=node.address, deadline=time.monotonic() + self.deadline
            )
            out.seconds["address"] = time.monotonic() - t
            t = time.monotonic()
            self._check_ssh(node)
            out.seconds["ssh"] = time.monotonic() - t
        except BaseException:
            if has_userdata:
                self._erase_userdata(node, vm)
            raise
        if has_userdata or extra.get(specs.NODE_VERIFIED) != "TRUE":
            # The userdata carried the node's private host key; it must not linger in VM
            # properties. The same call records that the node answered with its pinned key.
            self._call(lambda: vms.reconfigure(vm, specs.redact_userdata_spec(verified=True)))
            out.changed = True
        self.log(
            f"{node.name}: {node.address} answers SSH with its pinned host key ({time.monotonic() - t0:.1f}s)"
        )
        return out

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
            waits.wait_for_guest_ip(self.session.content, vm, expected=node.address, deadline=probe_deadline)
            self._check_ssh(node, deadline=UNVERIFIED_PROBE_SECONDS)
            return True
        except ProvisionerError as exc:
            if isinstance(exc, Interrupted) or stop.stopping():
                raise
            why = exc.message.splitlines()[0].split(". ")[0]
            self.log(f"{node.name}: did not finish its first boot ({why}); booting it again")
        self._call(lambda: vms.power_off(vm))
        return False

    def _clone(self, node: NodePlan, host: Any | None) -> Any:
        snapshot = self.inv.template.snapshot.currentSnapshot if self.inv.template.snapshot else None
        extra = {
            **specs.ownership_extra_config(self.plan.cluster, self.state.cluster_id, node.role),
            # Disks must show stable serials to the guest: the vSphere CSI driver finds volumes by them.
            "disk.EnableUUID": "TRUE",
        }
        spec = specs.clone_spec(
            cpus=node.cpus,
            memory_mb=node.memory_mb,
            snapshot=snapshot,
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

    def _record(self, node: NodePlan, vm: Any, esxi_host: str | None, instance_uuid: str | None) -> None:
        self.state.save_node(
            NodeRecord(
                name=node.name,
                role=node.role,
                address=node.address,
                esxi_host=esxi_host,
                moid=vm._moId,
                instance_uuid=instance_uuid,
            )
        )

    def _check_ssh(self, node: NodePlan, deadline: float | None = None) -> None:
        deadline = deadline or self.deadline
        key_path, _ = self.state.ssh_keypair()
        with Connection(
            node.name,
            node.address,
            self.spec.ssh.user,
            key_path,
            self.state.known_hosts_path,
            port=self.spec.ssh.port,
            connect_deadline=deadline,
        ) as conn:
            result = conn.run(Cmd("hostname"))
            if result.stdout.strip() != node.name:
                raise SSHError(f"{node.name} ({node.address}) answers as {result.stdout.strip()!r}")
            # sshd answers before cloud-init is done with the node (it even restarts sshd):
            # bootstrapping then would race with it. retry_safe: the wait may span that restart.
            done = conn.run(
                Cmd("cloud-init", "status", "--wait"), check=False, timeout=deadline, retry_safe=True
            )
            if done.exit_status not in (0, 2):  # 2: done, with recoverable errors (cloud-init 23.4+)
                said = (done.stdout + done.stderr).strip()[-400:]
                raise SSHError(
                    f"{node.name}: cloud-init did not finish cleanly: {said}",
                    hint=f"see /var/log/cloud-init.log on the node (vkp ssh {self.plan.cluster} {node.name})",
                )


def _options(d: dict[str, str]) -> list[Any]:
    return [vim.option.OptionValue(key=k, value=v) for k, v in d.items()]


def provision_vms(
    spec: ClusterSpec, state: ClusterState, session: Session, log: Log, *, concurrency: int = 8
) -> tuple[Plan, list[NodeOutcome]]:
    content = session.content
    folder_path = plan_folder(spec)
    inv = resolve(content, spec, folder_path)
    if not inv.hosts:
        raise PreflightError([f"cluster {inv.cluster.name} has no connected host outside maintenance mode"])
    plan = make_plan(spec, hosts=[h.name for h in inv.hosts])
    owned = marked_vms(inv.folder, spec.name)
    preflight(content, inv, plan, state, owned)
    log(f"preflight ok: {len(plan.nodes)} VMs, {len(owned)} already there, {len(inv.hosts)} ESXi hosts")
    for n in plan.nodes:
        state.host_key(n.name)  # generated once, before the VM exists, so it can be pinned
    state.write_known_hosts([(n.name, n.address) for n in plan.nodes])
    outcomes = VMPhase(session, spec, plan, inv, state, log, concurrency=concurrency).run(owned)
    state.write_hosts_inventory()
    return plan, outcomes
