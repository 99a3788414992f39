"""Commands as values: arguments quoted by construction, secrets masked wherever a command is shown.

A step builds a `Cmd` from separate arguments and never formats a shell string itself, so a
path with a space or a value with `$()` in it cannot change what runs. The same value renders
two ways: `render()` is what the remote shell executes, `masked()` is what logs, error
messages and dry-run output show.

A `Secret` keeps a value out of logs, not out of the remote process table: anything in a
command line is visible to `ps` on the node while it runs. Secrets that matter (private keys,
passwords, tokens) go to the remote process on standard input (`Connection.run(stdin=...)`,
`Connection.put`), and `Secret` is for the rare value that must be an argument.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

MASK = "********"

# What a remote command may take unless it says otherwise. Five minutes covers the slowest
# ordinary command vkp runs (a `systemctl restart` whose unit uses systemd's default stop and
# start timeouts, 90 s each, or a dpkg lock held by unattended-upgrades for a while), yet a
# command that hangs (a wedged containerd under `ctr`, an NFS stat) is reported within minutes
# instead of holding the run forever. Commands that legitimately take longer (kubeadm init and
# join, package installs, downloads, image imports, cloud-init --wait, drains) declare their own.
COMMAND_TIMEOUT = 300.0


def bounded(timeout: float | None) -> float:
    """timeout itself if it is a positive, finite number of seconds; ValueError otherwise.

    Every remote command has a deadline: None ("wait forever") is refused rather than allowed,
    so a forgotten timeout is the default one, never an unbounded wait.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or (
        timeout <= 0
    ):
        raise ValueError(f"a command timeout is a positive number of seconds, got {timeout!r}")
    return float(timeout)


class Secret:
    """A value that shows as ******** in str(), repr() and format(); `.reveal()` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret takes a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value to wherever the pickle goes (a cache, a log of tasks).
        raise TypeError("a Secret cannot be pickled")


Arg = str | Secret


@dataclass(frozen=True, init=False)
class Cmd:
    """One remote command: a sequence of arguments, each quoted on its own when rendered."""

    args: tuple[Arg, ...]

    def __init__(self, *args: Arg) -> None:
        if not args:
            raise ValueError("a command needs at least one argument")
        for a in args:
            if not isinstance(a, str | Secret):
                raise TypeError(f"command arguments are str or Secret, got {type(a).__name__}: {a!r}")
        object.__setattr__(self, "args", tuple(args))

    @classmethod
    def shell(cls, script: str, *args: Arg) -> Cmd:
        """`sh -c script`, for the rare pipeline or redirection; values go in as "$1", "$2", ...

        Passing values as positional parameters instead of formatting them into the script
        keeps them quoted by construction and maskable, the same as any other argument.
        """
        return cls("sh", "-c", script, "sh", *args)

    def render(self) -> str:
        """The shell string to execute (secrets revealed). Never log this."""
        return " ".join(shlex.quote(a.reveal() if isinstance(a, Secret) else a) for a in self.args)

    def masked(self) -> str:
        """The shell string with every secret replaced by ********, for logs, errors and dry runs."""
        return " ".join(MASK if isinstance(a, Secret) else shlex.quote(a) for a in self.args)

    @property
    def has_secrets(self) -> bool:
        return any(isinstance(a, Secret) for a in self.args)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"Cmd({self.masked()!r})"


def sudo(cmd: Cmd, *, user: str | None = None) -> Cmd:
    """Run cmd as root (or user) without a password prompt: -n fails fast instead of hanging."""
    prefix: Iterable[str] = ("sudo", "-n", "-u", user, "--") if user else ("sudo", "-n", "--")
    return Cmd(*prefix, *cmd.args)


@dataclass(frozen=True)
class Result:
    """What a remote command returned. Output is decoded UTF-8 (undecodable bytes replaced)."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0
