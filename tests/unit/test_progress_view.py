"""Progress as a user sees it: a live table of the nodes on a terminal, plain timestamped lines
in a pipe, with NO_COLOR or --progress plain, and a recap of every node at the end.

The terminal tests run the real CLI in a subprocess with stderr on a pseudo-terminal (stdout
apart, as a pipe, so -o json's document can be checked on its own) over scripted nodes:
tests/unit/progress_driver.py. The lab suite's runs go through a pipe, hence plain lines.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner import logs, view
from provisioner.view import Board, format_recap

ROOT = Path(__file__).resolve().parents[2]
NODES = ["demo-etcd-1", "demo-etcd-2", "demo-etcd-3", "demo-master-1", "demo-worker-1", "demo-worker-2"]
CREATE = ["create-cluster", "demo", "--plan", "small", "--yes"]
ESC = b"\x1b["
PLAIN_LINE = re.compile(r"^\[\s*\d+\.\ds\] ", re.M)


@dataclass
class Ran:
    code: int
    stderr: str
    stdout: str
    state: Path


def vkp(
    tmp_path: Path,
    args: list[str],
    *,
    tty: bool = True,
    env: dict[str, str] | None = None,
    interrupt_on: str | None = None,
) -> Ran:
    """Run the driver; stderr on a pseudo-terminal (tty) or a pipe. interrupt_on: send SIGINT
    once stderr shows this text."""
    state = tmp_path / "state"
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "VKP_PROGRESS")}
    environ |= {"VKP_STATE_DIR": str(state), "TERM": "xterm", "COLUMNS": "160", "PYTHONPATH": str(ROOT)}
    environ |= env or {}
    cmd = [sys.executable, "-m", "tests.unit.progress_driver", *args]
    if not tty:
        p = subprocess.run(
            cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False
        )
        return Ran(p.returncode, p.stderr, p.stdout, state)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    err = b""
    sent = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            err += chunk
            if interrupt_on and not sent and interrupt_on.encode() in err:
                proc.send_signal(signal.SIGINT)
                sent = True
    finally:
        os.close(master)
        code = proc.wait(timeout=30)
        reader.join(timeout=30)
    return Ran(code, err.decode(errors="replace"), b"".join(out).decode(), state)


def recap_lines(stderr: str) -> dict[str, str]:
    """The recap's line for each node, as printed after RECAP."""
    tail = stderr.rsplit("RECAP", 1)[1]
    return {n: line for n in NODES for line in tail.splitlines() if line.strip().startswith(n + " ")}


# -- on a terminal ------------------------------------------------------------------------------


def test_on_a_terminal_the_nodes_are_shown_live_with_what_they_wait_for_then_a_recap(tmp_path: Path) -> None:
    ran = vkp(tmp_path, CREATE)
    assert ran.code == 0, ran.stderr
    raw = ran.stderr.encode()
    # rich redraws the table in place: cursor up, erase line; and hides the cursor meanwhile.
    assert b"\x1b[1A" in raw and b"\x1b[2K" in raw and b"\x1b[?25l" in raw
    for column in ("node", "role", "phase", "step", "waiting for", "elapsed"):
        assert column in ran.stderr
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", ran.stderr)
    # A row as a user reads it: node, role, phase, the step, what it waits for and how long.
    assert re.search(r"demo-master-1\s+master\s+kubernetes\s+viewtest\.init\s+kubeadm init \d+s / 900s", text)
    # The progress lines are still there, above the table; the terminal gets its cursor back.
    assert "play kubernetes [kubernetes] on demo-etcd-1" in text
    assert raw.rindex(b"\x1b[?25h") > raw.rindex(b"\x1b[?25l")
    lines = recap_lines(text)
    assert set(lines) == set(NODES)
    assert all(re.search(r"ok=1\s+changed=2\s+failed=0", line) for line in lines.values()), lines
    assert re.search(r"phases: vms [\d.]+s, etcd [\d.]+s, runtime [\d.]+s, kubernetes [\d.]+s", text)
    # The result stays on stdout, without a trace of the view.
    assert ran.stdout.startswith("cluster demo: 6 VM(s) created") and ESC.decode() not in ran.stdout


@pytest.mark.parametrize(
    ("how", "env", "args"),
    [
        ("NO_COLOR", {"NO_COLOR": "1"}, CREATE),
        ("--progress plain", {}, ["--progress", "plain", *CREATE]),
        ("VKP_PROGRESS=plain", {"VKP_PROGRESS": "plain"}, CREATE),
    ],
)
def test_on_a_terminal_plain_lines_when_asked(
    tmp_path: Path, how: str, env: dict[str, str], args: list[str]
) -> None:
    ran = vkp(tmp_path, args, env=env)
    assert ran.code == 0, ran.stderr
    assert ESC.decode() not in ran.stderr, how
    assert "waiting for" not in ran.stderr  # no table
    assert len(PLAIN_LINE.findall(ran.stderr)) >= 20
    assert re.search(r"^\[\s*[\d.]+s\] play kubernetes \[kubernetes\] on demo-etcd-1", ran.stderr, re.M)
    assert set(recap_lines(ran.stderr)) == set(NODES)


def test_in_a_pipe_plain_lines_and_the_recap(tmp_path: Path) -> None:
    ran = vkp(tmp_path, CREATE, tty=False)
    assert ran.code == 0, ran.stderr
    assert ESC.decode() not in ran.stderr
    assert re.search(r"^\[\s*[\d.]+s\]   demo-master-1\s+viewtest\.init\s+changed", ran.stderr, re.M)
    assert set(recap_lines(ran.stderr)) == set(NODES)


def test_quiet_shows_neither_view_nor_recap(tmp_path: Path) -> None:
    ran = vkp(tmp_path, ["-q", *CREATE])
    assert ran.code == 0, ran.stderr
    assert ESC.decode() not in ran.stderr and "RECAP" not in ran.stderr
    assert not PLAIN_LINE.search(ran.stderr)


def test_json_keeps_stdout_one_document_with_the_recap_while_stderr_is_live(tmp_path: Path) -> None:
    ran = vkp(tmp_path, [*CREATE, "-o", "json"])
    assert ran.code == 0, ran.stderr
    doc = json.loads(ran.stdout)  # the whole of stdout: one document
    assert doc["ok"] is True and doc["cluster"] == "demo" and doc["changed"] == 18
    assert doc["recap"]["hosts"] == {n: {"ok": 1, "changed": 2, "failed": 0, "skipped": 0} for n in NODES}
    assert [p["name"] for p in doc["recap"]["phases"]] == ["vms", "etcd", "runtime", "kubernetes"]
    assert b"\x1b[2K" in ran.stderr.encode()  # the live view, on stderr
    assert "RECAP" not in ran.stderr  # in the document instead


def test_a_failed_node_is_in_the_recap_before_the_error(tmp_path: Path) -> None:
    ran = vkp(tmp_path, CREATE, env={"VKP_TEST_FAIL": "demo-worker-2"})
    assert ran.code != 0
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", ran.stderr)
    lines = recap_lines(text)
    assert re.search(r"changed=1\s+failed=1", lines["demo-worker-2"]), lines
    assert re.search(r"ok=1\s+changed=2\s+failed=0", lines["demo-master-1"]), lines
    assert "kubernetes 1" in text.split("RECAP")[1] and "(failed)" in text.split("RECAP")[1]
    assert text.index("RECAP") < text.index("error: play kubernetes failed on 1 host(s)")
    assert ran.stderr.encode().rindex(b"\x1b[?25h") > ran.stderr.encode().rindex(b"\x1b[?25l")


def test_ctrl_c_leaves_the_terminal_clean(tmp_path: Path) -> None:
    ran = vkp(tmp_path, CREATE, env={"VKP_TEST_SLOW": "30"}, interrupt_on="kubeadm init")
    assert ran.code == 130, ran.stderr
    raw = ran.stderr.encode()
    assert raw.rindex(b"\x1b[?25h") > raw.rindex(b"\x1b[?25l")  # the cursor is back
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", ran.stderr)
    assert "SIGINT: stopping" in text and "interrupted" in text.split("RECAP")[1]
    # Stopped, not failed: every node is in the recap, none counted as failing.
    lines = recap_lines(text)
    assert set(lines) == set(NODES) and all(re.search(r"failed=0", line) for line in lines.values()), lines
    # Nothing drawn after the recap and the error: the table is gone, not left half-drawn.
    assert "waiting for" not in text.split("RECAP")[1]


def test_the_run_log_holds_the_plain_lines_while_the_view_is_live(tmp_path: Path) -> None:
    ran = vkp(tmp_path, CREATE)
    assert ran.code == 0, ran.stderr
    (log,) = (ran.state / "demo" / "logs").glob("*-create-cluster.log")
    text = log.read_text()
    assert "\x1b" not in text
    assert re.search(r"vkp\.progress: \[\s*[\d.]+s\] play kubernetes \[kubernetes\] on demo-etcd-1", text)
    assert re.search(r"vkp\.progress: \[\s*[\d.]+s\]   demo-master-1\s+viewtest\.init\s+changed", text)
    assert "RECAP" in text and all(n in text.split("RECAP")[1] for n in NODES)


# -- in process -----------------------------------------------------------------------------------


def test_the_run_file_gets_plain_lines_when_rich_draws_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path))
    (tmp_path / "demo").mkdir()
    logs.configure()
    view.configure("rich")  # forced: capsys's stderr is no terminal
    try:
        logs.cluster_run("demo", "create-cluster")
        with view.session():
            view.node("demo-master-1", "master")
            view.step("demo-master-1", "kubernetes.init", phase="kubernetes")
            with view.waiting("demo-master-1", "kubeadm init", 900):
                logs.progress()("play kubernetes [kubernetes] on demo-master-1 (in parallel)")
            view.done("demo-master-1", "kubernetes.init", "changed")
        path = logs.run_log_path()
        logs.finish()
    finally:
        view.configure("auto")
    assert path is not None
    text = path.read_text()
    assert "play kubernetes [kubernetes] on demo-master-1 (in parallel)" in text and "\x1b" not in text
    err = capsys.readouterr().err
    assert "\x1b[" in err and "play kubernetes [kubernetes] on demo-master-1" in err


@pytest.mark.parametrize(
    ("mode", "env", "tty", "expected"),
    [
        ("auto", {}, True, "rich"),
        ("auto", {}, False, "plain"),
        ("auto", {"NO_COLOR": "1"}, True, "plain"),
        ("auto", {"NO_COLOR": ""}, True, "rich"),  # set but empty: no-color.org says ignore it
        ("auto", {"TERM": "dumb"}, True, "plain"),
        ("plain", {}, True, "plain"),
        ("rich", {}, False, "rich"),
    ],
)
def test_the_mode_a_run_gets(
    monkeypatch: pytest.MonkeyPatch, mode: str, env: dict[str, str], tty: bool, expected: str
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    class Stream:
        def isatty(self) -> bool:
            return tty

    view.configure(mode)
    try:
        assert view.resolve(Stream()) == expected  # type: ignore[arg-type]
    finally:
        view.configure("auto")


def test_the_board_counts_steps_reported_from_many_threads() -> None:
    board = Board()
    names = [f"n{i}" for i in range(8)]

    def work(name: str) -> None:
        for i in range(200):
            board.step(name, f"s{i}", "runtime")
            board.done(name, f"s{i}", ("ok", "changed", "failed", "skipped")[i % 4])

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert board.recap()["hosts"] == {
        n: {"ok": 50, "changed": 50, "failed": 50, "skipped": 50} for n in names
    }


def test_waits_nest_and_the_innermost_is_shown_with_its_deadline() -> None:
    now = [100.0]
    board = Board(clock=lambda: now[0])
    board.step("demo-worker-1", "check SSH", "vms")
    outer = board.wait_started("demo-worker-1", "waiting for SSH (host key pinned)", 600)
    now[0] += 23
    (row,) = board.rows()
    assert (
        row.wait is not None
        and view.wait_text(row.wait, now[0]) == "waiting for SSH (host key pinned) 23s / 600s"
    )
    inner = board.wait_started("demo-worker-1", "waiting for cloud-init to finish", 577)
    now[0] += 5
    (row,) = board.rows()
    assert (
        row.wait is not None
        and view.wait_text(row.wait, now[0]) == "waiting for cloud-init to finish 5s / 577s"
    )
    board.wait_ended("demo-worker-1", inner)
    (row,) = board.rows()
    assert row.wait is not None and row.wait.what.startswith("waiting for SSH")
    board.wait_ended("demo-worker-1", outer)
    assert board.rows()[0].wait is None


def test_a_resize_recap_sums_the_phases_it_ran_twice() -> None:
    board = Board()
    board.phase("vms", "running", None)
    board.phase("vms", "done", 10.0)
    board.phase("kubernetes", "done", 30.0)
    board.phase("vms", "done", 2.5)
    board.phase("kubernetes", "failed", 4.0)
    assert board.recap()["phases"] == [
        {"name": "vms", "status": "done", "seconds": 12.5},
        {"name": "kubernetes", "status": "failed", "seconds": 34.0},
    ]
    assert "phases: vms 12.5s, kubernetes 34.0s (failed)" in format_recap(board.recap())


def test_events_outside_a_session_are_dropped_and_a_session_starts_empty() -> None:
    # The library reports whether or not a command shows anything (tests call it directly).
    view.node("x", "worker")
    view.step("x", "s")
    with view.waiting("x", "something", 5):
        view.done("x", "s", "ok")
    view.phase("vms", "done", 1.0)
    with view.session(quiet=True) as board:
        view.done("y", "s", "changed")
    view.done("y", "s", "changed")  # after the session: not counted
    assert board.recap() == {"hosts": {"y": {"ok": 0, "changed": 1, "failed": 0, "skipped": 0}}, "phases": []}


def test_a_prompt_during_the_run_gets_the_terminal_without_the_live_view(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rich.file_proxy import FileProxy

    view.configure("rich")
    try:
        with view.session():
            view.node("demo-worker-3", "worker")  # the view starts with the first node
            assert isinstance(sys.stderr, FileProxy)  # stderr goes above the table
            with view.paused():
                assert not isinstance(sys.stderr, FileProxy)
                sys.stderr.write("password for user@vcenter: ")
            assert isinstance(sys.stderr, FileProxy)
        assert not isinstance(sys.stderr, FileProxy)
    finally:
        view.configure("auto")
    err = capsys.readouterr().err
    assert "password for user@vcenter: " in err
    # Drawn, taken away for the prompt, drawn again, then gone: the cursor is shown last.
    assert err.count("\x1b[?25l") == 2 and err.rindex("\x1b[?25h") > err.rindex("\x1b[?25l")
