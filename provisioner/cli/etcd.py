"""`vkp etcd snapshot / restore`: backups of a cluster's etcd (provisioner/day2/etcd_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner import logs
from provisioner.cli.completers import complete_cluster
from provisioner.cli.lifecycle import _confirm, _drykeep_run_log, _echo_dry_run, _locked, _shown
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured


@main.group("etcd")
def etcd_group() -> None:
    """Snapshots of a cluster's etcd, and restoring one.

    \b
    A nightly backup keeping a week of them, and a restore:
      vkp etcd snapshot demo --keep 7 -o json
      vkp etcd restore demo --from ~/.vkp/clusters/demo/snapshots/20260101T020000Z.db --dry-run
    """


@etcd_group.command("snapshot")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Where to write it (default <state>/snapshots/<UTC time>.db); an existing file is never replaced.",
)
@click.option(
    "--keep",
    type=click.IntRange(1, None),
    metavar="N",
    help="Afterwards, remove the oldest snapshots of the default directory beyond the newest N.",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def snapshot_cmd(name: str, file: Path | None, keep: int | None, timeout: float | None, output: str) -> None:
    """Take a consistent snapshot of cluster NAME's etcd and keep it on this machine.

    `etcdctl snapshot save` runs on the first healthy etcd member's node with vkp's etcd client
    certificate (passed on standard input, as `vkp etcdctl` does, and removed after), etcd's
    own `snapshot status` reads the file back (hash, revision, keys), and the copy made here
    over SFTP must have the SHA-256 computed on the node. The file is written 0600 (in a 0700
    directory: it holds every Secret of the cluster) with FILE.sha256 (sha256sum's format) and
    FILE.json beside it: the cluster's id, the etcd cluster and member it came from, etcd's
    version, revision and keys. `vkp etcd restore` needs both. The cluster is not changed and
    the API stays up. Snapshots are not part of `vkp state export`.

    \b
    Examples:
      vkp etcd snapshot demo
      vkp etcd snapshot demo --keep 7 -o json      # path, sha256, revision, keys, seconds
      vkp etcd snapshot demo --file /backup/demo-before-upgrade.db
    """
    from provisioner.day2.etcd_snapshot import take_snapshot

    keep_run_log(name)
    result = run(lambda: take_snapshot(name, logs.progress(), file=file, keep=keep), output,
                 stoppable=True, timeout=timeout)  # fmt: skip
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    click.echo(
        f"{result['path']}: revision {result['revision']}, {result['keys']} keys, {result['size']} bytes, "
        f"from {result['member']} (etcd {result['etcd_version']}) in {result['seconds']:.1f}s"
    )
    click.echo(f"sha256 {result['sha256']}")
    for p in result["pruned"]:
        click.echo(f"removed {p}")


@etcd_group.command("restore")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="The snapshot, with the FILE.sha256 and FILE.json `vkp etcd snapshot` wrote beside it.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option(
    "--dry-run", is_flag=True, help="Check the file and list every step's commands; change nothing."
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def restore_cmd(
    name: str, source: Path, yes: bool, dry_run: bool, timeout: float | None, output: str
) -> None:
    """Restore cluster NAME's etcd from one of its snapshots: everything written since is lost.

    First, with nothing contacted: FILE's SHA-256 must match its .sha256 and .json files, and
    the .json must name this cluster's id. Another cluster's snapshot is refused (exit 5); a
    file without them, or not matching them, too (exit 3). Then, on the nodes: the snapshot is
    copied to every etcd member; the API servers, controller managers and schedulers stop
    (their static pod manifests moved aside); every member stops and is restored into a new
    data directory with a new cluster token, its old one kept as /var/lib/etcd.before-restore-ID;
    the members start together and must be healthy, as planned; the control plane comes back
    and the kubelets restart, so nothing keeps what it cached; then the cluster must be healthy.
    The API is down from the stop to the start, typically a minute or two.

    A restore that stopped is finished by the same command: it resumes with the same id and
    restores no member twice. One run per cluster at a time (exit 15).

    \b
    Examples:
      vkp etcd restore demo --from ~/.vkp/clusters/demo/snapshots/20260101T020000Z.db --dry-run
      vkp etcd restore demo --from /backup/demo-before-upgrade.db --yes -o json
    """
    steps: list[str] = []

    def body() -> dict[str, Any]:
        from provisioner.day2.etcd_restore import restore_etcd

        if dry_run:
            return restore_etcd(name, source, _drykeep_run_log(output, steps), dry_run=True)
        with _locked(name) as progress:
            from provisioner.day2.etcd_snapshot import verify_snapshot
            from provisioner.state import ClusterState

            snap = verify_snapshot(source, ClusterState.load(name))
            _confirm(
                f"Restore cluster {name}'s etcd to revision {snap.revision} "
                f"(taken {snap.metadata.get('taken_at')})? The API is down while it runs, and "
                "everything written since the snapshot is lost.",
                yes,
            )
            with _shown(output) as recap:
                restored = restore_etcd(name, source, progress)
            return {**restored, "recap": recap}

    keep_run_log(name)
    result = run(body, output, stoppable=not dry_run, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif dry_run:
        click.echo(
            f"snapshot {result['snapshot']}: sha256 ok, cluster id ok, revision {result['revision']}, "
            f"{result['keys']} keys, taken {result['taken_at']} from {result['member']}"
            + (f"; resumes the unfinished restore {result['resumes']}" if result["resumes"] else "")
        )
        _echo_dry_run(result["actions"], steps)
    else:
        click.echo(
            f"cluster {name}: etcd restored to revision {result['revision']} in {result['seconds']:.1f}s; "
            f"members {', '.join(result['etcd_members'])} healthy; the old data kept in "
            f"{result['backup_dir']} on each member"
        )
