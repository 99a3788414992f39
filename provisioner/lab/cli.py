"""`vkp lab ...`: the embedded lab's commands (thin glue over provisioner.lab.lab)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.errors import LabError
from provisioner.lab import lab as lab_mod
from provisioner.lab import paths, simulator
from provisioner.output import Progress, emit_json

T = TypeVar("T")


@click.group()
def lab() -> None:
    """The embedded lab: a vCenter simulator whose VMs boot as real Linux guests.

    VMware's vCenter simulator (govmomi) serves the vSphere API on 127.0.0.1 over HTTPS; a
    hypervisor bridge boots a systemd-nspawn Debian guest for every VM that powers on, hands
    it the VM's guestinfo cloud-init data, and reports its address back as VMware Tools
    would. Guests live on the bridge vkplab0 (198.18.0.0/24). Needs root.

    \b
    Example:
      vkp lab up --hosts 3
      eval "$(vkp lab env)"
      vkp lab status
      vkp lab down
    """


def _parse_all(values: tuple[str, ...], parser: Callable[[str], T]) -> list[T]:
    try:
        return [parser(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@lab.command()
@click.option("--hosts", type=click.IntRange(1, 64), help="ESXi hosts in the lab's cluster [default: 3].")
@click.option(
    "--port", type=click.IntRange(1, 65535), help=f"HTTPS port on 127.0.0.1 [default: {paths.DEFAULT_PORT}]."
)
@click.option(
    "--delay",
    "delays",
    multiple=True,
    metavar="METHOD=MS",
    help="Delay every call of a vSphere method, e.g. CloneVM_Task=2000 (repeatable).",
)
@click.option(
    "--fail",
    "fails",
    multiple=True,
    metavar="METHOD:K",
    help="Make the K-th call of a method fail with a vSphere fault, e.g. CloneVM_Task:2 (repeatable).",
)
@OUTPUT_OPTION
def up(
    hosts: int | None, port: int | None, delays: tuple[str, ...], fails: tuple[str, ...], output: str
) -> None:
    """Start the lab (idempotent: an already running lab is left as it is).

    The first run installs the Debian packages it needs, builds the simulator and the guest
    image (a few minutes); later runs reuse them and take seconds.

    \b
    Example:
      vkp lab up
      vkp lab up --hosts 5 --delay CloneVM_Task=2000 --delay PowerOnVM_Task=1000
    """
    opts = lab_mod.LabOptions(
        port=port,
        hosts=hosts,
        delays=dict(_parse_all(delays, simulator.parse_delay)) if delays else None,
        fails=_parse_all(fails, simulator.parse_fail) if fails else None,
    )
    progress = Progress()
    state = run(lambda: lab_mod.up(opts, progress), output)
    if output == "json":
        emit_json({"ok": True, **{k: v for k, v in state.items() if k != "image_root"}})
    else:
        click.echo(f"lab up: {state['url']}  (thumbprint {state['thumbprint']})")
        click.echo('next: eval "$(vkp lab env)"')


@lab.command()
@OUTPUT_OPTION
def down(output: str) -> None:
    """Stop the lab and remove everything it started: guests, overlays, the bridge, processes.

    The simulator build and guest image stay cached for the next `vkp lab up`.

    \b
    Example:
      vkp lab down
    """
    result = run(lambda: lab_mod.down(Progress()), output)
    if output == "json":
        emit_json({"ok": True, **result})


@lab.command()
@OUTPUT_OPTION
def status(output: str) -> None:
    """Show the simulator, its ESXi hosts and VMs, and the guests realizing them.

    \b
    Example:
      vkp lab status --output json
    """
    st = run(lab_mod.status, output)
    if output == "json":
        emit_json(st)
    else:
        click.echo(lab_mod.render_status(st))


@lab.command()
def env() -> None:
    """Print shell export lines that point vkp at the lab: server, user, password, thumbprint,
    address pool, the lab's Kubernetes artifacts and site defaults (VKP_SITE_DEFAULTS), and a
    free virtual address for the API of a cluster with several masters (VKP_API_ENDPOINT), and
    PATH with the lab's kubectl (v1.20.2, like the lab's clusters) first.

    The same lines, but the last two, are kept in a root-only file (0600) under the
    lab's run directory.

    \b
    Example:
      eval "$(vkp lab env)"
    """

    def read() -> str:
        try:
            return paths.ENV_FILE.read_text()
        except FileNotFoundError:
            raise LabError("the lab is not up", hint="start it with `vkp lab up`") from None
        except PermissionError:
            raise LabError(f"cannot read {paths.ENV_FILE}", hint="run as root") from None

    def offer() -> str:
        text = read()
        # Computed now, not at `lab up`: a cluster made since may hold the one offered then.
        return (
            text
            + f"export VKP_API_ENDPOINT={lab_mod.free_virtual_address()}\n"
            + f'export PATH={paths.BIN}:"$PATH"\n'
        )

    click.echo(run(offer), nl=False)


@lab.command()
def prepare() -> None:
    """Install the lab's Debian packages and build the simulator and guest image, without starting.

    Useful before running the test suite or on a machine image being baked.

    \b
    Example:
      vkp lab prepare
    """
    run(lambda: lab_mod.prepare(Progress()))
