"""vkp repair NAME NODE: a broken node replaced in place, with the same name, address and pinned
host key (so nothing that trusts it changes), and put back into the cluster.

Stages, in order, each recorded in the node's repair record in the state when it is done, so a
run killed midway is resumed by the next one at the stage it stopped in (and, within a stage of
the playbook, at its step: the playbook's own resume record):

    remove      playbooks/repair.yaml phase remove, before the old VM goes: a worker's or
                master's Node object deleted (a master's kubeadm ClusterStatus entry too); an
                etcd member removed by its id, refused unless the others keep quorum
    vm          the old VM destroyed through the provider (ownership checked: only the
                cluster's, and only the machine the repair started with: an already replaced
                VM is never destroyed again), then the VM phase for this node alone: a clone
                with the node's cloud-init (its address, its stored host key), booted, SSH
                checked against the pinned key
    etcd        (an etcd member) the new member added, etcd started with
                initial-cluster-state existing and an empty data directory, all healthy
    runtime     (a master or worker) create-cluster's runtime plays on the node
    kubernetes  (a master or worker) artifacts, kubelet, the join (kubeadm init again when it
                is the only master), every node's pod routes, the cluster's health

Only the stages of the phases the cluster was taken to run (one made --up-to runtime gets no
Kubernetes stage). The record is removed when the repair ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioner import infra, runlock, stop
from provisioner.bootstrap.phases import dry_run_actions, run_day2
from provisioner.bootstrap.playbook import VMS_PHASE, create_phases
from provisioner.errors import NotFound, ProvisionerError
from provisioner.plan import NodePlan, Plan, make_plan
from provisioner.spec import ClusterSpec, spec_from_dict
from provisioner.state import ClusterState

Log = Callable[[str], None]
PLAYBOOK = "repair"
VM_STAGE = "vm"


@dataclass(frozen=True)
class Target:
    state: ClusterState
    spec: ClusterSpec
    plan: Plan
    node: NodePlan
    reached: tuple[str, ...]  # create-cluster's phases the cluster was taken to

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stages(self) -> list[str]:
        """This node's stages, in order (see the module's docstring)."""
        role = self.node.role
        phases = ["etcd"] if role == "etcd" else ["runtime", "kubernetes"]
        # What the cluster keeps about the node exists once the phase that made it ran.
        remove = ["remove"] if ("etcd" if role == "etcd" else "kubernetes") in self.reached else []
        return [*remove, VM_STAGE, *(p for p in phases if p in self.reached)]


def target(name: str, node: str) -> Target:
    """The cluster and node to repair, from the local state; NotFound for a node the cluster
    does not have, ProvisionerError for a cluster whose VMs were never made."""
    state = ClusterState.load(name)
    spec = spec_from_dict(state.load_spec_dict())
    plan = make_plan(spec)
    nodes = {n.name: n for n in plan.nodes}
    if node not in nodes:
        raise NotFound("node", node, hint=f"nodes of cluster {name}: {', '.join(nodes)}")
    reached = tuple(p for p in create_phases() if state.phase(p) is not None)
    if VMS_PHASE not in reached:
        raise ProvisionerError(
            f"cluster {name} has no VMs yet: there is no node to repair",
            hint=f"run `vkp create-cluster` for {name} first",
        )
    return Target(state, spec, plan, nodes[node], reached)


def repair_node(
    name: str, node: str, log: Log, *, dry_run: bool = False, concurrency: int = 8
) -> dict[str, Any]:
    """Replace node of cluster name (see the module's docstring); the result document.

    dry_run: what it would do, read from vCenter (the VM it would destroy) and the playbook's
    steps; changes nothing. Raises NotFound for an unknown node; QuorumAtRisk (exit 5) before
    anything is changed when etcd would lose quorum; PlayFailed, a vCenter error or SSHError
    with the stage it stopped in, which the next run resumes.
    """
    t = target(name, node)
    if dry_run:
        return _plan(t, log)
    with runlock.hold(name, runlock.command_line(), log=log):
        return _repair_locked(t, log, concurrency=concurrency)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("ok", "changed", "failed", "skipped", "seconds", "resumed_from", "warnings")
    return {k: report.get(k) for k in keys}


def _repair_locked(t: Target, log: Log, *, concurrency: int) -> dict[str, Any]:
    started = time.monotonic()
    node, state = t.node.name, t.state
    record = state.repair(node)
    resumed = record is not None
    if record is None:
        record = state.update_repair(node, role=t.node.role, done=[])
    else:
        log(f"resuming the repair of {node}: done already: {', '.join(record.get('done', [])) or 'nothing'}")
    done: list[str] = list(record.get("done", []))
    result: dict[str, Any] = {
        "cluster": t.name,
        "node": node,
        "role": t.node.role,
        "address": t.node.address,
        "resumed": resumed,
        "stages": [],
        "bootstrap": {},
    }
    for stage in t.stages:
        if stage in done:
            log(f"repair {node}: stage {stage} done by the interrupted run, skipped")
            result["stages"].append({"name": stage, "status": "skipped", "seconds": 0.0})
            continue
        stop.check(f"the repair's stage {stage}")
        log(f"repair {node}: stage {stage}")
        t0 = time.monotonic()
        if stage == VM_STAGE:
            result["vm"] = _replace_vm(t, log, concurrency=concurrency)
        else:
            report = run_day2(
                PLAYBOOK, t.spec, t.plan, state, params={"repair": node}, log=log, phases=[stage]
            )
            result["bootstrap"][stage] = _summary(report)
        done.append(stage)
        state.update_repair(node, done=done)
        seconds = round(time.monotonic() - t0, 2)
        result["stages"].append({"name": stage, "status": "done", "seconds": seconds})
        log(f"repair {node}: stage {stage} done in {seconds:.1f}s")
    state.end_repair(node)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _replace_vm(t: Target, log: Log, *, concurrency: int) -> dict[str, Any]:
    """Destroy the node's old machine (if it is still there), then the VM phase for it alone."""
    node, state = t.node.name, t.state
    with infra.get().open(t.spec) as provider:
        current = provider.machine_ids(t.name, state.cluster_id, [node]).get(node)
        record = state.repair(node) or {}
        if "old_machine" not in record:
            # Decided once, before anything is destroyed or cloned: the machine the state
            # knew (or, without one, the one there now). A later run destroys only that one.
            known = state.nodes.get(node)
            record = state.update_repair(node, old_machine=(known.moid if known else None) or current)
        old = record["old_machine"]
        destroyed = False
        if current is not None and current == old:
            provider.destroy(provider.find_nodes(t.name, state.cluster_id, [node], only_ids=[old]), log)
            destroyed = True
        elif current is not None:
            log(f"{node}: machine {current} is the replacement an interrupted repair made; kept")
        else:
            log(f"{node}: its machine is gone already")
        stop.check(f"the clone of {node}'s new VM")
        _, outcomes = provider.machines(
            t.spec,
            state,
            log,
            concurrency=concurrency,
            check=infra.ssh_check(t.spec, state, t.name),
            only=[node],
        )
    outcome = next(o for o in outcomes if o.node.name == node)
    new = state.nodes[node].moid if node in state.nodes else None
    return {
        "old_machine": old,
        "destroyed": destroyed,
        "machine": new,
        "created": outcome.created,
        "esxi_host": outcome.esxi_host,
        "seconds": {k: round(v, 2) for k, v in outcome.seconds.items()},
    }


def _plan(t: Target, log: Log) -> dict[str, Any]:
    """The dry run: each stage's actions, from the same code (the playbook's dry run, the
    provider's destroy effects and the VM phase's actions for a node without a VM)."""
    node, state = t.node.name, t.state
    actions: list[str] = []
    record = state.repair(node) or {}
    done = set(record.get("done", []))
    for stage in t.stages:
        if stage in done:
            actions.append(f"stage {stage}: done by the interrupted repair, skipped")
            continue
        if stage == VM_STAGE:
            with infra.get().open(t.spec) as provider:
                current = provider.machine_ids(t.name, state.cluster_id, [node]).get(node)
                known = state.nodes.get(node)
                old = record.get("old_machine", (known.moid if known else None) or current)
                if current is not None and current == old:
                    owned = provider.find_nodes(t.name, state.cluster_id, [node], only_ids=[old])
                    actions += [f"stage vm: {a}" for a in provider.destroy_actions(owned)]
                elif current is not None:
                    actions.append(f"stage vm: keep {current}, the replacement an interrupted repair made")
                planned = infra.get().planned_actions(t.spec, t.plan)
                actions += [f"stage vm: {a}" for a in planned if a.startswith(f"{node}: ")]
            continue
        report = run_day2(
            PLAYBOOK, t.spec, t.plan, state, params={"repair": node}, log=log, dry_run=True, phases=[stage]
        )
        actions += dry_run_actions(report, f"stage {stage}: ")
    return {
        "cluster": t.name,
        "node": node,
        "role": t.node.role,
        "address": t.node.address,
        "dry_run": True,
        "stages": t.stages,
        "actions": actions,
    }
