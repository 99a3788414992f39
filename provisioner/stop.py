"""Why a run ends early: the run's --timeout, or SIGINT/SIGTERM. Every wait in vkp asks here.

One process-wide stop flag, because a run is one process: the CLI arms it (a deadline, the
signal handlers) and every wait (vCenter tasks, SSH commands and connects, retries, sleeps)
either polls `check` in slices of at most POLL seconds or registers a callback that unblocks
it (closing a socket, cancelling a vCenter wait). So a stop is seen within a few seconds
wherever the run is, and the error raised names what it was waiting for.

Cleanup that must happen in every outcome (erasing a host key from a VM) runs with
`shielded()`, which lets its own bounded calls through after a stop.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from provisioner.errors import Interrupted, Timeout

POLL = 0.5  # the longest a polling wait goes without looking at the flag

_lock = threading.Lock()
_event = threading.Event()
_reason: dict[str, Any] = {}  # {"signal": N} or {"timeout": seconds}
_deadline: float | None = None
_timeout_seconds: float | None = None
_callbacks: dict[int, Callable[[], None]] = {}
_next_id = 0
_timer: threading.Timer | None = None
# What must run even on a second Ctrl-C's immediate exit (the live view gives the cursor back).
_hard_exit: Callable[[], None] | None = None


class _Shield(threading.local):
    on = False  # this thread runs a bounded cleanup that the stopping run must let finish


_shield = _Shield()


def reset() -> None:
    """Forget any stop, deadline and callbacks (a new run in the same process: tests)."""
    global _deadline, _timeout_seconds, _timer
    with _lock:
        _event.clear()
        _reason.clear()
        _callbacks.clear()
        _deadline = _timeout_seconds = None
        if _timer is not None:
            _timer.cancel()
        _timer = None


def arm_deadline(seconds: float) -> None:
    """Stop the run `seconds` from now (the --timeout option)."""
    global _deadline, _timeout_seconds, _timer
    with _lock:
        _deadline = time.monotonic() + seconds
        _timeout_seconds = seconds
        if _timer is not None:
            _timer.cancel()
        _timer = threading.Timer(seconds, lambda: request({"timeout": seconds}))
        _timer.daemon = True
        _timer.start()


def request(reason: dict[str, Any]) -> None:
    """Stop the run: set the flag once, then unblock every registered wait."""
    with _lock:
        if _event.is_set():
            return
        _reason.update(reason)
        _event.set()
        callbacks = list(_callbacks.values())
    for cb in callbacks:
        with contextlib.suppress(Exception):
            cb()


def stopping() -> bool:
    return _event.is_set() and not _shield.on


def error(what: str) -> Interrupted | Timeout:
    """The error a wait raises when the run stops while it waits for `what` (is_stop tells
    it from a wait's own deadline)."""
    if "signal" in _reason:
        return Interrupted(_reason["signal"], what)
    limit = _format_seconds(_reason.get("timeout", 0))
    exc = Timeout(
        f"the run's --timeout of {limit} passed while waiting for {what}",
        hint="run the same command again to resume, with a longer --timeout if the work needs it",
    )
    exc.from_stop = True
    return exc


def is_stop(exc: BaseException | None) -> bool:
    """Whether exc is the run stopping (a signal, or its --timeout), not a failure of its own."""
    return isinstance(exc, Interrupted) or (isinstance(exc, Timeout) and exc.from_stop)


def check(what: str) -> None:
    """Raise Interrupted or Timeout if the run is stopping (outside a shielded cleanup)."""
    if stopping():
        raise error(what)


def remaining(cap: float | None = None) -> float | None:
    """Seconds left before the run's deadline, at most cap (None: no bound from either)."""
    left = None if _deadline is None else max(0.0, _deadline - time.monotonic())
    if cap is None:
        return left
    return cap if left is None else min(cap, left)


def sleep(seconds: float, what: str = "a retry") -> None:
    """time.sleep that ends early (raising) when the run stops."""
    end = time.monotonic() + seconds
    while True:
        check(what)
        left = end - time.monotonic()
        if left <= 0:
            return
        _event.wait(min(left, POLL)) if not _shield.on else time.sleep(min(left, POLL))


def wait(event: threading.Event, timeout: float | None, what: str) -> bool:
    """event.wait(timeout), in slices, raising when the run stops first."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        check(what)
        slice_ = POLL if end is None else min(POLL, end - time.monotonic())
        if slice_ <= 0:
            return event.is_set()
        if event.wait(slice_):
            return True


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Call callback (once, from the stopping thread) if the run stops inside this block."""
    global _next_id
    with _lock:
        _next_id += 1
        key = _next_id
        _callbacks[key] = callback
        already = _event.is_set()
    try:
        if already and not _shield.on:
            callback()
        yield
    finally:
        with _lock:
            _callbacks.pop(key, None)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Let this thread's bounded cleanup calls run even though the run is stopping."""
    before = _shield.on
    _shield.on = True
    try:
        yield
    finally:
        _shield.on = before


def before_hard_exit(fn: Callable[[], None] | None) -> None:
    """Call fn (None: nothing) just before a second SIGINT exits the process at once."""
    global _hard_exit
    _hard_exit = fn


def install_signal_handlers() -> None:
    """First SIGINT/SIGTERM: stop the run gracefully. A second SIGINT: exit at once.

    The handler also raises in the main thread, which is usually blocked joining workers: the
    raise gets it out of that join, and the workers see the flag within POLL seconds.
    """

    def handler(signum: int, _frame: Any) -> None:
        if _event.is_set() and "signal" in _reason:
            if signum == signal.SIGINT:
                if _hard_exit is not None:
                    with contextlib.suppress(Exception):
                        _hard_exit()
                os.write(2, b"\nsecond interrupt: exiting now; re-run the command to resume\n")
                os._exit(130)
            return
        os.write(2, f"\n{signal.Signals(signum).name}: stopping (a second Ctrl-C exits at once)\n".encode())
        request({"signal": signum})
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _format_seconds(seconds: float) -> str:
    if seconds != int(seconds):
        return f"{seconds:g}s"
    s = int(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    return f"{s}s"


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1h30m' -> seconds; ValueError naming what is wrong."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+", t):
        value = float(t)
    else:
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", t)
        if not t or parts is None:
            raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m or 1h30m")
        h, m, s = (int(g or 0) for g in parts.groups())
        value = float(h * 3600 + m * 60 + s)
    if value <= 0:
        raise ValueError(f"{text!r}: the duration must be more than 0")
    if value > 7 * 24 * 3600:
        raise ValueError(f"{text!r}: a duration of more than a week is not a deadline")
    return value
