"""Steps every node gets: the packages its role needs, swap off, kernel modules and sysctls."""

from __future__ import annotations

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap.engine import Check, Cluster, Facts, File, Run, StepGen, Upload, Warn, step
from provisioner.bootstrap.render import render
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

# command -> Debian package providing it. etcd comes from the distribution unless etcd.artifact
# names a release, which etcd.configure installs (see role_commands).
_NODE_COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    # kubeadm's preflight requires these on every node; kube-proxy and the portmap plugin use
    # iptables and conntrack.
    "iptables": "iptables",
    "conntrack": "conntrack",
    "socat": "socat",
    "ebtables": "ebtables",
    "ethtool": "ethtool",
}
ROLE_COMMANDS: dict[str, dict[str, str]] = {
    "etcd": {"etcd": "etcd-server", "etcdctl": "etcd-client"},
    "master": _NODE_COMMANDS,
    "worker": _NODE_COMMANDS,
}

MODULES = ("overlay", "br_netfilter")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
MODULES_FILE = "/etc/modules-load.d/vkp-kubernetes.conf"
SYSCTL_FILE = "/etc/sysctl.d/99-vkp-kubernetes.conf"

_MISSING = 'for c in "$@"; do command -v "$c" > /dev/null || echo "$c"; done'
_LOADED = 'for m in "$@"; do [ -d "/sys/module/$m" ] && echo "$m"; done; true'
_SYSCTL_VALUES = 'for k in "$@"; do printf "%s=%s\\n" "$k" "$(sysctl -n "$k" 2>/dev/null || echo "?")"; done'
_SWAP_ACTIVE = "tail -n +2 /proc/swaps"
_FSTAB_SWAP = "awk '$1 !~ /^#/ && $3 == \"swap\"' /etc/fstab 2>/dev/null; true"


def role_commands(node: NodePlan, cluster: Cluster) -> dict[str, str]:
    if node.role != "etcd" or cluster.spec.etcd.from_package:
        return ROLE_COMMANDS[node.role]
    # etcd from a release: the package must stay off the node (it would start an etcd of its
    # own), and only a download on the node needs anything installed.
    return {} if art.etcd_source(cluster.spec.etcd).kind == "local" else {"curl": "curl"}


def _missing_probe(node: NodePlan, cluster: Cluster) -> Check:
    return Check(Cmd.shell(_MISSING, *role_commands(node, cluster)))


@step("common.packages", probes=lambda node, cluster: [_missing_probe(node, cluster)])
def packages(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Install what the node's role runs, if any of its commands is missing."""
    missing = facts.check(_missing_probe(node, cluster).cmd).stdout.split()
    if facts.known and not missing:
        return
    commands = role_commands(node, cluster)
    wanted = sorted({commands[c] for c in missing} if facts.known else set(commands.values()))
    if not wanted:
        return
    apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")
    yield Run(Cmd(*apt, "update", "-q"), retry_safe=True, timeout=600)
    yield Run(
        Cmd(*apt, "install", "-y", "-q", "--no-install-recommends", *wanted), retry_safe=True, timeout=900
    )
    if "etcd-server" in wanted:
        # Debian starts a single-node etcd on install; the etcd play configures and starts it.
        yield Run(Cmd("systemctl", "disable", "--now", "etcd"), retry_safe=True)


def _swap_probes() -> list[Check]:
    return [Check(Cmd.shell(_SWAP_ACTIVE)), Check(Cmd.shell(_FSTAB_SWAP))]


@step("common.swap_off", probes=lambda node, cluster: _swap_probes())
def swap_off(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Turn swap off now and at boot: the kubelet refuses to run with swap on by default."""
    active, in_fstab = (facts.check(p.cmd).stdout.strip() for p in _swap_probes())
    if active or not facts.known:
        yield Run(Cmd("swapoff", "-a"), retry_safe=True)
    if in_fstab or not facts.known:
        yield Run(
            Cmd("sed", "-i", "-E", r"/^[^#]\S*\s+\S+\s+swap\s/s/^/# disabled by vkp: /", "/etc/fstab"),
            retry_safe=True,
        )


LOADED_MODULES = Check(Cmd.shell(_LOADED, *MODULES))
SYSCTL_VALUES = Check(Cmd.shell(_SYSCTL_VALUES, *SYSCTLS))


def _kernel_probes() -> list[File | Check]:
    return [File(MODULES_FILE), File(SYSCTL_FILE), LOADED_MODULES, SYSCTL_VALUES]


def parse_sysctls(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


@step("common.kernel", probes=lambda node, cluster: _kernel_probes())
def kernel(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Kernel modules and sysctls for Kubernetes networking: made persistent, applied where the
    host allows it, and reported as a warning per setting where it does not (a container whose
    /proc/sys/net is read-only, a kernel without the module)."""
    modules_conf = render("common/modules.conf.j2", modules=list(MODULES))
    sysctl_conf = render("common/sysctl.conf.j2", sysctls=SYSCTLS)
    yield Upload(modules_conf, MODULES_FILE, 0o644, "root:root")
    yield Upload(sysctl_conf, SYSCTL_FILE, 0o644, "root:root")

    loaded = set(facts.check(LOADED_MODULES.cmd).stdout.split())
    for module in MODULES:
        if module in loaded:
            continue
        r = yield Run(Cmd("modprobe", "--", module), check=False)
        if not r.ok:
            yield Warn(f"kernel module {module} is not loaded and could not be loaded: {_tail(r)}")

    current = parse_sysctls(facts.check(SYSCTL_VALUES.cmd).stdout)
    for key, value in SYSCTLS.items():
        if facts.known and current.get(key) == value:
            continue
        r = yield Run(Cmd("sysctl", "-w", f"{key}={value}"), check=False)
        if not r.ok:
            have = current.get(key, "?")
            have_text = "absent" if have == "?" else have
            yield Warn(f"{key} is {have_text}, wanted {value}, and cannot be set on this host: {_tail(r)}")


def _tail(result: object, lines: int = 2) -> str:
    text = (getattr(result, "stderr", "") or getattr(result, "stdout", "") or "").strip()
    return " / ".join(text.splitlines()[-lines:]) or f"exit status {getattr(result, 'exit_status', '?')}"
