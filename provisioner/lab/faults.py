"""Faults injected into a running lab: failing vSphere calls and guests losing their network.

vSphere faults are handed to the simulator as files in its run directory's faults/ (0700, like
the run directory): root on this machine can arm them, nothing on the network can. The
simulator's injector (vcsim/main.go) takes each file exactly once and keeps what is armed and
what fired in faults/state.json.

A network fault sets the host end of a guest's veth down, so the guest sees its cable pulled
(its eth0 loses carrier) while the VM stays powered on in vCenter, as a host's uplink failing
looks to a VM. A detached helper (this module run with `restore-link`) sets it up again when
the time is over, so `vkp lab fault network` can return at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from provisioner.errors import LabError
from provisioner.lab import guest as guests
from provisioner.lab import network, paths, simulator

# The methods a provisioner's run goes through (what `vkp lab fault vsphere` suggests; any
# method name is accepted).
COMMON_METHODS = ("CloneVM_Task", "ReconfigVM_Task", "PowerOnVM_Task", "PowerOffVM_Task", "Destroy_Task")
ACK_TIMEOUT = 5.0
MAX_NETWORK_SECONDS = 3600
NETFAULTS = "netfaults"  # under the run directory: one record per guest whose link is down

_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# ---- vSphere calls -------------------------------------------------------------------------


def parse_vsphere_fault(text: str) -> tuple[str, int]:
    """'CloneVM_Task' -> ('CloneVM_Task', 1); 'PowerOnVM_Task:3' -> ('PowerOnVM_Task', 3).

    K counts from the moment the fault is armed: 1 is the next call, 3 the third from now.
    """
    method, sep, k = text.strip().partition(":")
    method, k = method.strip(), k.strip()
    if not _METHOD.match(method) or (sep and (not k.isdigit() or int(k) < 1)):
        raise ValueError(
            f"invalid fault {text!r}: expected METHOD or METHOD:K with K >= 1 "
            "(the K-th call from now fails), e.g. CloneVM_Task or PowerOnVM_Task:3"
        )
    return method, int(k) if sep else 1


def faults_dir(run_dir: Path) -> Path:
    return Path(run_dir) / simulator.FAULTS_DIR


def _hand_over(run_dir: Path, lines: list[str], timeout: float) -> None:
    """Give the simulator one fault file and wait until it has taken it."""
    d = faults_dir(run_dir)
    if not d.is_dir():
        raise LabError(f"{d} is missing: this simulator takes no faults at run time", hint="restart the lab")
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    tmp, final = d / f".{name}.tmp", d / f"{name}.fault"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    # The simulator only reads *.fault, so it never sees a half-written file.
    os.replace(tmp, final)
    deadline = time.monotonic() + timeout
    while final.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not final.exists():
        return
    try:
        # Withdrawn, so a simulator that comes back later does not fire it by surprise. If the
        # simulator claimed it meanwhile (renamed it), this fails and the fault is armed.
        final.unlink()
    except FileNotFoundError:
        return
    raise LabError(
        f"the simulator did not take the fault within {timeout:.0f}s; nothing was armed",
        hint="is the lab up? `vkp lab status`",
    )


def arm_vsphere(
    run_dir: Path, faults: list[tuple[str, int]], *, timeout: float = ACK_TIMEOUT
) -> dict[str, Any]:
    """Arm each (METHOD, K): the K-th call of METHOD from now fails. Returns the fault state."""
    for method, k in faults:
        if not _METHOD.match(method) or k < 1:
            raise ValueError(f"invalid fault {method}:{k}")
    _hand_over(run_dir, [f"{m} {k}" for m, k in faults], timeout)
    return vsphere_state(run_dir)


def clear_vsphere(run_dir: Path, *, timeout: float = ACK_TIMEOUT) -> dict[str, Any]:
    """Disarm every pending vSphere fault (those fired stay in the record)."""
    _hand_over(run_dir, ["clear"], timeout)
    return vsphere_state(run_dir)


def vsphere_state(run_dir: Path) -> dict[str, Any]:
    """{'pending': [{method, call}], 'fired': [{method, call, at}], 'calls': {method: n}}."""
    try:
        state: dict[str, Any] = json.loads((faults_dir(run_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return {"pending": [], "fired": [], "calls": {}}
    return state


# ---- guest network ---------------------------------------------------------------------------


def _netfault_dir(run_dir: Path) -> Path:
    return Path(run_dir) / NETFAULTS


def _set_link(ifname: str, up: bool) -> None:
    res = subprocess.run(
        ["ip", "link", "set", ifname, "up" if up else "down"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise LabError(f"`ip link set {ifname} {'up' if up else 'down'}` failed: {res.stderr.strip()}")


def drop_network(
    name: str, moid: str, seconds: float, *, wait: bool, run_dir: Path = paths.RUN
) -> dict[str, Any]:
    """Take the network of the guest of VM name (moid) away for seconds, then give it back.

    With wait, returns once the link is up again; otherwise at once, and a detached helper
    sets the link up when the time is over. lab.find_vm gives (name, moid) from either.
    """
    if not 0 < seconds <= MAX_NETWORK_SECONDS:
        raise ValueError(f"--seconds must be in (0, {MAX_NETWORK_SECONDS}]")
    g = guests.find_guest(moid, guests_dir=Path(run_dir) / "guests")
    if g is None or g.state != "running":
        why = "has no guest (powered off, or not booted yet)" if g is None else f"guest is {g.state}"
        raise LabError(
            f"VM {name} ({moid}) {why}: there is no network to take away",
            hint="power the VM on and wait for its address (`vkp lab status`)",
        )
    _netns, ifname = network.nic_names(moid)
    record_dir = _netfault_dir(run_dir)
    record_dir.mkdir(mode=0o700, exist_ok=True)
    token = secrets.token_hex(8)
    down_at = time.time()
    up_at = down_at + seconds
    record = {
        "vm": name,
        "moid": moid,
        "interface": ifname,
        "down_at": down_at,
        "up_at": up_at,
        "token": token,
    }
    record_path = record_dir / f"{moid}.json"
    # The record comes first: a helper of an earlier fault on this guest sees it is no longer
    # the latest and leaves the link to this one.
    _write_record(record_path, record)
    _set_link(ifname, False)
    result = {k: v for k, v in record.items() if k != "token"} | {"seconds": seconds, "waited": wait}
    if wait:
        try:
            time.sleep(max(0.0, up_at - time.time()))
        finally:
            restore_link(record_path, token)
        return result
    subprocess.Popen(
        [sys.executable, "-m", "provisioner.lab.faults", "restore-link", str(record_path), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives this command, as the fault must
        cwd="/",
    )
    return result


def _write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        return record
    except (OSError, ValueError):
        return None


def restore_link(record_path: Path, token: str) -> bool:
    """Sleep until the fault's end, then set the link up, unless a later fault took over.

    True if this call set the link up.
    """
    record = _read_record(record_path)
    if record is None or record.get("token") != token:
        return False
    time.sleep(max(0.0, float(record["up_at"]) - time.time()))
    record = _read_record(record_path)
    if record is None or record.get("token") != token:
        return False
    # A guest destroyed meanwhile took its interface along: nothing to restore.
    with suppress(LabError):
        _set_link(str(record["interface"]), True)
    with suppress(FileNotFoundError):
        record_path.unlink()
    return True


def network_faults(run_dir: Path = paths.RUN) -> list[dict[str, Any]]:
    """Guests whose network is down now, with when it comes back."""
    d = _netfault_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        record = _read_record(p)
        if record is not None:
            out.append({k: v for k, v in record.items() if k != "token"})
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "restore-link":
        restore_link(Path(argv[2]), argv[3])
        return 0
    print("usage: python -m provisioner.lab.faults restore-link RECORD TOKEN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
