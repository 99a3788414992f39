"""The `vkp` group itself and what every cluster command shares: -f/NAME/--plan, the run log."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner import logs, view
from provisioner.cli.completers import complete_cluster, complete_plan
from provisioner.cli_common import VkpGroup
from provisioner.output import warn

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
@click.option(
    "--progress",
    type=click.Choice(view.MODES),
    default="auto",
    show_default=True,
    envvar="VKP_PROGRESS",
    help="How progress is shown on stderr: rich, a live table of the nodes (step, what each waits "
    "for and how long); plain, timestamped lines; auto, rich on a terminal unless NO_COLOR is "
    "set, plain otherwise (pipes, CI). Either ends with a recap per node. Also VKP_PROGRESS.",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool, progress: str) -> None:
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
      vkp --progress plain create-cluster demo --plan dev --yes 2> create.log

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
    view.configure(progress)
    ctx.call_on_close(logs.finish)


def keep_run_log(name: str) -> None:
    """Keep this run's full log in cluster NAME's state directory (once it exists)."""
    logs.cluster_run(name, click.get_current_context().info_name or "vkp")


def spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-f SPEC, NAME and --plan: how every cluster command learns what to build."""
    fn = click.option(
        "--plan",
        "plan_name",
        metavar="PLAN",
        help="Named plan (see `vkp plans`); overrides the spec's plan:.",
        shell_complete=complete_plan,
    )(fn)
    fn = click.argument("name", required=False, shell_complete=complete_cluster)(fn)
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
