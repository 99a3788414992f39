"""Steps and actions: the vocabulary playbooks are written in, and how one step is carried out.

The design notes (what its steps yield, facts, dry runs) are in docs/architecture.md#bootstrap-engine.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from provisioner import stop, view
from provisioner.errors import ArtifactError, ProvisionerError
from provisioner.ssh.commands import COMMAND_TIMEOUT, MASK, Cmd, Result, bounded, sudo

if TYPE_CHECKING:
    from provisioner.bootstrap.bootstrap_token import BootstrapToken
    from provisioner.plan import NodePlan, Plan
    from provisioner.spec import ClusterSpec
    from provisioner.state import ClusterState

T = TypeVar("T")


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run a command on the node. Outcome: its Result (CommandFailed on non-zero when check).

    retry_safe: the command may be run again if the connection drops while it runs.
    changes: False for a command that only looks (a verification); it never marks a change.
    stdin: sent to the command and never shown (it is how secrets reach a remote process).
    root: run it as root (through sudo when the login user is not root).
    timeout: seconds the command may take (commands.COMMAND_TIMEOUT unless it says otherwise);
    a step whose command legitimately runs longer (kubeadm, a download, an install) sets it.
    """

    cmd: Cmd
    root: bool = True
    retry_safe: bool = False
    check: bool = True
    changes: bool = True
    stdin: bytes | None = None
    timeout: float = COMMAND_TIMEOUT

    def __post_init__(self) -> None:
        # Refused when the step is written, not when a node would wait forever on it.
        bounded(self.timeout)


@dataclass(frozen=True)
class Upload:
    """Make path hold content with mode (and owner). Outcome: True if the file changed."""

    content: str | bytes
    path: str
    mode: int
    owner: str | None = None
    secret: bool = False

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content

    @property
    def is_secret(self) -> bool:
        # A private key is a secret whether or not the step remembered to say so.
        return self.secret or b"PRIVATE KEY" in self.data


@dataclass(frozen=True)
class EnsureDir:
    """Make path a directory with mode (and owner). Outcome: True if anything changed."""

    path: str
    mode: int
    owner: str | None = None


@dataclass(frozen=True)
class Restart:
    """Restart service if an earlier action of the same step changed something and the service is
    running (a stopped service is left to the step that starts it). Outcome: True if restarted.

    always: restart a running service even if this step changed nothing (a restart an earlier
    step or run left pending, which the step read from its facts).
    """

    service: str
    always: bool = False


@dataclass(frozen=True)
class Warn:
    """Something the step could not do and the operator should know; not a failure."""

    message: str


@dataclass(frozen=True)
class Local:
    """Work done on the operator's machine (a health check over TLS). Outcome: fn()'s value.

    changes: True when fn changes something (it then marks the step changed).
    report: a key under which the outcome also goes into the run's report (the health check's
    result, which create-cluster shows).
    """

    description: str
    fn: Callable[[], Any]
    changes: bool = False
    report: str | None = None


@dataclass(frozen=True)
class Need:
    """An artifact the step needs from a source (binaries, a tarball, a manifest).

    Outcome: check()'s value on a real run, where its ArtifactError stops the step. In a dry run
    the outcome is None, so the step shows what a first run does; check() still runs there,
    because a dry run must say which artifacts are there and which are missing (it lists them
    and goes on instead of stopping). check is None for what only a node fetches (a URL): a dry
    run cannot look at it from here and lists it as such.
    """

    what: str
    source: str
    check: Callable[[], Any] | None = None


Action = Run | Upload | EnsureDir | Restart | Warn | Local | Need
StepGen = Generator[Action, Any, None]


# -- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """Probe: a path's type, sha256 (regular files), mode and owner."""

    path: str


@dataclass(frozen=True)
class Service:
    """Probe: a systemd unit's state."""

    name: str


@dataclass(frozen=True)
class Check:
    """Probe: a read-only command's exit status and standard output."""

    cmd: Cmd

    def __post_init__(self) -> None:
        if self.cmd.has_secrets:
            raise ValueError("a fact probe cannot carry secrets: its command is part of a shown script")


Probe = File | Service | Check


@dataclass(frozen=True)
class FileFact:
    kind: str  # file | dir | absent | other
    sha256: str | None = None
    mode: str | None = None  # octal digits as stat prints them: "600"
    owner: str | None = None  # user:group

    def matches(self, *, kind: str, mode: int, owner: str | None, sha256: str | None = None) -> bool:
        if self.kind != kind or self.mode != format(mode, "o"):
            return False
        if sha256 is not None and self.sha256 != sha256:
            return False
        if owner:
            have = self.owner or ""
            if (have if ":" in owner else have.split(":")[0]) != owner:
                return False
        return True


@dataclass(frozen=True)
class ServiceFact:
    active: str = "inactive"  # ActiveState: active, inactive, failed, activating...
    enabled: str = ""  # UnitFileState: enabled, disabled, static, "" when unknown
    loaded: str = "not-found"  # LoadState
    need_reload: bool = False  # the unit file changed on disk since systemd read it
    started: str = "0"  # ExecMainStartTimestampMonotonic: changes exactly when the process restarts

    @property
    def is_active(self) -> bool:
        return self.active == "active"

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ("enabled", "enabled-runtime", "static", "alias", "indirect")


class Facts:
    """What a host looked like when last gathered. Unknown (dry run): everything absent/stopped."""

    def __init__(self, values: dict[Probe, Any] | None = None, *, known: bool = True) -> None:
        self._values = dict(values or {})
        self.known = known

    @classmethod
    def unknown(cls) -> Facts:
        return cls(known=False)

    def has(self, probe: Probe) -> bool:
        return probe in self._values

    def _get(self, probe: Probe, default: Any) -> Any:
        if not self.known:
            return default
        if probe not in self._values:
            raise KeyError(f"{probe} was not probed: declare it in the step's probes")
        return self._values[probe]

    def file(self, path: str) -> FileFact:
        fact: FileFact = self._get(File(path), FileFact("absent"))
        return fact

    def service(self, name: str) -> ServiceFact:
        fact: ServiceFact = self._get(Service(name), ServiceFact())
        return fact

    def check(self, cmd: Cmd) -> Result:
        # In a dry run the command did not run: report it as failed so steps take the path
        # that changes something, which is what a dry run must show.
        fact: Result = self._get(Check(cmd), Result(127, "", "not run (dry run)"))
        return fact


# One line per probe: "<index> <fields...>". Values arrive as positional parameters, never
# formatted into the script, so a path cannot change what runs.
_FILE_SNIPPET = (
    'f=${%d}; if [ -d "$f" ]; then echo "%d dir - $(stat -c "%%a %%U:%%G" -- "$f")"; '
    'elif [ -f "$f" ]; then echo "%d file $(sha256sum < "$f" | cut -d" " -f1) '
    '$(stat -c "%%a %%U:%%G" -- "$f")"; '
    'elif [ -e "$f" ]; then echo "%d other"; else echo "%d absent"; fi'
)
_SERVICE_SNIPPET = (
    'echo "%d $(systemctl show --property=ActiveState,UnitFileState,LoadState,NeedDaemonReload,'
    'ExecMainStartTimestampMonotonic -- "${%d}" 2>/dev/null | tr "\\n" " ")"'
)
_CHECK_SNIPPET = 'o=$( %s 2>/dev/null ); r=$?; echo "%d $r $(printf %%s "$o" | base64 -w0)"'


def facts_command(probes: Sequence[Probe]) -> Cmd:
    """One shell command that answers every probe (run it as root: keys are 0600)."""
    lines = ["set +e"]
    args: list[str] = []
    for i, probe in enumerate(probes):
        if isinstance(probe, File):
            args.append(probe.path)
            lines.append(_FILE_SNIPPET % (len(args), i, i, i, i))
        elif isinstance(probe, Service):
            args.append(probe.name)
            lines.append(_SERVICE_SNIPPET % (i, len(args)))
        else:
            lines.append(_CHECK_SNIPPET % (probe.cmd.render(), i))
    return Cmd.shell("\n".join(lines), *args)


def parse_facts(probes: Sequence[Probe], stdout: str) -> Facts:
    values: dict[Probe, Any] = {}
    for line in stdout.splitlines():
        index, _, rest = line.partition(" ")
        if not index.isdigit() or int(index) >= len(probes):
            continue
        probe = probes[int(index)]
        if isinstance(probe, File):
            parts = rest.split()
            kind = parts[0] if parts else "absent"
            if kind in ("file", "dir") and len(parts) >= 4:
                values[probe] = FileFact(kind, None if parts[1] == "-" else parts[1], parts[2], parts[3])
            else:
                values[probe] = FileFact(kind if kind in ("absent", "other") else "absent")
        elif isinstance(probe, Service):
            props = dict(p.split("=", 1) for p in rest.split() if "=" in p)
            values[probe] = ServiceFact(
                active=props.get("ActiveState", "inactive"),
                enabled=props.get("UnitFileState", ""),
                loaded=props.get("LoadState", "not-found"),
                need_reload=props.get("NeedDaemonReload") == "yes",
                started=props.get("ExecMainStartTimestampMonotonic", "0"),
            )
        else:
            status, _, encoded = rest.partition(" ")
            out = base64.b64decode(encoded.strip() or b"").decode(errors="replace")
            values[probe] = Result(int(status) if status.lstrip("-").isdigit() else 127, out, "")
    missing = [p for p in probes if p not in values]
    if missing:
        raise ProvisionerError(f"fact gathering did not answer {missing[0]} (output: {stdout[-300:]!r})")
    return Facts(values)


def gather_facts(conn: Remote, probes: Sequence[Probe]) -> Facts:
    """All probes in one round trip (none when there is nothing to probe)."""
    unique = list(dict.fromkeys(probes))
    if not unique:
        return Facts({})
    cmd = facts_command(unique)
    result = conn.run(sudo(cmd) if conn.become else cmd, retry_safe=True)
    return parse_facts(unique, result.stdout)


# -- the cluster context and the registry ----------------------------------------------------


class Remote(Protocol):
    """What the engine needs of a node's connection (provisioner.ssh.connector.Connection)."""

    name: str
    become: bool
    round_trips: int

    def run(
        self,
        cmd: Cmd,
        *,
        check: bool = ...,
        timeout: float = ...,
        stdin: bytes | None = ...,
        retry_safe: bool = ...,
    ) -> Result: ...

    def put(self, data: bytes, path: str, *, mode: int, owner: str | None = ...) -> bool: ...


class PKISource(Protocol):
    def cert_pem(self, name: str) -> bytes: ...

    def key_pem(self, name: str) -> bytes: ...


@dataclass
class Cluster:
    """What every step may read: the spec, the plan, the state, the PKI, the run's parameters
    (a day-2 playbook's), and the run's bootstrap token once a step made it."""

    spec: ClusterSpec
    plan: Plan
    state: ClusterState | None
    pki: PKISource
    # What a day-2 run acts on (the workers to drain); steps read it with run_param.
    params: Mapping[str, Any] = field(default_factory=dict)
    # This run's bootstrap token, in memory only: a new Cluster (a new run) makes its own.
    token: BootstrapToken | None = field(default=None, init=False, repr=False, compare=False)
    token_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def cluster_id(self) -> str:
        return self.state.cluster_id if self.state is not None else "(new cluster)"


HostStepFn = Callable[["NodePlan", Cluster, Facts], StepGen]
LocalStepFn = Callable[[Sequence["NodePlan"], Cluster], StepGen]
ProbeFn = Callable[["NodePlan", Cluster], Iterable[Probe]]


@dataclass(frozen=True)
class StepDef:
    name: str
    fn: Callable[..., StepGen]
    probes: ProbeFn | None = None
    local: bool = False  # runs once per play on the operator's machine, given the play's hosts
    doc: str = ""


STEPS: dict[str, StepDef] = {}


def step(
    name: str, *, probes: ProbeFn | None = None, local: bool = False
) -> Callable[[Callable[..., StepGen]], Callable[..., StepGen]]:
    """Register a step under name. Host steps take (node, cluster, facts); local steps take
    (nodes, cluster). Both are generators of actions."""

    def register(fn: Callable[..., StepGen]) -> Callable[..., StepGen]:
        if name in STEPS and STEPS[name].fn is not fn:
            raise ValueError(f"step {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        STEPS[name] = StepDef(name, fn, probes, local, doc)
        return fn

    return register


def run_param(cluster: Cluster, name: str, kind: type[T]) -> T:
    """The run's parameter name, which must be a kind; ProvisionerError when the run has none,
    so a step run outside its playbook (check_steps, another playbook) fails naming it."""
    if name not in cluster.params:
        raise ProvisionerError(
            f"this step needs the run parameter {name!r}: run it through a playbook that declares "
            f"params: [{name}], with the parameter given (phases.run_day2(..., params=...))"
        )
    value = cluster.params[name]
    if not isinstance(value, kind):
        raise ProvisionerError(
            f"the run parameter {name!r} must be a {kind.__name__}, not {type(value).__name__}"
        )
    return value


# -- executing one step -----------------------------------------------------------------------


@dataclass
class ArtifactNeed:
    """What a dry run found about one Need: present, missing (with why and how to provide it),
    or remote (fetched by the nodes, not checked from here)."""

    what: str
    source: str
    status: str  # present | missing | remote
    problem: str | None = None
    hint: str | None = None
    hosts: list[str] = field(default_factory=list)
    error: ProvisionerError | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"what": self.what, "source": self.source, "status": self.status}
        if self.problem:
            d["problem"] = self.problem
        if self.hint:
            d["hint"] = self.hint
        if self.hosts:
            d["hosts"] = list(self.hosts)
        return d


@dataclass
class StepResult:
    step: str
    host: str  # a node name, or "local" for a step run on the operator's machine
    status: str = "ok"  # ok | changed | failed | skipped
    seconds: float = 0.0
    round_trips: int = 0
    restarts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # what was done (or would be, in a dry run)
    artifacts: list[ArtifactNeed] = field(default_factory=list)  # dry run: what the step needs
    outputs: dict[str, Any] = field(default_factory=dict)  # Local outcomes kept for the report
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step,
            "host": self.host,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "round_trips": self.round_trips,
        }
        for key in ("restarts", "warnings", "actions"):
            if getattr(self, key):
                d[key] = list(getattr(self, key))
        if self.artifacts:
            d["artifacts"] = [a.to_dict() for a in self.artifacts]
        if self.error:
            d["error"] = self.error
        return d


def describe_upload(action: Upload) -> str:
    head = f"upload {action.path} (mode {format(action.mode, '04o')}" + (
        f", owner {action.owner})" if action.owner else ")"
    )
    data = action.data
    if action.is_secret:
        return f"{head}: {MASK} ({len(data)} bytes, secret)"
    if data.lstrip().startswith(b"-----BEGIN"):
        return f"{head}: PEM, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
    text = data.decode(errors="replace")
    return f"{head}:\n" + "".join(f"    | {line}\n" for line in text.splitlines()).rstrip("\n")


def describe_run(action: Run) -> str:
    stdin = f" <<< {MASK} ({len(action.stdin)} bytes)" if action.stdin is not None else ""
    return f"run {action.cmd.masked()}{' (as root)' if action.root else ''}{stdin}"


def command_words(cmd: Cmd) -> str:
    """What a command is, in a couple of words for the live view: 'kubeadm init', 'apt-get
    install', 'a shell script' (never an argument's value: those may be secret or long)."""
    words: list[str] = []
    for a in cmd.args:
        if not isinstance(a, str) or a.startswith("-") or "=" in a or a in ("env", "sudo", "timeout"):
            continue
        word = a.rsplit("/", 1)[-1] if not words else a
        if not word.replace("-", "").replace("_", "").isalnum():
            continue  # an option's value (a path, a namespace), not a subcommand
        if word == "sh" and not words:
            return "a shell script"
        words.append(word)
        if len(words) == 2:
            break
    return " ".join(words) or "a command"


_DIR_SCRIPT = r"""
set -eu
d=$1 mode=$2 owner=$3 changed=no
[ -d "$d" ] || { mkdir -p -- "$d"; changed=yes; }
if [ -n "$owner" ]; then
  case $owner in *:*) fmt=%U:%G ;; *) fmt=%U ;; esac
  [ "$(stat -c "$fmt" -- "$d")" = "$owner" ] || { chown -- "$owner" "$d"; changed=yes; }
fi
[ "$(stat -c %a -- "$d")" = "$mode" ] || { chmod -- "$mode" "$d"; changed=yes; }
echo "$changed"
"""
_RESTART_SCRIPT = (
    'if systemctl is-active --quiet -- "$1"; then systemctl restart -- "$1" && echo restarted; fi'
)


class Executor:
    """Performs one step's actions on one host (or, for local steps, on the operator's machine)."""

    def __init__(self, conn: Remote | None, facts: Facts, *, dry_run: bool) -> None:
        # conn is None in a dry run and for local steps, which may yield only Local and Warn.
        self.conn = conn
        self.facts = facts
        self.dry_run = dry_run

    def _root(self, cmd: Cmd) -> Cmd:
        return sudo(cmd) if self.conn is None or self.conn.become else cmd

    def run_step(self, sdef: StepDef, gen: StepGen, host: str) -> StepResult:
        result = StepResult(sdef.name, host)
        started = time.monotonic()
        trips_before = self.conn.round_trips if self.conn is not None else 0
        changed = False
        try:
            action = next(gen)
            while True:
                # No new work once the run is stopping; the error names where it stopped.
                stop.check(f"step {sdef.name} on {host}")
                outcome, did_change = self._perform(action, result, changed)
                changed = changed or did_change
                action = gen.send(outcome)
        except StopIteration:
            result.status = "changed" if changed else "ok"
        except ArtifactError as exc:
            if not self.dry_run:
                result.status = "failed"
                result.error = str(exc)
                result.exception = exc
            else:
                # A dry run lists what is missing and goes on; the real run stops here.
                result.status = "changed" if changed else "ok"
                result.warnings.append(f"a real run stops here: {exc.message}")
                result.artifacts.append(
                    ArtifactNeed(sdef.name, "(the step's artifact source)", "missing", exc.message,
                                 exc.hint, [host], exc)
                )  # fmt: skip
        except ProvisionerError as exc:
            result.status = "failed"
            result.error = str(exc)
            result.exception = exc
        except Exception as exc:  # a bug in a step must still name the host and step
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}"
            result.exception = exc
        finally:
            gen.close()
            result.seconds = time.monotonic() - started
            if self.conn is not None:
                result.round_trips = self.conn.round_trips - trips_before
        return result

    def _perform(self, action: Action, result: StepResult, changed_so_far: bool) -> tuple[Any, bool]:
        if isinstance(action, Warn):
            result.warnings.append(action.message)
            return None, False
        if isinstance(action, Need):
            result.actions.append(f"needs {action.what} from {action.source}")
            if not self.dry_run:
                return (action.check() if action.check is not None else None), False
            result.artifacts.append(_look_at(action, result.host))
            return None, False
        if isinstance(action, Local):
            result.actions.append(f"local: {action.description}")
            if self.dry_run:
                return None, action.changes
            outcome = action.fn()
            if action.report is not None:
                result.outputs[action.report] = outcome
            return outcome, action.changes
        if self.conn is None and not self.dry_run:
            raise ProvisionerError(
                f"{type(action).__name__} needs a host: a local step may yield only Local and Warn"
            )
        if isinstance(action, Upload):
            return self._upload(action, result)
        if isinstance(action, EnsureDir):
            return self._ensure_dir(action, result)
        if isinstance(action, Restart):
            if not (changed_so_far or action.always):
                return False, False
            result.actions.append(f"restart {action.service} (if running)")
            if self.dry_run:
                return True, False
            assert self.conn is not None
            out = self.conn.run(self._root(Cmd.shell(_RESTART_SCRIPT, action.service)))
            restarted = out.stdout.strip() == "restarted"
            if restarted:
                result.restarts.append(action.service)
            return restarted, restarted
        if isinstance(action, Run):
            result.actions.append(describe_run(action))
            if self.dry_run:
                return Result(0, "", ""), action.changes
            assert self.conn is not None
            with view.waiting(result.host, command_words(action.cmd), action.timeout):
                res = self.conn.run(
                    self._root(action.cmd) if action.root else action.cmd,
                    check=action.check,
                    timeout=action.timeout,
                    stdin=action.stdin,
                    retry_safe=action.retry_safe,
                )
            return res, action.changes and res.ok
        raise TypeError(f"a step yielded {action!r}, which is not an action")

    def _upload(self, action: Upload, result: StepResult) -> tuple[bool, bool]:
        data = action.data
        digest = hashlib.sha256(data).hexdigest()
        fact_known = self.facts.known and self.facts.has(File(action.path))
        if fact_known and self.facts.file(action.path).matches(
            kind="file", mode=action.mode, owner=action.owner, sha256=digest
        ):
            return False, False
        if self.dry_run:
            result.actions.append(describe_upload(action))
            return True, True
        assert self.conn is not None
        changed = self.conn.put(data, action.path, mode=action.mode, owner=action.owner)
        if changed:
            result.actions.append(f"upload {action.path}")
        return changed, changed

    def _ensure_dir(self, action: EnsureDir, result: StepResult) -> tuple[bool, bool]:
        if (
            self.facts.known
            and self.facts.has(File(action.path))
            and self.facts.file(action.path).matches(kind="dir", mode=action.mode, owner=action.owner)
        ):
            return False, False
        what = f"directory {action.path} (mode {format(action.mode, '04o')}" + (
            f", owner {action.owner})" if action.owner else ")"
        )
        if self.dry_run:
            result.actions.append(what)
            return True, True
        assert self.conn is not None
        cmd = Cmd.shell(_DIR_SCRIPT, action.path, format(action.mode, "o"), action.owner or "")
        changed = self.conn.run(self._root(cmd), retry_safe=True).stdout.strip() == "yes"
        if changed:
            result.actions.append(what)
        return changed, changed


def _look_at(need: Need, host: str) -> ArtifactNeed:
    if need.check is None:
        return ArtifactNeed(need.what, need.source, "remote", hosts=[host])
    try:
        need.check()
    except ArtifactError as exc:
        return ArtifactNeed(need.what, need.source, "missing", exc.message, exc.hint, [host], exc)
    return ArtifactNeed(need.what, need.source, "present", hosts=[host])
