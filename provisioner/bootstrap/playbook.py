"""Playbook files: ordered plays of steps over hosts, read and checked before anything runs.

The design notes (the file format, phases, parameters) are in docs/architecture.md#bootstrap-playbook.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from provisioner import resources
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.spec import ROLES

if TYPE_CHECKING:
    from provisioner.bootstrap.engine import StepDef
    from provisioner.plan import NodePlan, Plan

PLAY_KEYS = {"play", "phase", "hosts", "steps", "serial"}
HEADER_KEYS = {"phases", "params", "plays"}
_NAME = re.compile(r"[a-z][a-z0-9-]*")  # a phase or parameter name
_TERM = re.compile(
    r"(?P<role>[a-z]+)(?:\[(?P<a>-?\d*)(?P<colon>:)?(?P<b>-?\d*)\])?(?:@(?P<param>[a-z][a-z0-9-]*))?"
)

CLUSTER_PLAYBOOK = "cluster"  # create-cluster's
VMS_PHASE = "vms"  # create-cluster's first phase, the vSphere half; no playbook runs it


class PlaybookError(ProvisionerError):
    """The playbook file is malformed; raised when it loads, before anything runs."""

    exit_code = ExitCode.SPEC


# -- host selectors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSelector:
    """`all`, a role, a role indexed or sliced (master[0], master[1:]), or terms joined by +.

    A term may end in @PARAM: only those of its nodes that the run's parameter PARAM names
    (a node name or a list of them), so a day-2 playbook acts on the node it was run for
    (`etcd@repair`: the etcd node being repaired, none when that node is a worker).
    """

    text: str

    @staticmethod
    def parse(text: str) -> HostSelector:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                "hosts must be a selector such as all, etcd, master[0], master[1:], master+worker"
            )
        for term in text.replace(" ", "").split("+"):
            m = _TERM.fullmatch(term)
            if m is None:
                raise ValueError(f"{term!r} is not a role, role[i] or role[i:j] (each may end in @param)")
            role = m["role"]
            if role not in (*ROLES, "all"):
                raise ValueError(f"unknown role {role!r} (roles: all, {', '.join(ROLES)})")
            if role == "all" and m["a"] is not None:
                raise ValueError("all cannot be indexed")
            if m["a"] is not None and not m["colon"] and not m["a"]:
                raise ValueError(f"{term!r}: an index needs a number")
        return HostSelector(text.replace(" ", ""))

    @property
    def params(self) -> set[str]:
        """The run parameters its terms filter by (@PARAM)."""
        found = (_TERM.fullmatch(t) for t in self.text.split("+"))
        return {m["param"] for m in found if m is not None and m["param"]}

    def select(self, plan: Plan, params: Mapping[str, Any] | None = None) -> list[NodePlan]:
        """The plan's nodes it names; params: the run's, which @PARAM terms read (a term whose
        parameter the run lacks selects nothing)."""
        chosen: list[NodePlan] = []
        for term in self.text.split("+"):
            m = _TERM.fullmatch(term)
            assert m is not None  # parse() checked
            nodes = list(plan.nodes) if m["role"] == "all" else plan.by_role(m["role"])
            if m["a"] is not None:
                if m["colon"]:
                    a = int(m["a"]) if m["a"] else None
                    b = int(m["b"]) if m["b"] else None
                    nodes = nodes[a:b]
                else:
                    i = int(m["a"])
                    nodes = [nodes[i]] if -len(nodes) <= i < len(nodes) else []
            if m["param"]:
                value = (params or {}).get(m["param"])
                named = {value} if isinstance(value, str) else set(value or ())
                nodes = [n for n in nodes if n.name in named]
            chosen += [n for n in nodes if n not in chosen]
        # Plan order (etcd, masters, workers) whatever the order of the terms.
        order = {n.name: i for i, n in enumerate(plan.nodes)}
        return sorted(chosen, key=lambda n: order[n.name])


# -- playbooks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Play:
    name: str
    phase: str
    hosts: HostSelector
    steps: tuple[str, ...]
    serial: int | None = None  # hosts at a time; None: all at once


@dataclass(frozen=True)
class Playbook:
    path: str
    plays: tuple[Play, ...]
    digest: str  # of the file's content: a resume record is only valid for the same playbook
    phases: tuple[str, ...] = ()  # in order; declared by the header or as the plays name them
    params: tuple[str, ...] = ()  # what a run must pass (run_param)

    @property
    def name(self) -> str:
        """The playbook's name (its file's, without .yaml): what its resume record is kept under."""
        return Path(self.path).stem

    def for_phases(self, phases: set[str] | frozenset[str]) -> list[Play]:
        return [p for p in self.plays if p.phase in phases]


def needs_hosts(play: Play, steps: Mapping[str, StepDef]) -> bool:
    """Whether a play's steps run on its hosts (over SSH); a play of local steps only works from
    this machine, given its hosts, and needs no connection to them (a node being repaired may
    not answer at all)."""
    return not all(steps[s].local for s in play.steps)


def load_playbook(path: str | Path) -> Playbook:
    """Read and check a playbook; PlaybookError naming file, play and field on any problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlaybookError(f"{p}: cannot be read: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlaybookError(f"{p}: not valid YAML: {exc}") from None
    return parse_playbook(raw, source=str(p), digest=hashlib.sha256(text.encode()).hexdigest())


def read_phases(path: str | Path) -> tuple[str, ...]:
    """A playbook file's phases in order, by the same rules as load_playbook but without
    checking its steps (so it needs no step module: the CLI reads it to offer --up-to)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlaybookError(f"{p}: cannot be read: {exc}") from None
    problems: list[str] = []
    header, items = _split_header(raw, str(p), problems)
    phases, _ = _phase_order(header.get("phases"), items, str(p), problems)
    if problems:
        raise PlaybookError(f"{p}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return phases


def _split_header(raw: Any, source: str, problems: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """(header, plays) of a playbook: a list of plays, or a mapping with plays: and a header."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - HEADER_KEYS)
        if unknown:
            problems.append(
                f"{source}: unknown key(s) {', '.join(map(str, unknown))} "
                f"(known: {', '.join(sorted(HEADER_KEYS))})"
            )
        header, items = raw, raw.get("plays")
    else:
        header, items = {}, raw
    if not isinstance(items, list) or not items:
        raise PlaybookError(
            f"{source}: a playbook is a non-empty list of plays (or a mapping with phases:, params: "
            "and plays:)"
        )
    return header, items


def _names(value: Any, what: str, source: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.fullmatch(v) for v in value):
        problems.append(f"{source}: {what} must be a list of names (lower case, digits, -); got {value!r}")
        return ()
    if len(set(value)) != len(value):
        problems.append(f"{source}: {what} names one twice: {value!r}")
    return tuple(value)


def _phase_order(
    declared: Any, items: list[Any], source: str, problems: list[str]
) -> tuple[tuple[str, ...], dict[int, str]]:
    """The playbook's phases, and a problem per play index whose phase is unknown or out of order.

    Declared phases are the order; without them, the plays' phases in the order they first
    appear are. Either way a play may not come back to a phase after a later one's play.
    """
    bad: dict[int, str] = {}
    named = [item.get("phase") if isinstance(item, dict) else None for item in items]
    if declared is not None:
        phases = _names(declared, "phases", source, problems)
    else:
        phases = tuple(dict.fromkeys(p for p in named if isinstance(p, str) and _NAME.fullmatch(p)))
    last = 0
    for i, phase in enumerate(named):
        if not isinstance(phase, str) or phase not in phases:
            known = (
                f"one of {', '.join(phases)}" if declared is not None else "a name (lower case, digits, -)"
            )
            bad[i] = f"phase must be {known}; got {phase!r}"
        elif phases.index(phase) < last:
            bad[i] = f"phase {phase} comes after a later phase's play; plays run in file order"
        else:
            last = phases.index(phase)
    return phases, bad


def parse_playbook(
    raw: Any, *, source: str, digest: str = "", steps: Mapping[str, StepDef] | None = None
) -> Playbook:
    """The checked playbook; steps: the registry its step names must be in (every step's)."""
    if steps is None:
        # Late: the step modules are many; reading a playbook's phases (the CLI) needs none.
        from provisioner.bootstrap.steps import registry

        steps = registry()
    problems: list[str] = []
    header, items = _split_header(raw, source, problems)
    phases, phase_problems = _phase_order(header.get("phases"), items, source, problems)
    params = _names(header.get("params", []), "params", source, problems)
    plays: list[Play] = []
    names: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: play {i + 1}"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with play, phase, hosts and steps")
            continue
        name = item.get("play")
        if isinstance(name, str) and name:
            where = f"{source}: play {name!r}"
            if name in names:
                problems.append(f"{where}: the name is used twice")
            names.add(name)
        else:
            problems.append(f"{where}: play: needs a name")
            name = f"#{i + 1}"
        unknown = sorted(set(item) - PLAY_KEYS)
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(PLAY_KEYS))})"
            )
        phase = item.get("phase")
        if i in phase_problems:
            problems.append(f"{where}: {phase_problems[i]}")
        try:
            hosts = HostSelector.parse(item.get("hosts", ""))
        except ValueError as exc:
            problems.append(f"{where}: hosts: {exc}")
            hosts = HostSelector("all")
        undeclared = sorted(hosts.params - set(params))
        if undeclared:
            problems.append(
                f"{where}: hosts: @{', @'.join(undeclared)} is not a parameter of the playbook "
                f"(params: {', '.join(params) or 'none'})"
            )
        serial = item.get("serial")
        if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool) or serial < 1):
            problems.append(f"{where}: serial must be a positive number of hosts; got {serial!r}")
            serial = None
        step_names = item.get("steps")
        if not isinstance(step_names, list) or not step_names:
            problems.append(f"{where}: steps must be a non-empty list of step names")
            step_names = []
        for s in step_names:
            if s not in steps:
                close = difflib.get_close_matches(str(s), list(steps), n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{where}: unknown step {s!r}{suggestion}")
        plays.append(Play(name, str(phase), hosts, tuple(str(s) for s in step_names), serial))
    if problems:
        raise PlaybookError(
            f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
            hint="known steps: " + ", ".join(sorted(steps)),
        )
    return Playbook(source, tuple(plays), digest, phases, params)


@functools.cache
def create_phases() -> tuple[str, ...]:
    """create-cluster's phases in order: "vms", then playbooks/cluster.yaml's. The one definition
    of them: --up-to offers these, and resize reads how far a cluster was taken with them."""
    phases = read_phases(resources.playbook(CLUSTER_PLAYBOOK))
    if VMS_PHASE in phases:
        raise PlaybookError(
            f"{resources.playbook(CLUSTER_PLAYBOOK)}: phase {VMS_PHASE!r} is create-cluster's own (the VMs)"
        )
    return (VMS_PHASE, *phases)


def phases_up_to(up_to: str) -> list[str]:
    """The playbook phases create-cluster --up-to runs ("vms" runs none of them)."""
    phases = create_phases()
    if up_to not in phases:
        raise ProvisionerError(f"unknown phase {up_to!r}; phases: {', '.join(phases)}")
    return list(phases[1 : phases.index(up_to) + 1])
