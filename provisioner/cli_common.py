"""Shared CLI glue: the --output option and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from provisioner import logs, stop
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.output import FORMATS, current_output, emit, remember_output, structured

T = TypeVar("T")

log = logging.getLogger(__name__)

BUG_HINT = (
    "this is a bug in vkp, not in your settings: please report it with the command line and "
    "this output (the traceback is in the run's debug log)"
)


def _output(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    remember_output(value)
    return value


OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    callback=_output,
    help="json or yaml print one machine-readable document on stdout, also on failure "
    "(progress stays on stderr).",
)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return stop.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


TIMEOUT_OPTION = click.option(
    "--timeout",
    metavar="DURATION",
    callback=_duration,
    help="Stop the whole run after this long (e.g. 30m, 1h30m) with exit code 13, naming what it "
    "was waiting for; a re-run resumes. Without it, each wait still has its own deadline.",
)


def error_doc(error: dict[str, Any], exit_code: int) -> dict[str, Any]:
    """The one shape of a failure on stdout with -o json/yaml."""
    return {"ok": False, "error": error, "exit_code": exit_code}


# The cluster whose failed run offers `vkp support-bundle` (set by offer_support_bundle).
_bundle_for: str | None = None


def offer_support_bundle(name: str) -> None:
    """If this run fails from here on, and cluster NAME's state then exists (with its spec: the
    run reached vCenter), the error ends with the command that bundles it for a bug report."""
    global _bundle_for
    _bundle_for = name


def _support_bundle(exc: BaseException) -> str | None:
    from provisioner.errors import Aborted, Busy, Interrupted, SpecError

    name = _bundle_for
    # Refused before anything ran, declined, or stopped on purpose: nothing to report.
    if name is None or isinstance(exc, Aborted | Busy | Interrupted | SpecError | KeyboardInterrupt):
        return None
    from provisioner.state import ClusterState

    try:
        made = ClusterState.exists(name) and ClusterState.load(name).has_spec()
    except ProvisionerError:
        return None
    return f"vkp support-bundle {name}" if made else None


def _echo_support_bundle(command: str | None) -> None:
    if command is not None:
        click.echo(
            f"  bug report: `{command}` bundles the logs, node journals and cluster state "
            "(secrets scrubbed) to attach",
            err=True,
        )


def fail_unexpected(exc: BaseException, output: str) -> NoReturn:
    """An exception vkp did not expect: one line and a hint to report it, never a traceback
    on the terminal (it goes to the debug log), exit 1."""
    log.debug("unexpected error", exc_info=exc)
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    bundle = _support_bundle(exc)
    if structured(output):
        err = {"type": type(exc).__name__, "code": ExitCode.ERROR, "message": str(exc), "hint": BUG_HINT}
        err |= {"support_bundle": bundle} if bundle else {}
        emit(error_doc(err | {"unexpected": True}, ExitCode.ERROR), output)
    click.echo(f"error: {what}\n  hint: {BUG_HINT}", err=True)
    _echo_support_bundle(bundle)
    point_at_run_log(f"error: {what}")
    sys.exit(ExitCode.ERROR)


def run(
    fn: Callable[[], T], output: str = "text", *, stoppable: bool = False, timeout: float | None = None
) -> T:
    """Run a command body; turn domain errors into a message (or JSON/YAML) and a named exit code.

    stoppable: a long run that changes things. SIGINT and SIGTERM then stop it cleanly (the
    phase is recorded as interrupted, exit 130 / 143) and timeout bounds the whole run.
    """
    global _bundle_for
    _bundle_for = None  # offered again by the command that runs now, if it wants to
    if stoppable:
        stop.install_signal_handlers()
        if timeout is not None:
            stop.arm_deadline(timeout)
    try:
        return fn()
    except ProvisionerError as exc:
        fail(exc, output)
    except KeyboardInterrupt:
        if structured(output):
            err = {"type": "KeyboardInterrupt", "code": ExitCode.INTERRUPTED, "message": "interrupted"}
            emit(error_doc(err, ExitCode.INTERRUPTED), output)
        click.echo("interrupted", err=True)
        point_at_run_log("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
        raise  # click's own (a prompt's Ctrl-C, a bad parameter): the group reports them
    except Exception as exc:  # noqa: BLE001 - the last resort: a message, never a traceback
        known = _vcenter_fault(exc)
        if known is not None:
            log.debug("vCenter fault", exc_info=exc)
            fail(known, output)
        fail_unexpected(exc, output)


def fail(exc: ProvisionerError, output: str) -> NoReturn:
    """A domain error: its message (or one document), the run log's path, its exit code."""
    bundle = _support_bundle(exc)
    if structured(output):
        emit(error_doc(exc.to_dict() | ({"support_bundle": bundle} if bundle else {}), exc.exit_code), output)
    click.echo(f"error: {exc}", err=True)
    _echo_support_bundle(bundle)
    point_at_run_log(f"error: {exc}")
    sys.exit(exc.exit_code)


def _vcenter_fault(exc: BaseException) -> ProvisionerError | None:
    # A fault raised by a vCenter call itself (NoPermission, mostly). Looked at only when
    # pyVmomi is loaded, so commands that never talk to vCenter do not import it.
    if "pyVmomi" not in sys.modules:
        return None
    from provisioner.vsphere.faults import as_error

    return as_error(exc)


def output_in_args(args: Sequence[str]) -> str:
    """The --output a command line asks for, read from its words (for errors raised while it
    is parsed, before the option's value exists); text when none or not a known format."""
    value = "text"
    words = list(args)
    for i, w in enumerate(words):
        if w == "--":
            break  # what follows belongs to a remote command (vkp ssh/etcdctl)
        if w in ("-o", "--output") and i + 1 < len(words):
            value = words[i + 1]
        elif w.startswith("--output="):
            value = w.split("=", 1)[1]
        elif w.startswith("-o") and not w.startswith("--") and len(w) > 2:
            value = w[2:]
    return value if value in FORMATS else "text"


class VkpGroup(click.Group):
    """The root command: with -o json/yaml, click's usage errors and anything that escaped a
    command's run() also end as one error document on stdout."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["vkp.argv"] = list(args)
        with _reported(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _reported(ctx):
            return super().invoke(ctx)


@contextmanager
def _reported(ctx: click.Context) -> Iterator[None]:
    try:
        yield
    except (click.exceptions.Exit, SystemExit, KeyboardInterrupt):
        raise
    except click.exceptions.ClickException as exc:
        output = current_output() or output_in_args(ctx.meta.get("vkp.argv", []))
        if structured(output):
            err = {"type": type(exc).__name__, "code": exc.exit_code, "message": exc.format_message()}
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                err["hint"] = f"see `{exc.ctx.command_path} --help`"
            emit(error_doc(err, exc.exit_code), output)
        raise
    except click.exceptions.Abort:
        output = current_output() or output_in_args(ctx.meta.get("vkp.argv", []))
        if structured(output):
            err = {"type": "Aborted", "code": ExitCode.ERROR, "message": "aborted"}
            emit(error_doc(err, ExitCode.ERROR), output)
        raise
    except Exception as exc:  # noqa: BLE001 - outside run(): still a message, not a traceback
        fail_unexpected(exc, current_output() or output_in_args(ctx.meta.get("vkp.argv", [])))


def point_at_run_log(outcome: str) -> None:
    """After a failed run: record how it ended in its log file, and say on stderr where that is."""
    path = logs.failed(outcome)
    if path is not None:
        click.echo(f"full log: {path}", err=True)
