"""`vkp sample-app deploy|delete`: a small app of vkp's own, to see a new cluster serve something."""

from __future__ import annotations

from typing import Any

import click

from provisioner import logs
from provisioner.cli.completers import complete_cluster
from provisioner.cli.root import keep_run_log, main
from provisioner.cli_common import OUTPUT_OPTION, TIMEOUT_OPTION, run
from provisioner.output import emit, structured
from provisioner.sampleapp import LAB_REPOSITORY, NAMESPACE


def _repository(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from provisioner.sampleapp.deploy import check_repository

    try:
        return check_repository(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.group("sample-app")
def sample_app() -> None:
    """A restaurant-rating app (web UI, JSON API, redis) to try a cluster with.

    The UI and API are a few files of Python on its standard library, the store is Debian's
    redis-server; they run in namespace vkp-sample, the UI behind a NodePort that this machine
    reaches on every node's address. Votes live in redis: the API's pods can go at any time.

    \b
    Examples:
      vkp sample-app deploy demo          # prints the UI's URL
      vkp sample-app delete demo
    """


@sample_app.command("deploy")
@click.argument("name", shell_complete=complete_cluster)
@click.option(
    "--image-repository",
    metavar="REPO",
    default=LAB_REPOSITORY,
    show_default=True,
    callback=_repository,
    help="Where the nodes get the images REPO/app:0.1 and REPO/redis:0.1. The default names are the "
    "embedded lab's, whose nodes have the images already; on a real site, a registry of yours.",
)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def deploy_cmd(name: str, image_repository: str, timeout: float | None, output: str) -> None:
    """Deploy the sample app to cluster NAME, wait until it is ready, and print the UI's URL.

    Applies (server-side) a namespace vkp-sample with redis, the API (2 replicas) and the UI
    (a NodePort Service) through the cluster's API with vkp's own credentials, then waits for
    each Deployment's rollout, printing progress on stderr. Running it again changes only what
    differs, and the UI keeps its NodePort.

    The embedded lab builds the images from Debian packages (`vkp lab prepare`) and its nodes
    import them when the cluster is created. A real site pushes the same images, the OCI
    archives vkp-sample-app_0.1.tar and vkp-sample-redis_0.1.tar in the lab's image tarballs
    directory, to its registry (e.g. `skopeo copy oci-archive:vkp-sample-app_0.1.tar
    docker://registry.example.com/vkp-sample/app:0.1`) and passes --image-repository. When no
    node can get an image, vkp stops as soon as Kubernetes says so (ImagePullBackOff), naming
    the image, with exit code 12.

    With -o json the document has cluster, namespace, url (the UI on a worker's address), urls
    (on every node), node_port, images, deployments (ready/wanted each), warnings and seconds.

    \b
    Examples:
      vkp sample-app deploy demo
      vkp sample-app deploy demo --image-repository registry.example.com/vkp-sample
      vkp sample-app deploy demo -o json | jq -r .url
    """
    from provisioner.sampleapp.deploy import deploy

    keep_run_log(name)
    log = logs.progress()
    result: dict[str, Any] = run(
        lambda: deploy(name, repository=image_repository, log=log), output, stoppable=True, timeout=timeout
    )
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    for w in result["warnings"]:
        click.echo(f"warning: {w}", err=True)
    ready = ", ".join(f"{n} {s}" for n, s in result["deployments"].items())
    click.echo(f"sample app ready in namespace {result['namespace']} of cluster {name} ({ready})")
    if result["url"]:
        click.echo(f"open {result['url']}")


@sample_app.command("delete")
@click.argument("name", shell_complete=complete_cluster)
@TIMEOUT_OPTION
@OUTPUT_OPTION
def delete_cmd(name: str, timeout: float | None, output: str) -> None:
    """Delete the sample app from cluster NAME: its namespace, once everything in it is gone.

    Waits until the namespace has disappeared, so a deploy right after starts afresh (its
    votes are gone with redis). Without the app there, it does nothing and exits 0.
    With -o json the document has cluster, namespace, deleted (false when there was nothing)
    and seconds.

    \b
    Examples:
      vkp sample-app delete demo
      vkp sample-app delete demo -o json
    """
    from provisioner.sampleapp.deploy import delete

    keep_run_log(name)
    log = logs.progress()
    result = run(lambda: delete(name, log=log), output, stoppable=True, timeout=timeout)
    if structured(output):
        emit({"ok": True, **result}, output)
        return
    if result["deleted"]:
        click.echo(f"namespace {NAMESPACE} deleted from cluster {name} ({result['seconds']}s)")
    else:
        click.echo(f"nothing to delete: cluster {name} has no namespace {NAMESPACE}")
