"""Kernel settings of this machine that the lab's kubelets need, set while the lab is up.

Guests share this machine's kernel. A kubelet 1.20 wants vm.overcommit_memory=1,
kernel.panic=10 and kernel.panic_on_oops=1 and refuses to start when it cannot have them, but
those are machine-wide: a guest allowed to write them would change this machine behind the
lab's back. So guests get a read-only /proc/sys (except their own network namespace's), and
the lab sets these values itself at `vkp lab up`, says so, records what it found, and puts it
back at `vkp lab down`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import LabError

Log = Callable[[str], None]

KUBELET_SYSCTLS = {
    "vm.overcommit_memory": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
}
_PROC = Path("/proc/sys")


def _path(key: str) -> Path:
    return _PROC / key.replace(".", "/")


def read(keys: list[str] | None = None) -> dict[str, str]:
    return {k: _path(k).read_text().strip() for k in (keys or list(KUBELET_SYSCTLS))}


def _write(key: str, value: str) -> None:
    try:
        _path(key).write_text(value)
    except OSError as exc:
        raise LabError(
            f"cannot set {key}={value} on this machine: {exc.strerror}", hint="run as root"
        ) from None


def apply(record: Path, log: Log) -> dict[str, str]:
    """Set KUBELET_SYSCTLS; the values found first are kept in record (once: a second `up`
    must not record the lab's own values as the machine's)."""
    found = read()
    if not record.exists():
        record.write_text(json.dumps(found, indent=2) + "\n")
    changed = {k: v for k, v in KUBELET_SYSCTLS.items() if found[k] != v}
    for key, value in changed.items():
        _write(key, value)
    if changed:
        log(
            "set on this machine while the lab is up (its kubelets need them; `vkp lab down` puts "
            "them back): " + ", ".join(f"{k}={v} (was {found[k]})" for k, v in changed.items())
        )
    return changed


def restore(record: Path, log: Log) -> dict[str, str]:
    """Put back what apply() found, where the lab's value is still in place."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    now = read([k for k in saved if k in KUBELET_SYSCTLS])
    restored = {}
    for key, value in saved.items():
        # Someone changed it since: theirs, not the lab's, so it stays.
        if key in KUBELET_SYSCTLS and now.get(key) == KUBELET_SYSCTLS[key] and value != now.get(key):
            _write(key, str(value))
            restored[key] = str(value)
    record.unlink(missing_ok=True)
    if restored:
        log("put back on this machine: " + ", ".join(f"{k}={v}" for k, v in restored.items()))
    return restored
