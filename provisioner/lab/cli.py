"""`vkp lab ...`: the embedded lab's commands (thin glue over provisioner.lab.lab)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.errors import LabError
from provisioner.lab import faults, paths, simulator
from provisioner.lab import lab as lab_mod
from provisioner.output import StderrLog, emit, structured

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
      vkp lab fault vsphere CloneVM_Task
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
    progress = StderrLog()
    state = run(lambda: lab_mod.up(opts, progress), output)
    if structured(output):
        emit({"ok": True, **{k: v for k, v in state.items() if k != "image_root"}}, output)
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
    result = run(lambda: lab_mod.down(StderrLog()), output)
    if structured(output):
        emit({"ok": True, **result}, output)


@lab.command()
@OUTPUT_OPTION
def status(output: str) -> None:
    """Show the simulator, its ESXi hosts and VMs, and the guests realizing them.

    \b
    Example:
      vkp lab status --output json
    """
    st = run(lab_mod.status, output)
    if structured(output):
        emit(st, output)
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

    Also builds the lab's Kubernetes and the sample app's images (`vkp sample-app deploy`) into
    the image tarballs its nodes import. Each is cached and rebuilt only when its recipe changes.
    Useful before running the test suite or on a machine image being baked.

    \b
    Example:
      vkp lab prepare
    """
    run(lambda: lab_mod.prepare(StderrLog()))


@lab.group()
def fault() -> None:
    """Inject faults into the running lab, without restarting it.

    \b
    vsphere METHOD[:K]   the K-th call of a vSphere method from now fails (default: the next)
    network VM           the VM's guest loses its network for some seconds
    list / clear         what is armed and what fired; disarm what has not fired

    Faults are handed to the simulator through files in the lab's run directory (root only);
    nothing is listening on the network for them.

    \b
    Example:
      vkp lab fault vsphere CloneVM_Task          # the next clone fails
      vkp lab fault vsphere PowerOnVM_Task:3      # the third power-on from now fails
      vkp lab fault network lab-worker-1 --seconds 10
    """


@fault.command("vsphere")
@click.argument("faults_", metavar="METHOD[:K]...", nargs=-1, required=True)
@OUTPUT_OPTION
def fault_vsphere(faults_: tuple[str, ...], output: str) -> None:
    """Make the K-th call of METHOD from now on fail (K defaults to 1: the next call).

    A failing *_Task call returns a task that ends in SystemError ("vkp lab: injected fault:
    METHOD call N"), as vCenter reports a failed operation; any other call gets a SystemError
    SOAP fault. Each fault fires once. Calls are counted from the moment the simulator takes
    the fault, which happens before this command returns; the lab hypervisor's own guest
    address reports (what VMware Tools would send) are neither counted nor failed.

    Methods a provisioner's run goes through: CloneVM_Task, ReconfigVM_Task, PowerOnVM_Task,
    PowerOffVM_Task, Destroy_Task (any vSphere method name is accepted).

    \b
    Example:
      vkp lab fault vsphere CloneVM_Task
      vkp lab fault vsphere ReconfigVM_Task:2 Destroy_Task
    """
    parsed = _parse_all(faults_, faults.parse_vsphere_fault)

    def arm() -> dict[str, Any]:
        lab_mod.require_up()
        return faults.arm_vsphere(paths.RUN, parsed)

    state = run(arm, output)
    if structured(output):
        emit({"ok": True, "armed": [{"method": m, "k": k} for m, k in parsed], **state}, output)
    else:
        for m, k in parsed:
            click.echo(f"armed: the {_ordinal(k)} call of {m} from now fails")


@fault.command("list")
@OUTPUT_OPTION
def fault_list(output: str) -> None:
    """Show the vSphere faults armed and fired, and guests whose network is down.

    \b
    Example:
      vkp lab fault list -o json
    """

    def read() -> dict[str, Any]:
        lab_mod.require_up()
        return {**faults.vsphere_state(paths.RUN), "network_down": faults.network_faults(paths.RUN)}

    st = run(read, output)
    if structured(output):
        emit(st, output)
        return
    calls = st.get("calls", {})
    for f in st["pending"]:
        click.echo(
            f"armed:   {f['method']} fails at its call {f['call']} ({calls.get(f['method'], 0)} so far)"
        )
    for f in st["fired"]:
        click.echo(f"fired:   {f['method']} call {f['call']} at {f['at']}")
    for f in st["network_down"]:
        until = time.strftime("%H:%M:%S", time.localtime(f["up_at"]))
        click.echo(f"network: {f['vm']} ({f['interface']}) down until {until}")
    if not (st["pending"] or st["fired"] or st["network_down"]):
        click.echo("no faults armed, fired or in effect")


@fault.command("clear")
@OUTPUT_OPTION
def fault_clear(output: str) -> None:
    """Disarm every vSphere fault that has not fired yet (a dropped network comes back on its own).

    \b
    Example:
      vkp lab fault clear
    """

    def clear() -> dict[str, Any]:
        lab_mod.require_up()
        return faults.clear_vsphere(paths.RUN)

    st = run(clear, output)
    if structured(output):
        emit({"ok": True, **st}, output)
    else:
        click.echo("no vSphere faults armed")


@fault.command("network")
@click.argument("vm")
@click.option(
    "--seconds",
    type=click.FloatRange(0, faults.MAX_NETWORK_SECONDS, min_open=True),
    required=True,
    help="How long the guest stays cut off.",
)
@click.option("--wait", is_flag=True, help="Return once the network is back, not at once.")
@OUTPUT_OPTION
def fault_network(vm: str, seconds: float, wait: bool, output: str) -> None:
    """Cut VM's guest off the lab network for some seconds, then reconnect it.

    The host end of the guest's virtual NIC goes down, so the guest loses carrier, as when a
    host's uplink fails; the VM stays powered on in vCenter. VM is the VM's name (or moid);
    its guest must be running. Without --wait this returns at once and the link comes back by
    itself when the time is over; `vkp lab status` shows it meanwhile.

    \b
    Example:
      vkp lab fault network lab-worker-1 --seconds 10
      vkp lab fault network vm-57 --seconds 3 --wait
    """
    result = run(lambda: faults.drop_network(*lab_mod.find_vm(vm), seconds, wait=wait), output)
    if structured(output):
        emit({"ok": True, **result}, output)
    elif wait:
        click.echo(f"{result['vm']}: network was down for {seconds:g}s and is back")
    else:
        click.echo(f"{result['vm']}: network down for {seconds:g}s ({result['interface']}), back by itself")


def _ordinal(k: int) -> str:
    if k == 1:
        return "next"
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
