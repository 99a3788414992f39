"""Terminal progress and the machine-readable result, kept apart.

Progress lines go to stderr so that `--output json` (or yaml) leaves stdout holding exactly one
document, which is what CI pipelines parse.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import click
import yaml

from provisioner import view

# The formats of --output: text for people, the others one document on stdout for programs.
FORMATS = ("text", "json", "yaml")
STRUCTURED = ("json", "yaml")
# Where a run keeps what it has said once (click's root context meta, one per invocation).
_OUTPUT_KEY = "vkp.output"
_WARNED_KEY = "vkp.warned"


class StderrLog:
    """A run's log callable: each message goes to stderr with the seconds since it started
    (above the live table when one is drawn: provisioner/view)."""

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
            view.line(f"[{self.elapsed():6.1f}s] {message}")


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _plain(v: Any) -> Any:
    # The JSON document's values, as safe_dump accepts them (json's default=str does the same).
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def emit(doc: Any, output: str) -> None:
    """Print the one result (or error) document on stdout in the --output format (json or yaml)."""
    if output == "yaml":
        # No folding: a long message stays one scalar line, as grep and people expect.
        yaml.safe_dump(_plain(doc), sys.stdout, default_flow_style=False, sort_keys=False, width=10_000)
        sys.stdout.flush()
    else:
        emit_json(doc)


def structured(output: str) -> bool:
    """True for the formats that print one document on stdout (json, yaml)."""
    return output in STRUCTURED


def remember_output(output: str) -> None:
    """Note the run's --output so code far from the command line (a credentials prompt, the
    last-resort error handler) can keep stdout to one document."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_OUTPUT_KEY] = output


def current_output() -> str | None:
    """The run's --output, when a command line gave one (None outside a CLI run)."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get(_OUTPUT_KEY)


def warn(message: str) -> None:
    """Print `warning: message` on stderr, once per CLI run: the same warning reached from
    several places (the spec loaded, then each vCenter session) is said once."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        seen: set[str] = ctx.find_root().meta.setdefault(_WARNED_KEY, set())
        if message in seen:
            return
        seen.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)
