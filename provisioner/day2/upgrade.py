"""`vkp upgrade NAME --version V`: the cluster's Kubernetes taken to V one node at a time.

The playbook (playbooks/upgrade.yaml, steps in bootstrap/steps/upgrade.py) checks the cluster,
then upgrades the first master (kubeadm upgrade apply), the other masters one at a time
(kubeadm upgrade node, each while the others' API servers answer), then the workers one at a
time: drained from the first master (PodDisruptionBudgets respected, nothing forced), V's
binaries and images, kubeadm upgrade node, the kubelet restarted, Ready, uncordoned. etcd is not
touched (vkp's, external), so its quorum is never at stake.

Refused before anything is contacted (UpgradeRefused, exit 3): a version that is no release vkp
supports, a downgrade, a jump of more than one minor (kubeadm's skew rule), a cluster whose
kubernetes phase is not done. A version the artifact source cannot serve stops the run before
any node is touched (ArtifactError, exit 12, as create-cluster). The same version is allowed:
every node goes through the whole path again, and the result says so.

The run uses the saved spec with kubernetes.version set to V; only once it succeeded is that
spec saved, so describe-cluster and create-cluster's re-runs then know V. A failed or
interrupted run keeps the old version saved, and the next run with the same version (and
--drain-timeout: the resume record is keyed by the run's parameters) resumes at the node and
step where it stopped: a node the stopped run left cordoned is drained again and uncordoned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioner import runlock
from provisioner.bootstrap.artifacts import probe_source
from provisioner.bootstrap.phases import dry_run_actions, run_day2
from provisioner.bootstrap.steps.upgrade import applies_with_upgrade_node
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.plan import Plan, make_plan
from provisioner.spec import ClusterSpec, spec_from_dict
from provisioner.spec.checks_kubernetes import k8s_version_problem
from provisioner.spec.schema import k8s_release
from provisioner.state import ClusterState

Log = Callable[[str], None]
PLAYBOOK = "upgrade"
DRAIN_TIMEOUT = 300  # seconds: kubectl drain's own limit on a node's evictions
NODE_PHASES = ("first-master", "masters", "workers")
SAME_VERSION_NOTE = (
    "v{v} is the cluster's version already: it was re-applied, every node went through the "
    "whole rolling path (drain, binaries and images, kubeadm, kubelet restart, uncordon)"
)


class UpgradeRefused(ProvisionerError):
    """The upgrade asked for is not one vkp makes; nothing was contacted."""

    exit_code = ExitCode.SPEC


def target_version(asked: str, current: str) -> str:
    """The version asked for (--version, with or without a leading v) as X.Y.Z, checked against
    the cluster's current version; UpgradeRefused naming --version and what to do otherwise."""
    version = asked.strip()
    version = version[1:] if version[:1] in ("v", "V") else version
    if (why := k8s_version_problem(version)) is not None:
        raise UpgradeRefused(f"--version: {why}", hint="give a release like v1.30.4 (or 1.30.4)")
    new, now = k8s_release(version), k8s_release(current)
    assert new is not None
    if now is None:
        raise UpgradeRefused(
            f"the saved spec's kubernetes.version {current!r} is not a release vkp can upgrade from",
            hint="the cluster's state was not written by this vkp; recreate it",
        )
    if new < now:
        raise UpgradeRefused(
            f"--version: v{version} is older than the cluster's v{current}: vkp does not downgrade "
            "(kubeadm does not support it)",
            hint=f"give v{current} to re-apply the current version, or a later release",
        )
    if new[0] > now[0] + 1:
        raise UpgradeRefused(
            f"--version: v{version} skips a minor release: the cluster is at v{current}, and kubeadm "
            "upgrades one minor at a time",
            hint=f"upgrade to a 1.{now[0] + 1} release first, then to v{version}",
        )
    return version


def _refuse_unless_ready(state: ClusterState, name: str) -> None:
    record = state.phase("kubernetes")
    if record is None or record.status != "done":
        raise UpgradeRefused(
            f"cluster {name} has no Kubernetes to upgrade: its kubernetes phase is "
            f"{record.status if record else 'not run'}",
            hint="finish it first (`vkp create-cluster -f ... --up-to kubernetes`), then upgrade",
        )


@dataclass(frozen=True)
class Upgrade:
    """An upgrade vkp will make: checked, nothing contacted yet."""

    name: str
    state: ClusterState
    spec: ClusterSpec  # the saved spec at the target version: what the run uses
    wanted: dict[str, Any]  # the same as saved once the run succeeded
    current: str
    target: str
    drain_timeout: int

    @property
    def same_version(self) -> bool:
        return self.current == self.target


def prepare(name: str, version: str, *, drain_timeout: int = DRAIN_TIMEOUT) -> Upgrade:
    """The upgrade of cluster name to version, checked against the saved state; UpgradeRefused
    (exit 3) saying what to do when vkp does not make it, NotFound for an unknown cluster."""
    if drain_timeout < 1:
        raise UpgradeRefused("--drain-timeout must be at least 1 second", hint="e.g. --drain-timeout 300")
    state = ClusterState.load(name)
    saved = state.load_spec_dict()
    current = spec_from_dict(saved).kubernetes.version
    target = target_version(version, current)
    _refuse_unless_ready(state, name)
    wanted = copy.deepcopy(saved)
    wanted.setdefault("kubernetes", {})["version"] = target
    spec = spec_from_dict(wanted)
    if applies_with_upgrade_node(spec) and target != current:
        raise UpgradeRefused(
            f"--version: v{target} needs `kubeadm upgrade apply`, which kubeadm 1.20 runs only after "
            "pre-pulling images through crictl, and this cluster sets kubernetes.node.skip_preflight "
            "(no crictl)",
            hint=f"install crictl on the masters and unset kubernetes.node.skip_preflight; v{current} "
            "itself can be re-applied as it is",
        )
    return Upgrade(name, state, spec, wanted, current, target, drain_timeout)


def upgrade_cluster(
    name: str, version: str, log: Log, *, dry_run: bool = False, drain_timeout: int = DRAIN_TIMEOUT
) -> dict[str, Any]:
    """Upgrade cluster name to version (see the module's docstring); the result document.

    Holds the cluster's run lock (not in a dry run, which contacts no node and writes nothing).
    Raises UpgradeRefused before anything is contacted (see prepare), ArtifactError when the
    source cannot serve the version, NotHealthy (the check phase) before anything changed,
    PlayFailed naming node, step and command when a node failed (a drain kubectl refused: its
    words), Interrupted or Timeout when the run stopped.
    """
    up = prepare(name, version, drain_timeout=drain_timeout)
    if dry_run:
        return _upgrade(up, log, dry_run=True)
    with runlock.hold(name, runlock.command_line(), log=log):
        return _upgrade(up, log, dry_run=False)


def _upgrade(up: Upgrade, log: Log, *, dry_run: bool) -> dict[str, Any]:
    name, state, spec, current, target = up.name, up.state, up.spec, up.current, up.target
    plan = make_plan(spec)
    lines = plan_lines(plan, current, target)
    if not dry_run:
        # As create-cluster's kubernetes phase: the source answers before any node is touched.
        probe_source(spec.kubernetes, log)
    log(f"upgrading {name} from v{current} to v{target}: " + "; ".join(lines))
    params = {"version": target, "from": current, "drain-timeout": up.drain_timeout}
    report = run_day2(PLAYBOOK, spec, plan, state, params=params, log=log, dry_run=dry_run)
    if not dry_run:
        # Only now: a failed run keeps the version the cluster still runs on some nodes.
        state.save_spec(up.wanted)
    outputs = report.get("outputs") or {}
    result: dict[str, Any] = {
        "cluster": name,
        "from_version": current,
        "to_version": target,
        "same_version": current == target,
        "dry_run": dry_run,
        "plan": lines,
        "nodes": node_stages(report, plan),
        "check": outputs.get("check"),
        "notes": notes(spec, plan, current, target),
        "seconds": report["seconds"],
        "restarts": report["restarts"],
        "warnings": report["warnings"],
        "resumed_from": report["resumed_from"],
    }
    if dry_run:
        result["actions"] = dry_run_actions(report)
    return result


def plan_lines(plan: Plan, current: str, target: str) -> list[str]:
    ms = [n.name for n in plan.by_role("master")]
    ws = [n.name for n in plan.by_role("worker")]
    verb = f"re-apply v{target}" if current == target else f"v{current} -> v{target}"
    lines = [
        f"{verb}: check etcd, the API servers and every node first",
        f"first master {ms[0]}: drain, v{target}'s binaries and images, kubeadm upgrade, kubelet "
        "restart, Ready, uncordon",
    ]
    if len(ms) > 1:
        lines.append(f"then one at a time, each while the others' API servers answer: {', '.join(ms[1:])}")
    if ws:
        lines.append(
            f"workers one at a time (drain respects PodDisruptionBudgets, nothing forced): {', '.join(ws)}"
        )
    return lines


def node_stages(report: dict[str, Any], plan: Plan) -> dict[str, dict[str, Any]]:
    """Each master's and worker's steps in this run, in order, with their outcome ("skipped":
    done by the interrupted run this one resumed), and the seconds they took."""
    nodes: dict[str, dict[str, Any]] = {}
    roles = {n.name: n.role for n in plan.nodes}
    for play in report["plays"]:
        if play["phase"] not in NODE_PHASES:
            continue
        for res in play["results"]:
            host = res["host"]
            if host not in roles:
                continue  # a whole play skipped as done by the interrupted run ("-")
            entry = nodes.setdefault(host, {"role": roles[host], "stages": {}, "seconds": 0.0})
            entry["stages"][res["step"]] = res["status"]
            entry["seconds"] = round(entry["seconds"] + res["seconds"], 2)
    for play in report["plays"]:
        if play["phase"] in NODE_PHASES and all(r["host"] == "-" for r in play["results"]):
            for host in play["hosts"]:
                nodes.setdefault(host, {"role": roles.get(host), "stages": {}, "seconds": 0.0})
                nodes[host]["stages"] = {r["step"]: "skipped" for r in play["results"]}
    # In the cluster's order (masters, then workers), whichever node the run resumed at.
    return {n.name: nodes[n.name] for n in plan.nodes if n.name in nodes}


def notes(spec: ClusterSpec, plan: Plan, current: str, target: str) -> list[str]:
    out = []
    if current == target:
        out.append(SAME_VERSION_NOTE.format(v=target))
    if len(plan.by_role("master")) == 1:
        out.append(
            "one master: the API was unavailable while kubeadm restarted its API server (when it "
            "changed its manifest) and while it was drained workloads kept running on the workers"
        )
    if spec.kubernetes.node.skip_preflight:
        out.append(
            "kubernetes.node.skip_preflight: the first master ran `kubeadm upgrade node "
            "--skip-phases=preflight` instead of `kubeadm upgrade apply` (kubeadm 1.20's apply "
            "pre-pulls images through crictl and cannot skip it); the cluster's kubeadm "
            "configuration already held this version"
        )
    elif spec.kubernetes.dns == "none":
        out.append(
            "kubernetes.dns: none: kubeadm 1.20's upgrade apply installs CoreDNS whatever init "
            "skipped; vkp deleted what it added right after"
        )
    out.append("etcd was not touched: it is vkp's (external to kubeadm), and its quorum was never at stake")
    return out
