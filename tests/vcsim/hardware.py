"""The hardware the simulator lacks: a guest that boots and VMware Tools that reports its address.

Plain vcsim runs no guests. The lab's hypervisor (provisioner/lab/hypervisor.py) plays the
hardware there: it boots each powered-on VM's image with its guestinfo cloud-init data and,
once the guest configured its static address, reports it the way Tools would, with
ReconfigVM_Task extraConfig SET.guest.ipAddress (which the lab's simulator, lab/vcsim/main.go,
maps to guest.ipAddress). This double does the last part only: for each powered-on VM whose
guestinfo metadata assigns a static address, it reports that address at once. It works over
its own login, so the SOAP calls it makes are not counted as the VM phase's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from pyVmomi import vim

from provisioner.vsphere import find, guestinfo, waits
from provisioner.vsphere.session import Session, connect


class Hardware:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.reported: dict[str, str] = {}  # VM moid -> address reported (until powered off)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="vcsim-hardware", daemon=True)

    def _loop(self) -> None:
        content = self.session.content
        while not self.halt.wait(0.2):
            with contextlib.suppress(Exception):  # a VM destroyed between two looks
                self._look(content)

    def _look(self, content: Any) -> None:
        props = find.retrieve(
            content,
            content.rootFolder,
            [vim.VirtualMachine],
            ["runtime.powerState", "config.extraConfig", "guest.ipAddress"],
        )
        for vm, p in props.items():
            if p.get("runtime.powerState") != "poweredOn":
                self.reported.pop(vm._moId, None)
                continue
            if vm._moId in self.reported:
                continue
            extra = {o.key: o.value for o in p.get("config.extraConfig") or []}
            data = guestinfo.parse(extra, vm._moId)
            addresses = data.static_addresses() if data else []
            if not addresses:
                continue
            spec = vim.vm.ConfigSpec(
                extraConfig=[
                    vim.option.OptionValue(key="SET.guest.ipAddress", value=addresses[0]),
                    vim.option.OptionValue(key="SET.guest.hostName", value=data.hostname if data else ""),
                ]
            )
            task = vm.ReconfigVM_Task(spec)
            waits.wait_for_tasks(content, [task], deadline=_soon())
            self.reported[vm._moId] = addresses[0]


def _soon() -> float:
    import time

    return time.monotonic() + 30


@contextlib.contextmanager
def running(server: str, user: str, password: str, thumbprint: str) -> Iterator[Hardware]:
    """Guests that report their addresses while the block runs."""
    with connect(server, user, password, thumbprint=thumbprint) as session:
        hw = Hardware(session)
        hw.thread.start()
        try:
            yield hw
        finally:
            hw.halt.set()
            hw.thread.join(timeout=10)
