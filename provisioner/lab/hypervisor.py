"""The lab hypervisor: turns the simulator's VMs into real Linux guests.

It watches every VM through the PropertyCollector (WaitForUpdatesEx, as any vSphere client
should) and converges each one: powered on -> a systemd-nspawn guest booted from the VM's
guestinfo cloud-init data; powered off -> guest stopped (its disk kept); gone -> guest
destroyed. Once a guest has configured its address, it reports it back the way VMware Tools
would (extraConfig SET.guest.ipAddress, which the lab's simulator maps to guest.ipAddress
and guest.net), so a provisioner cannot tell the lab from vSphere.

Runs as its own process (`python -m provisioner.lab.hypervisor RUN_DIR`), started by
`vkp lab up` and stopped by `vkp lab down`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyVmomi import vim, vmodl

from provisioner.lab import guest as guests
from provisioner.lab import paths
from provisioner.vsphere import guestinfo
from provisioner.vsphere.find import view_filter_spec
from provisioner.vsphere.session import Session, connect

ADDRESS_TIMEOUT_SECONDS = 180.0
PROPS = [
    "name",
    "runtime.powerState",
    "config.template",
    "config.extraConfig",
    "config.hardware.device",
    "guest.ipAddress",
    "guest.hostName",
    "runtime.bootTime",
]


@dataclass
class VMView:
    moid: str
    name: str = ""
    power: str = "poweredOff"
    template: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    macs: list[str] = field(default_factory=list)
    guest_ip: str | None = None
    guest_hostname: str | None = None
    boot_time: str | None = None  # changes at every power-on: a power cycle is a new boot

    def apply(self, prop: str, value: Any) -> None:
        if prop == "name":
            self.name = value
        elif prop == "runtime.powerState":
            self.power = str(value)
        elif prop == "config.template":
            self.template = bool(value)
        elif prop == "config.extraConfig":
            self.extra = {o.key: str(o.value) for o in value or []}
        elif prop == "config.hardware.device":
            self.macs = [
                str(d.macAddress)
                for d in value or []
                if isinstance(d, vim.vm.device.VirtualEthernetCard) and d.macAddress
            ]
        elif prop == "guest.ipAddress":
            self.guest_ip = value or None
        elif prop == "guest.hostName":
            self.guest_hostname = value or None
        elif prop == "runtime.bootTime":
            self.boot_time = str(value) if value else None


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Hypervisor:
    def __init__(self, session: Session, image_root: Path, guests_dir: Path) -> None:
        self.session = session
        self.image_root = image_root
        self.guests_dir = guests_dir
        self.vms: dict[str, VMView] = {}
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._busy: set[str] = set()
        self._booted: dict[str, str | None] = {}  # moid -> the bootTime its guest runs for
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="guest")

    # -- watching --------------------------------------------------------------------------
    def watch(self, stop: threading.Event, ready_file: Path | None = None) -> None:
        content = self.session.content
        # One collector of our own: WaitForUpdatesEx versions belong to a collector.
        collector = content.propertyCollector.CreatePropertyCollector()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        pcq = vmodl.query.PropertyCollector
        collector.CreateFilter(view_filter_spec(view, [vim.VirtualMachine], PROPS), partialUpdates=True)
        version = ""
        first = True
        try:
            while not stop.is_set():
                update = collector.WaitForUpdatesEx(version, pcq.WaitOptions(maxWaitSeconds=5))
                if update is not None:
                    version = update.version
                    for fs in update.filterSet:
                        for obj in fs.objectSet:
                            self._apply(obj)
                if first:
                    first = False
                    self._collect_orphans()
                    if ready_file is not None:
                        ready_file.write_text("ready\n")
        finally:
            # The simulator may already be gone at shutdown.
            with contextlib.suppress(Exception):
                collector.DestroyPropertyCollector()

    def _apply(self, obj: Any) -> None:
        moid = obj.obj._moId
        with self._lock:
            if obj.kind == "leave":
                self.vms.pop(moid, None)
            else:
                vm = self.vms.setdefault(moid, VMView(moid))
                for change in obj.changeSet:
                    vm.apply(change.name, change.val if change.op != "remove" else None)
        self.reconcile(moid)

    def _collect_orphans(self) -> None:
        """Guests left from VMs that no longer exist (e.g. the hypervisor was down when they went)."""
        for g in guests.list_guests(self.guests_dir):
            if g.id not in self.vms:
                self.reconcile(g.id)

    # -- converging ------------------------------------------------------------------------
    def reconcile(self, moid: str) -> None:
        """Mark a VM for convergence; at most one worker per VM, which loops while it is dirty."""
        with self._lock:
            self._dirty.add(moid)
            if moid in self._busy:
                return
            self._busy.add(moid)
        self.pool.submit(self._worker, moid)

    def _worker(self, moid: str) -> None:
        while True:
            with self._lock:
                if moid not in self._dirty:
                    self._busy.discard(moid)
                    return
                self._dirty.discard(moid)
                vm = self.vms.get(moid)
                snapshot = None if vm is None else VMView(**vm.__dict__)
            try:
                self._converge(moid, snapshot)
            except Exception as exc:  # noqa: BLE001 - one VM's failure must not stop the others
                log(f"{moid}: {type(exc).__name__}: {exc}")

    def _converge(self, moid: str, vm: VMView | None) -> None:
        current = guests.find_guest(moid, guests_dir=self.guests_dir)
        running = current is not None and current.state == "running"
        if vm is None:
            if current is not None:
                log(f"{moid}: VM destroyed -> removing its guest")
                guests.destroy_guest(moid, guests_dir=self.guests_dir)
            return
        if vm.template:
            return
        if vm.power == "poweredOn" and running:
            booted_for = self._booted.setdefault(moid, vm.boot_time)
            if booted_for != vm.boot_time:
                # Powered off and on again between two looks: a real VM would have rebooted.
                log(f"{moid} ({vm.name}): power-cycled -> rebooting its guest")
                guests.stop_guest(moid, guests_dir=self.guests_dir)
                running = False
        if vm.power == "poweredOn" and not running:
            self._booted[moid] = vm.boot_time
            self._boot(vm)
        elif vm.power != "poweredOn" and running:
            log(f"{moid} ({vm.name}): powered off -> stopping its guest")
            guests.stop_guest(moid, guests_dir=self.guests_dir)

    def _boot(self, vm: VMView) -> None:
        started = time.monotonic()
        if not vm.macs:
            log(f"{vm.moid} ({vm.name}): powered on but has no network card; nothing to boot")
            return
        data = guestinfo.parse(vm.extra, vm.moid)
        if data is None and vm.guest_ip:
            # Customized with CustomizeVM_Task: the simulator already set the guest identity.
            data = guestinfo.CloudInitData(
                instance_id=vm.moid,
                hostname=vm.guest_hostname or vm.name,
                user_data="",
                network=guestinfo.static_network(vm.guest_ip, paths.PREFIX, paths.GATEWAY),
            )
        if data is None:
            data = guestinfo.CloudInitData(vm.moid, vm.name, "", None)
        hostname = data.hostname or vm.name
        network_config = None
        if data.network is not None:
            network_config = yaml.safe_dump(
                guests.translate_network_config(data.network, mac=vm.macs[0]), sort_keys=False
            )
        seed = guests.NoCloudSeed(
            meta_data=guestinfo.meta_data_document(data),
            user_data=data.user_data or "#cloud-config\n{}\n",
            network_config=network_config,
        )
        log(f"{vm.moid} ({vm.name}): powered on -> booting guest {hostname} mac {vm.macs[0]}")
        g = guests.start_guest(
            vm.moid,
            hostname=hostname,
            mac=vm.macs[0],
            image_root=self.image_root,
            guests_dir=self.guests_dir,
            seed=seed,
        )
        addresses = data.static_addresses()
        if not addresses:
            log(
                f"{vm.moid} ({vm.name}): no static address in guestinfo.metadata or customization; "
                "the lab has no DHCP, so this VM will report no IP address"
            )
            self._record(vm.moid, {"state": "no-address", "error": "no static address configured"})
            return
        self.pool.submit(self._report_address, vm.moid, g.pid, addresses[0], hostname, started)

    def _report_address(
        self, moid: str, pid: int | None, address: str, hostname: str, started: float
    ) -> None:
        """Act as VMware Tools: tell vCenter the address once the guest has really configured it."""
        deadline = started + ADDRESS_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if address in _guest_addresses(pid):
                break
            current = guests.find_guest(moid, guests_dir=self.guests_dir)
            if current is None or current.state != "running":
                return  # stopped or destroyed meanwhile; nothing to report
            time.sleep(0.25)
        else:
            log(
                f"{moid}: the guest did not configure {address} within {ADDRESS_TIMEOUT_SECONDS:.0f}s; "
                f"see {self.guests_dir / moid}"
            )
            self._record(moid, {"state": "no-address", "error": f"{address} not configured in time"})
            return
        with self._lock:
            vm = self.vms.get(moid)
            if vm is None or vm.power != "poweredOn":
                return
        ref = vim.VirtualMachine(moid, self.session.si._stub)
        spec = vim.vm.ConfigSpec(
            extraConfig=[
                vim.option.OptionValue(key="SET.guest.ipAddress", value=address),
                vim.option.OptionValue(key="SET.guest.hostName", value=hostname),
            ]
        )
        task = self.session.call(ref.ReconfigVM_Task, spec)
        _wait_task(task)
        seconds = time.monotonic() - started
        self._record(moid, {"state": "running", "address": address, "boot_seconds": round(seconds, 2)})
        log(f"{moid}: guest {hostname} has {address}, reported after {seconds:.1f}s")

    def _record(self, moid: str, facts: dict[str, Any]) -> None:
        d = self.guests_dir / moid
        if d.is_dir():
            tmp = d / "vm.json.tmp"
            tmp.write_text(json.dumps(facts))
            tmp.replace(d / "vm.json")


def _guest_addresses(pid: int | None) -> set[str]:
    """IPv4 addresses configured in the guest's network namespace.

    Read from /proc/PID/net/fib_trie of a process in that namespace (the nspawn process joined
    it), which costs a file read where `ip -n` would cost a process start four times a second
    for every booting guest, on a machine whose CPUs the booting guests need.
    """
    if not pid:
        return set()
    try:
        lines = Path(f"/proc/{pid}/net/fib_trie").read_text().splitlines()
    except OSError:
        return set()
    out = set()
    for prev, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line and "|--" in prev:
            out.add(prev.split("|--")[1].strip())
    out.discard("127.0.0.1")
    return out


def _wait_task(task: Any) -> None:
    # The lab's simulator completes tasks before the call returns; a short bounded wait suffices.
    for _ in range(200):
        if task.info.state in ("success", "error"):
            return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    run_dir = Path(argv[1]) if len(argv) > 1 else paths.RUN
    state = json.loads((run_dir / "lab.json").read_text())
    password = (run_dir / "password").read_text().strip()
    session = connect(
        f"127.0.0.1:{state['port']}", state["username"], password, thumbprint=state["thumbprint"]
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hv = Hypervisor(session, Path(state["image_root"]), run_dir / "guests")
    log(f"watching {session.server} for VMs to realize")
    try:
        hv.watch(stop, ready_file=run_dir / "hypervisor.ready")
    finally:
        hv.pool.shutdown(wait=False, cancel_futures=True)
        session.logout()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
