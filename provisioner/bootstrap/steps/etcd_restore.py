"""Day-2 steps of `vkp etcd restore` (playbooks/etcd-restore.yaml): the whole etcd cluster back
to a snapshot, with the API servers stopped while it happens, as Kubernetes' guide to operating
etcd says (stop every API server, restore every member, start the API servers again; restart
the scheduler, the controller manager and the kubelets so none acts on what it cached).

The run's parameters: snapshot (the verified file on this machine), sha256 (its checksum), run
(this restore's id: it makes the new cluster token, the backup's name and the done-marker, and
a resumed run keeps it), kubernetes (whether the cluster has a control plane to stop).

Every step can run again: a manifest already moved aside is not moved again, a member whose
done-marker holds this run's checksum and id is not restored again, and the restore of a
member keeps its previous data directory as /var/lib/etcd.before-restore-<run>, never deleted.

The members' etcd.conf.yml is left as etcd.configure wrote it: etcd reads initial-cluster,
initial-cluster-state and initial-cluster-token only when its data directory is empty. Once
the restored directory is in place, the cluster's identity (its id, the members' ids derived
from this restore's token) is in the data, as after any first start; leaving the file alone
also means a create-cluster re-run afterwards restarts no member.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Probe,
    Run,
    Service,
    StepGen,
    Upload,
    run_param,
    step,
)
from provisioner.bootstrap.steps.etcd import DATA_DIR, PEER_PORT, initial_cluster, url
from provisioner.bootstrap.steps.health import wait_healthy
from provisioner.bootstrap.steps.kubernetes.control_plane import wait_ready
from provisioner.bootstrap.steps.kubernetes.settings import MANIFESTS_DIR, VKP_DIR, node_api_url
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan
from provisioner.ssh.commands import Cmd

RESTORE_DIR = "/var/lib/vkp/etcd-restore"  # the snapshot while it is restored, and the marker
MARKER = f"{RESTORE_DIR}/restored"  # "<sha256> <run>": this member was restored by that run
PARKED_DIR = f"{VKP_DIR}/stopped-manifests"  # static pod manifests the kubelet must not see
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
STOP_WAIT = 180  # seconds: the kubelet notices a manifest gone within 20 s, then stops the pod
RESTORE_TIMEOUT = 900.0  # a restore rewrites the whole database: disk speed
TOOL = Check(Cmd.shell("command -v etcdutl || command -v etcdctl"))

# $1 the file to move (when it is there), $2 where to.
_MOVE_SCRIPT = 'if [ -e "$1" ]; then mv -f -- "$1" "$2"; echo moved; fi'

# $1 seconds to wait; the rest: commands whose processes must be gone.
_WAIT_GONE_SCRIPT = r"""
set -u
end=$(( $(date +%s) + $1 ))
shift
while :; do
  left=""
  for p in "$@"; do
    if pgrep -f -- "^([^ ]*/)?$p( |\$)" >/dev/null; then left="$left $p"; fi
  done
  [ -z "$left" ] && exit 0
  if [ "$(date +%s)" -ge "$end" ]; then echo "still running:$left" >&2; exit 1; fi
  sleep 1
done
"""

# $1 snapshot $2 member name $3 initial cluster $4 peer URL $5 token $6 data dir $7 backup dir
# $8 marker $9 marker content. etcdutl where the node has it (etcd 3.5+; etcdctl's restore is
# deprecated there and gone in 3.6), else etcdctl (Debian's etcd-client 3.4 has only that).
_RESTORE_SCRIPT = r"""
set -eu
snap=$1 name=$2 initial=$3 peer=$4 token=$5 data=$6 backup=$7 marker=$8 stamp=$9
# Done already (the connection dropped after the end, and this is the retry).
if [ -f "$marker" ] && [ "$(cat -- "$marker")" = "$stamp" ]; then exit 0; fi
new="$data.restoring"
systemctl stop etcd
if command -v etcdutl >/dev/null 2>&1; then tool=etcdutl; else tool=etcdctl; export ETCDCTL_API=3; fi
rm -rf -- "$new"
"$tool" snapshot restore "$snap" --data-dir="$new" --name="$name" --initial-cluster="$initial" \
  --initial-cluster-token="$token" --initial-advertise-peer-urls="$peer" >&2
chown -R etcd:etcd -- "$new"
chmod 700 -- "$new"
# The backup exists only if this run moved the old data there: what is at $data is then this
# run's own restore, cut short before the marker.
if [ -e "$backup" ]; then rm -rf -- "$data"; elif [ -e "$data" ]; then mv -T -- "$data" "$backup"; fi
mv -T -- "$new" "$data"
printf '%s\n' "$stamp" > "$marker.tmp"
mv -f -- "$marker.tmp" "$marker"
rm -f -- "$snap"
"""


# -- the run's parameters -----------------------------------------------------------------------


def _sha(cluster: Cluster) -> str:
    return run_param(cluster, "sha256", str)


def _run_id(cluster: Cluster) -> str:
    return run_param(cluster, "run", str)


def _kubernetes(cluster: Cluster) -> bool:
    return run_param(cluster, "kubernetes", bool)


def node_snapshot(cluster: Cluster) -> str:
    return f"{RESTORE_DIR}/{_sha(cluster)[:16]}.db"


def marker_content(cluster: Cluster) -> str:
    return f"{_sha(cluster)} {_run_id(cluster)}"


def restore_token(cluster: Cluster) -> str:
    """A new initial-cluster-token: the restored members get new ids, so no member still
    holding the old data can ever join them."""
    return f"vkp-{cluster.plan.cluster}-restore-{_run_id(cluster)}"


def backup_dir(cluster: Cluster) -> str:
    return f"{DATA_DIR}.before-restore-{_run_id(cluster)}"


def _restored(cluster: Cluster, facts: Facts) -> bool:
    want = hashlib.sha256((marker_content(cluster) + "\n").encode()).hexdigest()
    return facts.known and facts.file(MARKER).sha256 == want


def _manifests(name: str) -> tuple[str, str]:
    return f"{MANIFESTS_DIR}/{name}.yaml", f"{PARKED_DIR}/{name}.yaml"


# -- stage: the snapshot on every member, before anything stops -------------------------------


def _stage_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    return [File(RESTORE_DIR), File(node_snapshot(cluster)), File(MARKER), TOOL]


@step("etcd_restore.stage", probes=_stage_probes)
def stage(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Copy the snapshot to the member (0600 root, checked by its SHA-256) while the cluster
    still runs, and make sure the node has a tool that restores it."""
    if _restored(cluster, facts):
        return
    if facts.known and not facts.check(TOOL.cmd).ok:
        raise ProvisionerError(
            f"{node.name}: neither etcdutl nor etcdctl is installed: nothing can restore the snapshot",
            hint="re-run create-cluster up to the etcd phase, which installs etcdctl; nothing was stopped",
        )
    data = Path(run_param(cluster, "snapshot", str)).read_bytes()
    if hashlib.sha256(data).hexdigest() != _sha(cluster):
        raise ProvisionerError(
            "the snapshot file changed since it was checked; nothing was stopped",
            hint="run the restore again (it checks the file again)",
        )
    yield EnsureDir(RESTORE_DIR, 0o700, "root:root")
    # It holds every Secret of the cluster: shown masked, as a key would be.
    yield Upload(data, node_snapshot(cluster), 0o600, "root:root", secret=True)


# -- the control plane off and on -------------------------------------------------------------


def _cp_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    return [File(p) for name in CONTROL_PLANE for p in _manifests(name)]


def wait_gone_command(names: Sequence[str] = CONTROL_PLANE) -> Cmd:
    return Cmd.shell(_WAIT_GONE_SCRIPT, str(STOP_WAIT), *names)


@step("etcd_restore.stop_control_plane", probes=_cp_probes)
def stop_control_plane(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Move the API server's, controller manager's and scheduler's static pod manifests aside
    (the kubelet then stops them) and wait until none of them runs."""
    if not _kubernetes(cluster):
        return
    yield EnsureDir(PARKED_DIR, 0o700, "root:root")
    for name in CONTROL_PLANE:
        live, parked = _manifests(name)
        if facts.known and facts.file(live).kind != "file":
            if facts.file(parked).kind != "file":
                raise ProvisionerError(
                    f"{node.name}: {name}'s static pod manifest is neither in {MANIFESTS_DIR} nor "
                    f"in {PARKED_DIR}; nothing was stopped on this master",
                    hint="re-run create-cluster to put the control plane back, then the restore",
                )
            continue  # moved aside by an earlier run
        yield Run(Cmd.shell(_MOVE_SCRIPT, live, parked), retry_safe=True)
    yield Run(wait_gone_command(), timeout=STOP_WAIT + 60, retry_safe=True, changes=False)


@step("etcd_restore.start_control_plane", probes=_cp_probes)
def start_control_plane(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Put the manifests back, restart the kubelet (so it starts them at once, and drops what
    it cached of the cluster), and wait for this master's /readyz."""
    if not _kubernetes(cluster):
        return
    for name in CONTROL_PLANE:
        live, parked = _manifests(name)
        if facts.known and facts.file(parked).kind != "file":
            if facts.file(live).kind != "file":
                raise ProvisionerError(
                    f"{node.name}: {name}'s static pod manifest is neither in {PARKED_DIR} nor in "
                    f"{MANIFESTS_DIR}",
                    hint="re-run create-cluster: it writes the control plane's manifests again",
                )
            continue
        yield Run(Cmd.shell(_MOVE_SCRIPT, parked, live), retry_safe=True)
    yield Run(Cmd("systemctl", "restart", "kubelet"), retry_safe=True)
    api = node_api_url(node, cluster)
    yield Local(
        f"wait for {api}/readyz ({node.name}'s API server)", lambda: wait_ready(api, cluster, node.name)
    )


@step("etcd_restore.restart_kubelet")
def restart_kubelet(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Restart the kubelet, so that it lists the restored cluster afresh."""
    if _kubernetes(cluster):
        yield Run(Cmd("systemctl", "restart", "kubelet"), retry_safe=True)


@step("etcd_restore.kubernetes_health", local=True)
def kubernetes_health(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """As kubernetes.health: /readyz, every node Ready, the system pods running."""
    if _kubernetes(cluster):
        yield Local(
            f"health through {cluster.plan.api_endpoint.url}: /readyz, nodes Ready, system pods running",
            lambda: wait_healthy(cluster),
            report="health",
        )


# -- etcd -------------------------------------------------------------------------------------


def _member_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    return [Service("etcd"), File(MARKER)]


@step("etcd_restore.stop_etcd", probes=_member_probes)
def stop_etcd(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Stop the member (all of them are stopped before any is restored)."""
    if _restored(cluster, facts):
        return  # restored by this run already: the start-etcd play starts it
    if facts.known and facts.service("etcd").active in ("inactive", "failed"):
        return
    yield Run(Cmd("systemctl", "stop", "etcd"), retry_safe=True, timeout=120)


def restore_command(node: NodePlan, cluster: Cluster) -> Cmd:
    return Cmd.shell(
        _RESTORE_SCRIPT,
        node_snapshot(cluster),
        node.name,
        initial_cluster(cluster),
        url(node.address, PEER_PORT),
        restore_token(cluster),
        DATA_DIR,
        backup_dir(cluster),
        MARKER,
        marker_content(cluster),
    )


@step("etcd_restore.restore", probes=_member_probes)
def restore(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Restore the snapshot into a new data directory with this member's name and peer URL,
    every planned member and a new cluster token; the old directory kept as a backup."""
    if _restored(cluster, facts):
        return
    yield Run(restore_command(node, cluster), timeout=RESTORE_TIMEOUT, retry_safe=True)
