"""Lab guests: what a simulated VM becomes when it powers on.

A guest is systemd-nspawn booting the lab image through an overlay (the VM's linked-clone
disk: the upper directory survives power-off, and goes away only on destroy), in a network
namespace whose eth0 carries the VM's MAC, with the VM's cloud-init data as a NoCloud seed.

Each guest runs in cgroups of its own, in every hierarchy. On this kind of host (cgroup v1,
PID 1 not systemd) nspawn would otherwise hand every container the same cgroup tree, and one
guest's systemd could stop another's services; it also lets a forced stop find every process
of a guest, including the container's init, which outlives a killed nspawn. nspawn roots the
controller hierarchies it shows the guest at the cgroup it starts in, so a kubelet inside
(which makes /kubepods in each controller) stays inside its guest.

What a node needs to run a kubelet and containers is the hardware's part, so it is here and in
the image (provisioner/lab/image.py): every capability (mounts, runc), /dev/kmsg (the kubelet's
OOM watcher), the keyring and bpf system calls (runc), a writable /proc/sys/net (ip_forward,
kube-proxy's conntrack settings; the rest of /proc/sys stays read-only, so a guest cannot change
this machine's kernel settings), and /var/lib/containerd on a directory of this machine (the
overlayfs snapshotter cannot work on an overlay upper directory).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import LabError
from provisioner.lab import network, paths

_CGROUP_BASE = Path("/sys/fs/cgroup")
_CGROUP_GROUP = "vkp-lab"
GUEST_IFNAME = "eth0"


# --- network config: the lab playing the hardware's part ---------------------------------


def translate_network_config(
    netcfg: dict[str, Any], *, mac: str | None = None, ifname: str = GUEST_IFNAME
) -> dict[str, Any]:
    """Rewrite a VM's cloud-init network config for a lab guest whose only NIC is `ifname`.

    A real VM's config names its NIC by MAC (Cluster API vSphere writes `id0` with
    `match: {macaddress: ...}` and `set-name`). cloud-init 22.4 in an nspawn guest cannot
    match a veth by MAC nor rename without udev, and its networkd renderer takes the
    ethernets key as the interface name, so the entry is re-keyed by the guest's interface
    name and match/set-name are dropped. Everything else passes through unchanged.
    """
    if not isinstance(netcfg, dict):
        raise LabError(f"network config must be a mapping, got {type(netcfg).__name__}")
    cfg = copy.deepcopy(netcfg.get("network", netcfg) if "version" not in netcfg else netcfg)
    version = cfg.get("version")
    if version == 2:
        return _translate_v2(cfg, mac, ifname)
    if version == 1:
        return _translate_v1(cfg, mac, ifname)
    raise LabError(
        f"unsupported cloud-init network config version {version!r}",
        hint="the lab understands network config version 2 (and version 1)",
    )


def _pick(entries: dict[str, Any] | list[Any], mac_of: Any, mac: str | None, what: str) -> Any:
    items = list(entries.items()) if isinstance(entries, dict) else list(enumerate(entries))
    if len(items) == 1:
        return items[0]
    if mac:
        hits = [(k, v) for k, v in items if (mac_of(v) or "").lower() == mac.lower()]
        if len(hits) == 1:
            return hits[0]
    raise LabError(
        f"the network config has {len(items)} {what}; a lab guest has one NIC",
        hint="give the VM one NIC, or pass the guest's MAC so the matching entry is used",
    )


def _translate_v2(cfg: dict[str, Any], mac: str | None, ifname: str) -> dict[str, Any]:
    ethernets = cfg.get("ethernets")
    if not isinstance(ethernets, dict) or not ethernets:
        raise LabError("network config v2 has no `ethernets`", hint="describe the VM's NIC under ethernets")
    others = [k for k in ("bonds", "bridges", "vlans", "wifis") if cfg.get(k)]
    if others:
        raise LabError(f"network config v2 uses {', '.join(others)}; the lab guest has one plain NIC")

    def mac_of(entry: Any) -> Any:
        return (entry.get("match") or {}).get("macaddress") if isinstance(entry, dict) else None

    _, entry = _pick(ethernets, mac_of, mac, "ethernets")
    entry = dict(entry or {})
    entry.pop("match", None)
    entry.pop("set-name", None)
    out = {k: v for k, v in cfg.items() if k != "ethernets"}
    out["ethernets"] = {ifname: entry}
    return out


def _translate_v1(cfg: dict[str, Any], mac: str | None, ifname: str) -> dict[str, Any]:
    config = cfg.get("config")
    if not isinstance(config, list):
        raise LabError("network config v1 has no `config` list")
    physical = [e for e in config if isinstance(e, dict) and e.get("type") == "physical"]
    if not physical:
        raise LabError("network config v1 has no physical interface")
    _, chosen = _pick(physical, lambda e: e.get("mac_address"), mac, "physical interfaces")
    if any(isinstance(e, dict) and e.get("type") not in ("physical", "nameserver", "route") for e in config):
        raise LabError("network config v1 uses bonds, bridges or vlans; the lab guest has one plain NIC")
    out_config = []
    for e in config:
        if e.get("type") == "physical" and e is not chosen:
            continue
        if e is chosen:
            e = {k: v for k, v in e.items() if k != "mac_address"}
            e["name"] = ifname
        out_config.append(e)
    return {**cfg, "config": out_config}


# --- guests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NoCloudSeed:
    meta_data: str
    user_data: str
    network_config: str | None = None


@dataclass(frozen=True)
class Guest:
    id: str
    hostname: str
    mac: str
    pid: int | None
    state: str  # "running" or "stopped"
    log_path: Path
    dir: Path
    netns: str
    host_ifname: str


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _check_id(guest_id: str) -> None:
    # The id names a directory that destroy removes: it must never climb out of guests_dir.
    if not _ID_RE.match(guest_id) or guest_id in (".", ".."):
        raise LabError(f"invalid lab guest id {guest_id!r}", hint="use letters, digits, '.', '_', '-'")


def _machine_name(hostname: str, guest_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9-]", "-", hostname.split(".")[0]).strip("-")[:48]
    return name or re.sub(r"[^A-Za-z0-9-]", "-", guest_id)[:48] or "guest"


def _proc_starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        # Our own child that has exited: reap it so it does not linger as a zombie.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


def _read_meta(gdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((gdir / "guest.json").read_text())
    except (OSError, ValueError):
        return None


def _write_meta(gdir: Path, meta: dict[str, Any]) -> None:
    tmp = gdir / "guest.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, gdir / "guest.json")


def _running_pid(meta: dict[str, Any] | None) -> int | None:
    if not meta or not meta.get("pid"):
        return None
    pid = int(meta["pid"])
    start = _proc_starttime(pid)
    return pid if start is not None and start == meta.get("pid_starttime") else None


def _guest_from(gdir: Path, meta: dict[str, Any]) -> Guest:
    pid = _running_pid(meta)
    netns, host_if = network.nic_names(meta["id"])
    return Guest(
        id=meta["id"],
        hostname=meta["hostname"],
        mac=meta["mac"],
        pid=pid,
        state="running" if pid else "stopped",
        log_path=gdir / "console.log",
        dir=gdir,
        netns=netns,
        host_ifname=host_if,
    )


def _hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, named, unified)."""
    if (_CGROUP_BASE / "cgroup.procs").exists():  # pure v2: one hierarchy
        return [_CGROUP_BASE]
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2"):
                mnt = Path(fields[1])
                if mnt.parent == _CGROUP_BASE and (mnt / "cgroup.procs").exists():
                    found.append(mnt)
    return sorted(set(found))


def _cgroup_dirs(guest_id: str) -> list[Path]:
    """The guest's own cgroup in each hierarchy."""
    return [h / _CGROUP_GROUP / guest_id for h in _hierarchies()]


def _make_cgroups(guest_id: str) -> list[Path]:
    dirs = _cgroup_dirs(guest_id)
    for d in dirs:
        for level in (d.parent, d):
            level.mkdir(exist_ok=True)
            if (level / "cpuset.cpus").exists():
                # A new cpuset has no CPUs and no memory nodes: nothing could run in it.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (level / knob).read_text().strip():
                        (level / knob).write_text((level.parent / knob).read_text())
    return dirs


def _cgroup_pids(guest_id: str) -> set[int]:
    pids: set[int] = set()
    for base in _cgroup_dirs(guest_id):
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroups(guest_id: str) -> None:
    for base in _cgroup_dirs(guest_id):
        if not base.is_dir():
            continue
        # Children first: a cgroup directory can only be removed once it has none.
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


def guest_pids(guest_id: str) -> set[int]:
    """Every process of a guest on this machine (nspawn and everything in the container)."""
    return _cgroup_pids(guest_id)


def _write_seed(upper: Path, seed: NoCloudSeed) -> None:
    sdir = upper / "var/lib/cloud/seed/nocloud"
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)  # user-data may hold private host keys
    (sdir / "meta-data").write_text(seed.meta_data)
    (sdir / "user-data").write_text(seed.user_data)
    os.chmod(sdir / "user-data", 0o600)
    if seed.network_config is not None:
        (sdir / "network-config").write_text(seed.network_config)
    else:
        (sdir / "network-config").unlink(missing_ok=True)


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("lab guests need root", hint="run as root (sudo)")
    missing = [t for t in ("systemd-nspawn", "ip", "setsid") if shutil.which(t) is None]
    if missing:
        raise LabError(
            f"lab guests need {', '.join(missing)}", hint="apt-get install systemd-container iproute2"
        )


def start_guest(
    guest_id: str,
    *,
    hostname: str,
    mac: str,
    image_root: Path,
    guests_dir: Path,
    seed: NoCloudSeed,
) -> Guest:
    """Power a guest on: boot image_root through the guest's overlay, with its NIC and seed.

    Starting a running guest is a no-op. A stopped guest boots its existing disk (upper dir).
    """
    _check_id(guest_id)
    _require_tools()
    gdir = guests_dir / guest_id
    meta = _read_meta(gdir)
    if _running_pid(meta):
        assert meta is not None
        return _guest_from(gdir, meta)
    if not (image_root / "usr/lib/systemd/systemd").exists():
        raise LabError(f"{image_root} is not a lab guest image", hint="build it with `vkp lab prepare`")

    # A previous run may have been killed without a clean stop: start from a clean slate,
    # except for the disk.
    _kill_leftovers(guest_id)
    upper = gdir / "upper"
    upper.mkdir(parents=True, exist_ok=True)
    os.chmod(gdir, 0o700)
    _write_seed(upper, seed)

    netns, _host_if = network.add_guest_nic(guest_id, mac)
    cgroups = _make_cgroups(guest_id)
    containerd_dir = gdir / "containerd"
    containerd_dir.mkdir(mode=0o700, exist_ok=True)

    # nspawn mounts the container's /sys before it joins --network-namespace-path, so alone it
    # shows the guest this machine's NICs under /sys/class/net (cloud-init then cannot find its
    # NIC by MAC). Starting nspawn inside the namespace makes that /sys the guest's own; the flag
    # stays for its other effects. (`ip netns exec` would also remount /sys on this side and hide
    # /sys/fs/cgroup from nspawn.)
    cmd = [
        "nsenter",
        f"--net=/run/netns/{netns}",
        "systemd-nspawn",
        f"--directory={image_root}",
        f"--overlay={image_root}:{upper}:/",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns}",
        "--capability=all",
        "--system-call-filter=@keyring bpf @privileged",
        "--bind=/dev/kmsg",
        f"--bind={containerd_dir}:/var/lib/containerd",
        f"--machine={_machine_name(hostname, guest_id)}",
        "--console=read-only",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
    ]
    # The wrapper moves itself into the guest's cgroups, then becomes nspawn (same pid), so
    # nspawn never runs a moment in the caller's cgroup.
    wrapper = 'for d in $VKP_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"'
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "VKP_CGROUPS": " ".join(str(d) for d in cgroups),
        # Every guest shares the one image as its lower layer; nspawn's per-directory lock
        # would let only one of them boot.
        "SYSTEMD_NSPAWN_LOCK": "0",
        # Only the guest's own network namespace's /proc/sys/net: "1" would also let a kubelet
        # set vm.overcommit_memory, kernel.panic and kernel.panic_on_oops for this whole
        # machine. The lab sets those three itself while it is up (provisioner/lab/host.py).
        "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
    }
    log_path = gdir / "console.log"
    with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(f"\n=== vkp: start {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            ["sh", "-c", wrapper, "sh", *cmd],
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: no controlling terminal, outlives our session
            env=env,
            close_fds=True,
        )
    starttime = _proc_starttime(proc.pid)
    meta = {
        "id": guest_id,
        "hostname": hostname,
        "mac": mac.lower(),
        "pid": proc.pid,
        "pid_starttime": starttime,
        "image_root": str(image_root),
        "netns": netns,
        "started_at": time.time(),
        "command": cmd,
    }
    _write_meta(gdir, meta)
    # nspawn refuses bad arguments within a fraction of a second; report that here rather
    # than as an SSH timeout minutes later.
    time.sleep(0.3)
    if proc.poll() is not None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        network.remove_guest_nic(guest_id)
        _remove_cgroups(guest_id)
        raise LabError(
            f"lab guest {guest_id} exited at once (status {proc.returncode}):\n{tail}",
            hint=f"see {log_path}",
        )
    return _guest_from(gdir, meta)


def _kill_leftovers(guest_id: str) -> None:
    pids = _cgroup_pids(guest_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(guest_id, None, 10.0)
    network.remove_guest_nic(guest_id)
    _remove_cgroups(guest_id)


def _wait_gone(guest_id: str, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        alive = pid is not None and _proc_starttime(pid) is not None
        if not alive and not _cgroup_pids(guest_id):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_guest(guest_id: str, timeout: float = 60.0, *, guests_dir: Path = paths.GUESTS) -> None:
    """Power a guest off cleanly (SIGKILL after `timeout`); its disk is kept for the next start."""
    _check_id(guest_id)
    gdir = guests_dir / guest_id
    meta = _read_meta(gdir)
    pid = _running_pid(meta)
    if pid:
        # With --boot, nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a
        # clean poweroff, after which nspawn exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_gone(guest_id, pid, timeout if pid else 0.0):
        for p in _cgroup_pids(guest_id) | ({pid} if pid else set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        if not _wait_gone(guest_id, pid, 10.0):
            raise LabError(
                f"lab guest {guest_id} did not go away after SIGKILL",
                hint=f"processes left: {sorted(_cgroup_pids(guest_id))}",
            )
    network.remove_guest_nic(guest_id)
    _remove_cgroups(guest_id)
    if meta:
        meta["pid"] = None
        meta["pid_starttime"] = None
        meta["stopped_at"] = time.time()
        _write_meta(gdir, meta)


def destroy_guest(guest_id: str, *, guests_dir: Path = paths.GUESTS, timeout: float = 30.0) -> None:
    """Stop a guest if running and delete it from disk (NIC, overlay, seed, logs)."""
    _check_id(guest_id)
    stop_guest(guest_id, timeout, guests_dir=guests_dir)
    gdir = guests_dir / guest_id
    if gdir.exists():
        shutil.rmtree(gdir)


def find_guest(guest_id: str, *, guests_dir: Path = paths.GUESTS) -> Guest | None:
    """The guest with this id, running or stopped; None if it does not exist (or was destroyed)."""
    _check_id(guest_id)
    gdir = guests_dir / guest_id
    meta = _read_meta(gdir)
    return _guest_from(gdir, meta) if meta else None


def list_guests(guests_dir: Path = paths.GUESTS) -> list[Guest]:
    if not guests_dir.is_dir():
        return []
    guests = []
    for gdir in sorted(guests_dir.iterdir()):
        meta = _read_meta(gdir)
        if meta:
            guests.append(_guest_from(gdir, meta))
    return guests


def guest_memory(guest_id: str) -> dict[str, int]:
    """Memory of a guest's processes in bytes: summed RSS and PSS (PSS splits shared pages)."""
    rss = pss = 0
    for pid in _cgroup_pids(guest_id):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return {"rss": rss, "pss": pss, "processes": len(_cgroup_pids(guest_id))}
