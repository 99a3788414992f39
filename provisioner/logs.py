"""Verbosity and per-run logs: how much reaches the terminal, and the full log kept on disk.

`configure()` is called once per process by the `vkp` group (-v, -vv, -q, --debug) and decides
what reaches stderr; stdout stays for results and `-o json`. Independently of those flags,
`cluster_run()` keeps a full log of a run that works on a cluster, at debug level and with the
progress lines, in `<state>/<cluster>/logs/<UTC time>-<command>.log` (file 0600, directory
0700, the 20 newest kept): the file to attach to a bug report.

Secrets never reach either: every record passes `SecretFilter` (the vCenter password, bootstrap
tokens, PEM private keys, kubeconfig keys and tokens), which masks them the way
`ssh.commands.MASK` does. `vkp support-bundle` scrubs what it collects with the same mask().
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TextIO

from provisioner.output import StderrLog

MASK = "********"
KEEP = 20  # logs kept per cluster; the oldest go first
# Logged at debug only with --debug: paramiko's transport chatter and pyVmomi's object diffs
# drown vkp's own lines, and are only wanted when the fault is in the protocol.
THIRD_PARTY = ("paramiko", "pyVmomi", "ObjDiffer")

_VKP = "provisioner"
# Progress lines (the StderrLog messages) go to the run's file through this logger only: the
# terminal gets them from StderrLog itself, so they must not also reach the stderr handler.
_PROGRESS = "vkp.progress"
# The error a failed run ends with, for the file only (the terminal already printed it).
_OUTCOME = "vkp.outcome"

_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
# An unterminated block (a truncated message) is masked to the end of the text.
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.DOTALL
)
# A secret's field in a kubeconfig, a kubeadm configuration or a JSON document (`token: X`,
# `"client-key-data": "X"`, `--token=X`): the value goes, the field name stays so a reader still
# sees what was there. Only these names, and only as a field (not after a '.' or '-', so a step
# called kubernetes.token is not one): a word like "secret" alone would take ordinary YAML with it.
_SECRET_FIELD = re.compile(
    r"""(?P<key>(?<![\w.-])(?:--)?["']?"""
    r"(?:client-key-data|token|tlsBootstrapToken|token-secret|certificateKey|password|passwd|passphrase)"
    r"""["']?[ \t]*[:=][ \t]*)"""
    r"""(?P<value>"[^"\n]+"|'[^'\n]+'|(?![{\[|>])[^\s,}"']+)""",
    re.IGNORECASE,
)
# Environment variables whose values are passwords (VKP_VSPHERE_PASSWORD, or whatever a spec's
# vsphere.password_env names, as long as it says so), or a state file's VKP_STATE_PASSPHRASE.
_PASSWORD_ENV = re.compile(r"PASSWORD|PASSWD|PASSPHRASE")


def _passwords() -> set[str]:
    found = {v for k, v in os.environ.items() if v and _PASSWORD_ENV.search(k.upper())}
    # Typed at the prompt: read only if the login module was loaded (it imports pyVmomi).
    login = sys.modules.get("provisioner.vsphere.login")
    prompted = getattr(login, "_prompted", None) or {}
    found.update(pw for _user, pw in prompted.values() if pw)
    return found


def _masked_field(m: re.Match[str]) -> str:
    key, value = m.group("key"), m.group("value")
    # A bare ******** after a colon would be a YAML alias: quoted, the file still parses.
    quote = value[0] if value[0] in "\"'" else ('"' if key.rstrip().endswith(":") else "")
    return f"{key}{quote}{MASK}{quote}"


def mask(text: str, passwords: Iterable[str] | None = None, *, also: Iterable[str] = ()) -> str:
    """text with passwords, bootstrap tokens, PEM private keys and the secret fields of
    kubeconfigs and kubeadm configurations replaced by MASK.

    passwords: the literal values to remove (default: those of the environment's password
    variables and any typed at a prompt); also: more literal values on top of those (the lines
    of a private key's body, say).
    """
    text = _PEM_KEY.sub(lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY-----{MASK}", text)
    text = _TOKEN.sub(MASK, text)
    text = _SECRET_FIELD.sub(_masked_field, text)
    literal = set(_passwords() if passwords is None else passwords) | set(also)
    for pw in sorted(literal, key=len, reverse=True):
        # Also as repr() shows it (a quote or backslash in it is escaped there).
        for form in {pw, repr(pw)[1:-1]}:
            text = text.replace(form, MASK)
    return text


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        passwords = _passwords()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: show it raw rather than lose the record
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask(message, passwords), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, passwords)
        if record.stack_info:
            record.stack_info = mask(record.stack_info, passwords)
        return True


class _TerminalFormatter(logging.Formatter):
    """`info: provisioner.bootstrap.pki: ...`, in the lower case of vkp's own `warning:` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it per run)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _ParamikoForward(logging.Handler):
    """With --debug, hands paramiko's records to vkp's handlers.

    ssh.connector turns paramiko's propagation off when it is imported (its refused-banner
    tracebacks would reach the terminal on every SSH retry); this forwards them anyway, but only
    while propagation is off, so nothing is shown twice whichever was imported first.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger("paramiko").propagate:
            logging.getLogger().handle(record)


class _FileFormatter(logging.Formatter):
    """UTC times, so logs from machines in different zones line up."""

    def __init__(self) -> None:
        fmt = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s"
        super().__init__(fmt, "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime


class RunFile(logging.Handler):
    """The run's log file, opened only once the cluster's state directory exists.

    Records that come earlier (the plan, the first checks of a create) are held in memory and
    written first. A state directory that never appears (a create refused before anything was
    made) gets no file: vkp never creates it just for a log.
    """

    PENDING_MAX = 20000  # records held before the directory exists; a create makes it early

    def __init__(self, cluster_dir: Path, command: str) -> None:
        super().__init__(logging.DEBUG)
        self.cluster_dir = cluster_dir
        self.command = command
        self.path: Path | None = None
        self._stream: IO[str] | None = None
        self._pending: list[str] = []
        self._broken = False
        self.setFormatter(_FileFormatter())
        self.addFilter(SecretFilter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self._stream is None and not self._open():
                if not self._broken and len(self._pending) < self.PENDING_MAX:
                    self._pending.append(line)
                return
            assert self._stream is not None
            self._stream.write(line + "\n")
            self._stream.flush()
        except Exception:
            self.handleError(record)

    def _open(self) -> bool:
        if self._broken or not self.cluster_dir.is_dir():
            return False
        logs = self.cluster_dir / "logs"
        try:
            # No parents: if the cluster's directory went away meanwhile, this fails rather
            # than bring it back.
            os.mkdir(logs, 0o700)
            os.chmod(logs, 0o700)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        except FileNotFoundError:
            return False
        except OSError:
            self._broken = True
            return False
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for n in range(100):
            path = logs / (f"{stamp}-{self.command}" + (f"-{n}" if n else "") + ".log")
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue  # two runs in one second
            except OSError:
                self._broken = True
                return False
            os.fchmod(fd, 0o600)
            self._stream = os.fdopen(fd, "w", encoding="utf-8", errors="replace")
            self.path = path
            break
        else:
            self._broken = True
            return False
        for line in self._pending:
            self._stream.write(line + "\n")
        self._pending.clear()
        self._stream.flush()
        rotate(logs, keep=KEEP)
        return True

    def close(self) -> None:
        with self.lock if self.lock else contextlib.nullcontext():
            if self._stream is not None:
                with contextlib.suppress(OSError):
                    self._stream.close()
                self._stream = None
                self._broken = True  # nothing is written after close
        super().close()


def rotate(logs: Path, *, keep: int = KEEP) -> None:
    """Delete all but the `keep` newest logs (names start with their UTC time, so they sort)."""
    try:
        names = sorted(p.name for p in logs.iterdir() if p.name.endswith(".log") and p.is_file())
    except OSError:
        return
    for name in names[: max(0, len(names) - keep)]:
        with contextlib.suppress(OSError):
            (logs / name).unlink()


# -- process-wide configuration ------------------------------------------------------------------

_quiet = False
_stderr: _Stderr | None = None
_forward: _ParamikoForward | None = None
_run: RunFile | None = None


def terminal_level(verbose: int, quiet: bool, debug: bool) -> int:
    if quiet:
        return logging.ERROR
    if debug or verbose >= 2:
        return logging.DEBUG
    return logging.INFO if verbose == 1 else logging.WARNING


def configure(*, verbose: int = 0, quiet: bool = False, debug: bool = False) -> None:
    """Set what reaches stderr. Safe to call again (each CliRunner run in tests does)."""
    global _quiet, _stderr, _forward
    finish()
    _quiet = quiet
    root = logging.getLogger()
    if _stderr is not None:
        root.removeHandler(_stderr)
    _stderr = _Stderr()
    level = terminal_level(verbose, quiet, debug)
    _stderr.setLevel(level)
    # `warning: ...` like vkp's other stderr lines; where a line comes from matters when debugging.
    where = "%(name)s: " if level <= logging.DEBUG else ""
    _stderr.setFormatter(_TerminalFormatter(f"%(levelname_lower)s: {where}%(message)s"))
    _stderr.addFilter(SecretFilter())
    root.addHandler(_stderr)
    # vkp's own loggers always at debug: the run's file keeps everything; the handlers choose.
    logging.getLogger(_VKP).setLevel(logging.DEBUG)
    for name in (_PROGRESS, _OUTCOME):
        lg = logging.getLogger(name)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        if not lg.handlers:
            # Without a run file these have no handler, and logging would print their records
            # on stderr itself (its "last resort"): the terminal already has them.
            lg.addHandler(logging.NullHandler())
    paramiko = logging.getLogger("paramiko")
    if _forward is not None:
        paramiko.removeHandler(_forward)
        _forward = None
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.NOTSET)
    if debug:
        _forward = _ParamikoForward()
        paramiko.addHandler(_forward)


def quiet() -> bool:
    return _quiet


def cluster_run(name: str, command: str) -> Path | None:
    """Start this run's log file for cluster `name`; the cluster directory it will be in.

    Returns None (and logs nothing to a file) for a name that cannot be a cluster's.
    """
    # state imports cryptography: not at module level, `vkp --help` stays quick.
    from provisioner.state import check_name, state_home

    global _run
    finish()
    try:
        check_name("name", name)
    except Exception:
        return None
    _run = RunFile(state_home() / name, command)
    logging.getLogger().addHandler(_run)
    for extra in (_PROGRESS, _OUTCOME):
        logging.getLogger(extra).addHandler(_run)
    logging.getLogger(_VKP).debug("vkp %s: %s", command, " ".join(sys.argv))
    return _run.cluster_dir


def run_log_path() -> Path | None:
    """This run's log file, if one was written (and still exists: a delete removes it with the
    cluster's state)."""
    if _run is None or _run.path is None or not _run.path.exists():
        return None
    return _run.path


def failed(message: str) -> Path | None:
    """Record a run's final error in its file only; where that file is, if any."""
    if _run is None:
        return None
    logging.getLogger(_OUTCOME).error("%s", message)
    return run_log_path()


def finish() -> None:
    """Close the run's file (the vkp group calls this when the command ends)."""
    global _run
    if _run is None:
        return
    exc = sys.exc_info()[1]
    if exc is not None and not isinstance(exc, SystemExit | KeyboardInterrupt):
        # An unexpected error: its traceback belongs in the file a bug report attaches.
        logging.getLogger(_OUTCOME).error("unexpected error", exc_info=exc)
    logging.getLogger().removeHandler(_run)
    for extra in (_PROGRESS, _OUTCOME):
        logging.getLogger(extra).removeHandler(_run)
    _run.close()
    _run = None


class RunLog(StderrLog):
    """The `log` a command hands the library: progress on stderr (unless -q), always in the file."""

    def __init__(self) -> None:
        super().__init__(quiet=_quiet)
        self._file = logging.getLogger(_PROGRESS)

    def __call__(self, message: str) -> None:
        message = mask(message)
        self._file.info("[%6.1fs] %s", self.elapsed(), message)
        super().__call__(message)


def progress() -> RunLog:
    return RunLog()


def record(text: str) -> None:
    """Write text (the recap) to the run's file only, as the progress lines are."""
    logging.getLogger(_PROGRESS).info("%s", mask(text))
