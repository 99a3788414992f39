"""containerd on masters and workers: CRI config with the cgroup driver and pause image the
kubelet and kubeadm of the spec expect, running and answering `ctr version`."""

from __future__ import annotations

from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Restart,
    Run,
    Service,
    StepGen,
    Upload,
    step,
)
from provisioner.bootstrap.render import render
from provisioner.errors import CommandFailed
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

CONFIG_DIR = "/etc/containerd"
CONFIG_FILE = "/etc/containerd/config.toml"
# Where CNI plugins (calico, flannel) install their binaries.
CNI_BIN_DIR = "/opt/cni/bin"
VERSION = Cmd("ctr", "version")


def render_config(cluster: Cluster) -> str:
    k = cluster.spec.kubernetes
    return render(
        "containerd/config.toml.j2",
        sandbox_image=k.sandbox_image,
        cgroup_driver=k.node.cgroup_driver,
        restrict_oom_score_adj=k.node.restrict_oom_score_adj,
        cni_bin_dir=CNI_BIN_DIR,
    )


@step("containerd.configure", probes=lambda node, cluster: [File(CONFIG_DIR), File(CONFIG_FILE)])
def configure(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """containerd's config.toml (CRI, runc with the spec's cgroup driver); restart a running containerd
    on change."""
    config = render_config(cluster)
    yield EnsureDir(CONFIG_DIR, 0o755, "root:root")
    yield Upload(config, CONFIG_FILE, 0o644, "root:root")
    yield Restart("containerd")


@step("containerd.start", probes=lambda node, cluster: [Service("containerd"), Check(VERSION)])
def start(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Enable and start containerd, and check that it answers `ctr version`."""
    svc = facts.service("containerd")
    if not svc.is_enabled:
        yield Run(Cmd("systemctl", "enable", "containerd"), retry_safe=True)
    version = facts.check(VERSION)
    if svc.is_active and version.ok and "Server:" in version.stdout:
        return
    if not svc.is_active:
        yield Run(Cmd("systemctl", "start", "containerd"), timeout=180)
    r = yield Run(VERSION, retry_safe=True, changes=False, check=False)
    # Unknown facts mean a dry run: the command did not really run, there is nothing to check.
    if facts.known and (not r.ok or "Server:" not in r.stdout):
        raise CommandFailed(node.name, f"sudo -n -- {VERSION.masked()}", r.exit_status, r.stdout, r.stderr)
