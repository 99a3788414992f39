"""Soak: create and delete one cluster again and again on the embedded lab, under faults.

Each cycle, through the CLI only (`vkp create-cluster -f SPEC --yes --up-to STAGE -o json`,
`vkp delete-cluster NAME --yes -o json`, `vkp lab fault ...`):
  - one random vSphere fault armed at run time (CloneVM_Task, ReconfigVM_Task, PowerOnVM_Task
    or Destroy_Task, failing its K-th call from then on; Destroy_Task is armed before the delete);
  - the first create run killed after a random delay, by SIGKILL or SIGINT (and, meanwhile, a
    second create run that must be refused at once: exit 15, the cluster lock);
  - one node's guest cut off the lab network for some seconds during a later run;
  - create-cluster re-run until it exits 0 (capped), then delete-cluster (re-run on failure, capped);
  - then checked from vCenter and the lab, not from vkp's word: no VM, DRS rule or folder of the
    cluster left, no guest of it left running, its state directory gone; and after every run,
    the nodes state.json records against the VMs vCenter has.
Prints figures: cycles, faults armed and fired by kind, kills by signal and how the runs ended,
re-runs needed, leaks (must be 0), seconds per cycle, and every broken promise it saw.

Every wait has a deadline: a run that outlives --run-deadline, or a signal that does not end a
run within --interrupt-grace, is reported and then killed, never waited on for ever.

Needs root and a running lab (`vkp lab up`); the lab is left up and as it was found.

  .venv/bin/python bench/soak.py --cycles 5 --seed 7
  .venv/bin/python bench/soak.py --cycles 2 --plan dev --up-to etcd --json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml
from pyVmomi import vim

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is not a package
    sys.path.insert(0, str(REPO))

from provisioner.lab import faults as lab_faults  # noqa: E402
from provisioner.lab import guest as lab_guests  # noqa: E402
from provisioner.lab import lab as lab_mod  # noqa: E402
from provisioner.lab import paths  # noqa: E402

VKP = str(Path(sys.executable).parent / "vkp")
METHODS = ("CloneVM_Task", "ReconfigVM_Task", "PowerOnVM_Task", "Destroy_Task")
KILL_SIGNALS = (signal.SIGKILL, signal.SIGINT)
EXIT_BUSY = 15
# Addresses of lab.yaml's cluster are .20-.59 and the lab tests use .50-.160; the soak keeps out.
POOL = "198.18.0.170-198.18.0.189"

Log = Callable[[str], None]


@dataclasses.dataclass
class SoakOptions:
    cycles: int = 3
    name: str = "soak"
    plan: str = "small"
    up_to: str = "vms"
    pool: str = POOL
    seed: int | None = None
    max_attempts: int = 6  # create runs per cycle (and delete runs) before giving up
    # Seconds one vkp run may take; named after --run-deadline and the report's options key.
    run_deadline: float = 600.0
    interrupt_grace: float = 5.0  # SIGINT/SIGTERM must end a run within this
    kill_after: tuple[float, float] = (0.5, 10.0)  # seconds into the first run
    net_seconds: tuple[float, float] = (3.0, 10.0)
    lock_probe: bool = True
    vkp: tuple[str, ...] = (VKP,)
    work_dir: Path | None = None  # logs, spec and state dir; a temporary one if None


@dataclasses.dataclass
class RunResult:
    argv: list[str]
    code: int | None  # None: it had to be killed after its deadline
    seconds: float
    log: Path
    signal: str | None = None
    signal_at: float | None = None  # seconds into the run
    exit_after_signal: float | None = None  # seconds from the signal to the exit
    finished_before_signal: bool = False
    stdout: str = ""


@dataclasses.dataclass
class Report:
    seed: int
    options: dict[str, Any]
    cycles: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    faults_armed: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    faults_fired: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kills: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kill_exits: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    interrupt_seconds: list[float] = dataclasses.field(default_factory=list)
    exit_codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    net_drops: int = 0
    net_drops_missed: int = 0
    leaks: list[str] = dataclasses.field(default_factory=list)
    hung: list[str] = dataclasses.field(default_factory=list)  # runs killed at --run-deadline
    inconsistencies: list[str] = dataclasses.field(default_factory=list)  # state vs vCenter
    state_lag: list[str] = dataclasses.field(default_factory=list)  # after a killed run: expected
    problems: list[str] = dataclasses.field(default_factory=list)  # promises the build broke

    @property
    def converged(self) -> int:
        return sum(1 for c in self.cycles if c["converged"] and c["deleted"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "options": self.options,
            "cycles": self.cycles,
            "converged": self.converged,
            "faults_armed": dict(self.faults_armed),
            "faults_fired": dict(self.faults_fired),
            "kills": dict(self.kills),
            "kill_exits": dict(self.kill_exits),
            "interrupt_seconds": self.interrupt_seconds,
            "exit_codes": dict(self.exit_codes),
            "net_drops": self.net_drops,
            "net_drops_missed": self.net_drops_missed,
            "leaks": self.leaks,
            "hung": self.hung,
            "inconsistencies": self.inconsistencies,
            "state_lag": self.state_lag,
            "problems": self.problems,
        }


# ---- the lab, read independently of vkp -----------------------------------------------------


def lab_env() -> dict[str, str]:
    out = {}
    for line in paths.ENV_FILE.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


def vcenter_holdings(name: str, cluster_id: str | None) -> dict[str, Any]:
    """What vCenter holds of the cluster: VMs by ownership mark or name, DRS rules, folders."""
    with lab_mod.session() as s:

        def objects(kind: Any) -> list[Any]:
            return lab_mod.objects(s.content, kind)

        vms = []
        for vm in objects(vim.VirtualMachine):
            extra = {o.key: o.value for o in (vm.config.extraConfig if vm.config else None) or []}
            marked = extra.get("vkp.cluster.name") == name or (
                cluster_id is not None and extra.get("vkp.cluster.id") == cluster_id
            )
            if marked or vm.name.startswith(f"{name}-"):
                vms.append({"name": vm.name, "moid": vm._moId, "marked": marked})
        rules = [
            r.name
            for cl in objects(vim.ClusterComputeResource)
            for r in cl.configurationEx.rule or []
            if r.name.startswith(f"vkp-{name}-")
        ]
        folders = [f.name for f in objects(vim.Folder) if f.name == name]
    return {"vms": sorted(vms, key=lambda v: v["name"]), "rules": sorted(rules), "folders": folders}


def running_guests(name: str) -> list[str]:
    return sorted(
        g.hostname
        for g in lab_guests.list_guests(paths.GUESTS)
        if g.hostname.startswith(f"{name}-") and g.state == "running"
    )


def all_guests(name: str) -> list[str]:
    return sorted(
        g.hostname for g in lab_guests.list_guests(paths.GUESTS) if g.hostname.startswith(f"{name}-")
    )


def read_state(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / name / "state.json").read_text())
        return data
    except (OSError, ValueError):
        return None


# ---- running vkp ----------------------------------------------------------------------------


def run_vkp(
    opts: SoakOptions,
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    timeout: float,
    send: tuple[signal.Signals, float] | None = None,
) -> RunResult:
    """Run vkp ARGS; optionally send a signal after a delay.

    Never waits longer than timeout seconds (plus the signal's grace)."""
    argv = [*opts.vkp, *args]
    started = time.monotonic()
    with open(log_path, "w") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # a signal meant for the soak never reaches it, and back
        )
        result = RunResult(argv=argv, code=None, seconds=0.0, log=log_path)
        try:
            if send is not None:
                sig, after = send
                try:
                    proc.wait(timeout=after)
                    result.finished_before_signal = True
                except subprocess.TimeoutExpired:
                    result.signal, result.signal_at = sig.name, time.monotonic() - started
                    proc.send_signal(sig)
                    t_sig = time.monotonic()
                    grace = opts.interrupt_grace if sig != signal.SIGKILL else 10.0
                    try:
                        proc.wait(timeout=grace)
                    except subprocess.TimeoutExpired:
                        # Reported by the caller; given a little longer before being killed.
                        with suppress(subprocess.TimeoutExpired):
                            proc.wait(timeout=30.0)
                    if proc.returncode is not None:
                        result.exit_after_signal = time.monotonic() - t_sig
                    else:
                        proc.kill()
            if proc.returncode is None:
                remaining = max(0.1, timeout - (time.monotonic() - started))
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=remaining)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
                result.code = None
            else:
                result.code = proc.returncode
            _kill_group(proc.pid)
        out.seek(0)
        result.stdout = out.read()
    result.seconds = time.monotonic() - started
    return result


def _kill_group(pgid: int) -> None:
    # The run's own session: whatever it started and left behind goes with it.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def lab_fault(opts: SoakOptions, *args: str) -> dict[str, Any]:
    # The lab's own tool (this interpreter's vkp), whatever build --vkp names.
    r = subprocess.run(
        [VKP, "lab", "fault", *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise RuntimeError(f"vkp lab fault {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


# ---- one cycle -------------------------------------------------------------------------------


class Cycle:
    def __init__(self, n: int, opts: SoakOptions, rng: random.Random, report: Report, spec: Path,
                 env: dict[str, str], state_dir: Path, logs: Path, log: Log) -> None:  # fmt: skip
        self.n, self.opts, self.rng, self.report = n, opts, rng, report
        self.spec, self.env, self.state_dir, self.logs, self.log = spec, env, state_dir, logs, log
        self.name = opts.name
        self.runs = 0
        self.record: dict[str, Any] = {"cycle": n, "converged": False, "deleted": False, "problems": []}

    def problem(self, text: str) -> None:
        self.log(f"  PROBLEM: {text}")
        self.record["problems"].append(text)
        self.report.problems.append(f"cycle {self.n}: {text}")

    def _run(self, args: list[str], **kw: Any) -> RunResult:
        self.runs += 1
        log_path = self.logs / f"cycle{self.n:02d}-run{self.runs:02d}-{args[0]}.log"
        r = run_vkp(self.opts, args, self.env, log_path, timeout=self.opts.run_deadline, **kw)
        code = "killed at deadline" if r.code is None else str(r.code)
        self.report.exit_codes[f"{args[0]} {code}"] += 1
        if r.code is None:
            self.report.hung.append(f"cycle {self.n}: {' '.join(args[:2])} (log {r.log})")
            self.problem(f"{args[0]} still running after {self.opts.run_deadline:.0f}s; killed (log {r.log})")
        return r

    def create_args(self) -> list[str]:
        return ["create-cluster", "-f", str(self.spec), "--yes", "--up-to", self.opts.up_to, "-o", "json"]

    # -- checks ----------------------------------------------------------------------------

    def check_state(self, after: str, *, strict: bool) -> None:
        """Nodes in state.json against the VMs vCenter holds. strict: they must match (a run
        finished); otherwise differences are the lag a killed run may leave for the next."""
        st = read_state(self.state_dir, self.name)
        held = vcenter_holdings(self.name, st["cluster_id"] if st else None)
        names = collections.Counter(v["name"] for v in held["vms"])
        dupes = sorted(n for n, c in names.items() if c > 1)
        if dupes:
            self.leak(f"after {after}: duplicate VMs in vCenter: {dupes}")
        unmarked = sorted(v["name"] for v in held["vms"] if not v["marked"])
        recorded = {n["name"]: n.get("moid") for n in (st or {}).get("nodes", {}).values()}
        in_vc = {v["name"]: v["moid"] for v in held["vms"]}
        diffs = []
        if set(in_vc) - set(recorded):
            diffs.append(f"VMs not in state.json: {sorted(set(in_vc) - set(recorded))}")
        if set(recorded) - set(in_vc):
            diffs.append(f"state.json nodes with no VM: {sorted(set(recorded) - set(in_vc))}")
        moved = sorted(n for n in set(in_vc) & set(recorded) if recorded[n] and recorded[n] != in_vc[n])
        if moved:
            diffs.append(f"state.json moids that are not the VMs': {moved}")
        if unmarked:
            diffs.append(f"VMs without the ownership mark: {unmarked}")
        for d in diffs:
            if strict:
                self.report.inconsistencies.append(f"cycle {self.n}, after {after}: {d}")
                self.problem(f"state vs vCenter after {after}: {d}")
            else:
                self.report.state_lag.append(f"cycle {self.n}, after {after}: {d}")
                self.log(f"  state lag after {after}: {d}")

    def leak(self, text: str) -> None:
        self.report.leaks.append(f"cycle {self.n}: {text}")
        self.problem(f"LEAK {text}")

    def check_phases_after_signal(self, sig: str) -> None:
        st = read_state(self.state_dir, self.name)
        if st is None:
            return
        running = [n for n, p in st.get("phases", {}).items() if p.get("status") == "running"]
        if sig != "SIGKILL" and running:
            self.problem(f"after {sig} the phase(s) {running} are still recorded as running, not interrupted")

    # -- the cycle -------------------------------------------------------------------------

    def fault_plan(self) -> tuple[str, int]:
        method = self.rng.choice(METHODS)
        return method, self.rng.randint(1, 3)

    def arm(self, method: str, k: int) -> None:
        lab_fault(self.opts, "vsphere", f"{method}:{k}")
        self.report.faults_armed[method] += 1
        self.log(f"  armed: {method} call {k} from now fails")

    def first_run(self) -> RunResult:
        sig = self.rng.choice(KILL_SIGNALS)
        after = self.rng.uniform(*self.opts.kill_after)
        probe: dict[str, Any] = {}
        probe_thread = None
        # Only when the first run is sure to live a while after the probe starts.
        if self.opts.lock_probe and after >= 2.5:
            probe_thread = threading.Thread(target=self.lock_probe, args=(after, probe), daemon=True)
            probe_thread.start()
        r = self._run(self.create_args(), send=(sig, after))
        if probe_thread is not None:
            probe_thread.join(timeout=60)
        self.record["kill"] = {"signal": sig.name, "after": round(after, 2)}
        if r.finished_before_signal:
            self.log(f"  run 1 ended (exit {r.code}) before its {sig.name} at {after:.1f}s")
            self.record["kill"]["outcome"] = f"finished first (exit {r.code})"
        else:
            self.report.kills[sig.name] += 1
            how = "not at all" if r.exit_after_signal is None else f"in {r.exit_after_signal:.2f}s"
            self.log(f"  run 1: {sig.name} at {after:.1f}s -> exit {r.code} {how}")
            self.record["kill"]["outcome"] = f"exit {r.code} {how}"
            self.report.kill_exits[f"{sig.name} -> {r.code}"] += 1
            if sig != signal.SIGKILL:
                want = 128 + sig.value
                if r.exit_after_signal is not None:
                    self.report.interrupt_seconds.append(round(r.exit_after_signal, 2))
                if r.exit_after_signal is None or r.exit_after_signal > self.opts.interrupt_grace:
                    self.problem(
                        f"{sig.name} did not end create-cluster within {self.opts.interrupt_grace:.0f}s "
                        f"(ended {how}; log {r.log})"
                    )
                elif r.code != want:
                    self.problem(
                        f"{sig.name} ended create-cluster with exit {r.code}, not {want} (log {r.log})"
                    )
                self.check_phases_after_signal(sig.name)
        if probe:
            self.record["lock_probe"] = probe
        return r

    def lock_probe(self, first_ends: float, out: dict[str, Any]) -> None:
        """While run 1 holds the cluster, a second run must be refused at once (exit 15).

        The probe is given until run 1's signal: one still going then was let in, and is
        killed so that the cycle goes on with one run at a time."""
        start = 1.0
        time.sleep(start)
        log_path = self.logs / f"cycle{self.n:02d}-lockprobe.log"
        r = run_vkp(self.opts, self.create_args(), self.env, log_path, timeout=first_ends - start - 0.3)
        out.update(code=r.code, seconds=round(r.seconds, 2))
        self.report.exit_codes[f"lock probe {'killed' if r.code is None else r.code}"] += 1
        if r.code == EXIT_BUSY:
            return
        what = f"was still running {r.seconds:.1f}s later" if r.code is None else f"exited {r.code}"
        self.problem(
            f"a second create-cluster while the first ran was not refused with exit {EXIT_BUSY}: "
            f"it {what} (log {log_path})"
        )

    def drop_network_when_up(self, stop: threading.Event, done: dict[str, Any], timeout: float) -> None:
        """Cut one running guest of the cluster off the network, once any is running."""
        delay = self.rng.uniform(0.0, 2.0)
        seconds = round(self.rng.uniform(*self.opts.net_seconds), 1)
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            up = running_guests(self.name)
            if up:
                victim = self.rng.choice(up)
                # A cut after the run ended would test nothing: the caller then cuts and re-runs.
                if stop.wait(delay):
                    return
                try:
                    lab_fault(self.opts, "network", victim, "--seconds", str(seconds))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    # The guest may have gone between the look and the cut (a VM re-created).
                    self.log(f"  network drop on {victim} failed: {exc}")
                    time.sleep(0.5)
                    continue
                done.update(vm=victim, seconds=seconds)
                self.log(f"  network: {victim} cut off for {seconds}s")
                return
            time.sleep(0.2)

    def converge(self) -> None:
        net: dict[str, Any] = {}
        converged = False
        for attempt in range(2, self.opts.max_attempts + 1):
            stop = threading.Event()
            dropper = None
            if not net:
                dropper = threading.Thread(
                    target=self.drop_network_when_up, args=(stop, net, self.opts.run_deadline), daemon=True
                )
                dropper.start()
            r = self._run(self.create_args())
            stop.set()
            if dropper is not None:
                dropper.join(timeout=60)
            self.log(f"  run {attempt}: exit {r.code} in {r.seconds:.1f}s")
            self.record["create_runs"] = attempt
            if r.code == 0:
                self.check_state(f"run {attempt} (exit 0)", strict=True)
                converged = True
                if net:
                    break
                # Converged before any guest could be cut off: cut one now; the run after it
                # must converge too (a re-run checks every node over SSH).
                self.drop_network_when_up(threading.Event(), net, 30.0)
                if not net:
                    break
                converged = False
                continue
            self.check_state(f"run {attempt} (exit {r.code})", strict=False)
            if r.code == EXIT_BUSY:
                self.problem(f"run {attempt} refused as busy though no other run was going (log {r.log})")
                time.sleep(2)
        if not converged:
            self.problem(f"create-cluster did not converge in {self.opts.max_attempts} runs")
        self.record["converged"] = converged
        if net:
            self.report.net_drops += 1
            self.record["network"] = net
        else:
            self.report.net_drops_missed += 1

    def delete(self) -> None:
        for attempt in range(1, self.opts.max_attempts + 1):
            r = self._run(["delete-cluster", self.name, "--yes", "-o", "json"])
            self.log(f"  delete {attempt}: exit {r.code} in {r.seconds:.1f}s")
            if r.code == 0:
                self.record["deleted"] = True
                self.record["delete_runs"] = attempt
                with suppress(ValueError, AttributeError):
                    left = json.loads(r.stdout).get("leftovers")
                    if left:
                        self.leak(f"delete-cluster exited 0 but reported leftovers: {left}")
                return
        self.record["delete_runs"] = self.opts.max_attempts
        self.problem(f"delete-cluster did not succeed in {self.opts.max_attempts} runs")

    def check_gone(self) -> None:
        held = vcenter_holdings(self.name, None)
        for kind in ("vms", "rules", "folders"):
            if held[kind]:
                self.leak(f"{kind} left in vCenter after delete: {held[kind]}")
        deadline = time.monotonic() + 180
        while all_guests(self.name) and time.monotonic() < deadline:
            time.sleep(0.5)
        if all_guests(self.name):
            self.leak(f"guests left 180s after delete: {all_guests(self.name)}")
        if (self.state_dir / self.name).exists():
            self.leak(f"state directory left after delete: {self.state_dir / self.name}")

    def settle_faults(self, since: int) -> None:
        """Count what fired this cycle, disarm what did not, and wait out a dropped network."""
        st = lab_faults.vsphere_state(paths.RUN)
        fired = st["fired"][since:]
        for f in fired:
            self.report.faults_fired[f["method"]] += 1
        self.record["faults_fired"] = [f"{f['method']} call {f['call']}" for f in fired]
        self.log(f"  fired this cycle: {', '.join(self.record['faults_fired']) or 'nothing'}")
        if st["pending"]:
            self.record["faults_unfired"] = [f"{p['method']} call {p['call']}" for p in st["pending"]]
            lab_fault(self.opts, "clear")
        deadline = time.monotonic() + self.opts.net_seconds[1] + 15
        while lab_faults.network_faults(paths.RUN) and time.monotonic() < deadline:
            time.sleep(0.5)
        if lab_faults.network_faults(paths.RUN):
            self.problem(f"a guest's network still down: {lab_faults.network_faults(paths.RUN)}")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        since = len(lab_faults.vsphere_state(paths.RUN)["fired"])
        method, k = self.fault_plan()
        # Armed before the killed run or before the re-runs: a fault that fires in a killed run
        # is never seen by a finishing one.
        when = "delete" if method == "Destroy_Task" else self.rng.choice(["run 1", "run 2"])
        self.record["fault"] = f"{method}:{k} before {when}"
        if when == "run 1":
            self.arm(method, k)
        self.first_run()
        self.check_state("run 1 (signalled)", strict=False)
        if when == "run 2":
            self.arm(method, k)
        self.converge()
        if method == "Destroy_Task":
            self.arm(method, k)
        self.delete()
        self.settle_faults(since)
        self.check_gone()
        self.record["seconds"] = round(time.monotonic() - t0, 1)
        return self.record


# ---- the soak --------------------------------------------------------------------------------


def write_spec(opts: SoakOptions, directory: Path) -> Path:
    doc = yaml.safe_load((REPO / "inventory" / "lab.yaml").read_text())
    doc["name"] = opts.name
    doc["plan"] = opts.plan
    doc["network"]["pool"] = opts.pool
    doc.pop("topology", None)  # the plan's sizes; lab.yaml's worker override is for its own plan
    path = directory / f"{opts.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_soak(opts: SoakOptions, log: Log = print) -> Report:
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    opts_doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
    report = Report(seed=seed, options={k: str(v) if isinstance(v, Path) else v for k, v in opts_doc.items()})
    lab_mod.require_up()
    work = Path(opts.work_dir or tempfile.mkdtemp(prefix="vkp-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    state_dir = work / "state"
    spec = write_spec(opts, work)
    env = {**os.environ, **lab_env(), "VKP_STATE_DIR": str(state_dir)}
    log(f"soak: {opts.cycles} cycle(s) of {opts.name} ({opts.plan} plan, up to {opts.up_to}), seed {seed}, "
        f"logs in {logs}")  # fmt: skip
    leftovers = vcenter_holdings(opts.name, None)
    if leftovers["vms"] or leftovers["rules"] or leftovers["folders"] or all_guests(opts.name):
        raise SystemExit(f"the lab already holds {opts.name}'s things ({leftovers}); delete them first")
    for n in range(1, opts.cycles + 1):
        log(f"cycle {n}")
        rec = Cycle(n, opts, rng, report, spec, env, state_dir, logs, log).run()
        report.cycles.append(rec)
        log(f"cycle {n}: {rec['seconds']:.1f}s, {len(rec['problems'])} problem(s)")
    return report


def render(report: Report) -> str:
    secs = [c["seconds"] for c in report.cycles]
    create_reruns = [c.get("create_runs", 0) - 1 for c in report.cycles]
    delete_reruns = [c.get("delete_runs", 0) - 1 for c in report.cycles]
    kinds = sorted(set(report.faults_armed) | set(report.faults_fired))

    def counts(c: collections.Counter[str]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"

    lines = [
        "",
        f"figures (seed {report.seed})",
        f"  cycles                  {len(report.cycles)} (converged and deleted: {report.converged})",
        "  vSphere faults          "
        + (
            ", ".join(f"{k} armed {report.faults_armed[k]} fired {report.faults_fired[k]}" for k in kinds)
            or "none"
        ),
        f"  kills by signal         {counts(report.kills)}",
        f"  how killed runs ended   {counts(report.kill_exits)}",
    ]
    if report.interrupt_seconds:
        lines.append(
            f"  SIGINT to exit          max {max(report.interrupt_seconds):.2f}s "
            f"over {len(report.interrupt_seconds)}"
        )
    lines += [
        f"  network drops           {report.net_drops} (cycles without one: {report.net_drops_missed})",
        f"  re-runs needed          create {create_reruns}, delete {delete_reruns}",
        f"  exit codes              {counts(report.exit_codes)}",
        f"  leaks                   {len(report.leaks)}",
        f"  runs past the deadline  {len(report.hung)}",
        f"  state vs vCenter        {len(report.inconsistencies)} inconsistencies after finished runs, "
        f"{len(report.state_lag)} lags after killed or failed runs",
    ]
    if secs:
        lines.append(
            f"  seconds per cycle       mean {statistics.mean(secs):.1f}, "
            f"min {min(secs):.1f}, max {max(secs):.1f}"
        )
    if report.problems:
        lines.append(f"problems ({len(report.problems)})")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SoakOptions()
    ap.add_argument("--cycles", type=int, default=d.cycles)
    ap.add_argument("--name", default=d.name, help="cluster name (its VMs are NAME-*)")
    ap.add_argument("--plan", default=d.plan, help="spec plan: dev (3 VMs) or small (6 VMs, DRS rules)")
    ap.add_argument("--up-to", default=d.up_to, choices=["vms", "etcd", "runtime", "kubernetes"])
    ap.add_argument("--pool", default=d.pool, help="node addresses on the lab bridge")
    ap.add_argument("--seed", type=int, help="random seed (printed, so a run can be repeated)")
    ap.add_argument(
        "--max-attempts", type=int, default=d.max_attempts, help="create (and delete) runs per cycle"
    )
    ap.add_argument("--run-deadline", type=float, default=d.run_deadline, help="seconds one vkp run may take")
    ap.add_argument("--interrupt-grace", type=float, default=d.interrupt_grace)
    ap.add_argument("--kill-after", type=float, nargs=2, default=d.kill_after, metavar=("MIN", "MAX"))
    ap.add_argument("--net-seconds", type=float, nargs=2, default=d.net_seconds, metavar=("MIN", "MAX"))
    ap.add_argument("--no-lock-probe", action="store_true", help="do not start a second run during the first")
    ap.add_argument("--vkp", default=VKP, help="the vkp command (split like a shell would)")
    ap.add_argument("--work-dir", type=Path, help="logs, spec and state dir (default: a new temporary one)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    a = ap.parse_args(argv)
    opts = SoakOptions(
        cycles=a.cycles,
        name=a.name,
        plan=a.plan,
        up_to=a.up_to,
        pool=a.pool,
        seed=a.seed,
        max_attempts=a.max_attempts,
        run_deadline=a.run_deadline,
        interrupt_grace=a.interrupt_grace,
        kill_after=tuple(a.kill_after),
        net_seconds=tuple(a.net_seconds),
        lock_probe=not a.no_lock_probe,
        vkp=tuple(shlex.split(a.vkp)),
        work_dir=a.work_dir,
    )
    report = run_soak(opts, lambda m: print(m, flush=True))
    print(render(report), flush=True)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    ok = not (report.leaks or report.inconsistencies or report.hung) and report.converged == opts.cycles
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
