"""The lab's guest image: a Debian root that boots under systemd-nspawn like a VM template.

The recipe is data, so its hash names the built image: a changed recipe gets a new directory
and the old one is never half-updated. A build happens in a temporary directory that is
renamed into place only when complete, so a killed build cannot leave something that looks
like a finished image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner.errors import LabError

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Written into the image. Each entry is (path inside the root, content).
_CLOUD_CFG = """\
# vkp lab: the lab hands each guest its VM's cloud-init data as a NoCloud seed; probing
# for other datasources only costs boot time (and they cannot exist here).
datasource_list: [NoCloud, None]
# No ifupdown in the image, so say which renderer to use instead of letting it probe.
system_info:
  network:
    renderers: [networkd]
# A container has no block device to grow.
growpart:
  mode: "off"
resize_rootfs: false
# Debian's cloud images do this too: the guest's own name resolves (sudo, etcd, kubeadm).
manage_etc_hosts: true
"""

_HOSTS = """\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
"""

# The lab network has no IPv6 (the bridge refuses it, to keep guests fenced in), yet networkd
# would wait 12 s for a router advertisement before calling eth0 configured, and
# systemd-networkd-wait-online (which cloud-init.service waits for) with it. The file name is
# the one cloud-init's networkd renderer writes for the lab guest's only NIC, eth0.
_NETWORKD_DROPIN = """\
[Network]
IPv6AcceptRA=no
LinkLocalAddressing=no
"""

# nspawn shows a guest the cgroup v1 controller hierarchies read-only, rooted at the guest's
# own cgroup (provisioner/lab/guest.py). A kubelet and runc create cgroups there, so each is
# mounted again, writable: the guest's cgroup namespace keeps the new mount rooted at the
# guest's cgroup, so nothing outside the guest is reachable through it. Real VMs have this
# from their kernel; here it is the lab's hardware, set up before any unit needs it.
_CGROUPS_SCRIPT = """\
#!/bin/sh
# vkp lab: make this guest's cgroup v1 controller hierarchies writable (see the unit).
set -eu
awk '$3 == "cgroup" && $4 ~ /(^|,)ro(,|$)/ { print $2 }' /proc/self/mounts | while read -r mnt; do
    controllers=$(basename "$mnt")
    case "$controllers" in systemd) continue ;; esac
    umount "$mnt"
    mount -t cgroup -o "$controllers" cgroup "$mnt"
done
"""
_CGROUPS_UNIT = """\
[Unit]
Description=vkp lab: writable cgroup controller hierarchies (the lab guest's hardware)
DefaultDependencies=no
Before=sysinit.target containerd.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vkp-lab-cgroups

[Install]
WantedBy=sysinit.target
"""

# An nspawn guest shares the host kernel, clock and has no udev: these units either cannot
# work or only add to boot time. Measured with `systemd-analyze blame` in a guest.
_MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "console-getty.service",
    "getty@tty1.service",
)


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    variant: str = "minbase"  # minbase: no ifupdown/cron/etc. to compete with networkd or slow boot
    packages: tuple[str, ...] = (
        "systemd",
        "systemd-sysv",
        "systemd-resolved",  # resolves names from the DNS servers cloud-init's network config gives
        "dbus",
        "openssh-server",
        "openssh-sftp-server",  # uploads over SFTP (paramiko) without shell tricks
        "cloud-init",
        "python3-cffi-backend",  # cloud-init imports it; debootstrap does not resolve it alone
        "etcd-server",
        "etcd-client",
        "containerd",
        "runc",
        "iproute2",
        "iputils-ping",
        "ca-certificates",
        "curl",  # health checks (etcd /health, apiserver /readyz) as an operator would run them
        "procps",  # ps/pgrep: fact gathering in bootstrap steps
        "locales",  # else cloud-init's locale module fails
        "sudo",
        # What kubeadm's preflight and kube-proxy look for on a node, and the load balancer for
        # several masters: a template for Kubernetes nodes carries them (guests reach no mirror).
        "iptables",
        "conntrack",
        "socat",
        "ebtables",
        "ethtool",
        "haproxy",
        "keepalived",
    )
    locale: str = "en_US.UTF-8"
    enable_units: tuple[str, ...] = (
        "systemd-networkd.service",
        "systemd-resolved.service",
        "ssh.service",
        "vkp-lab-cgroups.service",
    )
    # vkp's bootstrap writes etcd's configuration; Debian's unit would start a default member.
    # haproxy and keepalived run only on masters behind a virtual address, when vkp says so.
    disable_units: tuple[str, ...] = ("etcd.service", "haproxy.service", "keepalived.service")
    mask_units: tuple[str, ...] = _MASKED_UNITS
    files: tuple[tuple[str, str], ...] = (
        ("etc/cloud/cloud.cfg.d/99_vkp_lab.cfg", _CLOUD_CFG),
        ("etc/hosts", _HOSTS),
        ("etc/systemd/network/10-cloud-init-eth0.network.d/50-vkp-lab.conf", _NETWORKD_DROPIN),
        ("usr/local/sbin/vkp-lab-cgroups", _CGROUPS_SCRIPT),
        ("etc/systemd/system/vkp-lab-cgroups.service", _CGROUPS_UNIT),
    )
    # kube-proxy's image carries iptables' legacy backend; the node's own iptables users (the
    # kubelet, the portmap plugin) must write to the same tables.
    alternatives: tuple[tuple[str, str], ...] = (
        ("iptables", "/usr/sbin/iptables-legacy"),
        ("ip6tables", "/usr/sbin/ip6tables-legacy"),
    )
    # Bumped when build_image's post-install steps change in a way the fields above do not show.
    revision: int = 3
    # The mirror is how packages travel, not what they are: it is not part of the hash.
    mirror: str = field(default=DEFAULT_MIRROR, compare=False)

    def hash(self) -> str:
        data = asdict(self)
        data.pop("mirror")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def apt_mirror(sources_dirs: tuple[Path, ...] = (Path("/etc/apt"),), suite: str = "bookworm") -> str:
    """The Debian mirror this machine's apt uses for `suite`, so the build goes where apt goes."""
    for base in sources_dirs:
        candidates = [base / "sources.list", *sorted((base / "sources.list.d").glob("*.list"))]
        candidates += sorted((base / "sources.list.d").glob("*.sources"))
        for path in candidates:
            try:
                text = path.read_text()
            except OSError:
                continue
            found = _mirror_in(text, suite, deb822=path.suffix == ".sources")
            if found:
                return found
    return DEFAULT_MIRROR


def _mirror_in(text: str, suite: str, *, deb822: bool) -> str | None:
    if not deb822:
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if m and m.group(2) == suite and "main" in m.group(3).split():
                return m.group(1)
        return None
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if (
            "deb" in fields.get("types", "").split()
            and suite in fields.get("suites", "").split()
            and "main" in fields.get("components", "").split()
            and fields.get("enabled", "yes").lower() != "no"
            and fields.get("uris")
        ):
            return fields["uris"].split()[0]
    return None


def default_recipe() -> Recipe:
    return Recipe(mirror=apt_mirror())


def recipe_hash(recipe: Recipe | None = None) -> str:
    return (recipe or default_recipe()).hash()


def image_dir(cache_dir: Path, recipe: Recipe | None = None) -> Path:
    return cache_dir / f"image-{recipe_hash(recipe)}"


def build_image(cache_dir: Path, log: Callable[[str], None], recipe: Recipe | None = None) -> Path:
    """Return the root directory of the guest image, building it first if needed (minutes, once)."""
    recipe = recipe or default_recipe()
    final = image_dir(cache_dir, recipe)
    root = final / "root"
    if (final / "recipe.json").is_file():
        return root
    _require_root_and_tools()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(cache_dir / "image.lock"):
        if (final / "recipe.json").is_file():  # another process built it while we waited
            return root
        _remove_stale_builds(cache_dir, log)
        tmp = cache_dir / f".build-{recipe.hash()}-{os.getpid()}"
        started = time.monotonic()
        log(f"building the lab guest image {final.name} (Debian {recipe.suite}, {recipe.mirror}); once")
        try:
            _debootstrap(recipe, tmp / "root", tmp / "debootstrap.log", log)
            _configure(recipe, tmp / "root", log)
            (tmp / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        log(f"guest image ready in {time.monotonic() - started:.0f} s: {root}")
    return root


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("building the lab guest image needs root", hint="run as root (sudo)")
    missing = [t for t in ("debootstrap", "systemctl", "chroot") if shutil.which(t) is None]
    if missing:
        raise LabError(
            f"building the lab guest image needs {', '.join(missing)}",
            hint="apt-get install debootstrap systemd",
        )


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """One build at a time per lock file (a second `vkp lab prepare` waits, then finds it built)."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_builds(cache_dir: Path, log: Callable[[str], None]) -> None:
    # Only ever called under the lock, so any .build-* directory belongs to a dead build.
    for stale in cache_dir.glob(".build-*"):
        log(f"removing an interrupted image build: {stale}")
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    # debootstrap mounts /proc and /sys in the target; a killed build can leave them mounted,
    # and rm -rf across a live /sys mount would be a disaster.
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        mounts = [line.split()[1].encode().decode("unicode_escape") for line in fh]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _debootstrap(recipe: Recipe, root: Path, log_path: Path, log: Callable[[str], None]) -> None:
    root.mkdir(parents=True)
    cmd = [
        "debootstrap",
        f"--variant={recipe.variant}",
        "--components=main",
        "--include=" + ",".join(recipe.packages),
        recipe.suite,
        str(root),
        recipe.mirror,
    ]
    log("running " + " ".join(cmd[:3]) + " ... (about 2 minutes)")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        last = ""
        try:
            while True:
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                phase = _last_phase(log_path)
                if phase and phase != last:
                    log(f"debootstrap: {phase}")
                    last = phase
        except BaseException:
            # Interrupted: debootstrap must be gone before the caller removes its target.
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        inner = root / "debootstrap" / "debootstrap.log"
        if inner.is_file():
            tail += "\n--- debootstrap.log ---\n" + "\n".join(
                inner.read_text(errors="replace").splitlines()[-20:]
            )
        raise LabError(
            f"debootstrap of the lab guest image failed (exit {proc.returncode}):\n{tail}",
            hint=f"check that {recipe.mirror} is reachable (apt-get update) and has {recipe.suite}; "
            "then run the command again, the failed build was removed",
        )


def _last_phase(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("I: ") and not line.startswith(("I: Validating", "I: Checking")):
            return line[3:].strip()
    return ""


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(
            f"configuring the lab guest image failed while {what}: `{' '.join(cmd)}` exited "
            f"{res.returncode}:\n{(res.stderr or res.stdout).strip()[-2000:]}",
            hint="this is a bug in the image recipe or a broken package; the failed build was removed",
        )


def _configure(recipe: Recipe, root: Path, log: Callable[[str], None]) -> None:
    log("configuring the guest image")
    for rel, content in recipe.files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)

    os.chmod(root / "usr/local/sbin/vkp-lab-cgroups", 0o755)
    for name, target in recipe.alternatives:
        _run(["chroot", str(root), "update-alternatives", "--set", name, target], f"choosing {target}")

    sysd = ["systemctl", f"--root={root}"]
    _run([*sysd, "enable", *recipe.enable_units], "enabling units")
    _run([*sysd, "disable", *recipe.disable_units], "disabling units")
    _run([*sysd, "mask", *recipe.mask_units], "masking units")

    # Generated once here, because cloud-init's locale module would otherwise run locale-gen
    # on every first boot.
    (root / "etc/locale.gen").write_text(f"{recipe.locale} {recipe.locale.split('.')[-1]}\n")
    _run(["chroot", str(root), "locale-gen"], "generating the locale")
    (root / "etc/default/locale").write_text(f"LANG={recipe.locale}\n")

    _run(["chroot", str(root), "passwd", "--lock", "root"], "locking root")

    # An image is a template: no identity of its own. Empty machine-id makes systemd take the
    # container's UUID on each guest; host keys come from each guest's cloud-init (given in
    # user-data ssh_keys, or generated); cloud-init state would make it skip the first boot.
    (root / "etc/machine-id").write_text("")
    # debootstrap copies this machine's name; a guest is named by nspawn, then by cloud-init.
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for p in (root / "var/lib/cloud").glob("*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    for p in (root / "var/log").glob("cloud-init*"):
        p.unlink()
    for p in (root / "var/cache/apt/archives").glob("*.deb"):
        p.unlink()
    # apt lists are kept out of the image: a guest has no mirror to refresh them against.
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
