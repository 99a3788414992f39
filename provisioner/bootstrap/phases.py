"""Running playbooks over a cluster's nodes: create-cluster's bootstrap and day-2 operations.

create-cluster calls run_bootstrap after the VMs phase. It makes sure the PKI exists and runs
playbooks/cluster.yaml's plays of every phase up to the one asked for. Each phase is recorded in
the cluster state (running, done, failed, or interrupted by a signal) as its plays run.

A day-2 operation (remove-workers: the drain before a resize destroys workers) is a playbook
of its own, run by run_day2 with the parameters its steps read. It records no phase in the
cluster state: those are create-cluster's (list-clusters and describe show them).

Both go through _execute: one SSH connection per node the selected plays name (and to no
other node) for the whole run, the runner's per-playbook resume record (runner.py), and one
report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from provisioner import resources, stop, view
from provisioner.bootstrap.artifacts import probe_source
from provisioner.bootstrap.engine import Cluster, PKISource
from provisioner.bootstrap.pki import ensure_pki, load_pki
from provisioner.bootstrap.playbook import (
    CLUSTER_PLAYBOOK,
    Playbook,
    PlaybookError,
    load_playbook,
    needs_hosts,
    phases_up_to,
)
from provisioner.bootstrap.runner import run_playbook, run_progress
from provisioner.bootstrap.steps import registry
from provisioner.errors import ProvisionerError
from provisioner.plan import NodePlan, Plan
from provisioner.spec import ClusterSpec
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState, ended_status

PLAYBOOK = resources.playbook(CLUSTER_PLAYBOOK)
CONNECT_DEADLINE = 180.0

Log = Callable[[str], None]


class _PlaceholderPKI:
    """Stands in for the PKI in a dry run, which must not create a CA in the state directory."""

    def cert_pem(self, name: str) -> bytes:
        return f"-----BEGIN CERTIFICATE-----\n(certificate {name}, made on the real run)\n".encode()

    def key_pem(self, name: str) -> bytes:
        return f"-----BEGIN PRIVATE KEY-----\n(key {name})\n".encode()


def day2_playbook(name: str) -> Path:
    """playbooks/<name>.yaml of a day-2 operation; NotFound-like PlaybookError when there is none."""
    path = resources.playbook(name)
    if name == CLUSTER_PLAYBOOK or not path.is_file():
        known = sorted(p.stem for p in resources.PLAYBOOKS.glob("*.yaml") if p.stem != CLUSTER_PLAYBOOK)
        raise PlaybookError(f"no day-2 playbook {name!r}; there are: {', '.join(known) or 'none'}")
    return path


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

    def open_one(conn: Connection) -> None:
        view.step(conn.name, "connect")
        try:
            with view.waiting(conn.name, "waiting for SSH", CONNECT_DEADLINE):
                conn.open()
        except BaseException as exc:
            view.done(conn.name, "connect", "interrupted" if stop.is_stop(exc) else "failed")
            raise
        view.done(conn.name, "connect", "connected")

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(conns)))) as pool:
            futures = {name: pool.submit(open_one, c) for name, c in conns.items()}
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
    """Run the bootstrap phases up to up_to; the playbook report as a dict."""
    wanted = phases_up_to(up_to)
    playbook = load_playbook(playbook_path or PLAYBOOK)
    if dry_run:
        pki: PKISource = _PlaceholderPKI()
    else:
        pki = ensure_pki(state, plan, spec.pki)
    cluster = Cluster(spec=spec, plan=plan, state=state, pki=pki)

    def on_phase(phase: str, status: str, seconds: float | None, detail: str | None) -> None:
        if not dry_run:
            state.record_phase(phase, status, seconds, detail)  # type: ignore[arg-type]

    def before(batch: list[str]) -> None:
        if "kubernetes" in batch and not dry_run:
            _probe_artifacts(spec, state, log)

    # The Kubernetes phase runs on its own, after the artifact source has answered from here:
    # a source that is not there (the embedded lab has none) then stops it before any node is
    # touched, with what to do, and the etcd and runtime phases stay done.
    batches = [[p for p in wanted if p != "kubernetes"], [p for p in wanted if p == "kubernetes"]]
    return _execute(
        playbook, cluster, batches, log=log, dry_run=dry_run, on_phase=on_phase, before_batch=before
    )


def dry_run_actions(report: dict[str, Any], prefix: str = "") -> list[str]:
    """A dry run's report as the lines a user reads: each action of each step, after its host."""
    return [
        f"{prefix}{res['host']}: {a}"
        for play in report["plays"]
        for res in play["results"]
        for a in res.get("actions", [])
    ]


def run_day2(
    playbook_name: str,
    spec: ClusterSpec,
    plan: Plan,
    state: ClusterState,
    *,
    params: Mapping[str, Any],
    log: Log,
    dry_run: bool = False,
    phases: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run a day-2 playbook (playbooks/<playbook_name>.yaml) over the cluster: all its phases, or
    those of phases, in the playbook's order: for an operation that does something else between
    them (repair clones the node's VM after the remove phase). Which phases run must follow from
    params, which key the resume record.

    params are what its steps act on (remove-workers: {"nodes": [names]}); they must be exactly
    the ones the playbook's header declares. Connections are opened only to the nodes its plays
    select in plan, so plan is the cluster as it is now (with the nodes to remove still in it).
    Progress goes to the playbook's own resume record: a failed run is resumed by the next run
    with the same parameters, at the failed step; a dry run contacts nothing and writes nothing.

    Returns the report (as run_bootstrap's: ok/changed/failed/skipped counts, plays with their
    results and, in a dry run, each step's actions). Raises PlaybookError (exit 3) for an unknown
    playbook or wrong parameters, before anything is contacted; PlayFailed when a step failed (its
    exit code is the step's: 7 for a refused command, such as a drain kubectl refuses; its
    message names host, step, command and output); Interrupted or Timeout when the run stopped.
    """
    playbook = load_playbook(day2_playbook(playbook_name))
    given, declared = set(params), set(playbook.params)
    if given != declared:
        raise PlaybookError(
            f"playbook {playbook.name} takes the parameters {', '.join(sorted(declared)) or '(none)'}; "
            f"the run gave {', '.join(sorted(given)) or '(none)'}"
        )
    try:
        # The resume record is keyed by them: they must read back the same in the next run.
        json.dumps(dict(params), sort_keys=True)
    except TypeError as exc:
        raise PlaybookError(f"playbook {playbook.name}: parameters must be JSON values: {exc}") from None
    wanted = list(playbook.phases) if phases is None else [p for p in playbook.phases if p in phases]
    unknown = sorted(set(phases or ()) - set(playbook.phases))
    if unknown or not wanted:
        raise PlaybookError(
            f"playbook {playbook.name} has no phase {', '.join(unknown) or '(none given)'}; "
            f"its phases: {', '.join(playbook.phases)}"
        )
    # Read-only: a day-2 operation works on a cluster that has its PKI, and creates none.
    cluster = Cluster(spec=spec, plan=plan, state=state, pki=load_pki(state), params=dict(params))
    return _execute(playbook, cluster, [wanted], log=log, dry_run=dry_run)


REMOVE_WORKERS = "remove-workers"


def remove_workers(
    spec: ClusterSpec,
    plan: Plan,
    state: ClusterState,
    nodes: Sequence[str],
    *,
    log: Log,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Drain each of nodes (in the order given) and delete it from Kubernetes, through the first
    master of plan: playbooks/remove-workers.yaml run by run_day2 (see it for what is raised).

    resize calls it with the cluster's current plan (the workers still in it) before their VMs
    are destroyed, under the cluster's run lock. A node no longer in Kubernetes is left alone, so
    a resize run again after an interruption changes nothing for the nodes already removed.
    """
    return run_day2(
        REMOVE_WORKERS, spec, plan, state, params={"nodes": list(nodes)}, log=log, dry_run=dry_run
    )


def _execute(
    playbook: Playbook,
    cluster: Cluster,
    batches: list[list[str]],
    *,
    log: Log,
    dry_run: bool,
    on_phase: Callable[[str, str, float | None, str | None], None] | None = None,
    before_batch: Callable[[list[str]], None] | None = None,
) -> dict[str, Any]:
    """Run the playbook's phases, batch after batch, over connections to the nodes they select."""
    assert cluster.state is not None
    wanted = [p for batch in batches for p in batch]
    hosts: list[NodePlan] = []
    steps = registry()
    for play in playbook.for_phases(set(wanted)):
        if needs_hosts(play, steps):
            hosts += [n for n in play.hosts.select(cluster.plan, cluster.params) if n not in hosts]
    started = time.monotonic()
    conns: dict[str, Connection] = {}
    if not dry_run:
        for n in hosts:
            view.node(n.name, n.role)
    if not dry_run and hosts:
        log(f"connecting to {len(hosts)} node(s)")
        conns = connect_all(cluster.spec, cluster.state, hosts)
    reports = []
    # One resume record for the whole run: a batch that ends well must not clear what a later
    # batch of the failed run would resume from.
    progress = run_progress(playbook, cluster, dry_run)
    try:
        for batch in filter(None, batches):
            if before_batch is not None:
                before_batch(batch)
            reports.append(
                run_playbook(
                    playbook,
                    cluster,
                    conns,
                    phases=set(batch),
                    log=log,
                    dry_run=dry_run,
                    on_phase=on_phase,
                    progress=progress,
                )
            )
        progress.finished()
    finally:
        for c in conns.values():
            c.close()
    result = _merge([r.to_dict() for r in reports], wanted, dry_run)
    result["seconds"] = round(time.monotonic() - started, 2)
    result["round_trips"] = {name: c.round_trips for name, c in conns.items()}
    return result


def _probe_artifacts(spec: ClusterSpec, state: ClusterState, log: Log) -> None:
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
