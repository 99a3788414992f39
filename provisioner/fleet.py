"""Clusters as the infrastructure knows them, whichever machine made them.

The local state lists only the clusters this machine (this VKP_STATE_DIR) created or
imported. vCenter knows all of them by the marks vkp leaves on their VMs, rules and folders
(vsphere/ownership.py), so `list-clusters --all` and `describe-cluster` without local state
read those, read-only, in one inventory retrieval (vsphere/census.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from provisioner import infra
from provisioner.errors import ExitCode, NotFound, ProvisionerError
from provisioner.infra import SeenCluster
from provisioner.state import ClusterState


def _local_id(name: str) -> str | None:
    """The cluster id of this machine's state of that name, if it has one it can read."""
    if not ClusterState.exists(name):
        return None
    try:
        return ClusterState.load(name).cluster_id
    except ProvisionerError:
        return None


def _summary(c: SeenCluster) -> dict[str, Any]:
    local = _local_id(c.name) == c.cluster_id
    return {
        "name": c.name,
        "cluster_id": c.cluster_id,
        "vms": c.roles(),
        "vm_count": len(c.nodes),
        "folders": c.folders,
        "datacenters": c.datacenters,
        "state": "local" if local else "remote",
        "in_vcenter": True,
    }


def list_all(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every cluster in the vCenter VKP_VSPHERE_* names, each marked local (this machine has
    its state) or remote; then local clusters that vCenter does not hold (in_vcenter false)."""
    env = os.environ if env is None else env
    with infra.get().open_env(env) as provider:
        seen = provider.survey()
        where = provider.where()
    out = [_summary(c) for c in seen]
    found = {(c.name, c.cluster_id) for c in seen}
    for name in ClusterState.list_all():
        cid = _local_id(name)
        if cid is not None and (name, cid) not in found:
            out.append(
                {
                    "name": name,
                    "cluster_id": cid,
                    "vms": {},
                    "vm_count": 0,
                    "folders": [],
                    "datacenters": [],
                    "state": "local",
                    "in_vcenter": False,
                }
            )
    out.sort(key=lambda c: (c["name"], c["cluster_id"]))
    return {"where": where, "clusters": out}


def describe_from_infra(
    name: str, cluster_id: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """What vCenter holds of cluster NAME: its VMs (role, power state, address, ESXi host,
    moid), DRS rules, folders and id. Several clusters of that name: the one whose id is
    cluster_id, else this machine's, else refused listing each."""
    env = os.environ if env is None else env
    local_id = _local_id(name)
    with infra.get().open_cluster(name, env) as provider:
        seen = [c for c in provider.survey() if c.name == name]
        where = provider.where()
    if cluster_id is not None:
        matches = [c for c in seen if c.cluster_id == cluster_id]
    elif local_id is not None and any(c.cluster_id == local_id for c in seen):
        matches = [c for c in seen if c.cluster_id == local_id]
    else:
        matches = seen
    if not matches:
        what = f"cluster {name!r}" + (f" with id {cluster_id}" if cluster_id else "")
        others = f" (ids there: {', '.join(c.cluster_id for c in seen)})" if seen else ""
        raise NotFound(
            "cluster",
            name if cluster_id is None else f"{name} (id {cluster_id})",
            hint=f"{where} holds no VM or folder marked as {what}{others}; "
            "`vkp list-clusters --all` lists the clusters it holds",
        )
    if len(matches) > 1:
        error = ProvisionerError(
            f"{len(matches)} clusters named {name!r} exist in {where}:\n  "
            + "\n  ".join(
                f"id {c.cluster_id}: {', '.join(c.folders) or 'no folder'}, {len(c.nodes)} VM(s)"
                for c in matches
            ),
            hint=f"pass --cluster-id ID to say which one (e.g. --cluster-id {matches[0].cluster_id})",
        )
        error.exit_code = ExitCode.NOT_FOUND  # "matched more than one", as delete-cluster says
        raise error
    c = matches[0]
    return {
        "name": c.name,
        "cluster_id": c.cluster_id,
        "source": where,
        "state": "local" if local_id == c.cluster_id else "remote",
        "datacenters": c.datacenters,
        "folders": c.folders,
        "vms": c.roles(),
        "nodes": [
            {
                "name": n.name,
                "role": n.role,
                "power_state": n.power_state,
                "address": n.address,
                "address_source": n.address_source,
                "esxi_host": n.host,
                "moid": n.machine_id,
                "path": n.path,
            }
            for n in c.nodes
        ],
        "rules": [asdict(r) | {"members": list(r.members)} for r in c.rules],
    }
