"""The bootstrap phases of create-cluster (etcd, runtime, kubernetes) over the cluster's nodes.

create-cluster calls run_bootstrap after the VMs phase. It makes sure the PKI exists, opens one
SSH connection per node for the whole run, and runs the playbook's plays of every phase up to
the one asked for. Each phase is recorded in the cluster state (running, done, failed, or
interrupted by a signal) as its plays run; step-level progress for resuming is the runner's (see
runner.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from provisioner import resources, stop
from provisioner.bootstrap.engine import Cluster
from provisioner.bootstrap.runner import PHASES, load_playbook, run_playbook
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan, Plan
from provisioner.spec import ClusterSpec
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState, ended_status

PLAYBOOK = resources.playbook("cluster")
CONNECT_DEADLINE = 180.0

Log = Callable[[str], None]


class _PlaceholderPKI:
    """Stands in for the PKI in a dry run, which must not create a CA in the state directory."""

    def cert_pem(self, name: str) -> bytes:
        return f"-----BEGIN CERTIFICATE-----\n(certificate {name}, made on the real run)\n".encode()

    def key_pem(self, name: str) -> bytes:
        return f"-----BEGIN PRIVATE KEY-----\n(key {name})\n".encode()


def phases_up_to(up_to: str) -> list[str]:
    """The playbook phases create-cluster --up-to runs ("vms" runs none of them)."""
    if up_to == "vms":
        return []
    if up_to not in PHASES:
        raise ProvisionerError(f"unknown phase {up_to!r}; phases: vms, {', '.join(PHASES)}")
    return list(PHASES[: PHASES.index(up_to) + 1])


def connect_all(spec: ClusterSpec, state: ClusterState, nodes: list[NodePlan]) -> dict[str, Connection]:
    """One open connection per node (opened in parallel: each may wait for sshd)."""
    key_path, _ = state.ssh_keypair()
    conns = {
        n.name: Connection(
            n.name,
            n.address,
            spec.ssh.user,
            key_path,
            state.known_hosts_path,
            port=spec.ssh.port,
            connect_deadline=CONNECT_DEADLINE,
        )
        for n in nodes
    }
    errors: list[ProvisionerError] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(conns)))) as pool:
            futures = {name: pool.submit(c.open) for name, c in conns.items()}
            for _name, fut in futures.items():
                try:
                    fut.result()
                except ProvisionerError as exc:
                    errors.append(exc)
    except BaseException:
        # The main thread interrupted while it waited (a signal): the opened ones are closed too.
        for c in conns.values():
            c.close()
        raise
    if errors:
        for c in conns.values():
            c.close()
        # Once the run is stopping, the other nodes' errors are consequences of the stop.
        stopped = [e for e in errors if stop.is_stop(e)] if stop.stopping() else []
        raise stopped[0] if stopped else errors[0]
    return conns


def run_bootstrap(
    spec: ClusterSpec,
    plan: Plan,
    state: ClusterState,
    *,
    up_to: str,
    log: Log,
    dry_run: bool = False,
    playbook_path: Path | None = None,
) -> dict[str, Any]:
    """Run the bootstrap phases up to up_to; the playbook report as a dict.

    Every playbook phase is implemented now; PhaseNotImplemented stays for a playbook that
    reserves a phase before its steps exist (in a dry run, the report says so instead).
    """
    wanted = phases_up_to(up_to)
    playbook = load_playbook(playbook_path or PLAYBOOK)
    if dry_run:
        pki: Any = _PlaceholderPKI()
    else:
        from provisioner.bootstrap.pki import ensure_pki

        pki = ensure_pki(state, plan, spec.pki)
    cluster = Cluster(spec=spec, plan=plan, state=state, pki=pki)

    hosts: list[NodePlan] = []
    for play in playbook.for_phases(set(wanted)):
        hosts += [n for n in play.hosts.select(plan) if n not in hosts]
    started = time.monotonic()
    conns: dict[str, Connection] = {}
    if not dry_run and hosts:
        log(f"connecting to {len(hosts)} node(s)")
        conns = connect_all(spec, state, hosts)

    def on_phase(phase: str, status: str, seconds: float | None, detail: str | None) -> None:
        if not dry_run:
            state.record_phase(phase, status, seconds, detail)  # type: ignore[arg-type]

    # The Kubernetes phase runs on its own, after the artifact source has answered from here:
    # a source that is not there (the embedded lab has none) then stops it before any node is
    # touched, with what to do, and the etcd and runtime phases stay done.
    batches = [[p for p in wanted if p != "kubernetes"], [p for p in wanted if p == "kubernetes"]]
    reports = []
    try:
        for batch in filter(None, batches):
            if "kubernetes" in batch and not dry_run:
                _probe_artifacts(spec, state, log)
            reports.append(
                run_playbook(
                    playbook, cluster, conns, phases=set(batch), log=log, dry_run=dry_run, on_phase=on_phase
                )
            )
    finally:
        for c in conns.values():
            c.close()
    result = _merge([r.to_dict() for r in reports], wanted, dry_run)
    result["seconds"] = round(time.monotonic() - started, 2)
    result["round_trips"] = {name: c.round_trips for name, c in conns.items()}
    return result


def _probe_artifacts(spec: ClusterSpec, state: ClusterState, log: Log) -> None:
    from provisioner.bootstrap.artifacts import probe_source

    try:
        probe_source(spec.kubernetes, log)
    except ProvisionerError as exc:
        state.record_phase("kubernetes", ended_status(exc), 0.0, exc.message.splitlines()[0])
        raise


def _merge(reports: list[dict[str, Any]], phases: list[str], dry_run: bool) -> dict[str, Any]:
    """One report for the whole bootstrap out of the reports of its batches."""
    merged: dict[str, Any] = {"phases": phases, "dry_run": dry_run, "plays": [], "phase_seconds": {}}
    for key in ("ok", "changed", "failed", "skipped"):
        merged[key] = sum(r[key] for r in reports)
    merged["restarts"] = [x for r in reports for x in r["restarts"]]
    merged["warnings"] = [x for r in reports for x in r["warnings"]]
    merged["artifacts"] = [x for r in reports for x in r.get("artifacts", [])]
    merged["outputs"] = {k: v for r in reports for k, v in (r.get("outputs") or {}).items()}
    merged["resumed_from"] = next((r["resumed_from"] for r in reports if r["resumed_from"]), None)
    for r in reports:
        merged["playbook"] = r["playbook"]
        merged["plays"] += r["plays"]
        merged["phase_seconds"].update(r["phase_seconds"])
    return merged
