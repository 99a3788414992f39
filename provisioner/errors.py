"""One exception tree for the whole tool; the CLI maps it to exit codes in one place.

Every error carries a message a user can act on: what is wrong, where, and what to do.
"""

from __future__ import annotations

import signal
from typing import Any


class ExitCode:
    """Documented process exit codes (README, "Exit codes"). CI scripts depend on them."""

    OK = 0
    ERROR = 1  # unexpected or generic failure
    USAGE = 2  # click's own code for bad command-line usage
    SPEC = 3  # the cluster spec is invalid (nothing was contacted)
    NOT_FOUND = 4  # an object that must exist does not (or exists more than once)
    PREFLIGHT = 5  # preflight refused: names/addresses taken, capacity, template
    VSPHERE = 6  # vCenter refused or a task failed
    SSH = 7  # a node could not be reached or a command on it failed
    HOST_KEY = 8  # a node presented a host key other than the pinned one
    TLS = 9  # vCenter's certificate did not match the CA or pinned thumbprint
    AUTH = 10  # vCenter rejected the credentials
    LAB = 11  # the embedded lab could not be brought up or is not up
    ARTIFACTS = 12  # Kubernetes artifacts are missing or do not verify
    TIMEOUT = 13  # a deadline passed (guest address, SSH, health)
    ABORTED = 14  # the user declined the confirmation
    BUSY = 15  # another run holds the cluster's lock
    HANDOVER = 16  # a state file does not open: wrong passphrase, changed, cut short, not one
    INTERRUPTED = 130  # SIGINT (SIGTERM: 143); the phase is recorded as interrupted


class ProvisionerError(Exception):
    exit_code = ExitCode.ERROR
    # The cluster phase that was running, when there was one (set where phases are run).
    phase: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": type(self).__name__, "code": self.exit_code, "message": self.message}
        if self.hint:
            d["hint"] = self.hint
        if self.phase:
            d["phase"] = self.phase
        return d

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(ProvisionerError):
    """One or more problems in a cluster spec, each with its field path."""

    exit_code = ExitCode.SPEC

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{path}: {what}" for path, what in problems]
        super().__init__(f"the cluster spec has {len(problems)} problem(s):\n  " + "\n  ".join(lines))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["problems"] = [{"field": p, "message": m} for p, m in self.problems]
        return d


class SettingsMissing(SpecError):
    """Settings the run needs are not set (environment variables such as the vCenter
    credentials); a spec-class error: nothing was contacted."""

    def __init__(self, problems: list[tuple[str, str]], *, hint: str | None = None) -> None:
        self.problems = problems
        lines = [f"{name}: {what}" for name, what in problems]
        ProvisionerError.__init__(
            self, "missing settings, nothing was contacted:\n  " + "\n  ".join(lines), hint=hint
        )


class NotFound(ProvisionerError):
    exit_code = ExitCode.NOT_FOUND

    def __init__(self, kind: str, path: str, *, hint: str | None = None) -> None:
        self.kind, self.path = kind, path
        super().__init__(f"{kind} {path!r} not found", hint=hint)


class Ambiguous(ProvisionerError):
    exit_code = ExitCode.NOT_FOUND

    def __init__(self, kind: str, path: str, candidates: list[str]) -> None:
        self.kind, self.path, self.candidates = kind, path, candidates
        super().__init__(
            f"{kind} {path!r} matches {len(candidates)} objects: {', '.join(candidates)}",
            hint="use the full inventory path so exactly one object matches",
        )


class PreflightError(ProvisionerError):
    exit_code = ExitCode.PREFLIGHT

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("preflight failed, nothing was created:\n  " + "\n  ".join(problems))


class TaskFailed(ProvisionerError):
    exit_code = ExitCode.VSPHERE


class VSphereError(ProvisionerError):
    exit_code = ExitCode.VSPHERE


class AuthError(ProvisionerError):
    exit_code = ExitCode.AUTH


class TLSVerifyError(ProvisionerError):
    exit_code = ExitCode.TLS


class SSHError(ProvisionerError):
    exit_code = ExitCode.SSH


class HostKeyMismatch(SSHError):
    exit_code = ExitCode.HOST_KEY


class CommandFailed(SSHError):
    """A remote command exited non-zero; carries the (masked) command and output tails."""

    def __init__(self, host: str, command: str, exit_status: int, stdout: str, stderr: str) -> None:
        self.host, self.command, self.exit_status = host, command, exit_status
        self.stdout, self.stderr = stdout, stderr
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        super().__init__(f"{host}: `{command}` exited {exit_status}" + (f":\n{tail}" if tail else ""))


class Timeout(ProvisionerError):
    exit_code = ExitCode.TIMEOUT
    # True when the run's own --timeout passed (stop.error), not one wait's time limit.
    from_stop: bool = False


class LabError(ProvisionerError):
    exit_code = ExitCode.LAB


class ArtifactError(ProvisionerError):
    exit_code = ExitCode.ARTIFACTS


class Aborted(ProvisionerError):
    exit_code = ExitCode.ABORTED


class Busy(ProvisionerError):
    """Another vkp run holds the cluster's lock."""

    exit_code = ExitCode.BUSY


class Interrupted(ProvisionerError):
    """The run was stopped by a signal; exits 128 + the signal number, as a shell would."""

    def __init__(self, signum: int, what: str | None = None) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}" + (f" while waiting for {what}" if what else ""),
            hint="run the same command again: it resumes where this one stopped",
        )
        self.exit_code = 128 + signum
