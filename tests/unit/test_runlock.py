"""The per-cluster run lock. flock belongs to an open file description, so contention is only
real between processes: every rival here is a separate Python process."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import runlock
from provisioner.errors import Busy, ExitCode, SpecError
from provisioner.state import UnsafeStateDir

REPO = Path(__file__).resolve().parents[2]
COMMAND = "vkp create-cluster -f inventory/lab.yaml"

# mode "hold": take the lock, say HELD, keep it until stdin closes, say RELEASED.
# mode "try": take the lock and let go at once, or say why not.
RIVAL = """
import sys
from pathlib import Path
from provisioner import runlock
home, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    with runlock.hold(name, sys.argv[4], log=lambda m: print("LOG", m, flush=True), home=home):
        print("HELD", flush=True)
        if mode == "hold":
            sys.stdin.readline()
    print("RELEASED", flush=True)
except Exception as e:
    print("ERR", type(e).__name__, str(e).replace("\\n", " | "), flush=True)
"""


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


class Rival:
    def __init__(self, home: Path, name: str, how: str, command: str = COMMAND) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RIVAL, str(home), name, how, command],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.line() == "RELEASED"
        self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "clusters"


@pytest.fixture
def rivals() -> Iterator[list[Rival]]:
    started: list[Rival] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.kill()


def holding(home: Path, rivals: list[Rival], name: str = "demo") -> Rival:
    r = Rival(home, name, "hold")
    rivals.append(r)
    assert r.line() == "HELD"
    return r


def try_from_another_process(home: Path, name: str = "demo") -> str:
    r = Rival(home, name, "try")
    out, _ = r.proc.communicate(timeout=20)
    return out


def test_second_run_is_refused_at_once_and_told_who_holds_the_lock(home, rivals):
    holder = holding(home, rivals)
    logged: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(Busy) as e, runlock.hold("demo", "vkp resize -f x.yaml", log=logged.append, home=home):
        pass
    assert time.monotonic() - t0 < 1.0
    msg = str(e.value)
    assert f"pid {holder.proc.pid}" in msg and socket.gethostname() in msg and f"`{COMMAND}`" in msg
    assert time.strftime("%Y-%m-%d") in msg  # the start time, local and readable
    assert e.value.exit_code == ExitCode.BUSY == 15
    assert logged == []
    # A third process is refused the same way, and the holder is untouched by the refusals.
    out = try_from_another_process(home)
    assert out.startswith("ERR Busy") and f"pid {holder.proc.pid}" in out
    record = json.loads((home / ".locks" / "demo.holder.json").read_text())
    assert record["pid"] == holder.proc.pid and record["command"] == COMMAND


def test_release_lets_the_next_run_in_without_a_takeover(home, rivals):
    holder = holding(home, rivals)
    holder.release()
    assert not (home / ".locks" / "demo.holder.json").exists()
    logged: list[str] = []
    with runlock.hold("demo", "vkp delete-cluster demo", log=logged.append, home=home):
        record = json.loads((home / ".locks" / "demo.holder.json").read_text())
        assert record["pid"] == os.getpid() and record["command"] == "vkp delete-cluster demo"
    assert logged == []
    assert not (home / ".locks" / "demo.holder.json").exists()
    assert (home / ".locks" / "demo.lock").exists()


def test_lock_of_a_killed_run_is_taken_over_and_reported(home, rivals):
    holder = holding(home, rivals)
    pid = holder.proc.pid
    holder.kill()
    assert (home / ".locks" / "demo.holder.json").exists()
    logged: list[str] = []
    t0 = time.monotonic()
    with runlock.hold("demo", "vkp create-cluster -f again.yaml", log=logged.append, home=home):
        assert time.monotonic() - t0 < 1.0
        assert json.loads((home / ".locks" / "demo.holder.json").read_text())["pid"] == os.getpid()
    assert len(logged) == 1
    msg = logged[0]
    assert msg.startswith(
        f"took over the lock of cluster demo from pid {pid} on {socket.gethostname()} (started "
    )
    assert f"`{COMMAND}`" in msg and msg.endswith("which is no longer running")


def test_record_naming_a_live_pid_does_not_keep_a_free_lock(home):
    # A pid reused by an unrelated process: only the flock says whether the lock is held.
    locks = home / ".locks"
    locks.mkdir(parents=True, mode=0o700)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        record = {
            "pid": sleeper.pid,
            "host": socket.gethostname(),
            "started": time.time(),
            "command": "vkp old",
        }
        (locks / "demo.holder.json").write_text(json.dumps(record))
        logged: list[str] = []
        with runlock.hold("demo", COMMAND, log=logged.append, home=home):
            pass
        assert len(logged) == 1 and f"pid {sleeper.pid}" in logged[0] and "`vkp old`" in logged[0]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nested_holds_in_one_process_count_and_release_with_the_outermost(home):
    logged: list[str] = []
    with runlock.hold("demo", "vkp resize -f a.yaml", log=logged.append, home=home):
        with runlock.hold("demo", "vkp create-cluster -f a.yaml", log=logged.append, home=home):
            assert try_from_another_process(home).startswith("ERR Busy")
        # The inner end must not let go: the outer run is still going.
        out = try_from_another_process(home)
        assert out.startswith("ERR Busy") and "`vkp resize -f a.yaml`" in out
        # Another thread of this process (a worker of the same run) is let in, not deadlocked.
        seen: list[str] = []

        def worker() -> None:
            with runlock.hold("demo", "vkp resize -f a.yaml", log=logged.append, home=home):
                seen.append("in")

        t = threading.Thread(target=worker)
        t.start()
        t.join(5)
        assert seen == ["in"]
        assert try_from_another_process(home).startswith("ERR Busy")
    assert try_from_another_process(home).startswith("HELD")
    assert logged == []


def test_other_clusters_are_not_blocked(home, rivals):
    holding(home, rivals, "demo")
    with runlock.hold("other", COMMAND, log=print, home=home):
        pass


def test_lock_files_are_private_and_outside_the_cluster_dir(home, rivals):
    old = os.umask(0o022)
    try:
        with runlock.hold("demo", COMMAND, log=print, home=home):
            locks = home / ".locks"
            assert mode(locks) == 0o700
            assert mode(locks / "demo.lock") == 0o600
            assert mode(locks / "demo.holder.json") == 0o600
            # delete-cluster removes the cluster's directory while it holds the lock.
            assert runlock.lock_paths("demo", home=home) == (locks / "demo.lock", locks / "demo.holder.json")
    finally:
        os.umask(old)


def test_unsafe_locks_dir_is_refused(home):
    (home / ".locks").mkdir(parents=True, mode=0o700)
    os.chmod(home / ".locks", 0o777)
    with (
        pytest.raises(UnsafeStateDir, match="world-writable"),
        runlock.hold("demo", COMMAND, log=print, home=home),
    ):
        pass


def test_names_must_be_one_dns_label(home):
    for bad in ("../x", "a/b", "", "UPPER"):
        with pytest.raises(SpecError), runlock.hold(bad, COMMAND, log=print, home=home):
            pass


def test_holder_that_has_not_recorded_itself_yet_is_still_refused(home, rivals):
    # Between taking the lock and writing its record, a holder is anonymous, and the record
    # a dead run left must not be blamed for it. The rival locks as filelock does: flock.
    locks = home / ".locks"
    locks.mkdir(parents=True, mode=0o700)
    (locks / "demo.lock").touch(mode=0o600)
    dead = {"pid": 2**22 + 1, "host": socket.gethostname(), "started": time.time(), "command": "vkp dead"}
    (locks / "demo.holder.json").write_text(json.dumps(dead))
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('HELD', flush=True); sys.stdin.readline()",
            str(locks / "demo.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "HELD"
        t0 = time.monotonic()
        refused = pytest.raises(Busy, match="has not recorded who it is")
        with refused as e, runlock.hold("demo", COMMAND, log=print, home=home):
            pass
        assert time.monotonic() - t0 < 1.0
        assert "vkp dead" not in str(e.value)
    finally:
        locker.kill()
        locker.wait()


def test_command_line_is_quoted_as_typed():
    assert runlock.command_line(["create-cluster", "-f", "inventory/lab.yaml"]) == (
        "vkp create-cluster -f inventory/lab.yaml"
    )
    assert runlock.command_line(["delete-cluster", "my lab"]) == "vkp delete-cluster 'my lab'"
