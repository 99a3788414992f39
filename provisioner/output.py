"""Terminal progress and the machine-readable result, kept apart.

Progress lines go to stderr so that `--output json` leaves stdout holding exactly one JSON
document, which is what CI pipelines parse.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any


class StderrLog:
    """A run's log callable: each message goes to stderr with the seconds since it started."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            print(f"[{self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
