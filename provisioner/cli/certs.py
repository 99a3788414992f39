"""`vkp certs`: a cluster's certificates (`vkp certs NAME`, which is `vkp certs list NAME`) and
their renewal (`vkp certs renew NAME`)."""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from provisioner.cli.completers import complete_cluster
from provisioner.cli.lifecycle import _confirm, _drykeep_run_log, _echo_dry_run, _locked, _shown
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured


class _ListByDefault(click.Group):
    """A group whose first word, when it is no subcommand, is a cluster name for `list`: so
    `vkp certs demo -o json` stays what it always was, beside `vkp certs renew demo`."""

    default = "list"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        names = complete_cluster(ctx, click.Argument(["name"]), incomplete)
        return names + [c for c in super().shell_complete(ctx, incomplete) if c.value in self.commands]


@main.group("certs", cls=_ListByDefault)
def certs_group() -> None:
    """A cluster's certificates: list them with their expiry (the default), or renew them.

    \b
    Examples:
      vkp certs demo
      vkp certs demo -o json
      vkp certs renew demo --all --dry-run
      vkp certs renew demo --all --yes -o json
    """


@certs_group.command("list")
@click.argument("name", shell_complete=complete_cluster)
@OUTPUT_OPTION
def certs_list_cmd(name: str, output: str) -> None:
    """List a cluster's certificates (CAs, etcd server, peer and client certs) with their expiry.

    Leaf certificates last one year and CAs ten; a re-run of create-cluster reissues a leaf that
    expires within 30 days (or whose node address changed) from the same CA, and `vkp certs
    renew` reissues them whatever their expiry. Private keys are never printed.

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
    _table(header, [(c["name"], c["subject"], c["not_after"][:10], str(c["days_left"])) for c in certs])


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@certs_group.command("renew")
@click.argument("name", shell_complete=complete_cluster)
@click.option("--etcd", "etcd", is_flag=True, help="The etcd members' server and peer certificates.")
@click.option(
    "--kubernetes",
    "kubernetes",
    is_flag=True,
    help="The masters' certificates (kubeadm's and the etcd client).",
)
@click.option("--all", "all_", is_flag=True, help="Both: --etcd and --kubernetes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--dry-run", is_flag=True, help="List what would be done, node by node; change nothing.")
@TIMEOUT_OPTION
@OUTPUT_OPTION
def certs_renew_cmd(
    name: str,
    etcd: bool,
    kubernetes: bool,
    all_: bool,
    yes: bool,
    dry_run: bool,
    timeout: float | None,
    output: str,
) -> None:
    """Renew a cluster's leaf certificates from its existing CAs, one node at a time.

    New keys and serials, valid for a year; the CAs do not change, so nothing that trusts them
    needs anything. First the cluster is checked (every etcd member healthy, every API server
    ready with --kubernetes): if it is not, nothing changes. Then, with --etcd, each member gets
    its new certificates and restarts only while the others are healthy, the next once all are
    healthy again; with --kubernetes each master gets `kubeadm certs renew all` and its control-
    plane containers restarted, only while the other API servers answer. With one master the
    API is unavailable while its API server restarts (seconds; reported). Kubelet client
    certificates rotate by themselves. A failed run resumes where it stopped.

    \b
    Examples:
      vkp certs renew demo --all --dry-run
      vkp certs renew demo --etcd
      vkp certs renew demo --all --yes -o json
    """
    parts = [p for p, on in (("etcd", etcd or all_), ("kubernetes", kubernetes or all_)) if on]
    if not parts:
        raise click.UsageError("say what to renew: --etcd, --kubernetes, or --all for both")
    steps: list[str] = []

    def body() -> dict[str, Any]:
        from provisioner.day2.certs import renew_certs

        if dry_run:
            return renew_certs(name, parts, _drykeep_run_log(output, steps), dry_run=True)
        with _locked(name) as progress:
            _confirm(
                f"Renew the {' and '.join(parts)} certificates of cluster {name}, restarting "
                + ("etcd members" if parts == ["etcd"] else "etcd members and " if "etcd" in parts else "")
                + ("API servers" if "kubernetes" in parts else "")
                + " one at a time?",
                yes,
            )
            with _shown(output) as recap:
                renewed = renew_certs(name, parts, progress)
            return {**renewed, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    if dry_run:
        click.echo("\n".join(result["plan"]))
        _echo_dry_run(result["actions"], steps)
        return
    renewed = result["renewed"]
    if renewed:
        _table(
            ("RENEWED", "SERIAL", "EXPIRES"), [(r["name"], r["serial"], r["not_after"][:10]) for r in renewed]
        )
    for master, seconds in result["apiserver_restart_seconds"].items():
        click.echo(f"{master}: API server back {seconds}s after its restart")
    for note in result["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"cluster {name}: {', '.join(parts)} certificates renewed in {result['seconds']:.0f}s")
