"""`vkp etcd restore`: the cluster's etcd back to one of its own snapshots.

The file is checked first, here, before anything is contacted: its SHA-256 against the
checksum and metadata files `vkp etcd snapshot` wrote beside it, and the metadata's cluster id
against this cluster's (another cluster's snapshot is refused, exit 5; a file without them,
or not matching them, exit 3). Then playbooks/etcd-restore.yaml runs (see
provisioner/bootstrap/steps/etcd_restore.py): the snapshot copied to every member, the control
plane stopped, every member stopped, restored with a new cluster token (the old data kept
beside it), started together, checked, and the control plane started again and checked.

A restore that stopped (a failure, a signal, a kill) is finished by running the same command
again: its id is kept in <state>/playbooks/etcd-restore.pending.json until the restore ends
well, so the re-run uses the same token and markers and restores no member twice. Restoring the
same file again after that is a new restore.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner import runlock
from provisioner.bootstrap.phases import dry_run_actions, run_day2
from provisioner.bootstrap.steps.etcd import DATA_DIR
from provisioner.day2.etcd_snapshot import Snapshot, verify_snapshot
from provisioner.plan import make_plan
from provisioner.spec import spec_from_dict
from provisioner.state import ClusterState, atomic_write, private_dir

PLAYBOOK = "etcd-restore"
NEW_RUN = "<new-id>"  # what a dry run shows for the id the real run makes
Log = Callable[[str], None]


def _pending_path(state: ClusterState) -> Path:
    return state.progress_path(PLAYBOOK).with_name(f"{PLAYBOOK}.pending.json")


def pending_run(state: ClusterState, sha256: str) -> str | None:
    """The id of an unfinished restore of this snapshot, if there is one."""
    try:
        data = json.loads(_pending_path(state).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("sha256") == sha256 and isinstance(data.get("run"), str):
        return str(data["run"])
    return None


def _start_run(state: ClusterState, snap: Snapshot) -> str:
    run = pending_run(state, snap.sha256) or secrets.token_hex(6)
    path = _pending_path(state)
    private_dir(path.parent)
    doc = {"sha256": snap.sha256, "run": run, "snapshot": str(snap.path)}
    atomic_write(path, json.dumps(doc, indent=2) + "\n", 0o600)
    return run


def _params(snap: Snapshot, run: str, kubernetes: bool) -> dict[str, Any]:
    return {"snapshot": str(snap.path), "sha256": snap.sha256, "run": run, "kubernetes": kubernetes}


def restore_etcd(name: str, source: Path, log: Log, *, dry_run: bool = False) -> dict[str, Any]:
    """Restore cluster name's etcd from the snapshot file source; the result document.

    dry_run: check the file and list every step's commands; nothing is contacted or changed.
    Raises SnapshotInvalid / SnapshotRefused (exit 3 / 5) before anything is contacted, then
    what run_day2 raises (PlayFailed naming host, step and output; Interrupted; Timeout).
    """
    state = ClusterState.load(name)
    snap = verify_snapshot(source, state)
    spec = spec_from_dict(state.load_spec_dict())
    plan = make_plan(spec)
    kubernetes = state.phase("kubernetes") is not None
    result: dict[str, Any] = {
        "cluster": name,
        "snapshot": str(snap.path),
        "sha256": snap.sha256,
        "revision": snap.revision,
        "keys": snap.metadata.get("keys"),
        "taken_at": snap.metadata.get("taken_at"),
        "member": snap.metadata.get("member"),
    }
    if dry_run:
        resumes = pending_run(state, snap.sha256)
        params = _params(snap, resumes or NEW_RUN, kubernetes)
        report = run_day2(PLAYBOOK, spec, plan, state, params=params, log=log, dry_run=True)
        actions = dry_run_actions(report)
        return {**result, "dry_run": True, "resumes": resumes, "actions": actions, "report": report}
    started = time.monotonic()
    with runlock.hold(name, runlock.command_line(), log=log):
        run = _start_run(state, snap)
        log(f"restoring etcd of {name} from {snap.path} (revision {snap.revision}); restore id {run}")
        report = run_day2(PLAYBOOK, spec, plan, state, params=_params(snap, run, kubernetes), log=log)
        with contextlib.suppress(FileNotFoundError):
            _pending_path(state).unlink()
    return {
        **result,
        "run": run,
        "backup_dir": f"{DATA_DIR}.before-restore-{run}",
        "etcd_members": [n.name for n in plan.by_role("etcd")],
        "health": report.get("outputs", {}).get("health"),
        "report": report,
        "seconds": round(time.monotonic() - started, 2),
    }
