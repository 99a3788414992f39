"""Running playbooks: ordered plays of steps over hosts, in parallel or one host at a time.

The design notes (failures, stopping, resume) are in docs/architecture.md#bootstrap-runner.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import stop, view
from provisioner.bootstrap.engine import (
    ArtifactNeed,
    Cluster,
    Executor,
    Facts,
    Probe,
    Remote,
    StepDef,
    StepResult,
    gather_facts,
)
from provisioner.bootstrap.playbook import Play, Playbook, needs_hosts
from provisioner.bootstrap.steps import registry
from provisioner.errors import ExitCode, ProvisionerError
from provisioner.state import atomic_write, ended_status, private_dir

if TYPE_CHECKING:
    from provisioner.plan import NodePlan


Log = Callable[[str], None]


class PlayFailed(ProvisionerError):
    """A play failed on one or more hosts; the message names host, step, command and output."""

    def __init__(self, message: str, *, hint: str, exit_code: int, report: PlaybookReport) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code
        self.report = report

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["report"] = self.report.to_dict()
        return d


# -- reports ----------------------------------------------------------------------------------


@dataclass
class PlayReport:
    name: str
    phase: str
    hosts: list[str]
    serial: int | None
    seconds: float = 0.0
    results: list[StepResult] = field(default_factory=list)
    facts: dict[str, dict[str, float]] = field(default_factory=dict)  # host -> round trips, seconds

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def step_summary(self) -> list[dict[str, Any]]:
        by_step: dict[str, list[StepResult]] = {}
        for r in self.results:
            by_step.setdefault(r.step, []).append(r)
        return [
            {
                "step": name,
                "ok": sum(r.status == "ok" for r in rs),
                "changed": sum(r.status == "changed" for r in rs),
                "failed": sum(r.status == "failed" for r in rs),
                "skipped": sum(r.status == "skipped" for r in rs),
                "max_seconds": round(max(r.seconds for r in rs), 3),
                "round_trips": sum(r.round_trips for r in rs),
            }
            for name, rs in by_step.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "play": self.name,
            "phase": self.phase,
            "hosts": self.hosts,
            "serial": self.serial,
            "seconds": round(self.seconds, 3),
            "ok": self.count("ok"),
            "changed": self.count("changed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "facts": self.facts,
            "steps": self.step_summary(),
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class PlaybookReport:
    playbook: str
    phases: list[str]
    dry_run: bool = False
    seconds: float = 0.0
    plays: list[PlayReport] = field(default_factory=list)
    resumed_from: dict[str, Any] | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def results(self) -> list[StepResult]:
        return [r for p in self.plays for r in p.results]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def restarts(self) -> list[str]:
        return [f"{r.host}:{s}" for r in self.results for s in r.restarts]

    @property
    def warnings(self) -> list[str]:
        return [f"{r.host}: {r.step}: {w}" for r in self.results for w in r.warnings]

    @property
    def outputs(self) -> dict[str, Any]:
        """What steps handed to the report (Local(report=...)), by key; the last one wins."""
        return {k: v for r in self.results for k, v in r.outputs.items()}

    @property
    def artifacts(self) -> list[ArtifactNeed]:
        """What the run needs from artifact sources (looked at in a dry run), once per artifact."""
        return merge_artifacts(a for r in self.results for a in r.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "phases": self.phases,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "ok": self.count("ok"),
            "changed": self.count("changed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "restarts": self.restarts,
            "warnings": self.warnings,
            "resumed_from": self.resumed_from,
            "phase_seconds": self.phase_seconds,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "outputs": self.outputs,
            "plays": [p.to_dict() for p in self.plays],
        }


def merge_artifacts(items: Iterable[ArtifactNeed]) -> list[ArtifactNeed]:
    """One entry per artifact and status, naming every host that needs it, in first-seen order."""
    merged: dict[tuple[str, str, str, str | None], ArtifactNeed] = {}
    for a in items:
        key = (a.what, a.source, a.status, a.problem)
        have = merged.get(key)
        if have is None:
            merged[key] = ArtifactNeed(a.what, a.source, a.status, a.problem, a.hint, list(a.hosts), a.error)
        else:
            have.hosts += [h for h in a.hosts if h not in have.hosts]
    return list(merged.values())


# -- progress (resume) ------------------------------------------------------------------------


class Progress:
    """<state>/playbooks/<playbook>.json: what the current (or last failed) run completed.

    {"digest": ..., "plays": {play: {"done": bool, "ran_on": [hosts],
                                     "hosts": {host: [completed steps]}}},
     "failed": {"play", "host", "step", "error"} | null}

    legacy: where an older vkp kept this playbook's record (bootstrap.json, the cluster
    playbook's); read when the file is missing, and removed at the first save.
    """

    def __init__(self, path: Path | None, digest: str, *, legacy: Path | None = None) -> None:
        self.path = path
        self.digest = digest
        self.legacy = legacy if path is not None else None
        self._lock = threading.Lock()
        self.previous = self._load()
        self.data: dict[str, Any] = {"digest": digest, "plays": {}, "failed": None}

    def _load(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        source = self.path if self.path.is_file() else self.legacy
        if source is None or not source.is_file():
            return None
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("digest") != self.digest or not data.get("failed"):
            # A finished run, or another playbook: nothing to resume, everything is re-checked.
            return None
        return data

    @property
    def resume_point(self) -> dict[str, Any] | None:
        return self.previous["failed"] if self.previous else None

    def play_done_before(self, play: str, hosts: Sequence[str]) -> bool:
        """Done by the failed run on every one of hosts. A host it did not run on (a worker
        added since, by a resize) makes the play run again, on all of them: a play's work on
        one host may depend on the others (pod routes, the token)."""
        if not self.previous:
            return False
        record = self.previous["plays"].get(play, {})
        return bool(record.get("done")) and set(hosts) <= set(record.get("ran_on", ()))

    def steps_done_before(self, play: str, host: str) -> list[str]:
        if not self.previous:
            return []
        record = self.previous["plays"].get(play, {})
        if record.get("done"):
            return []  # a finished play that runs again (see play_done_before) runs in full
        done: list[str] = record.get("hosts", {}).get(host, [])
        return done

    def _save(self) -> None:
        if self.path is None:
            return
        private_dir(self.path.parent)
        atomic_write(self.path, json.dumps(self.data, indent=2) + "\n", 0o644)
        if self.legacy is not None:
            # Read already (it is this run's self.previous): from now on the new file is the record.
            self.legacy.unlink(missing_ok=True)
            self.legacy = None

    def step_done(self, play: str, host: str, step: str) -> None:
        with self._lock:
            hosts = self.data["plays"].setdefault(play, {"done": False, "hosts": {}})["hosts"]
            done = hosts.setdefault(host, [])
            if step not in done:
                done.append(step)
            self._save()

    def play_done(self, play: str, hosts: Sequence[str]) -> None:
        with self._lock:
            record = self.data["plays"].setdefault(play, {"done": False, "hosts": {}})
            record["done"], record["ran_on"] = True, list(hosts)
            self._save()

    def failed(self, play: str, host: str, step: str, error: str) -> None:
        with self._lock:
            if self.data["failed"] is None:
                # Only the first line: output tails may hold anything, and this file is 0644.
                first = error.splitlines()[0] if error else ""
                self.data["failed"] = {"play": play, "host": host, "step": step, "error": first}
            self._save()

    def stopped_in(self, play: str, hosts: Sequence[str], steps: Sequence[str]) -> None:
        """Where a run stopped from outside its hosts' work resumes, unless a host recorded it:
        the first of play's hosts with a step not done, else its last."""
        with self._lock:
            if self.data["failed"] is not None:
                return
            done = self.data["plays"].get(play, {}).get("hosts", {})
        for host in hosts:
            missing = [s for s in steps if s not in done.get(host, [])]
            if missing:
                self.failed(play, host, missing[0], "not started: the run was stopping")
                return
        self.failed(play, hosts[-1] if hosts else "-", steps[-1], "stopped after its last step")

    def finished(self) -> None:
        with self._lock:
            self.data["failed"] = None
            self._save()


# -- running ----------------------------------------------------------------------------------


def _probes(sdefs: Sequence[StepDef], node: NodePlan, cluster: Cluster) -> list[Probe]:
    out: list[Probe] = []
    for sdef in sdefs:
        if sdef.probes is not None and not sdef.local:
            out += list(sdef.probes(node, cluster))
    return out


def _run_host(
    play: Play,
    node: NodePlan,
    cluster: Cluster,
    conn: Remote | None,
    progress: Progress,
    log: Log,
    dry_run: bool,
) -> list[StepResult]:
    steps = registry()
    sdefs = [steps[s] for s in play.steps]
    skip = set(progress.steps_done_before(play.name, node.name))
    results: list[StepResult] = []
    facts: Facts | None = None
    for i, sdef in enumerate(sdefs):
        if sdef.name in skip:
            results.append(StepResult(sdef.name, node.name, status="skipped"))
            progress.step_done(play.name, node.name, sdef.name)
            view.done(node.name, sdef.name, "skipped")
            log(f"  {node.name:<24} {sdef.name:<22} skipped (done by the interrupted run)")
            continue
        if stop.stopping():
            # Not started: the next run resumes here.
            progress.failed(play.name, node.name, sdef.name, "not started: the run was stopping")
            break
        view.step(node.name, sdef.name, phase=play.phase)
        if facts is None:
            if dry_run or conn is None:
                facts = Facts.unknown()
            else:
                trips, t = conn.round_trips, time.monotonic()
                try:
                    facts = gather_facts(conn, _probes(sdefs[i:], node, cluster))
                except ProvisionerError as exc:
                    res = StepResult(
                        sdef.name,
                        node.name,
                        status="failed",
                        error=f"gathering facts: {exc}",
                        exception=exc,
                        round_trips=conn.round_trips - trips,
                    )
                    results.append(res)
                    _log_result(log, res, dry_run)
                    view.done(node.name, sdef.name, "failed")
                    progress.failed(play.name, node.name, sdef.name, res.error or "")
                    break
                results.append(
                    StepResult(
                        "facts", node.name, seconds=time.monotonic() - t, round_trips=conn.round_trips - trips
                    )
                )
        res = Executor(conn, facts, dry_run=dry_run).run_step(sdef, sdef.fn(node, cluster, facts), node.name)
        results.append(res)
        # A step the run's stop cut short did not fail on its own: the recap does not count it.
        view.done(node.name, sdef.name, "interrupted" if stop.is_stop(res.exception) else res.status)
        _log_result(log, res, dry_run)
        if res.status == "failed":
            progress.failed(play.name, node.name, sdef.name, res.error or "")
            break
        progress.step_done(play.name, node.name, sdef.name)
        if res.status == "changed":
            # What this step changed may be what the next one looks at.
            facts = None
    return results


def _run_local(
    play: Play,
    sdef: StepDef,
    nodes: list[NodePlan],
    cluster: Cluster,
    progress: Progress,
    log: Log,
    dry_run: bool,
) -> StepResult:
    if sdef.name in progress.steps_done_before(play.name, "local"):
        progress.step_done(play.name, "local", sdef.name)
        view.done("local", sdef.name, "skipped")
        return StepResult(sdef.name, "local", status="skipped")
    if stop.stopping():
        progress.failed(play.name, "local", sdef.name, "not started: the run was stopping")
        return StepResult(sdef.name, "local", status="skipped")
    view.step("local", sdef.name, phase=play.phase)
    res = Executor(None, Facts.unknown(), dry_run=dry_run).run_step(sdef, sdef.fn(nodes, cluster), "local")
    view.done("local", sdef.name, res.status)
    _log_result(log, res, dry_run)
    if res.status == "failed":
        progress.failed(play.name, "local", sdef.name, res.error or "")
    else:
        progress.step_done(play.name, "local", sdef.name)
    return res


def _log_result(log: Log, res: StepResult, dry_run: bool) -> None:
    if res.step == "facts":
        return
    status = {"changed": "would change" if dry_run else "changed"}.get(res.status, res.status)
    extra = f", {res.round_trips} round trip(s)" if not dry_run else ""
    restarts = f", restarted {', '.join(res.restarts)}" if res.restarts else ""
    lines = [f"  {res.host:<24} {res.step:<22} {status:<12} {res.seconds:6.2f}s{extra}{restarts}"]
    lines += [f"  {res.host:<24} {res.step:<22} warning: {w}" for w in res.warnings]
    if dry_run:
        lines += ["      " + a.replace("\n", "\n      ") for a in res.actions]
    elif res.status == "failed" and res.error:
        lines.append("      " + res.error.replace("\n", "\n      "))
    # One call per step, so lines of hosts running in parallel do not interleave.
    log("\n".join(lines))


def _batches(nodes: list[NodePlan], serial: int | None) -> list[list[NodePlan]]:
    if not serial:
        return [nodes] if nodes else []
    return [nodes[i : i + serial] for i in range(0, len(nodes), serial)]


def check_steps(playbook: Playbook, cluster: Cluster, phases: set[str] | frozenset[str]) -> None:
    """Run every selected step as a dry run (pure: no connection) and raise the first error.

    Rendering happens inside steps, so this is what guarantees that a broken template or a
    missing variable stops the run before anything is written to any host.
    """
    steps = registry()
    for play in playbook.for_phases(phases):
        nodes = play.hosts.select(cluster.plan, cluster.params)
        for name in play.steps:
            sdef = steps[name]
            if sdef.local:
                runs = [("local", sdef.fn(nodes, cluster))]
            else:
                runs = [(n.name, sdef.fn(n, cluster, Facts.unknown())) for n in nodes]
            for host, gen in runs:
                res = Executor(None, Facts.unknown(), dry_run=True).run_step(sdef, gen, host)
                missing = [a.error for a in res.artifacts if a.status == "missing" and a.error is not None]
                if missing:
                    # A dry run lists a missing artifact; the run it stands in for stops before
                    # any host is touched.
                    missing[0].message = f"play {play.name}, {host}, step {name}: {missing[0].message}"
                    raise missing[0]
                if res.status == "failed":
                    exc = res.exception
                    if isinstance(exc, ProvisionerError):
                        exc.message = f"play {play.name}, {host}, step {name}: {exc.message}"
                        raise exc
                    raise ProvisionerError(f"play {play.name}, {host}, step {name}: {res.error}") from exc


def run_playbook(
    playbook: Playbook,
    cluster: Cluster,
    connections: Mapping[str, Remote],
    *,
    phases: set[str] | frozenset[str],
    log: Log,
    dry_run: bool = False,
    resume: bool = True,
    on_phase: Callable[[str, str, float | None, str | None], None] | None = None,
    progress: Progress | None = None,
) -> PlaybookReport:
    """Run the playbook's plays of the given phases in order; PlayFailed on the first failed play.

    connections maps node names to open connections (ignored, and may be empty, in a dry run).
    resume: skip what a failed previous run completed (docs/architecture.md#bootstrap-runner); progress is
    kept in <state>/playbooks/<playbook>.json unless dry_run or the cluster has no state.
    phases: some of the playbook's own (ProvisionerError naming them otherwise).
    on_phase(phase, status, seconds, detail) is called as each phase starts (running) and ends
    (done, failed, or interrupted: a signal stopped the run), so the caller can record phases
    where it records the others. A stop raises Interrupted or the run's Timeout, not PlayFailed.
    progress: the resume record of a run made of several calls (phases.run_bootstrap runs the
    Kubernetes phase apart), which the caller then finishes; by default the call's own.
    """
    steps = registry()
    unknown = sorted(set(phases) - set(playbook.phases))
    if unknown:
        raise ProvisionerError(
            f"playbook {playbook.name} has no phase {', '.join(unknown)}; "
            f"its phases: {', '.join(playbook.phases)}"
        )
    selected = playbook.for_phases(phases)
    if not dry_run:
        check_steps(playbook, cluster, phases)
    owned_progress = progress is None
    if progress is None:
        progress = run_progress(playbook, cluster, dry_run)
    if not resume:
        progress.previous = None
    report = PlaybookReport(playbook.path, [p for p in playbook.phases if p in phases], dry_run=dry_run)
    report.resumed_from = progress.resume_point
    if report.resumed_from:
        rp = report.resumed_from
        log(f"resuming: the last run failed in play {rp['play']} on {rp['host']} at {rp['step']}")
    started = time.monotonic()
    phase_now: str | None = None
    phase_started = started

    phase_ended = False

    def phase_event(phase: str, status: str, detail: str | None = None) -> None:
        nonlocal phase_ended
        seconds = None if status == "running" else time.monotonic() - phase_started
        phase_ended = status != "running"
        if status != "running":
            report.phase_seconds[phase] = round(seconds or 0.0, 3)
        if not dry_run:
            view.phase(phase, status, seconds)
        if on_phase is not None:
            on_phase(phase, status, seconds, detail)

    current: tuple[str, list[str], tuple[str, ...]] | None = None  # the play running
    try:
        for play in selected:
            if stop.stopping():
                # Between plays: nothing of this one has started; the next run resumes at it.
                first = next(iter(play.hosts.select(cluster.plan, cluster.params)), None)
                where = first.name if first is not None else "-"
                progress.failed(play.name, where, play.steps[0], "not started: the run was stopping")
                raise stop.error(f"play {play.name} to start")
            if play.phase != phase_now:
                if phase_now is not None:
                    phase_event(phase_now, "done")
                phase_now, phase_started = play.phase, time.monotonic()
                phase_event(phase_now, "running")
            nodes = play.hosts.select(cluster.plan, cluster.params)
            preport = PlayReport(play.name, play.phase, [n.name for n in nodes], play.serial)
            report.plays.append(preport)
            if progress.play_done_before(play.name, preport.hosts):
                log(f"play {play.name}: done by the interrupted run, skipped")
                preport.results = [StepResult(s, "-", status="skipped") for s in play.steps]
                progress.play_done(play.name, preport.hosts)
                continue
            mode = (
                "one host at a time"
                if play.serial == 1
                else (f"{play.serial} hosts at a time" if play.serial else "in parallel")
            )
            log(f"play {play.name} [{play.phase}] on {', '.join(preport.hosts) or 'no hosts'} ({mode})")
            t = time.monotonic()
            if not dry_run and needs_hosts(play, steps):
                missing = [n.name for n in nodes if n.name not in connections]
                if missing:
                    raise ProvisionerError(f"play {play.name}: no connection to {', '.join(missing)}")
            # Local steps are recorded under "local", whatever hosts the play names.
            local = any(steps[s].local for s in play.steps)
            current = (play.name, ["local"] if local else preport.hosts, play.steps)
            failures = _run_play(play, nodes, cluster, connections, progress, log, dry_run, preport, steps)
            if stop.stopping():
                # Whatever failed on the hosts failed because the run stopped (a closed socket, a
                # wait cut short): report the stop, which is what the user asked for or set.
                raise _stopped(play, failures)
            preport.seconds = time.monotonic() - t
            for host, facts_res in [(r.host, r) for r in preport.results if r.step == "facts"]:
                entry = preport.facts.setdefault(host, {"round_trips": 0, "seconds": 0.0})
                entry["round_trips"] += facts_res.round_trips
                entry["seconds"] = round(entry["seconds"] + facts_res.seconds, 3)
            preport.results = [r for r in preport.results if r.step != "facts"]
            log(
                f"play {play.name}: {preport.count('ok')} ok, {preport.count('changed')} changed"
                + (f", {len(failures)} failed" if failures else "")
                + f" in {preport.seconds:.1f}s"
            )
            if failures:
                err = _play_failed(play, preport, failures, report)
                phase_event(play.phase, "failed", err.message.splitlines()[0])
                raise err
            progress.play_done(play.name, preport.hosts)
            current = None
        if phase_now is not None:
            phase_event(phase_now, "done")
        if owned_progress:
            progress.finished()
    except (Exception, KeyboardInterrupt) as exc:
        if current is not None and (stop.is_stop(exc) or isinstance(exc, KeyboardInterrupt)):
            # A signal raises in this thread (stop.install_signal_handlers) wherever it waits,
            # past _run_play's own record of where to resume when the hosts had all finished.
            progress.stopped_in(*current)
        # A phase left "running" would look like a run still going; one that failed on a host
        # was recorded above already.
        if phase_now is not None and not phase_ended:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            phase_event(phase_now, ended_status(exc), detail)
        raise
    finally:
        report.seconds = time.monotonic() - started
    return report


def run_progress(playbook: Playbook, cluster: Cluster, dry_run: bool) -> Progress:
    """The playbook's resume record for this cluster (none in a dry run, or without a state).

    A run with parameters resumes only a failed run with the same ones: what that run completed
    was done for its parameters (other nodes to drain), so the digest covers them.
    """
    digest = playbook.digest
    params = cluster.params
    if params:
        blob = json.dumps(dict(params), sort_keys=True)  # run_day2 takes JSON values only
        digest = hashlib.sha256(f"{digest}\n{blob}".encode()).hexdigest()
    if dry_run or cluster.state is None:
        return Progress(None, digest)
    return Progress(
        cluster.state.progress_path(playbook.name),
        digest,
        legacy=cluster.state.legacy_progress_path(playbook.name),
    )


def _stopped(play: Play, failures: list[StepResult]) -> ProvisionerError:
    """The error to raise when the run stopped during play: the stop error a host's wait raised
    (it names the command and node), else a new one for the play."""
    for f in failures:
        exc = f.exception
        if stop.is_stop(exc):
            assert isinstance(exc, ProvisionerError)
            exc.message = f"play {play.name}, {f.host}, step {f.step}: {exc.message}"
            return exc
    return stop.error(f"play {play.name}")


def _run_play(
    play: Play,
    nodes: list[NodePlan],
    cluster: Cluster,
    connections: Mapping[str, Remote],
    progress: Progress,
    log: Log,
    dry_run: bool,
    preport: PlayReport,
    steps: Mapping[str, StepDef],
) -> list[StepResult]:
    failures: list[StepResult] = []
    if any(steps[s].local for s in play.steps):
        # A local step stands for the whole play (a health check of all its hosts); mixing it
        # with host steps would make the order between them ambiguous.
        for s in play.steps:
            res = _run_local(play, steps[s], nodes, cluster, progress, log, dry_run)
            preport.results.append(res)
            if res.status == "failed" or stop.stopping():
                if res.status == "failed":
                    failures.append(res)
                break
        return failures
    # A dry run prints each host's steps in full; one host at a time keeps them readable.
    for batch in _batches(nodes, 1 if dry_run else play.serial):
        if stop.stopping():
            progress.failed(play.name, batch[0].name, play.steps[0], "not started: the run was stopping")
            break
        with ThreadPoolExecutor(
            max_workers=max(1, len(batch)), thread_name_prefix=f"play-{play.name}"
        ) as pool:
            futures = [
                pool.submit(
                    _run_host,
                    play,
                    n,
                    cluster,
                    None if dry_run else connections[n.name],
                    progress,
                    log,
                    dry_run,
                )
                for n in batch
            ]
            for fut in futures:
                results = fut.result()
                preport.results += results
                failures += [r for r in results if r.status == "failed"]
        if failures:
            # The batch's hosts have all finished; the ones after it are not started.
            break
    return failures


def _play_failed(
    play: Play, preport: PlayReport, failures: list[StepResult], report: PlaybookReport
) -> PlayFailed:
    lines = [f"play {play.name} failed on {len(failures)} host(s):"]
    for f in failures:
        lines.append(f"  {f.host}, step {f.step}:")
        lines += [f"    {line}" for line in (f.error or "").splitlines()]
    failed_hosts = {f.host for f in failures}
    local = all(r.host == "local" for r in preport.results)
    done = [h for h in preport.hosts if h not in failed_hosts and any(r.host == h for r in preport.results)]
    not_started = [h for h in preport.hosts if not local and not any(r.host == h for r in preport.results)]
    if done:
        lines.append(f"  completed on: {', '.join(done)}")
    if not_started:
        lines.append(f"  not started on: {', '.join(not_started)}")
    first = failures[0]
    codes = {getattr(f.exception, "exit_code", ExitCode.ERROR) for f in failures}
    if report.dry_run:
        # A dry run records no progress: there is nothing to resume.
        hint = "fix the cause and run the dry run again; it changed nothing"
    else:
        hint = (
            f"fix the cause and re-run: the run resumes at {first.step}"
            + ("" if first.host == "local" else f" on {first.host}")
            + "; what completed is not repeated"
        )
    return PlayFailed(
        "\n".join(lines),
        hint=hint,
        exit_code=codes.pop() if len(codes) == 1 else ExitCode.ERROR,
        report=report,
    )
