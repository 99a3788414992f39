"""vkp: Kubernetes on VMware vSphere. Thin click glue: parse, call one library function, map errors.

Every command maps ProvisionerError subclasses to the exit codes documented in errors.ExitCode
in one place (cli_common.run), so scripts can rely on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner import logs
from provisioner.bootstrap.playbook import create_phases
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, VkpGroup, run
from provisioner.output import StderrLog, emit, structured, warn

if TYPE_CHECKING:
    from provisioner.spec import ClusterSpec


@click.group(
    cls=VkpGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="vkp")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More detail on stderr: -v adds vkp's info lines (certificates issued, vCenter "
    "re-logins), -vv its debug lines (each SSH attempt).",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="Errors only: no progress lines, no warnings from vkp's log."
)
@click.option(
    "--debug", is_flag=True, help="Everything -vv shows, plus paramiko's (SSH) and pyVmomi's debug lines."
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """vkp stands up Kubernetes clusters on VMware vSphere.

    It clones etcd, master and worker VMs from a template through the vSphere API, bootstraps
    them over SSH (etcd with mutual TLS, containerd, kubeadm) and hands back a kubeconfig.
    `vkp lab up` starts an embedded lab (a vCenter simulator whose VMs boot as real Linux
    guests) to try everything on one machine.

    \b
    Quick start on the embedded lab:
      vkp lab up
      eval "$(vkp lab env)"
      vkp create-cluster demo --plan dev --yes

    Verbosity options go before the command (`vkp -v create-cluster ...`); log lines go to
    stderr, so stdout keeps results and `-o json` documents. Whatever they say, each run of
    create-cluster, delete-cluster, resize, get-credentials, ssh, etcdctl and describe-cluster
    keeps a full debug log, progress lines included and secrets masked, in
    $VKP_STATE_DIR/NAME/logs/ (default ~/.vkp/clusters/NAME/logs/; the 20 newest are kept);
    a failed run prints its path.
    """
    if quiet and (verbose or debug):
        raise click.UsageError("-q cannot be combined with -v or --debug: pick one")
    logs.configure(verbose=verbose, quiet=quiet, debug=debug)
    ctx.call_on_close(logs.finish)


def _run_log(name: str) -> None:
    """Keep this run's full log in cluster NAME's state directory (once it exists)."""
    logs.cluster_run(name, click.get_current_context().info_name or "vkp")


def _progress() -> StderrLog:
    """A run's progress lines: on stderr unless -q, and always in the run's log file."""
    return logs.progress()


def spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-f SPEC, NAME and --plan: how every cluster command learns what to build."""
    fn = click.option(
        "--plan",
        "plan_name",
        metavar="PLAN",
        help="Named plan (see `vkp plans`); overrides the spec's plan:.",
    )(fn)
    fn = click.argument("name", required=False)(fn)
    return click.option(
        "-f",
        "--file",
        "spec_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Cluster spec (YAML). Without it, settings come from VKP_* environment variables.",
    )(fn)


def load_cluster_spec(spec_file: Path | None, name: str | None, plan_name: str | None) -> ClusterSpec:
    """The validated spec from -f/NAME/--plan and the environment; prints its warnings."""
    from provisioner.spec import load_spec

    spec = load_spec(spec_file, name=name, plan=plan_name, env=os.environ)
    for w in spec.warnings():
        warn(w)  # once: the vCenter session repeats the insecure-TLS one
    return spec


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


@contextlib.contextmanager
def _locked(name: str) -> Iterator[StderrLog]:
    """The cluster's run lock, taken before the heavy imports (vSphere, SSH) so that a second
    run is refused at once; the library takes it again (re-entrantly) for its other callers."""
    from provisioner import runlock
    progress = _progress()
    with runlock.hold(name, runlock.command_line(), log=progress):
        yield progress


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
        _run_log(spec.name)
        plan = make_plan(spec)
        if not structured(output):
            # A dry run's plan is its output (stdout, `> plan.txt`); a real run's is progress.
            click.echo(render_plan(plan), err=not dry_run)
        if dry_run:
            from provisioner.cluster import dry_run as show_dry_run

            return show_dry_run(spec, up_to, _dry_run_log(output, steps))
        with _locked(spec.name) as progress:
            _confirm(f"Create cluster {spec.name} ({len(plan.nodes)} VMs)?", yes)
            from provisioner.cluster import create_cluster

            return create_cluster(spec, progress, up_to=up_to, concurrency=concurrency)

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


def _dry_run_log(output: str, steps: list[str]) -> Callable[[str], None]:
    """Where a dry run's step lines go. In text they are part of what it prints (kept, then
    printed on stdout after the VM actions, so `--dry-run > plan.txt` holds the whole of it);
    with -o json/yaml stdout is the one document, so they stay progress on stderr."""
    return _progress() if structured(output) else steps.append


def _echo_steps(steps: list[str]) -> None:
    if steps:
        click.echo("\n" + "\n".join(steps))


def _echo_dry_run(actions: list[str], steps: list[str]) -> None:
    click.echo("\n".join(actions) or "nothing to do")
    _echo_steps(steps)
    click.echo("dry run: nothing was changed", err=True)


@main.command("delete-cluster")
@click.argument("name")
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

            return delete_cluster(name, _dry_run_log(output, steps), cluster_id=cluster_id, dry_run=True)
        with _locked(name) as progress:
            _confirm(f"Delete cluster {name} and all its VMs?", yes)
            from provisioner.cluster import delete_cluster

            return delete_cluster(name, progress, cluster_id=cluster_id)

    _run_log(name)
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


@main.command("list-clusters")
@OUTPUT_OPTION
def list_clusters_cmd(output: str) -> None:
    """List the clusters this machine manages (from the local state directory).

    \b
    Example:
      vkp list-clusters -o json
    """
    from provisioner.cluster import list_clusters

    clusters = run(list_clusters, output)
    if structured(output):
        emit({"ok": True, "clusters": clusters}, output)
        return
    if not clusters:
        click.echo("no clusters (create one with `vkp create-cluster`)")
    for c in clusters:
        click.echo(f"{c['name']:<24} {c['nodes']:>3} nodes  last phase: {c['last_phase'] or '-'}")


@main.command("describe-cluster")
@click.argument("name")
@OUTPUT_OPTION
def describe_cluster_cmd(name: str, output: str) -> None:
    """Show a cluster: its nodes (role, address, ESXi host, VM id), phases with timings, files.

    \b
    Example:
      vkp describe-cluster demo -o json
    """
    from provisioner.cluster import describe_cluster

    _run_log(name)
    d = run(lambda: describe_cluster(name), output)
    if structured(output):
        emit({"ok": True, **d}, output)
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
        click.echo(
            f"  {n['name']:<28} {n['role']:<7} {n['address']:<16} {n['esxi_host'] or '-':<14} {n['moid']}"
        )
    for ph in d["phases"]:
        secs = f"{ph['seconds']:.1f}s" if ph.get("seconds") is not None else ""
        click.echo(f"  phase {ph['name']:<11} {ph['status']:<8} {secs}")
    click.echo(f"state dir: {d['state_dir']}")


@main.command("certs")
@click.argument("name")
@OUTPUT_OPTION
def certs_cmd(name: str, output: str) -> None:
    """List a cluster's certificates (CAs, etcd server, peer and client certs) with their expiry.

    Leaf certificates last one year and CAs ten; a re-run of create-cluster reissues a leaf that
    expires within 30 days (or whose node address changed) from the same CA. Private keys are
    never printed.

    \b
    Examples:
      vkp certs demo
      vkp certs demo -o json
    """
    from provisioner.bootstrap.pki import list_certs

    certs = run(lambda: list_certs(name), output)
    if structured(output):
        emit({"ok": True, "cluster": name, "certificates": certs}, output)
        return
    if not certs:
        click.echo(f"no certificates yet for cluster {name} (they are made in the etcd phase)")
        return
    header = ("NAME", "SUBJECT", "EXPIRES", "DAYS LEFT")
    rows = [(c["name"], c["subject"], c["not_after"][:10], str(c["days_left"])) for c in certs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# -- vkp ssh / vkp etcdctl (provisioner/bootstrap/tools.py) ----------------------------------


def _after_dashes(args: tuple[str, ...]) -> tuple[str, ...]:
    # With interspersed args off, click hands the "--" separator through with what follows it.
    return args[1:] if args[:1] == ("--",) else args


@main.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@OUTPUT_OPTION
@click.argument("name")
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh_cmd(name: str, node: str, command: tuple[str, ...], output: str) -> None:
    """Open a shell on NODE of cluster NAME, or run COMMAND there (after --).

    Uses the cluster's SSH key and accepts only the host key vkp pinned for the node. With a
    command, its output is streamed and vkp exits with the command's exit status; standard input
    is passed on when it is not a terminal. Options go before NAME.

    \b
    Examples:
      vkp ssh demo demo-etcd-1
      vkp ssh demo demo-worker-1 -- sudo ctr version
      vkp ssh demo demo-etcd-1 -- 'sudo journalctl -u etcd | tail -20'
    """
    from provisioner.bootstrap.tools import ssh

    _run_log(name)
    sys.exit(run(lambda: ssh(name, node, _after_dashes(command)), output))


@main.command("etcdctl", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@OUTPUT_OPTION
@click.argument("name")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
def etcdctl_cmd(name: str, args: tuple[str, ...], output: str) -> None:
    """Run etcdctl (API v3) against the etcd members of cluster NAME.

    Runs on the first etcd node, with every member as an endpoint and vkp's own etcd client
    certificate; the certificate and key reach the node on standard input, live in a private
    temporary directory while etcdctl runs, and are removed when it exits. Exits with etcdctl's
    exit status.

    \b
    Examples:
      vkp etcdctl demo -- endpoint health
      vkp etcdctl demo -- member list -w table
    """
    from provisioner.bootstrap.tools import etcdctl

    args = _after_dashes(args)

    _run_log(name)
    sys.exit(run(lambda: etcdctl(name, args), output))


# -- vkp get-credentials (provisioner/bootstrap/kubeconfig.py) -------------------------------


@main.command("get-credentials")
@click.argument("name")
@click.option(
    "--merge",
    is_flag=True,
    help="Merge into ~/.kube/config (or $KUBECONFIG's first file) as context NAME and make it current.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Merge into PATH instead (implies --merge; created 0600, and its directories 0700, if missing).",
)
@click.option(
    "--switch/--no-switch",
    default=True,
    show_default=True,
    help="Make NAME the current context. --no-switch keeps the current one (NAME becomes current "
    "only in a file that has none).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a cluster, user or context of the same name that differs (without it, vkp refuses "
    "and changes nothing).",
)
@OUTPUT_OPTION
def get_credentials_cmd(
    name: str, merge: bool, file: Path | None, switch: bool, overwrite: bool, output: str
) -> None:
    """Write cluster NAME's admin kubeconfig and print its path, or merge it into your kubeconfig.

    The kubeconfig is built on this machine from the cluster's own PKI: a client certificate for
    kubernetes-admin (group system:masters) signed by the cluster CA, the CA embedded, and the
    API endpoint as the server. It is written to <state>/admin.conf with mode 0600. It exists
    as soon as the PKI does; until the kubernetes phase is done, vkp says so (the API does not
    answer yet).

    With --merge, as `az aks get-credentials` and `gcloud container clusters get-credentials`
    do, the cluster NAME, the user NAME-admin and the context NAME go into ~/.kube/config, or
    the first file of $KUBECONFIG, or PATH with --file:

    \b
    - NAME becomes the current context, so plain `kubectl` talks to it; --no-switch keeps the
      current context (kubectl --context NAME reaches the cluster).
    - Other entries and settings in the file are kept.
    - A cluster, user or context of the same name that differs is not replaced: vkp names the
      entries, changes nothing and exits 2. --overwrite replaces them. Entries identical to
      vkp's are no conflict: running the command again changes nothing ("already in").
    - The write holds <file>.lock, the lock kubectl itself takes, and is atomic (a temporary
      file renamed over the old one), mode 0600: the file holds a private key.

    With -o json the document has cluster, server, path, context, user and warnings; a merge
    adds merged_into, changed, switched (NAME became the current context), previous_context
    (the current context before, or null) and replaced (the entries --overwrite replaced).

    \b
    Examples:
      vkp get-credentials demo                       # prints the admin.conf path
      kubectl --kubeconfig "$(vkp get-credentials demo)" get nodes
      vkp get-credentials demo --merge && kubectl get nodes
      vkp get-credentials demo --merge --no-switch && kubectl --context demo get nodes
      vkp get-credentials demo --merge --overwrite   # after re-creating cluster demo
      vkp get-credentials demo --file ~/.kube/lab.yaml && KUBECONFIG=~/.kube/lab.yaml kubectl get nodes
      vkp get-credentials demo --merge -o json
    """
    from provisioner.bootstrap.kubeconfig import default_kubeconfig_path, get_credentials

    merge = merge or file is not None
    if not merge and (overwrite or not switch):
        flag = "--overwrite" if overwrite else "--no-switch"
        raise click.UsageError(f"{flag} applies to a merge: add --merge (or --file PATH)")

    def body() -> dict[str, Any]:
        target = (file or default_kubeconfig_path(os.environ)) if merge else None
        return get_credentials(name, merge_into=target, switch=switch, overwrite=overwrite)

    _run_log(name)
    result = run(body, output)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    for w in result["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if not merge:
        click.echo(result["path"])
        return
    context, target = result["context"], result["merged_into"]
    for entry in result["replaced"]:
        click.echo(f"replaced {entry} (--overwrite)", err=True)
    previous, server = result["previous_context"], result["server"]
    what = "merged into" if result["changed"] else "already in"
    click.echo(f"context {context} {what} {target} (server {server})")
    if result["switched"]:
        click.echo(f"current context: {context}" + (f" (was {previous})" if previous else ""))
    elif previous == context:
        click.echo(f"current context: {context}")
    else:
        click.echo(f"current context stays {previous}; use kubectl --context {context}")


@main.command("resize")
@click.argument("name")
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

            return resize_cluster(name, workers, _dry_run_log(output, steps), dry_run=True)
        with _locked(name) as progress:
            _confirm(f"Resize cluster {name} to {workers} worker(s)?", yes)
            from provisioner.cluster import resize_cluster

            return resize_cluster(name, workers, progress, concurrency=concurrency)

    _run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        _echo_dry_run(result["actions"], steps)
    else:
        changes = [f"added {', '.join(result['added'])}"] if result["added"] else []
        changes += [f"removed {', '.join(result['removed'])}"] if result["removed"] else []
        click.echo(f"cluster {name}: {workers} worker(s); " + ("; ".join(changes) or "nothing to change"))


def _register() -> None:
    # Sub-command modules attach themselves to `main`; imported here so `vkp --help` lists them.
    from provisioner.lab import cli as lab_cli

    main.add_command(lab_cli.lab)


_register()
