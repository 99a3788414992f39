"""Commands that read: plans, the sample spec, a plan, the clusters (certificates: certs.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from provisioner.cli.completers import complete_cluster
from provisioner.cli.root import keep_run_log, load_cluster_spec, main, spec_options
from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.output import emit, structured


@main.command("plans")
@OUTPUT_OPTION
def plans_cmd(output: str) -> None:
    """List the named plans: how many etcd, master and worker VMs, and their sizes.

    A spec names a plan (`plan: small`) and overrides only what it needs under `topology:`;
    `--plan` on the command line wins over the spec. Site plans: point VKP_PLANS_FILE at a copy
    of inventory/plans.yaml.

    \b
    Example:
      vkp plans
      vkp create-cluster demo --plan small
    """
    from provisioner.spec import ROLE_MINIMUMS, ROLES, load_size_presets

    def body() -> None:
        plans = load_size_presets(os.environ.get("VKP_PLANS_FILE") or None)
        if structured(output):
            doc = {
                "ok": True,
                "plans": [
                    {
                        "name": p.name,
                        "description": p.description,
                        **{r: dataclasses.asdict(p.topology.role(r)) for r in ROLES},
                    }
                    for p in plans.values()
                ],
                "minimums": {r: dataclasses.asdict(m) for r, m in ROLE_MINIMUMS.items()},
            }
            emit(doc, output)
            return
        header = ("PLAN", "ETCD", "MASTER", "WORKER", "DESCRIPTION")
        rows = [
            (
                p.name,
                *(
                    f"{rs.count} x {rs.cpus} vCPU {rs.memory_mb} MB {rs.disk_gb} GB"
                    for rs in (p.topology.role(r) for r in ROLES)
                ),
                p.description,
            )
            for p in plans.values()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        mins = ", ".join(
            f"{r} {m.cpus} vCPU/{m.memory_mb} MB/{m.disk_gb} GB" for r, m in ROLE_MINIMUMS.items()
        )
        click.echo(f"\nMinimum per VM: {mins}.")

    run(body, output)


@main.group("spec")
def spec_group() -> None:
    """Spec files that ship with vkp, to copy and edit."""


@spec_group.command("sample")
@click.option("--lab", is_flag=True, help="The embedded lab's spec (what `vkp lab up` is made for) instead.")
def spec_sample_cmd(lab: bool) -> None:
    """Print the commented sample spec for a real vCenter: every option, each at its default.

    \b
    Example:
      vkp spec sample > cluster.yaml      # edit, then:
      vkp plan -f cluster.yaml
    """
    from provisioner import resources

    click.echo((resources.LAB_SPEC if lab else resources.SAMPLE_SPEC).read_text(), nl=False)


@main.command("plan")
@spec_options
@click.option(
    "--hosts",
    metavar="H1,H2,...",
    help="ESXi host names to preview placement on; create-cluster uses the cluster's real hosts.",
)
@OUTPUT_OPTION
def plan_cmd(
    spec_file: Path | None, name: str | None, plan_name: str | None, hosts: str | None, output: str
) -> None:
    """Show what create-cluster would build, without contacting vCenter or creating anything.

    Prints every VM in creation order (etcd, masters, workers) with its role, size, address and
    ESXi host, the API endpoint, the VM folder and the anti-affinity rules. The spec is
    validated first; every problem is listed with its field path (exit code 3).

    Settings come from the spec file (-f), then from VKP_* environment variables for anything
    it leaves out (`vkp lab env` sets them for the lab); NAME and --plan override the file.

    \b
    Examples:
      vkp plan -f inventory/lab.yaml
      vkp plan demo --plan small                 # everything else from VKP_* variables
      vkp plan -f cluster.yaml --hosts esx-1,esx-2,esx-3 -o json
    """
    from provisioner.plan import make_plan, render_plan

    def body() -> None:
        spec = load_cluster_spec(spec_file, name, plan_name)
        host_list = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
        plan = make_plan(spec, host_list)
        if structured(output):
            emit({"ok": True, **plan.to_dict(), "warnings": spec.warnings()}, output)
        else:
            click.echo(render_plan(plan))
            click.echo("Nothing was created; create-cluster with the same arguments builds it.", err=True)

    run(body, output)


@main.command("list-clusters")
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Every vkp cluster in the vCenter VKP_VSPHERE_* names, also those made on other machines.",
)
@OUTPUT_OPTION
def list_clusters_cmd(all_: bool, output: str) -> None:
    """List the clusters this machine manages (from the local state directory), or with --all
    every vkp cluster in vCenter.

    --all reads vCenter (read-only, one inventory query) for the marks vkp puts on each
    cluster's VMs, DRS rules and folders, so it also finds clusters created on another machine
    or with another VKP_STATE_DIR. vCenter is the one VKP_VSPHERE_SERVER names (with
    VKP_VSPHERE_USER, VKP_VSPHERE_PASSWORD and VKP_VSPHERE_THUMBPRINT, as delete-cluster uses
    without local state). Each cluster is "local" when this machine has its state (same name and
    id), else "remote": `vkp state import` brings its state here, `delete-cluster` works either
    way. Local clusters vCenter holds nothing of are listed last, as "not in this vCenter".

    \b
    Examples:
      vkp list-clusters -o json
      vkp list-clusters --all
      vkp list-clusters --all -o json | jq -r '.clusters[] | select(.state == "remote") | .name'
    """
    if all_:
        from provisioner.fleet import list_all

        found = run(list_all, output)
        if structured(output):
            emit({"ok": True, **found}, output)
            return
        _echo_all_clusters(found)
        return

    from provisioner.cluster import list_clusters

    clusters = run(list_clusters, output)
    if structured(output):
        emit({"ok": True, "clusters": clusters}, output)
        return
    if not clusters:
        click.echo("no clusters (create one with `vkp create-cluster`)")
    for c in clusters:
        click.echo(f"{c['name']:<24} {c['nodes']:>3} nodes  last phase: {c['last_phase'] or '-'}")


def _echo_all_clusters(found: dict[str, Any]) -> None:
    clusters = found["clusters"]
    if not clusters:
        click.echo(f"no vkp clusters in {found['where']} and none on this machine")
        return
    header = ("NAME", "CLUSTER ID", "VMS", "FOLDER", "STATE")
    rows = [
        (
            c["name"],
            c["cluster_id"],
            ", ".join(f"{n} {role}" for role, n in c["vms"].items()) or "-",
            ", ".join(c["folders"]) or ("(not in this vCenter)" if not c["in_vcenter"] else "-"),
            c["state"],
        )
        for c in clusters
    ]
    _table(header, rows)
    click.echo(f"(read from {found['where']})", err=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@main.command("describe-cluster")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--from-vcenter",
    is_flag=True,
    help="Show what vCenter holds of the cluster even when this machine has its local state.",
)
@click.option(
    "--cluster-id",
    metavar="ID",
    help="Which cluster, when vCenter holds several of this name (implies --from-vcenter unless "
    "it is this machine's).",
)
@OUTPUT_OPTION
def describe_cluster_cmd(name: str, from_vcenter: bool, cluster_id: str | None, output: str) -> None:
    """Show a cluster: its nodes (role, address, ESXi host, VM id), phases with timings, files,
    and the nodes that need repair.

    With the cluster's local state, this reads it and takes three quick looks: one vCenter
    inventory query (each node's VM exists and is powered on; needs VKP_VSPHERE_USER and
    VKP_VSPHERE_PASSWORD exported, describe never prompts), each etcd member's health over
    mTLS, and the API's nodes (Ready). A node seen broken is listed under needs_repair with
    the `vkp repair NAME NODE` that fixes it; a look that cannot be taken is reported as
    unknown, never as a failure. Without local
    state (a cluster made on another machine), or with --from-vcenter, it reads vCenter instead:
    each VM vkp marked as the cluster's with its role, power state, address (as the guest
    reports it, else the one vkp gave it), ESXi host and moid, the DRS rules, the folder and the
    cluster id. vCenter is the saved spec's, or without local state the one VKP_VSPHERE_SERVER
    names. If vCenter holds several clusters of the name, they are listed and --cluster-id
    says which (exit 4 until it does).

    \b
    Examples:
      vkp describe-cluster demo -o json
      vkp describe-cluster demo -o json | jq -r '.needs_repair[].node'
      vkp describe-cluster demo --from-vcenter
      vkp describe-cluster demo --cluster-id 6f1c2c3e-...   # one of several named demo
    """
    from provisioner.cluster import describe_cluster
    from provisioner.state import ClusterState

    keep_run_log(name)

    def body() -> dict[str, Any]:
        local = ClusterState.exists(name)
        if local and not from_vcenter and cluster_id in (None, ClusterState.load(name).cluster_id):
            return describe_cluster(name)
        from provisioner.fleet import describe_from_infra

        return describe_from_infra(name, cluster_id)

    d = run(body, output)
    if structured(output):
        emit({"ok": True, **d}, output)
        return
    if "source" in d:
        _echo_from_vcenter(d)
        return
    click.echo(f"cluster {d['name']} (id {d['cluster_id']})")
    k8s = d.get("kubernetes") or {}
    if k8s:
        click.echo(f"  kubernetes {k8s['version']} at {k8s['endpoint']} (phase {k8s['phase']})")
        if "readyz" in k8s:
            click.echo(f"  API /readyz: {k8s['readyz']}")
        for node, ready in (k8s.get("nodes") or {}).items():
            click.echo(f"  node {node}: {ready}")
    for n in d["nodes"]:
        # A node whose VM phase never finished has no address, host or moid yet.
        address, host, moid = (n[k] or "-" for k in ("address", "esxi_host", "moid"))
        click.echo(f"  {n['name']:<28} {n['role']:<7} {address:<16} {host:<14} {moid}")
    for ph in d["phases"]:
        secs = f"{ph['seconds']:.1f}s" if ph.get("seconds") is not None else ""
        click.echo(f"  phase {ph['name']:<11} {ph['status']:<8} {secs}")
    _echo_repairs(d)
    click.echo(f"state dir: {d['state_dir']}")


def _echo_repairs(d: dict[str, Any]) -> None:
    for check, look in (d.get("checks") or {}).items():
        if look["status"] in ("unknown", "problems"):
            click.echo(f"  check {check:<10} {look['status']}: {look['detail']}")
    for r in d.get("needs_repair") or []:
        click.echo(f"  NEEDS REPAIR {r['node']}: {r['reason']}; run `{r['command']}`")


def _echo_from_vcenter(d: dict[str, Any]) -> None:
    where = "this machine has its local state" if d["state"] == "local" else "no local state on this machine"
    click.echo(f"cluster {d['name']} (id {d['cluster_id']}), from {d['source']}; {where}")
    click.echo(f"  folder: {', '.join(d['folders']) or '-'}")
    header = ("  VM", "ROLE", "POWER", "ADDRESS", "ESXI HOST", "MOID")
    rows = [
        (
            f"  {n['name']}",
            n["role"] or "-",
            n["power_state"] or "-",
            (n["address"] or "-") + (" (config)" if n["address_source"] == "config" else ""),
            n["esxi_host"] or "-",
            n["moid"],
        )
        for n in d["nodes"]
    ]
    _table(header, rows)
    for r in d["rules"]:
        click.echo(f"  DRS rule {r['name']} on {r['where']}: {', '.join(r['members'])}")
    if d["state"] == "remote":
        click.echo(
            f"its keys and PKI are on the machine that made it: `vkp state export {d['name']}` there, "
            "`vkp state import FILE` here",
            err=True,
        )
