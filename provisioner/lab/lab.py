"""Bringing the embedded lab up and down, and describing it.

Up is all-or-nothing: whatever was started before a failure is stopped again, so a failed
`vkp lab up` leaves no half-started lab behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from provisioner.errors import LabError
from provisioner.lab import appimages, faults, host, image, kubebuild, network, paths, prereqs, simulator
from provisioner.lab import guest as guests

if TYPE_CHECKING:
    from provisioner.vsphere.session import Session

Log = Callable[[str], None]
USERNAME = "vkp-admin@vsphere.local"


@dataclass
class LabOptions:
    # None means "not asked for": an already running lab is then accepted as it is.
    port: int | None = None
    hosts: int | None = None
    delays: dict[str, int] | None = None
    fails: list[tuple[str, int]] | None = None

    def differences(self, state: dict[str, Any]) -> list[str]:
        running = {
            "port": state["port"],
            "hosts": state["hosts"],
            "delays": state.get("delays", {}),
            "fails": state.get("fails", []),
        }
        asked = {
            "port": self.port,
            "hosts": self.hosts,
            "delays": self.delays,
            "fails": None if self.fails is None else [f"{m}:{k}" for m, k in self.fails],
        }
        return [
            f"{k}={running[k]} (asked {v})" for k, v in asked.items() if v is not None and v != running[k]
        ]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def is_up(state: dict[str, Any]) -> bool:
    return _alive(state.get("vcsim_pid")) and _alive(state.get("hypervisor_pid"))


def require_up() -> dict[str, Any]:
    """The running lab's state; LabError if it is not up."""
    state = read_state()
    if state is None or not is_up(state):
        raise LabError("the lab is not up", hint="start it with `vkp lab up`")
    return state


def session(state: dict[str, Any] | None = None) -> Session:
    """A vCenter session on the running lab (its own TLS pin and credentials)."""
    from provisioner.vsphere.session import connect

    state = state or require_up()
    password = (paths.RUN / "password").read_text().strip()
    return connect(f"127.0.0.1:{state['port']}", state["username"], password, thumbprint=state["thumbprint"])


def read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(paths.STATE_FILE.read_text())
        return state
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret: 0600 from the first byte, replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def env_lines(state: dict[str, Any], password: str) -> list[str]:
    """What `vkp lab env` prints: everything a spec-free `vkp create-cluster NAME --plan P` needs."""
    values = {
        "VKP_VSPHERE_SERVER": f"127.0.0.1:{state['port']}",
        "VKP_VSPHERE_USER": state["username"],
        "VKP_VSPHERE_PASSWORD": password,
        "VKP_VSPHERE_THUMBPRINT": state["thumbprint"],
        "VKP_VSPHERE_DATACENTER": "DC0",
        "VKP_VSPHERE_CLUSTER": "DC0_C0",
        "VKP_VSPHERE_DATASTORE": "LocalDS_0",
        "VKP_VSPHERE_NETWORK": "VM Network",
        "VKP_VSPHERE_TEMPLATE": "debian-12",
        "VKP_NETWORK_POOL": f"{paths.POOL_START}-{paths.POOL_END}",
        "VKP_NETWORK_PREFIX": str(paths.PREFIX),
        "VKP_NETWORK_GATEWAY": paths.GATEWAY,
        "VKP_NETWORK_DNS": paths.GATEWAY,
        "VKP_K8S_ARTIFACTS": f"local:{paths.ARTIFACTS}",
        "VKP_SITE_DEFAULTS": str(paths.SITE_DEFAULTS),
    }
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def site_defaults(record: dict[str, Any]) -> str:
    """The lab's site defaults (VKP_SITE_DEFAULTS): what a node in this lab needs, as spec settings.

    A spec file or plan overrides any of them; they only fill what a spec leaves out.
    """
    version = record["version"]
    doc = {
        "network": {
            # Several masters share a virtual address on the lab bridge; kube-vip's image cannot
            # be had here, haproxy and keepalived come with the guest image.
            "api_endpoint": {"virtual": "haproxy-keepalived"},
        },
        "kubernetes": {
            "version": version,
            # The rest of the RFC 2544 range: never routed, like the nodes' 198.18.0.0/24.
            "pod_cidr": paths.POD_CIDR,
            "service_cidr": paths.SERVICE_CIDR,
            "cni": "bridge",
            "cni_plugins_version": record["cni_plugins_version"],
            # No cluster DNS can be had here (Debian packages neither CoreDNS nor kube-dns).
            "dns": "none",
            "artifacts": {"image_tarballs": str(kubebuild.Layout(paths.ARTIFACTS).images)},
            "node": {
                # A guest's systemd booted with read-only controllers and cannot manage them.
                "cgroup_driver": "cgroupfs",
                # Even root cannot lower oom_score_adj here (no CAP_SYS_RESOURCE on this host).
                "restrict_oom_score_adj": True,
                # nf_conntrack_max belongs to this machine, not to a guest's namespace.
                "conntrack_max_per_core": 0,
                # kubeadm 1.20's preflight cannot run without crictl, which is packaged nowhere
                # here; the checks it would make are the lab's to keep true.
                "skip_preflight": True,
            },
        },
    }
    header = (
        "# The embedded lab's site defaults, written by `vkp lab up` (provisioner/lab/lab.py).\n"
        "# `vkp lab env` exports VKP_SITE_DEFAULTS pointing here; a spec overrides any of it.\n"
        f"# Kubernetes v{version} is the lab's own build from Debian's source package: past its\n"
        "# upstream end of life, for this lab only.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


def _write_site_files() -> None:
    record = kubebuild.read_record(paths.ARTIFACTS)
    if record is None:
        raise LabError("the lab's Kubernetes artifacts are missing", hint="run `vkp lab prepare`")
    paths.SITE_DEFAULTS.write_text(site_defaults(record))
    _link_kubectl()


def _link_kubectl() -> None:
    paths.BIN.mkdir(parents=True, exist_ok=True)
    link = paths.BIN / "kubectl"
    tmp = paths.BIN / ".kubectl.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(kubebuild.Layout(paths.ARTIFACTS).binaries / "kubectl")
    tmp.replace(link)


def free_virtual_address() -> str:
    """The first address of the lab's virtual-address range that nothing on the bridge answers."""
    for addr in paths.vip_candidates():
        if not network.answers(addr):
            return addr
    raise LabError(
        f"every virtual address of the lab ({paths.VIP_START}-{paths.VIP_END}) is in use",
        hint="delete a multi-master lab cluster, or set VKP_API_ENDPOINT yourself",
    )


def prepare(log: Log) -> tuple[Path, Path]:
    """Install what the lab needs; build the simulator, the guest image and Kubernetes (cached)."""
    prereqs.require_root()
    prereqs.ensure_packages(log)
    t = time.monotonic()
    binary = simulator.build(paths.CACHE, log)
    log(f"simulator ready ({time.monotonic() - t:.1f}s): {binary}")
    t = time.monotonic()
    root = image.build_image(paths.CACHE, log)
    log(f"guest image ready ({time.monotonic() - t:.1f}s): {root}")
    t = time.monotonic()
    record = kubebuild.build(paths.CACHE / "kubernetes", paths.ARTIFACTS, log)
    log(f"Kubernetes v{record['version']} artifacts ready ({time.monotonic() - t:.1f}s): {paths.ARTIFACTS}")
    # After the Kubernetes build: it replaces the image tarballs directory when it reassembles.
    appimages.build(paths.ARTIFACTS, paths.CACHE / "kubernetes", log)
    return binary, root


def up(opts: LabOptions, log: Log) -> dict[str, Any]:
    prereqs.require_root()
    state = read_state()
    if state is not None:
        if _alive(state.get("vcsim_pid")) and _alive(state.get("hypervisor_pid")):
            diff = opts.differences(state)
            if diff:
                raise LabError(
                    f"the lab is already up with other options: {', '.join(diff)}",
                    hint="run `vkp lab down` first to start it with other options",
                )
            log(f"the lab is already up at {state['url']}")
            _write_site_files()  # this vkp's idea of what a lab node needs, if it changed
            return {**state, "already_up": True}
        log("found the remains of a lab that is no longer running; cleaning them up first")
        down(log)

    port = opts.port or paths.DEFAULT_PORT
    hosts = opts.hosts or 3
    if simulator.port_in_use(port):
        raise LabError(
            f"port {port} on 127.0.0.1 is in use by another process",
            hint="pass --port with a free port, or stop whatever listens there",
        )
    binary, root = prepare(log)

    with ExitStack() as undo:
        paths.RUN.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.RUN, 0o700)
        paths.ARTIFACTS.mkdir(parents=True, exist_ok=True)
        undo.callback(lambda: down(lambda _m: None))
        network.ensure_bridge()
        host.apply(paths.HOST_SYSCTLS, log)
        _write_site_files()
        cert, _key = simulator.make_certificate(paths.RUN)
        thumbprint = simulator.thumbprint(cert.read_bytes())
        password = secrets.token_urlsafe(18)
        _write_private(paths.RUN / "password", password + "\n")
        t = time.monotonic()
        pid = simulator.start(
            binary,
            paths.RUN,
            port=port,
            hosts=hosts,
            username=USERNAME,
            password=password,
            delays=opts.delays or {},
            fails=opts.fails or [],
        )
        state = {
            "url": f"https://127.0.0.1:{port}/sdk",
            "port": port,
            "hosts": hosts,
            "delays": opts.delays or {},
            "fails": [f"{m}:{k}" for m, k in opts.fails or []],
            "username": USERNAME,
            "thumbprint": thumbprint,
            "image_root": str(root),
            "vcsim_pid": pid,
            "bridge": paths.BRIDGE,
        }
        paths.STATE_FILE.write_text(json.dumps(state, indent=2))
        log(f"simulator listening at {state['url']} ({time.monotonic() - t:.1f}s)")
        state["hypervisor_pid"] = _start_hypervisor()
        paths.STATE_FILE.write_text(json.dumps(state, indent=2))
        _write_private(paths.ENV_FILE, "\n".join(env_lines(state, password)) + "\n")
        log("hypervisor bridge watching the simulator")
        undo.pop_all()
    return state


def _start_hypervisor(timeout: float = 30.0) -> int:
    ready = paths.RUN / "hypervisor.ready"
    ready.unlink(missing_ok=True)
    logf = open(paths.RUN / "hypervisor.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.lab.hypervisor", str(paths.RUN)],
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives `vkp lab up`; `vkp lab down` ends it by pid
        cwd="/",
    )
    logf.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    tail = "\n".join((paths.RUN / "hypervisor.log").read_text(errors="replace").splitlines()[-15:])
    raise LabError(f"the lab hypervisor did not start:\n{tail}", hint=f"see {paths.RUN}/hypervisor.log")


def _terminate(pid: int | None, timeout: float = 10.0) -> None:
    if not _alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def down(log: Log) -> dict[str, Any]:
    """Stop every process the lab started and remove guests, overlays, mounts and the bridge."""
    prereqs.require_root()
    state = read_state() or {}
    # The hypervisor first, so it does not react to guests going away.
    _terminate(state.get("hypervisor_pid"))
    removed = 0
    for g in guests.list_guests(paths.GUESTS):
        guests.destroy_guest(g.id, guests_dir=paths.GUESTS)
        removed += 1
    if removed:
        log(f"removed {removed} guest(s)")
    if state.get("vcsim_pid"):
        simulator.stop(state["vcsim_pid"])
    network.remove_bridge()
    host.restore(paths.HOST_SYSCTLS, log)
    if paths.RUN.exists():
        shutil.rmtree(paths.RUN)
    log("the lab is down")
    return {"guests_removed": removed, "was_up": bool(state)}


def status() -> dict[str, Any]:
    state = read_state()
    if state is None:
        return {"up": False}
    result: dict[str, Any] = {
        "up": _alive(state.get("vcsim_pid")) and _alive(state.get("hypervisor_pid")),
        "url": state["url"],
        "thumbprint": state["thumbprint"],
        "simulator": "running" if _alive(state.get("vcsim_pid")) else "stopped",
        "hypervisor": "running" if _alive(state.get("hypervisor_pid")) else "stopped",
        "delays": state.get("delays", {}),
        "fails": state.get("fails", []),
        "armed": faults.vsphere_state(paths.RUN)["pending"],
        "network_down": faults.network_faults(paths.RUN),
        "hosts": [],
        "vms": [],
        "guests": [],
    }
    for g in guests.list_guests(paths.GUESTS):
        facts: dict[str, Any] = {}
        with suppress(OSError, ValueError):
            facts = json.loads((paths.GUESTS / g.id / "vm.json").read_text())
        result["guests"].append(
            {
                "vm": g.id,
                "hostname": g.hostname,
                "mac": g.mac,
                "state": g.state,
                "address": facts.get("address"),
                "boot_seconds": facts.get("boot_seconds"),
                "error": facts.get("error"),
            }
        )
    if result["simulator"] == "running":
        result["hosts"], result["vms"] = _hosts_and_vms(state)
    return result


def objects(content: Any, kind: Any) -> list[Any]:
    """Every managed object of kind (vim.VirtualMachine, ...) in the inventory of content."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def find_vm(name_or_moid: str) -> tuple[str, str]:
    """(VM name, moid) of the lab VM called name_or_moid (or with that moid); exactly one must match."""
    # pyVmomi is imported on use: `vkp --help` imports this module and must stay quick.
    from pyVmomi import vim

    with session() as s:
        hits = [
            (vm.name, vm._moId)
            for vm in objects(s.content, vim.VirtualMachine)
            if name_or_moid in (vm.name, vm._moId)
        ]
    if not hits:
        raise LabError(f"no VM called {name_or_moid!r} in the lab", hint="`vkp lab status` lists the VMs")
    if len(hits) > 1:
        raise LabError(
            f"{len(hits)} VMs are called {name_or_moid!r} ({', '.join(m for _, m in hits)})",
            hint="name one by its moid",
        )
    return hits[0]


def _hosts_and_vms(state: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from pyVmomi import vim

    with session(state) as s:
        content = s.content
        hosts = [{"name": h.name, "vms": len(h.vm)} for h in objects(content, vim.HostSystem)]
        vms = []
        for vm in objects(content, vim.VirtualMachine):
            vms.append(
                {
                    "name": vm.name,
                    "moid": vm._moId,
                    "power": str(vm.runtime.powerState),
                    "template": bool(vm.config.template),
                    "host": vm.runtime.host.name if vm.runtime.host else None,
                    "ip": vm.guest.ipAddress,
                }
            )
    return hosts, vms


def render_status(st: dict[str, Any]) -> str:
    if not st.get("up") and "url" not in st:
        return "the lab is down (start it with `vkp lab up`)"
    lines = [
        f"lab:        {'up' if st['up'] else 'BROKEN (run `vkp lab down`, then `vkp lab up`)'}",
        f"vCenter:    {st['url']}  (simulator {st['simulator']}, hypervisor {st['hypervisor']})",
        f"thumbprint: {st['thumbprint']}",
    ]
    if st["delays"] or st["fails"]:
        lines.append(f"faults:     delays {st['delays']} fails {st['fails']}")
    for f in st.get("armed", []):
        lines.append(f"armed:      {f['method']} fails at its call {f['call']}")
    for f in st.get("network_down", []):
        left = max(0.0, f["up_at"] - time.time())
        lines.append(f"network:    {f['vm']} ({f['interface']}) down, back in {left:.0f}s")
    if st["hosts"]:
        lines.append("ESXi hosts: " + ", ".join(f"{h['name']} ({h['vms']} VMs)" for h in st["hosts"]))
    lines.append(f"VMs ({len(st['vms'])}):")
    for vm in st["vms"]:
        kind = "template" if vm["template"] else vm["power"]
        host = vm["host"] or "-"
        lines.append(f"  {vm['name']:<28} {vm['moid']:<10} {kind:<11} {host:<14} {vm['ip'] or ''}")
    lines.append(f"guests ({len(st['guests'])}):")
    for g in st["guests"]:
        extra = g["error"] or (f"up in {g['boot_seconds']}s" if g["boot_seconds"] else "")
        name, address = g["hostname"] or "-", g["address"] or "-"
        lines.append(f"  {g['vm']:<10} {name:<24} {g['state']:<8} {address:<14} {extra}")
    return "\n".join(lines)
