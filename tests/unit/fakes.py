"""A scripted node for the engine's unit tests (a module of its own: importing it from a test
module would register that module's test steps a second time)."""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

from provisioner.bootstrap.engine import Check, Facts, File, FileFact, Service, ServiceFact
from provisioner.errors import CommandFailed
from provisioner.ssh.commands import Cmd, Result

# Only the engine's EnsureDir script: steps have other scripts that make directories.
_ENSURE_DIR = 'mkdir -p -- "$d"; changed=yes'


class FakeHost:
    """A node as the engine sees it through a Connection: files, directories, services, and a
    log of every command as it would be shown (masked). Subclasses script the answers to
    checks (_check) and to commands other than EnsureDir's (_command)."""

    become = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.files: dict[str, tuple[bytes, str, str]] = {}  # path -> content, mode, owner
        self.dirs: dict[str, tuple[str, str]] = {}
        self.services: dict[str, ServiceFact] = {}
        self.commands: list[str] = []
        self.fail: dict[str, Result] = {}  # substring of a masked command -> its result
        self.round_trips = 0
        # Shared by the hosts of a test that checks the order of commands across nodes.
        self.timeline: list[str] | None = None

    # -- what Connection offers --------------------------------------------------------------

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
        retry_safe: bool = False,
    ) -> Result:
        self.round_trips += 1
        shown = cmd.masked()
        self.commands.append(shown)
        if self.timeline is not None:
            self.timeline.append(f"{self.name}: {shown}")
        result = self._answer(cmd)
        for needle, res in self.fail.items():
            if needle in shown:
                result = res
        if check and result.exit_status != 0:
            raise CommandFailed(self.name, shown, result.exit_status, result.stdout, result.stderr)
        return result

    def put(self, data: bytes, path: str, *, mode: int, owner: str | None = None) -> bool:
        self.round_trips += 1
        self.commands.append(f"put {path}")
        if self.timeline is not None:
            self.timeline.append(f"{self.name}: put {path}")
        new = (data, format(mode, "o"), owner or "root:root")
        changed = self.files.get(path) != new
        self.files[path] = new
        return changed

    def facts(self, probes: list[Any]) -> Facts:
        if not probes:
            return Facts({})  # as gather_facts: nothing to ask, no round trip
        self.round_trips += 1
        self.commands.append("facts")
        values: dict[Any, Any] = {}
        for p in probes:
            if isinstance(p, File):
                if p.path in self.dirs:
                    values[p] = FileFact("dir", None, *self.dirs[p.path])
                elif p.path in self.files:
                    data, mode, owner = self.files[p.path]
                    values[p] = FileFact("file", hashlib.sha256(data).hexdigest(), mode, owner)
                else:
                    values[p] = FileFact("absent")
            elif isinstance(p, Service):
                values[p] = self.services.get(p.name, ServiceFact())
            else:
                values[p] = self._check(p)
        return Facts(values)

    # -- behaviour -------------------------------------------------------------------------

    def _check(self, probe: Check) -> Result:
        return Result(0, "", "")

    def _answer(self, cmd: Cmd) -> Result:
        args = [a for a in cmd.args if isinstance(a, str)]
        if args[:3] == ["sudo", "-n", "--"]:
            args = args[3:]
        if args[:2] == ["sh", "-c"] and _ENSURE_DIR in args[2]:
            path, mode, owner = args[4], args[5], args[6]
            changed = self.dirs.get(path) != (mode, owner)
            self.dirs[path] = (mode, owner)
            return Result(0, "yes\n" if changed else "no\n", "")
        return self._command(args)

    def remove(self, args: list[str]) -> Result | None:
        """For subclasses that model removals: `rm -f -- PATH...` takes the files away."""
        if args[:3] != ["rm", "-f", "--"]:
            return None
        for path in args[3:]:
            self.files.pop(path, None)
        return Result(0, "", "")

    def _command(self, args: list[str]) -> Result:
        return Result(0, "", "")


def run_locally(cmd: Cmd) -> Result:
    """Run a node command in a local shell: the real script, without a node."""
    p = subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True, timeout=60, check=False)
    return Result(p.returncode, p.stdout, p.stderr)
