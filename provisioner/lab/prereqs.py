"""What the embedded lab needs from the host, and installing it (Debian packages, as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from provisioner.errors import LabError

# package -> a file it provides, which tells whether it is installed without asking dpkg.
PACKAGES: dict[str, str] = {
    "golang-go": "/usr/bin/go",
    "golang-github-vmware-govmomi-dev": "/usr/share/gocode/src/github.com/vmware/govmomi/simulator",
    "systemd-container": "/usr/bin/systemd-nspawn",
    "debootstrap": "/usr/sbin/debootstrap",
    "iproute2": "/usr/sbin/ip",
    "util-linux": "/usr/bin/nsenter",
    "iputils-ping": "/usr/bin/ping",  # is a virtual address free on the bridge
    # The lab's Kubernetes build (provisioner/lab/kubebuild.py) and what its artifacts carry.
    "rsync": "/usr/bin/rsync",  # make gen_openapi
    "patch": "/usr/bin/patch",  # Debian's own patches to the source
    "make": "/usr/bin/make",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",  # pause is linked statically
    "golang-github-modern-go-reflect2-dev": "/usr/share/gocode/src/github.com/modern-go/reflect2",
    "busybox-static": "/bin/busybox",  # the sample workload image
    "containernetworking-plugins": "/usr/lib/cni/bridge",  # the CNI plugins tarball
    "iptables": "/usr/sbin/xtables-legacy-multi",  # kube-proxy's image
    # The sample app's images (provisioner/lab/appimages.py): python3 with its whole standard
    # library (python3-minimal alone lacks http.server), and redis-server, whose service the
    # lab never starts on this machine.
    "python3": "/usr/bin/pydoc3",
    "redis-server": "/usr/bin/redis-server",
}


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the embedded lab needs root: it creates a network bridge and boots guests with systemd-nspawn",
            hint="run it as root (sudo -E vkp lab up)",
        )


def missing_packages() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]


def ensure_packages(log: Callable[[str], None]) -> None:
    missing = missing_packages()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise LabError(
            f"missing {', '.join(missing)} and there is no apt-get to install them",
            hint="the embedded lab supports Debian 12; install those packages by hand",
        )
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise LabError(
                f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}",
                hint="check that the Debian package mirror is reachable, then run `vkp lab up` again",
            )
    still = missing_packages()
    if still:
        raise LabError(f"packages {', '.join(still)} did not install", hint="install them with apt-get")
