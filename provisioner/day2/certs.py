"""`vkp certs renew`: new leaf certificates from the cluster's existing CAs, one node at a time.

The playbook (playbooks/certs-renew.yaml) checks the cluster, issues vkp's leaves again in the
state, then rolls them out: etcd members one at a time (each only while the others are healthy,
the next once all are healthy again), masters one at a time (kubeadm renews its own leaves there,
then the control-plane containers restart; each only while the other API servers answer).
With one master the API is unavailable while its API server restarts; the report says for how
long. The CAs are never changed, so nothing else in the cluster needs the new certificates: the
kubelets' client certificates rotate by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provisioner import runlock
from provisioner.bootstrap.phases import dry_run_actions, run_day2
from provisioner.bootstrap.pki import list_certs
from provisioner.bootstrap.pki_renew import RENEW_PARTS, renewable
from provisioner.errors import ProvisionerError
from provisioner.plan import make_plan
from provisioner.spec import spec_from_dict
from provisioner.state import ClusterState

Log = Callable[[str], None]
PLAYBOOK = "certs-renew"
RESTART_KEY = "apiserver-restart:"
KUBELET_NOTE = (
    "kubelet client certificates are not renewed here: every kubelet rotates its own before it "
    "expires (kubeadm turns rotation on), on masters and workers alike"
)


class NotReadyForRenewal(ProvisionerError):
    """The cluster has not reached the phase whose certificates were asked for."""


def renew_certs(name: str, parts: list[str], log: Log, *, dry_run: bool = False) -> dict[str, Any]:
    """Renew the certificates of parts (some of "etcd", "kubernetes") of cluster name.

    Holds the cluster's run lock (not in a dry run, which contacts no node and writes nothing).
    A failed or interrupted run is resumed by the next one with the same parts, at the node where
    it stopped (new certificates are not issued twice). Raises NotFound for an unknown cluster,
    NotReadyForRenewal for a cluster not taken as far as the parts need, NotHealthy (from the
    check phase) before anything changed, PlayFailed naming node and step when a node failed.
    """
    wanted = [p for p in RENEW_PARTS if p in parts]
    if not wanted:
        raise ProvisionerError("nothing to renew", hint="say what: --etcd, --kubernetes, or --all for both")
    if dry_run:
        return _renew(name, wanted, log, dry_run=True)
    with runlock.hold(name, runlock.command_line(), log=log):
        return _renew(name, wanted, log, dry_run=False)


def _renew(name: str, parts: list[str], log: Log, *, dry_run: bool) -> dict[str, Any]:
    state = ClusterState.load(name)
    spec = spec_from_dict(state.load_spec_dict())
    plan = make_plan(spec)
    for part in parts:
        record = state.phase(part)
        if record is None or record.status != "done":
            raise NotReadyForRenewal(
                f"cluster {name} has no {part} to renew certificates of: its {part} phase is "
                f"{record.status if record else 'not run'}",
                hint=f"finish it first (`vkp create-cluster -f ... --up-to {part}`), which issues "
                "what is missing",
            )
    log(f"renewing {', '.join(parts)} certificates of {name}: " + "; ".join(_plan_lines(plan, parts)))
    report = run_day2(
        PLAYBOOK, spec, plan, state, params={"parts": parts}, log=log, dry_run=dry_run,
        phases=["check", "issue", *parts],
    )  # fmt: skip
    outputs = report.get("outputs") or {}
    gaps = {k[len(RESTART_KEY) :]: v for k, v in outputs.items() if k.startswith(RESTART_KEY)}
    result: dict[str, Any] = {
        "cluster": name,
        "parts": parts,
        "dry_run": dry_run,
        "plan": _plan_lines(plan, parts),
        "renewed": outputs.get("renewed", []),
        "apiserver_restart_seconds": gaps,
        "notes": _notes(plan, parts),
        "seconds": report["seconds"],
        "restarts": report["restarts"],
        "warnings": report["warnings"],
        "resumed_from": report["resumed_from"],
    }
    if dry_run:
        result["actions"] = dry_run_actions(report)
    else:
        result["certificates"] = list_certs(name)
    return result


def _plan_lines(plan: Any, parts: list[str]) -> list[str]:
    lines = [f"issue {len(renewable(plan, parts))} certificate(s) from the existing CAs"]
    if "etcd" in parts:
        members = [n.name for n in plan.by_role("etcd")]
        lines.append(f"etcd members one at a time, each while the others are healthy: {', '.join(members)}")
    if "kubernetes" in parts:
        ms = [n.name for n in plan.by_role("master")]
        lines.append(
            f"kubeadm certs renew all and control-plane restarts, one master at a time: {', '.join(ms)}"
        )
    return lines


def _notes(plan: Any, parts: list[str]) -> list[str]:
    notes = []
    if "kubernetes" in parts:
        if len(plan.by_role("master")) == 1:
            notes.append(
                "one master: the API was unavailable while its API server restarted (see "
                "apiserver_restart_seconds); with three masters the others serve meanwhile"
            )
        notes.append(KUBELET_NOTE)
        notes.append(
            "the admin certificate in the state is new: `vkp get-credentials` writes a kubeconfig "
            "with it; kubeconfigs written before work until their own certificate expires (same CA)"
        )
    if "etcd" in parts and len(plan.by_role("etcd")) == 1:
        notes.append("one etcd member: etcd was unavailable while it restarted")
    return notes
