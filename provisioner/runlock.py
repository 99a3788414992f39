"""One vkp run per cluster at a time.

Usage, guarantees and files of the per-cluster run lock.
See docs/architecture.md#runlock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from provisioner.errors import Busy, ProvisionerError
from provisioner.state import atomic_write, check_name, private_dir, state_home

# A run that has just taken the lock writes its record a moment later: a refused run waits this
# long for it, so its message can name the holder, and is still refused well under a second.
_RECORD_GRACE = 0.5
_POLL = 0.05


@dataclass
class _Held:
    lock: filelock.UnixFileLock
    holder_file: Path
    pid: int
    depth: int = 1


# Keyed by the lock file's real path, so two spellings of one state home share an entry.
_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child is another process: it holds nothing, and the guard may have been copied
    # while another thread had it.
    global _held_guard
    _held.clear()
    _held_guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def command_line(argv: list[str] | None = None) -> str:
    """This run's command line as a user would type it, e.g. "vkp create-cluster -f lab.yaml"."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["vkp", *args])


def lock_paths(name: str, *, home: Path | None = None) -> tuple[Path, Path]:
    """(lock file, holder record) of a cluster; nothing is created."""
    check_name("name", name)
    locks = (home or state_home()) / ".locks"
    return locks / f"{name}.lock", locks / f"{name}.holder.json"


@contextlib.contextmanager
def hold(name: str, command: str, *, log: Callable[[str], None], home: Path | None = None) -> Iterator[None]:
    """Hold the cluster's run lock for the duration of the block; see the module docstring."""
    lock_path, holder_file = lock_paths(name, home=home)
    private_dir(home or state_home())
    private_dir(lock_path.parent)
    key = os.path.realpath(lock_path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None and entry.pid == os.getpid():
            entry.depth += 1
        else:
            entry = _Held(_acquire(name, lock_path, holder_file, command, log), holder_file, os.getpid())
            _held[key] = entry
    try:
        yield
    finally:
        with _held_guard:
            entry.depth -= 1
            if entry.depth == 0:
                _held.pop(key, None)
                # The record goes first: once the lock is free the next holder may write its own.
                try:
                    entry.holder_file.unlink(missing_ok=True)
                finally:
                    entry.lock.release()


def _acquire(
    name: str, lock_path: Path, holder_file: Path, command: str, log: Callable[[str], None]
) -> filelock.UnixFileLock:
    # thread_local=False: the hold is the process's, released by whichever thread ends it.
    # No soft fallback: a soft lock outlives a killed holder, which flock never does.
    lock = filelock.UnixFileLock(
        lock_path, mode=0o600, thread_local=False, blocking=False, fallback_to_soft=False
    )
    deadline = time.monotonic() + _RECORD_GRACE
    while True:
        try:
            lock.acquire()
            break
        except filelock.Timeout:
            holder = _read_holder(holder_file)
            recorded = holder is not None and not _left_by_dead_run(holder)
            if recorded or time.monotonic() >= deadline:
                raise _busy(name, lock_path, holder if recorded else None) from None
            # No record yet, or the one a dead run left: the new holder has yet to write its own.
            time.sleep(_POLL)
        except OSError as exc:
            raise ProvisionerError(
                f"cannot lock {lock_path}: {exc}",
                hint="the state home must be on a local filesystem that supports flock; set VKP_STATE_DIR",
            ) from exc
    try:
        previous = _read_holder(holder_file)
        if previous is not None and not _is_me(previous):
            # The lock was free, so whoever wrote this record ended without releasing it.
            log(
                f"took over the lock of cluster {name} from {_describe(previous)}, which is no longer running"
            )
        record = {
            "cluster": name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": command,
        }
        atomic_write(holder_file, json.dumps(record, indent=2) + "\n", 0o600)
    except BaseException:
        lock.release()
        raise
    return lock


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The holder record; {} when it is there but unreadable, None when there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_me(holder: dict[str, Any]) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _left_by_dead_run(holder: dict[str, Any]) -> bool:
    """Whether the record is certainly stale: its pid is gone on this host. A process on
    another host cannot be probed, so its record is believed."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run whose record is unreadable"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
        if isinstance(started, (int, float))
        else "at an unknown time"
    )
    pid, host, command = holder.get("pid", "?"), holder.get("host", "?"), holder.get("command", "?")
    return f"pid {pid} on {host} (started {when}, `{command}`)"


def _busy(name: str, lock_path: Path, holder: dict[str, Any] | None) -> Busy:
    if holder:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        return Busy(
            f"cluster {name} is busy: another vkp run holds its lock: {_describe(holder)}",
            hint=f"wait for it to finish, or stop it (`kill {pid}` on {host}) and run again;"
            f" a run that died holds no lock (lock: {lock_path})",
        )
    return Busy(
        f"cluster {name} is busy: another vkp run holds its lock ({lock_path}),"
        " but has not recorded who it is",
        hint="try again in a moment",
    )
