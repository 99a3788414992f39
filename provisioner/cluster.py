"""The cluster lifecycle: create (phase by phase, resumable), delete (found in vCenter), describe.

Each phase is recorded in the cluster's state directory as it starts and ends, so a re-run
knows where the last one stopped; every phase is also idempotent, so a re-run that repeats a
finished phase changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from provisioner import infra, runlock, stop, view
from provisioner.bootstrap import kube_api
from provisioner.bootstrap.phases import remove_workers, run_bootstrap
from provisioner.bootstrap.pki import load_pki
from provisioner.bootstrap.playbook import create_phases
from provisioner.errors import NotFound, PreflightError, ProvisionerError, SpecError
from provisioner.plan import NodePlan, make_plan
from provisioner.spec import ClusterSpec, spec_from_dict, validate
from provisioner.state import ClusterState, ended_status

Log = Callable[[str], None]
ROLE_ORDER = {"etcd": 0, "master": 1, "worker": 2}


def _phase(
    state: ClusterState, name: str, log: Log, fn: Callable[[], Any], phases: list[dict[str, Any]]
) -> Any:
    t = time.monotonic()
    state.record_phase(name, "running", None, None)
    log(f"phase {name}: started")
    try:
        result = fn()
    except ProvisionerError as exc:
        seconds = time.monotonic() - t
        status = ended_status(exc)
        state.record_phase(name, status, seconds, str(exc).splitlines()[0])
        view.phase(name, status, seconds)
        phases.append({"name": name, "seconds": round(seconds, 2), "status": status})
        exc.phase = exc.phase or name
        raise
    seconds = time.monotonic() - t
    state.record_phase(name, "done", seconds, None)
    view.phase(name, "done", seconds)
    phases.append({"name": name, "seconds": round(seconds, 2), "status": "done"})
    log(f"phase {name}: done in {seconds:.1f}s")
    return result


def create_cluster(
    spec: ClusterSpec,
    log: Log,
    *,
    up_to: str = "kubernetes",
    concurrency: int = 8,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run the phases up to up_to; a re-run resumes and changes only what is missing.

    Holds the cluster's run lock throughout. The local state (and the spec in it, which later
    runs and delete-cluster follow) is only made once vCenter accepted the session, so a run
    pointed at the wrong or an unreachable vCenter leaves nothing behind.
    """
    with runlock.hold(spec.name, runlock.command_line(), log=log):
        return _create_locked(spec, log, up_to=up_to, concurrency=concurrency, env=env)


def _create_locked(
    spec: ClusterSpec, log: Log, *, up_to: str, concurrency: int, env: Mapping[str, str] | None
) -> dict[str, Any]:

    phases: list[dict[str, Any]] = []
    with infra.get().open(spec, env) as provider:
        fresh = not ClusterState.exists(spec.name)
        state = ClusterState.create_or_load(spec.name)
        if state.has_spec():
            refuse_changes(state, spec)
        state.save_spec(spec.to_dict())
        result: dict[str, Any] = {"cluster": spec.name, "cluster_id": state.cluster_id, "up_to": up_to}
        try:
            plan, outcomes = _phase(
                state,
                "vms",
                log,
                lambda: provider.machines(
                    spec, state, log, concurrency=concurrency, check=infra.ssh_check(spec, state, spec.name)
                ),
                phases,
            )
        except PreflightError:
            if fresh:
                # Refused before anything was made: no cluster to list or delete.
                state.remove()
            raise
    result["nodes"] = [
        {
            "name": o.node.name,
            "role": o.node.role,
            "address": o.node.address,
            "esxi_host": o.esxi_host,
            "created": o.created,
            "changed": o.changed,
            "seconds": {k: round(v, 2) for k, v in o.seconds.items()},
        }
        for o in outcomes
    ]
    result["created"] = sum(o.created for o in outcomes)
    result["changed"] = sum(o.changed for o in outcomes)
    result["state_dir"] = str(state.path)
    result["phases"] = phases
    if up_to != "vms":
        try:
            report = run_bootstrap(spec, plan, state, up_to=up_to, log=log)
        except ProvisionerError as exc:
            exc.phase = exc.phase or _last_unfinished(state)
            raise
        _bootstrap_phases(report, phases)
        result["bootstrap"] = report
        result["changed"] += report["changed"]
        if "health" in report.get("outputs", {}):
            result["health"] = report["outputs"]["health"]
    return result


def _last_unfinished(state: ClusterState) -> str | None:
    unfinished = [p for p in state.phases() if p.status != "done"]
    return max(unfinished, key=lambda p: p.updated_at).name if unfinished else None


def refuse_changes(state: ClusterState, spec: ClusterSpec) -> None:
    """Refuse what a re-run of create-cluster cannot change on an existing cluster.

    Where the cluster lives (vCenter, datacenter, folder) and its etcd and master counts are
    fixed at its first create; fewer workers is a resize (it drains them first).
    """

    try:
        saved = spec_from_dict(state.load_spec_dict())
    except ProvisionerError:
        return  # an unreadable saved spec is replaced by the one given
    problems = []
    where = {
        "vsphere.server": (saved.vsphere.server, spec.vsphere.server),
        "vsphere.datacenter": (saved.vsphere.datacenter, spec.vsphere.datacenter),
        "vsphere.folder": (saved.vsphere.folder, spec.vsphere.folder),
    }
    for field_path, (was, now) in where.items():
        if was != now:
            problems.append(
                (
                    field_path,
                    f"cluster {spec.name} was created with {was!r}, not {now!r}; delete it "
                    f"(vkp delete-cluster {spec.name}) to create it elsewhere, or use another name",
                )
            )
    for role in ("etcd", "master"):
        was_n, now_n = saved.topology.role(role).count, spec.topology.role(role).count
        if was_n != now_n:
            problems.append(
                (
                    f"topology.{role}.count",
                    f"cluster {spec.name} has {was_n} {role} node(s); a re-run cannot change that "
                    f"safely: keep {was_n}, or delete and recreate the cluster",
                )
            )
    was_w, now_w = saved.topology.worker.count, spec.topology.worker.count
    if now_w < was_w:
        problems.append(
            (
                "topology.worker.count",
                f"cluster {spec.name} has {was_w} workers; to remove workers run "
                f"`vkp resize {spec.name} --workers {now_w}` (it drains them first)",
            )
        )
    if problems:
        raise SpecError(problems)


def _bootstrap_phases(report: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    for name, seconds in (report.get("phase_seconds") or {}).items():
        phases.append({"name": name, "seconds": round(seconds, 2), "status": "done"})


# -- delete ------------------------------------------------------------------------------------


def delete_cluster(
    name: str,
    log: Log,
    *,
    env: Mapping[str, str] | None = None,
    cluster_id: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Destroy every VM, rule and empty folder that carries the cluster's id, then its state.

    The id comes from the local state, else from --cluster-id, else from vCenter: if several
    clusters of that name exist there, nothing is done until --cluster-id says which.
    dry_run: what would be destroyed, read from vCenter; nothing changes and no lock is taken.
    """
    env = os.environ if env is None else env
    if dry_run:
        return _delete_plan(name, env, cluster_id)
    with runlock.hold(name, runlock.command_line(), log=log):
        local = _local_state(name, cluster_id)
        if local is not None and not local.has_spec():
            # Made by a run that never got a vCenter session: nothing of it exists there.
            local.remove()
            log(f"cluster {name} never reached vCenter; removed its local state")
            nothing = infra.get().nothing().counts()
            return {
                "cluster": name,
                "cluster_id": local.cluster_id,
                "deleted": nothing,
                "kept_folders": [],
                "leftovers": [],
            }
        with infra.get().open_cluster(name, env) as provider:
            cid = local.cluster_id if local is not None else provider.resolve_id(name, cluster_id)
            owned = provider.find_owned(name, cid)
            if owned.empty():
                log(f"nothing of cluster {name} found in vCenter")
            else:
                log(f"cluster {name} (id {cid}): {owned.summary()}")
                for rec in sorted((local.nodes if local else {}).values(), key=_node_order):
                    view.node(rec.name, rec.role)
            t = time.monotonic()
            try:
                kept = provider.destroy(owned, log)
            except (Exception, KeyboardInterrupt) as exc:
                view.phase("delete", ended_status(exc), time.monotonic() - t)
                raise
            view.phase("delete", "done", time.monotonic() - t)
            leftovers = provider.find_owned(name, cid).names()
        if local is not None:
            local.remove()
    if leftovers:
        raise ProvisionerError(
            f"cluster {name}: {len(leftovers)} object(s) left behind: {', '.join(leftovers)}",
            hint="run delete-cluster again; if they persist, remove them in vCenter",
        )
    return {
        "cluster": name,
        "cluster_id": cid,
        "deleted": owned.counts(),
        "kept_folders": kept,
        "leftovers": leftovers,
    }


def _node_order(n: Any) -> tuple[int, str]:
    return (ROLE_ORDER.get(n.role, 9), n.name)


def _local_state(name: str, cluster_id: str | None) -> ClusterState | None:
    local = ClusterState.load(name) if ClusterState.exists(name) else None
    if local is not None and cluster_id and cluster_id != local.cluster_id:
        raise ProvisionerError(
            f"the local state of cluster {name} has id {local.cluster_id}, not {cluster_id}",
            hint="drop --cluster-id to delete this machine's cluster, or delete the other one "
            "with VKP_STATE_DIR pointing at an empty directory",
        )
    return local


def _delete_plan(name: str, env: Mapping[str, str], cluster_id: str | None) -> dict[str, Any]:
    local = _local_state(name, cluster_id)
    actions: list[str] = []
    cid = local.cluster_id if local is not None else None
    counts = infra.get().nothing().counts()
    if local is None or local.has_spec():
        with infra.get().open_cluster(name, env) as provider:
            cid = cid or provider.resolve_id(name, cluster_id)
            owned = provider.find_owned(name, cid)
            actions += provider.destroy_actions(owned)
            counts = owned.counts()
    if local is not None:
        actions.append(f"remove the local state {local.path}")
    return {"cluster": name, "cluster_id": cid, "dry_run": True, "actions": actions, "would_delete": counts}


# -- read-only views ---------------------------------------------------------------------------


def list_clusters() -> list[dict[str, Any]]:
    out = []
    for name in ClusterState.list_all():
        st = ClusterState.load(name)
        phases = st.phases()
        last = phases[-1] if phases else None
        out.append(
            {
                "name": name,
                "cluster_id": st.cluster_id,
                "nodes": len(st.nodes),
                "last_phase": f"{last.name} {last.status}" if last else None,
            }
        )
    return out


def describe_cluster(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The local state's view of a cluster, with the nodes that need repair (day2/survey.py)."""
    from provisioner.day2 import survey

    if not ClusterState.exists(name):
        raise NotFound("cluster", name, hint="`vkp list-clusters` shows the clusters this machine manages")
    st = ClusterState.load(name)
    kubernetes = _kubernetes_view(st)
    return {
        "name": name,
        "cluster_id": st.cluster_id,
        "kubernetes": kubernetes,
        **survey.survey(name, st, _saved_spec(st), kubernetes, env),
        "nodes": [
            {
                "name": n.name,
                "role": n.role,
                "address": n.address,
                "esxi_host": n.esxi_host,
                "moid": n.moid,
                "instance_uuid": n.instance_uuid,
            }
            for n in sorted(st.nodes.values(), key=_node_order)
        ],
        "phases": [dataclasses.asdict(p) for p in st.phases()],
        "state_dir": str(st.path),
        "hosts_inventory": str(st.path / "hosts.yaml"),
    }


def _saved_spec(st: ClusterState) -> ClusterSpec | None:
    try:
        return spec_from_dict(st.load_spec_dict())
    except ProvisionerError:
        return None


def _kubernetes_view(st: ClusterState) -> dict[str, Any]:
    """Version and endpoint from the saved spec; readiness from the API when the phase is done."""

    spec = _saved_spec(st)
    if spec is None:
        return {}
    endpoint = make_plan(spec).api_endpoint.url
    view: dict[str, Any] = {"version": spec.kubernetes.version, "endpoint": endpoint}
    phase = st.phase("kubernetes")
    view["phase"] = phase.status if phase else "not started"
    if phase is None or phase.status != "done":
        return view
    try:
        api = kube_api.client(load_pki(st), endpoint, timeout=5)
        ready, detail = api.readyz()
        view["readyz"] = "ok" if ready else detail
        nodes = api.get("/api/v1/nodes") if ready else {}
    except ProvisionerError as exc:
        view["readyz"] = exc.message
        return view
    view["nodes"] = {
        str(item["metadata"]["name"]): next(
            (
                ("Ready" if c.get("status") == "True" else "NotReady")
                for c in item.get("status", {}).get("conditions", [])
                if c.get("type") == "Ready"
            ),
            "NotReady",  # no Ready condition yet: a kubelet that never reported
        )
        for item in (nodes or {}).get("items", [])
    }
    return view


def dry_run(spec: ClusterSpec, up_to: str, log: Log) -> dict[str, Any]:
    """What create-cluster would do, without contacting vCenter or any node, writing nothing."""

    plan = make_plan(spec)
    actions = infra.get().planned_actions(spec, plan)
    result: dict[str, Any] = {"cluster": spec.name, "dry_run": True, "up_to": up_to, "actions": actions}
    result["plan"] = plan.to_dict()
    if up_to != "vms":
        # Steps read keys from a state; a throwaway one keeps a dry run from creating the real one.
        with tempfile.TemporaryDirectory(prefix="vkp-dry-run-") as home:
            if ClusterState.exists(spec.name):
                state = ClusterState.load(spec.name)
            else:
                state = ClusterState.create_or_load(spec.name, home=Path(home))
            result["bootstrap"] = run_bootstrap(spec, plan, state, up_to=up_to, log=log, dry_run=True)
        result["artifacts"] = result["bootstrap"].get("artifacts", [])
    return result


# -- resize ------------------------------------------------------------------------------------


def resize_cluster(
    name: str, workers: int, log: Log, *, concurrency: int = 8, dry_run: bool = False
) -> dict[str, Any]:
    """Grow or shrink the worker pool to `workers`.

    Growing is create-cluster with the larger spec, up to the last phase the cluster reached:
    the new VMs are cloned and bootstrapped, the others are checked and left alone. Shrinking
    removes the highest-numbered workers: drained and deleted from Kubernetes when it runs,
    then their VMs destroyed and their addresses released from the state.
    dry_run: what it would do (reading vCenter for the VMs a shrink destroys); changes nothing.
    """
    if dry_run:
        return _resize_plan(_resize_target(name, workers), log)
    with runlock.hold(name, runlock.command_line(), log=log):
        return _resize_locked(_resize_target(name, workers), log, concurrency=concurrency)


@dataclasses.dataclass(frozen=True)
class _Resize:
    state: ClusterState
    spec: ClusterSpec  # as it is
    new_spec: ClusterSpec  # with the new worker count
    up_to: str  # the furthest phase the cluster was taken to
    going: list[NodePlan]  # the workers a shrink removes, highest-numbered first

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def workers(self) -> int:
        return self.new_spec.topology.worker.count

    @property
    def bootstrapped(self) -> bool:
        """Kubernetes runs on it (or a run began to set it up): workers are drained first."""
        return self.state.phase("kubernetes") is not None


def _resize_target(name: str, workers: int) -> _Resize:
    state = ClusterState.load(name)
    spec = spec_from_dict(state.load_spec_dict())
    topo = spec.topology
    new_spec = dataclasses.replace(
        spec, topology=dataclasses.replace(topo, worker=dataclasses.replace(topo.worker, count=workers))
    )
    validate(new_spec)
    # The furthest phase the cluster was taken to, finished or not: an interrupted run still
    # meant the cluster to go that far.
    reached = [p for p in create_phases() if state.phase(p) is not None]
    going = [n for n in make_plan(spec).by_role("worker") if n.index > workers][::-1]
    return _Resize(state, spec, new_spec, reached[-1] if reached else "vms", going)


def _resize_plan(r: _Resize, log: Log) -> dict[str, Any]:
    result: dict[str, Any] = {"cluster": r.name, "workers": r.workers, "dry_run": True, "up_to": r.up_to}
    current = r.spec.topology.worker.count
    if r.workers >= current:
        # What create-cluster with the new size would do; for the nodes there, it only checks.
        plan = dry_run(r.new_spec, r.up_to, log)
        new = [n.name for n in make_plan(r.new_spec).nodes if n.name not in r.state.nodes]
        result["added"] = new
        # Its folder exists: only the new nodes' actions and the rules are of this resize.
        result["actions"] = [
            a for a in plan["actions"] if a.split(":")[0] in new or a.startswith("DRS anti-affinity rule")
        ]
        result["actions"].append(
            f"create-cluster up to {r.up_to} over every node (the others are only checked)"
        )
        result["bootstrap"] = plan.get("bootstrap")
        return result
    names = [n.name for n in r.going]
    actions: list[str] = []
    if r.bootstrapped:
        drain = remove_workers(r.spec, make_plan(r.spec), r.state, names, log=log, dry_run=True)
        actions += [
            f"{res['host']}: {a}"
            for play in drain["plays"]
            for res in play["results"]
            for a in res["actions"]
        ]
    with infra.get().open(r.spec) as provider:
        actions += provider.destroy_actions(provider.find_nodes(r.name, r.state.cluster_id, names))
    actions += [f"{n.name}: release address {n.address} from the state" for n in r.going]
    if r.bootstrapped:
        actions.append(f"create-cluster up to {r.up_to} over the remaining nodes (their routes, health)")
    result.update(added=[], removed=names, actions=actions)
    return result


def _resize_locked(r: _Resize, log: Log, *, concurrency: int) -> dict[str, Any]:
    name, workers, up_to, state, new_spec = r.name, r.workers, r.up_to, r.state, r.new_spec
    current = r.spec.topology.worker.count
    if workers == current:
        # The spec is saved as a resize starts, so an interrupted resize to this size looks done
        # here; a converging run finishes it (and changes nothing when it was finished).
        log(f"cluster {name} has {workers} worker(s) in its spec; making sure each is in place")
        create_cluster(new_spec, log, up_to=up_to, concurrency=concurrency)
        return {"cluster": name, "workers": workers, "added": [], "removed": [], "up_to": up_to}
    if workers > current:
        before = set(state.nodes)
        result = create_cluster(new_spec, log, up_to=up_to, concurrency=concurrency)
        added = [n["name"] for n in result["nodes"] if n["name"] not in before]
        return {"cluster": name, "workers": workers, "added": added, "removed": [], "up_to": up_to}

    going = r.going
    if r.bootstrapped:
        # A day-2 playbook: resumable, and shown by a dry run, like every other step.
        remove_workers(r.spec, make_plan(r.spec), state, [n.name for n in going], log=log)
    with infra.get().open(r.spec) as provider:
        provider.destroy(provider.find_nodes(name, state.cluster_id, [n.name for n in going]), log)
    for n in going:
        stop.check("the removal of the drained workers")
        state.remove_node(n.name)
        log(f"{n.name}: removed, address {n.address} released")
    state.save_spec(new_spec.to_dict())
    state.write_hosts_inventory()
    plan = make_plan(new_spec)
    state.write_known_hosts([(n.name, n.address) for n in plan.nodes])
    if r.bootstrapped:
        # What the others keep about the removed nodes (routes to their pod ranges) goes in one
        # converging run over what is left, which also checks the cluster's health.
        log(f"converging the {len(plan.nodes)} remaining node(s)")
        create_cluster(new_spec, log, up_to=up_to, concurrency=concurrency)
    return {"cluster": name, "workers": workers, "added": [], "removed": [n.name for n in going]}
