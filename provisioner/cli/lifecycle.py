"""Commands that change a cluster: create-cluster, delete-cluster, resize.

Each takes the cluster's run lock before its heavy imports, asks on a terminal unless --yes,
and has a --dry-run whose whole output goes to stdout.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from provisioner import logs
from provisioner.bootstrap.playbook import create_phases
from provisioner.cli.completers import complete_cluster
from provisioner.cli.root import keep_run_log, load_cluster_spec, main, spec_options
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, offer_support_bundle, run
from provisioner.output import StderrLog, emit, structured


@contextlib.contextmanager
def _locked(name: str) -> Iterator[StderrLog]:
    """The cluster's run lock, taken before the heavy imports (vSphere, SSH) so that a second
    run is refused at once; the library takes it again (re-entrantly) for its other callers."""
    from provisioner import runlock
    progress = logs.progress()
    with runlock.hold(name, runlock.command_line(), log=progress):
        yield progress


@contextlib.contextmanager
def _shown(output: str) -> Iterator[dict[str, Any]]:
    """Show the run's progress (live table or plain lines, see provisioner/view) for the block;
    yields the recap it fills when the block ends: per node ok/changed/failed/skipped counts
    and the phase times, printed on stderr in text mode (after the live view is gone, even on a
    failure), kept in the run's log file in any case, and put in the result document by callers."""
    from provisioner import view

    recap: dict[str, Any] = {}
    board: view.Board | None = None
    try:
        with view.session(quiet=logs.quiet()) as board:
            yield recap
    finally:
        if board is not None:
            recap.update(board.recap())
            if recap["hosts"]:
                text = view.format_recap(recap)
                logs.record(text)
                if not structured(output) and not logs.quiet():
                    click.echo(text, err=True)


def _confirm(question: str, yes: bool) -> None:
    from provisioner.errors import Aborted

    if yes:
        return
    if not sys.stdin.isatty():
        raise Aborted(
            "confirmation needed but there is no terminal", hint="pass --yes to proceed without asking"
        )
    if not click.confirm(question, default=False, err=True):
        raise Aborted("declined; nothing was changed")


@main.command("create-cluster")
@spec_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option(
    "--up-to",
    type=click.Choice(create_phases()),
    default=create_phases()[-1],
    show_default=True,
    help="Stop after this phase: vms (VMs up, SSH pinned), etcd, runtime (containerd), kubernetes.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="vCenter operations (clones, reconfigures, power-ons) in flight at once.",
)
@click.option(
    "--dry-run", is_flag=True, help="Show the plan and every step with rendered files; touch nothing."
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def create_cluster_cmd(
    spec_file: Path | None,
    name: str | None,
    plan_name: str | None,
    yes: bool,
    up_to: str,
    concurrency: int,
    dry_run: bool,
    timeout: float | None,
    output: str,
) -> None:
    """Create a cluster, or finish one: re-running adopts what exists and creates only what is missing.

    Validates the spec, shows the plan (and asks, on a terminal), checks vCenter read-only
    (every object resolves to exactly one, template snapshot, names and addresses free), then
    clones the VMs in parallel as linked clones, places each role on distinct ESXi hosts with
    DRS anti-affinity rules, boots them with cloud-init, and waits until each answers SSH with
    the host key vkp generated for it. Later phases bootstrap etcd, containerd and Kubernetes.

    Credentials come from VKP_VSPHERE_USER / VKP_VSPHERE_PASSWORD (or a prompt on a
    terminal), never from the spec; unset without a terminal, or with -o json/yaml, is exit 3
    naming the variable. Progress goes to stderr; --output json (or yaml) prints one result
    document on stdout, also on failure (code, message, hint, phase). --dry-run prints the
    whole plan (VMs, actions, steps) on stdout.

    One run per cluster at a time: a second one exits at once (code 15) naming the first.
    Ctrl-C or SIGTERM stops launching work, ends the waits and exits 130 / 143 within
    seconds, with the phase recorded as interrupted; the next run resumes. A second Ctrl-C
    exits at once. What a re-run cannot change (vCenter, datacenter, folder, etcd and master
    counts, fewer workers) is refused with what to do instead.

    \b
    Examples:
      vkp create-cluster -f inventory/lab.yaml --yes
      vkp create-cluster demo --plan dev --yes --up-to vms -o json
    """
    from provisioner.plan import make_plan, render_plan

    steps: list[str] = []

    def body() -> dict[str, Any]:
        spec = load_cluster_spec(spec_file, name, plan_name)
        keep_run_log(spec.name)
        plan = make_plan(spec)
        if not structured(output):
            # A dry run's plan is its output (stdout, `> plan.txt`); a real run's is progress.
            click.echo(render_plan(plan), err=not dry_run)
        if dry_run:
            from provisioner.cluster import dry_run as show_dry_run

            return show_dry_run(spec, up_to, _drykeep_run_log(output, steps))
        with _locked(spec.name) as progress:
            _confirm(f"Create cluster {spec.name} ({len(plan.nodes)} VMs)?", yes)
            from provisioner.cluster import create_cluster

            offer_support_bundle(spec.name)

            with _shown(output) as recap:
                made = create_cluster(spec, progress, up_to=up_to, concurrency=concurrency)
            return {**made, "recap": recap}

    result = run(body, output, stoppable=not dry_run, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        click.echo("\n".join(result["actions"]))
        _echo_steps(steps)
        if "artifacts" in result:
            click.echo(_render_artifacts(result["artifacts"]))
        click.echo("dry run: nothing was contacted or changed", err=True)
    else:
        click.echo(_render_result(result))


_ARTIFACT_STATUS = {
    "present": "present",
    "missing": "MISSING",
    "remote": "remote",  # fetched by the nodes on the real run; a dry run contacts nothing
}


def _render_artifacts(items: list[dict[str, Any]]) -> str:
    lines = ["", "artifacts this run needs:"]
    if not items:
        lines.append("  none (nothing is installed from an artifact source up to this phase)")
    for a in items:
        lines.append(f"  {_ARTIFACT_STATUS.get(a['status'], a['status']):<8} {a['what']}")
        lines.append(f"           from {a['source']}")
        if a["status"] == "remote":
            lines.append("           fetched by the nodes on the real run (a dry run contacts nothing)")
        if a.get("problem"):
            lines.append(f"           {a['problem']}")
        if a.get("hint"):
            lines.append(f"           hint: {a['hint']}")
    missing = sum(a["status"] == "missing" for a in items)
    if missing:
        lines.append(f"{missing} missing: a real run stops with exit code 12 before the step that needs it")
    return "\n".join(lines)


def _render_result(result: dict[str, Any]) -> str:
    lines = [f"cluster {result['cluster']}: {result['created']} VM(s) created, {result['changed']} changed"]
    for n in result.get("nodes", []):
        lines.append(f"  {n['name']:<28} {n['role']:<7} {n['address']:<16} {n['esxi_host'] or '-'}")
    for ph in result.get("phases", []):
        lines.append(f"  phase {ph['name']:<11} {ph['status']:<7} {ph['seconds']:.1f}s")
    health = result.get("health")
    if health:
        nodes = health.get("nodes") or {}
        ready = sum(v == "Ready" for v in nodes.values())
        readyz = "ok" if (health.get("readyz") or {}).get("ok") else "failing"
        state = "ok" if health.get("ok") else "NOT ready"
        lines.append(f"health: {state}, /readyz {readyz}, {ready}/{len(nodes)} nodes Ready")
        if "dns" in health:
            lines.append(f"dns: {health['dns']}")
    lines.append(f"state: {result['state_dir']}")
    return "\n".join(lines)


def _drykeep_run_log(output: str, steps: list[str]) -> Callable[[str], None]:
    """Where a dry run's step lines go. In text they are part of what it prints (kept, then
    printed on stdout after the VM actions, so `--dry-run > plan.txt` holds the whole of it);
    with -o json/yaml stdout is the one document, so they stay progress on stderr."""
    return logs.progress() if structured(output) else steps.append


def _echo_steps(steps: list[str]) -> None:
    if steps:
        click.echo("\n" + "\n".join(steps))


def _echo_dry_run(actions: list[str], steps: list[str]) -> None:
    click.echo("\n".join(actions) or "nothing to do")
    _echo_steps(steps)
    click.echo("dry run: nothing was changed", err=True)


@main.command("delete-cluster")
@click.argument("name", shell_complete=complete_cluster)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option(
    "--dry-run", is_flag=True, help="List what would be destroyed (read from vCenter); change nothing."
)
@click.option(
    "--cluster-id",
    metavar="ID",
    help="Which cluster of this name to delete, when vCenter holds several (no local state).",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def delete_cluster_cmd(
    name: str, yes: bool, dry_run: bool, cluster_id: str | None, timeout: float | None, output: str
) -> None:
    """Delete a cluster: every VM, placement rule and folder it owns in vCenter, then its local state.

    What is deleted is what carries the cluster's id (from the local state, or --cluster-id):
    its VMs' ownership mark, its DRS rules' names and its folders' custom values. So a
    same-named cluster of someone else, in another folder or datacenter, is never touched,
    and it works even when the local state is gone (vCenter settings then come from
    VKP_VSPHERE_*; if several clusters carry the name, each is listed and --cluster-id picks
    one). A folder is destroyed only when empty: one holding a VM the cluster does not own is
    kept, and said so. Ends by looking again and reporting leftovers, which must be none.
    Deleting a cluster that does not exist says so and exits 0.

    \b
    Examples:
      vkp delete-cluster demo --yes
      vkp delete-cluster demo --yes --cluster-id 6f1c2d9e-...   # without local state
      vkp delete-cluster demo --dry-run
    """
    steps: list[str] = []

    def body() -> dict[str, Any]:
        if dry_run:
            from provisioner.cluster import delete_cluster

            return delete_cluster(name, _drykeep_run_log(output, steps), cluster_id=cluster_id, dry_run=True)
        with _locked(name) as progress:
            _confirm(f"Delete cluster {name} and all its VMs?", yes)
            from provisioner.cluster import delete_cluster

            with _shown(output) as recap:
                deleted = delete_cluster(name, progress, cluster_id=cluster_id)
            return {**deleted, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        _echo_dry_run(result["actions"], steps)
    else:
        d = result["deleted"]
        if not any(d.values()):
            click.echo(f"nothing to delete: no VM, rule or folder of cluster {name} in vCenter")
        else:
            click.echo(
                f"deleted {d['vms']} VM(s), {d['rules']} rule(s), {d['folders']} folder(s); no leftovers"
            )
        for path in result.get("kept_folders", []):
            click.echo(f"kept folder {path}: it holds objects the cluster does not own")


@main.command("resize")
@click.argument("name", shell_complete=complete_cluster)
@click.option("--workers", type=click.IntRange(1, 1000), required=True, help="The number of workers wanted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option(
    "--dry-run", is_flag=True, help="List what would be done, drains and VMs included; change nothing."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="vCenter operations in flight at once when adding workers.",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def resize_cmd(
    name: str, workers: int, yes: bool, dry_run: bool, concurrency: int, timeout: float | None, output: str
) -> None:
    """Grow or shrink a cluster's worker pool.

    Adding clones the new workers and takes them through every phase the cluster has reached
    (on a Kubernetes cluster they join it). Removing takes the highest-numbered workers away:
    cordoned, drained and deleted from Kubernetes when it runs, then their VMs destroyed and
    their addresses released. Masters and etcd members are never touched.

    \b
    Examples:
      vkp resize demo --workers 5
      vkp resize demo --workers 2 --yes -o json
      vkp resize demo --workers 2 --dry-run
    """
    steps: list[str] = []

    def body() -> dict[str, Any]:
        if dry_run:
            from provisioner.cluster import resize_cluster

            return resize_cluster(name, workers, _drykeep_run_log(output, steps), dry_run=True)
        with _locked(name) as progress:
            _confirm(f"Resize cluster {name} to {workers} worker(s)?", yes)
            from provisioner.cluster import resize_cluster

            with _shown(output) as recap:
                resized = resize_cluster(name, workers, progress, concurrency=concurrency)
            return {**resized, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        _echo_dry_run(result["actions"], steps)
    else:
        changes = [f"added {', '.join(result['added'])}"] if result["added"] else []
        changes += [f"removed {', '.join(result['removed'])}"] if result["removed"] else []
        click.echo(f"cluster {name}: {workers} worker(s); " + ("; ".join(changes) or "nothing to change"))
