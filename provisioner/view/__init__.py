"""What each node is doing while a run goes on: a live table on a terminal, plain lines elsewhere.

Library code reports events through the functions below: a node and its role (`node`), a step
started or finished on it (`step`, `done`), a wait with its deadline (`waiting`), a phase's end
and time (`phase`). They do nothing unless the command opened a `session()`, so the library
runs the same under tests and scripts, and never knows how (or whether) it is shown.

A session keeps the board (one row per node, its ok/changed/failed counts, the phase times;
thread safe, since the VM phase and the runner report from thread pools) and picks the
terminal view once: `rich` draws the board live (view/live.py) with the progress lines above
it; `plain` prints only the progress lines, timestamped, as vkp always has. Either way the
lines go through `line()`, and RunLog writes each to the run's log file as plain text first.

The mode comes from --progress (or VKP_PROGRESS): auto is rich when stderr is a terminal and
NO_COLOR is not set (and TERM is not dumb), plain otherwise. -q shows neither.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

MODES = ("auto", "plain", "rich")
COUNTED = ("ok", "changed", "failed", "skipped")

_mode = "auto"


def configure(mode: str) -> None:
    """The --progress option's value (the `vkp` group calls this once per run)."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: use one of {', '.join(MODES)}")
    global _mode
    _mode = mode


def resolve(stream: TextIO | None = None) -> str:
    """`rich` or `plain`: what this run shows on stream (stderr by default)."""
    if _mode != "auto":
        return _mode
    stream = sys.stderr if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        # NO_COLOR asks for no escape sequences; a live table is nothing but those.
        return "plain"
    try:
        return "rich" if stream.isatty() else "plain"
    except (AttributeError, ValueError):  # a closed or fake stream
        return "plain"


# -- the board -----------------------------------------------------------------------------------


@dataclass
class Wait:
    what: str
    started: float
    seconds: float


@dataclass
class Row:
    """One node as the view shows it."""

    name: str
    role: str = "-"
    phase: str = ""
    step: str = ""
    status: str = "waiting"  # running while a step is, else the last step's outcome
    since: float = 0.0  # when its current phase began on it
    waits: list[Wait] = field(default_factory=list)  # nested: the innermost is shown
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))

    @property
    def wait(self) -> Wait | None:
        return self.waits[-1] if self.waits else None


class Board:
    """The run's nodes, steps, waits and phase times; every method may be called from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._rows: dict[str, Row] = {}
        self._phases: dict[str, dict[str, Any]] = {}  # in the order they first ended
        self.on_first_node: Callable[[], None] | None = None

    def _row(self, name: str) -> Row:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = Row(name, since=self.clock())
            if len(self._rows) == 1 and self.on_first_node is not None:
                self.on_first_node()
        return row

    def node(self, name: str, role: str) -> None:
        with self._lock:
            self._row(name).role = role

    def step(self, node: str, step: str, phase: str | None) -> None:
        with self._lock:
            row = self._row(node)
            now = self.clock()
            if phase is not None and phase != row.phase:
                row.phase, row.since = phase, now
            row.step, row.status = step, "running"
            row.waits.clear()

    def done(self, node: str, step: str, status: str) -> None:
        with self._lock:
            row = self._row(node)
            row.step, row.status = step, status
            row.waits.clear()
            if status in row.counts:
                row.counts[status] += 1

    def wait_started(self, node: str, what: str, seconds: float) -> Wait:
        w = Wait(what, self.clock(), seconds)
        with self._lock:
            self._row(node).waits.append(w)
        return w

    def wait_ended(self, node: str, wait: Wait) -> None:
        with self._lock:
            waits = self._row(node).waits
            if wait in waits:
                waits.remove(wait)

    def phase(self, name: str, status: str, seconds: float | None) -> None:
        if status == "running":
            return
        with self._lock:
            entry = self._phases.setdefault(name, {"name": name, "status": status, "seconds": 0.0})
            # A resize runs create-cluster's phases more than once: the recap gives their sum.
            entry["status"] = status
            entry["seconds"] = round(entry["seconds"] + (seconds or 0.0), 2)

    def rows(self) -> list[Row]:
        """Copies of the rows, in the order the nodes were first seen."""
        with self._lock:
            return [
                Row(r.name, r.role, r.phase, r.step, r.status, r.since, list(r.waits), dict(r.counts))
                for r in self._rows.values()
            ]

    def recap(self) -> dict[str, Any]:
        """{"hosts": {node: {ok, changed, failed, skipped}}, "phases": [{name, status, seconds}]}."""
        with self._lock:
            return {
                "hosts": {r.name: dict(r.counts) for r in self._rows.values()},
                "phases": [dict(p) for p in self._phases.values()],
            }


def seconds_text(seconds: float) -> str:
    """41s, 3m05s, 1h02m: how long, at a glance."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def wait_text(wait: Wait, now: float) -> str:
    """'waiting for SSH (host key pinned) 23s / 600s': both in seconds, to compare at a glance."""
    return f"{wait.what} {max(0, int(now - wait.started))}s / {int(wait.seconds)}s"


def format_recap(recap: dict[str, Any]) -> str:
    """The recap as text, like Ansible's PLAY RECAP: one line per node, then the phase times."""
    hosts: dict[str, dict[str, int]] = recap.get("hosts") or {}
    width = max((len(h) for h in hosts), default=0)
    lines = ["RECAP"]
    for host, c in hosts.items():
        lines.append(
            f"  {host:<{width}}  ok={c['ok']:<4} changed={c['changed']:<4} "
            f"failed={c['failed']:<4} skipped={c['skipped']}"
        )
    phases = recap.get("phases") or []
    if phases:
        lines.append(
            "  phases: "
            + ", ".join(
                f"{p['name']} {p['seconds']:.1f}s" + ("" if p["status"] == "done" else f" ({p['status']})")
                for p in phases
            )
        )
    return "\n".join(lines)


# -- the session: the board and how it is shown ----------------------------------------------------


class Display(Protocol):
    def start(self) -> None: ...

    def line(self, text: str) -> None: ...

    def stop(self) -> None: ...


class Session:
    def __init__(self, board: Board, display: Display | None) -> None:
        self.board = board
        self.display = display
        self._started = False
        self._lock = threading.Lock()

    def start_display(self) -> None:
        # Once there is a node to show: prompts (credentials) come before, on a plain terminal.
        with self._lock:
            if self.display is None or self._started:
                return
            self._started = True
        self.display.start()

    def line(self, text: str) -> bool:
        """Show a progress line above the live view; False when there is none running."""
        if self.display is None or not self._started:
            return False
        self.display.line(text)
        return True

    def close(self) -> bool:
        """Stop the live view; whether it was running."""
        with self._lock:
            started, self._started = self._started, False
        if started and self.display is not None:
            self.display.stop()
        return started


_session: Session | None = None
_session_lock = threading.Lock()


@contextlib.contextmanager
def session(*, quiet: bool = False) -> Iterator[Board]:
    """Show the run's progress (rich or plain, see resolve) for the block; yields its board.

    The live view, if any, starts at the first node and is stopped however the block ends
    (Ctrl-C included), leaving the terminal as it was. quiet (-q): nothing is shown, the board
    still counts (the recap of -o json).
    """
    global _session
    board = Board()
    display: Display | None = None
    if not quiet and resolve() == "rich":
        from provisioner.view.live import LiveView

        display = LiveView(board, forced=_mode == "rich")
    current = Session(board, display)
    board.on_first_node = current.start_display
    with _session_lock:
        previous, _session = _session, current
    try:
        yield board
    finally:
        with _session_lock:
            _session = previous
        current.close()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No live view during the block (a prompt on the terminal); it comes back after."""
    s = _session
    if s is None or not s.close():
        yield
        return
    try:
        yield
    finally:
        s.start_display()


def line(text: str, stream: TextIO | None = None) -> None:
    """A progress line for the terminal: above the live view when one runs, else on stderr."""
    s = _session
    if s is not None and s.line(text):
        return
    print(text, file=sys.stderr if stream is None else stream, flush=True)


# -- what library code calls ---------------------------------------------------------------------


def node(name: str, role: str) -> None:
    """A node the run works on (shown before its first step)."""
    if _session is not None:
        _session.board.node(name, role)


def step(node: str, name: str, *, phase: str | None = None) -> None:
    """node started step name (of phase, when it says)."""
    if _session is not None:
        _session.board.step(node, name, phase)


def done(node: str, name: str, status: str) -> None:
    """node finished step name: ok, changed, failed or skipped (what the recap counts)."""
    if _session is not None:
        _session.board.done(node, name, status)


@contextlib.contextmanager
def waiting(node: str, what: str, seconds: float) -> Iterator[None]:
    """node waits up to seconds for what ('waiting for SSH (host key pinned)', 'kubeadm init')."""
    s = _session
    if s is None:
        yield
        return
    w = s.board.wait_started(node, what, seconds)
    try:
        yield
    finally:
        s.board.wait_ended(node, w)


def phase(name: str, status: str, seconds: float | None = None) -> None:
    """A phase started (running) or ended (done, failed, interrupted) after seconds."""
    if _session is not None:
        _session.board.phase(name, status, seconds)
