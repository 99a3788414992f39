"""Which nodes of a cluster need repair, for `describe-cluster`: three quick looks, each optional.

- vCenter: one inventory retrieval (the census `list-clusters --all` uses) says whether each
  node's VM still exists and is powered on;
- etcd: each member's /health over mTLS, then the member list from one that answers;
- Kubernetes: the nodes' Ready conditions, from the one API call describe already makes.

A look that cannot be taken (no credentials in the environment, nothing answers from this
machine, the phase that makes the thing never finished) is reported as unknown or skipped with
why, never as a failure of describe and never as a node to repair: only what was seen broken
is. describe never prompts for a password, so the vCenter look needs the credentials exported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from provisioner import infra
from provisioner.errors import ProvisionerError
from provisioner.spec import ClusterSpec
from provisioner.state import ClusterState, NodeRecord

ETCD_CLIENT_PORT = 2379
ETCD_TIMEOUT = 3.0  # per member: describe must stay quick when one is down
ROLE_ORDER = {"etcd": 0, "master": 1, "worker": 2}


@dataclass
class Look:
    """One check's outcome: ok, problems (per node), unknown (could not look) or skipped."""

    status: str
    detail: str = ""
    problems: dict[str, str] = field(default_factory=dict)  # node -> what is wrong with it

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "detail": self.detail}


def _problems(found: dict[str, str], detail: str) -> Look:
    return Look("problems" if found else "ok", detail, found)


# -- vCenter ---------------------------------------------------------------------------------


def look_at_vcenter(state: ClusterState, spec: ClusterSpec, env: Mapping[str, str]) -> Look:
    created = [n for n in state.nodes.values() if n.moid]
    if not created:
        return Look("skipped", "no VM was created yet")
    user, password = spec.vsphere.credentials.lookup(env)
    if not user or not password:
        unset = [
            v
            for v, val in (
                (spec.vsphere.credentials.user_env, user),
                (spec.vsphere.credentials.password_env, password),
            )
            if not val
        ]
        return Look("unknown", f"{' and '.join(unset)} not set (describe does not prompt)")
    with infra.get().open_cluster(state.name, env) as provider:
        seen = provider.survey()
        where = provider.where()
    machines = {n.name: n for c in seen if c.cluster_id == state.cluster_id for n in c.nodes}
    by_id = {n.machine_id: n for n in machines.values()}
    found: dict[str, str] = {}
    for node in created:
        vm = by_id.get(node.moid or "") or machines.get(node.name)
        if vm is None:
            found[node.name] = f"its VM is gone from {where}"
        elif vm.power_state not in (None, "poweredOn"):
            found[node.name] = f"its VM is {vm.power_state} in {where}"
    return _problems(found, f"{len(machines)} VM(s) of the cluster in {where}")


# -- etcd ------------------------------------------------------------------------------------


def look_at_etcd(state: ClusterState) -> Look:
    from provisioner.bootstrap.etcd_client import EtcdClient, EtcdError
    from provisioner.bootstrap.pki import load_pki
    from provisioner.bootstrap.steps.etcd import url

    phase = state.phase("etcd")
    if phase is None or phase.status != "done":
        return Look("skipped", "the etcd phase has not completed")
    members = sorted(
        (n for n in state.nodes.values() if n.role == "etcd" and n.address), key=lambda n: n.name
    )
    if not members:
        return Look("unknown", "no etcd node has an address recorded")
    pki = load_pki(state)
    files = (pki.path("etcd-ca"), pki.path("vkp-etcd-client"), pki.key_path("vkp-etcd-client"))
    if not all(p.is_file() for p in files):
        return Look("unknown", "vkp's etcd client certificate is missing from the state")

    def ask(node: NodeRecord) -> tuple[NodeRecord, EtcdClient, bool | str]:
        client = EtcdClient(url(node.address or "", ETCD_CLIENT_PORT), *files, timeout=ETCD_TIMEOUT)
        try:
            return node, client, client.health()
        except EtcdError as exc:
            return node, client, exc.message

    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        answers = list(pool.map(ask, members))
    healthy = [(n, c) for n, c, ok in answers if ok is True]
    if all(isinstance(ok, str) for _, _, ok in answers):
        # Every member silent: this machine may simply not reach them; that says nothing of
        # which node is broken.
        return Look("unknown", f"no etcd member answered from this machine ({answers[0][2]})")
    found = {
        n.name: "etcd member reports unhealthy (no leader or not serving)"
        if ok is False
        else f"etcd member not answering: {ok}"
        for n, _, ok in answers
        if ok is not True
    }
    if healthy:
        via, client = healthy[0]
        try:
            listed = {m.name for m in client.members() if m.name}
        except EtcdError as exc:
            return _problems(found, f"member list not read through {via.name}: {exc.message}")
        for n in members:
            if n.name not in listed and n.name not in found:
                found[n.name] = f"not in etcd's member list (as {via.name} sees it)"
    return _problems(found, f"{len(healthy)}/{len(members)} member(s) healthy")


# -- Kubernetes ------------------------------------------------------------------------------


def look_at_kubernetes(state: ClusterState, kubernetes: Mapping[str, Any]) -> Look:
    """From describe's Kubernetes view (its readyz and its one GET of the nodes)."""
    if kubernetes.get("phase") != "done":
        return Look("skipped", "the kubernetes phase has not completed")
    seen = kubernetes.get("nodes")
    if kubernetes.get("readyz") != "ok" or seen is None:
        return Look("unknown", f"the API is not ready: {kubernetes.get('readyz', 'not asked')}")
    found: dict[str, str] = {}
    for node in state.nodes.values():
        if node.role not in ("master", "worker"):
            continue
        ready = seen.get(node.name)
        if ready is None:
            found[node.name] = "not registered in Kubernetes"
        elif ready != "Ready":
            found[node.name] = f"{ready} in Kubernetes"
    return _problems(found, f"{sum(v == 'Ready' for v in seen.values())}/{len(seen)} node(s) Ready")


# -- the survey ------------------------------------------------------------------------------


def _guarded(fn: Callable[[], Look]) -> Look:
    try:
        return fn()
    except ProvisionerError as exc:
        return Look("unknown", exc.message)
    except OSError as exc:  # a socket error the clients did not wrap
        return Look("unknown", f"{type(exc).__name__}: {exc}")


def survey(
    name: str,
    state: ClusterState,
    spec: ClusterSpec | None,
    kubernetes: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """{"checks": {vcenter, etcd, kubernetes: {status, detail}}, "needs_repair": [{node, reason,
    command}]}: one entry per node seen broken, its reasons joined."""
    env = os.environ if env is None else env

    def vcenter() -> Look:
        if spec is None:
            return Look("unknown", "no readable saved spec names the cluster's vCenter")
        return look_at_vcenter(state, spec, env)

    looks: dict[str, Callable[[], Look]] = {
        "vcenter": vcenter,
        "etcd": lambda: look_at_etcd(state),
        "kubernetes": lambda: look_at_kubernetes(state, kubernetes),
    }
    # vCenter's login and etcd's timeouts overlap instead of adding up.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(_guarded, fn) for k, fn in looks.items()}
        results = {k: f.result() for k, f in futures.items()}
    reasons: dict[str, list[str]] = {}
    for look in results.values():
        for node, why in look.problems.items():
            reasons.setdefault(node, []).append(why)
    nodes = state.nodes
    order = sorted(reasons, key=lambda n: (ROLE_ORDER.get(nodes[n].role if n in nodes else "", 9), n))
    return {
        "checks": {k: v.to_dict() for k, v in results.items()},
        "needs_repair": [
            {"node": n, "reason": "; ".join(reasons[n]), "command": f"vkp repair {name} {n}"} for n in order
        ],
    }
