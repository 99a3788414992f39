"""Benchmark: the bootstrap phases (etcd, runtime) on the lab, per play and step, against Ansible.

On the running embedded lab (it is shared: never restarted here), in one run:
  1. a cluster `bbench` from inventory/lab.yaml (pool 198.18.0.100-139, state in
     VKP_STATE_DIR, default /tmp/vkp-bench-bootstrap) through create-cluster --up-to vms;
  2. the cold bootstrap (etcd, runtime) on the fresh VMs, then a warm one (nothing to change):
     seconds per play, per step (median/max over hosts), SSH round trips, and the wall time
     against the critical path (the slowest host's sum of steps);
  3. Ansible (ansible-core, forks = hosts, ssh pipelining) doing what vkp did on the cold run
     (every EnsureDir, Upload and Run, recorded from the engine, as file/copy/command tasks
     with become) on the same guests, against vkp doing the same, side by side:
       - warm: vkp's warm run vs Ansible with the same checks (vkp's fact probes as one
         command per play + file/copy, which compare and change nothing) and vs the plain
         translation (file/copy + every command again + conditional restarts);
       - reset (every uploaded file removed, every service vkp started stopped), then vkp;
         reset again, then Ansible's plain translation; then a vkp run that must change nothing.
  4. delete-cluster bbench (unless --keep).

Ansible comes from the `bench` extra, or from a venv it makes in /tmp/vkp-ansible-venv (kept for
the next run). Needs root (the lab) and about 3 minutes.

  .venv/bin/python bench/bootstrap.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from provisioner import cluster as cluster_mod
from provisioner.bootstrap import engine, runner
from provisioner.bootstrap import phases as phases_mod
from provisioner.bootstrap import pki as pki_mod
from provisioner.bootstrap.engine import Cluster, EnsureDir, Restart, Run, Upload, facts_command
from provisioner.bootstrap.phases import PLAYBOOK, connect_all, run_bootstrap
from provisioner.bootstrap.pki import load_pki
from provisioner.bootstrap.playbook import Playbook, create_phases, load_playbook
from provisioner.bootstrap.steps import registry
from provisioner.lab import lab as lab_mod
from provisioner.lab import paths as lab_paths
from provisioner.plan import Plan, make_plan
from provisioner.spec import ClusterSpec, load_spec
from provisioner.ssh.commands import Cmd, Secret, sudo
from provisioner.state import ClusterState
from provisioner.vsphere import login, machines

REPO = Path(__file__).resolve().parents[1]
NAME = "bbench"
POOL = "198.18.0.100-198.18.0.139"
UP_TO = "runtime"
ANSIBLE_VENV = Path("/tmp/vkp-ansible-venv")
ANSIBLE_TIMEOUT = 300

# -- recording what the engine does ----------------------------------------------------------
# The Ansible playbook must do what vkp did, not what a reading of the steps suggests, so the
# actions are taken from the engine as each step yields them (dry runs excluded: check_steps
# runs every step that way before the real run and would record a first run's actions twice).

RECORDING = False
RECORDED: dict[tuple[str, str], list[Any]] = {}  # (host, step) -> actions, in order
_LOCK = threading.Lock()
_run_step = engine.Executor.run_step


def _tap(gen: Any, key: tuple[str, str]) -> Iterator[Any]:
    try:
        action = next(gen)
        while True:
            with _LOCK:
                RECORDED.setdefault(key, []).append(action)
            action = gen.send((yield action))
    except StopIteration:
        return


def recording_run_step(self: engine.Executor, sdef: engine.StepDef, gen: Any, host: str) -> Any:
    if RECORDING and not self.dry_run and not sdef.local:
        gen = _tap(gen, (host, sdef.name))
    return _run_step(self, sdef, gen, host)


engine.Executor.run_step = recording_run_step  # type: ignore[method-assign]

# What a bootstrap spends outside its plays, timed by wrapping the three calls run_bootstrap
# makes before the first play (they are looked up as module globals at call time).
OVERHEAD: dict[str, float] = {}


def _timed(label: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            OVERHEAD[label] = OVERHEAD.get(label, 0.0) + time.monotonic() - t

    return wrapper


phases_mod.connect_all = _timed("connect", phases_mod.connect_all)
runner.check_steps = _timed("step checks", runner.check_steps)
pki_mod.ensure_pki = _timed("PKI", pki_mod.ensure_pki)


def quiet(_: str) -> None:
    pass


def lab_env() -> dict[str, str]:
    env = {}
    for line in lab_paths.ENV_FILE.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v.strip("'")
    return env


# -- vkp runs and their figures --------------------------------------------------------------


def bootstrap(spec: ClusterSpec, plan: Plan, state: ClusterState) -> tuple[dict[str, Any], float]:
    OVERHEAD.clear()
    t = time.monotonic()
    report = run_bootstrap(spec, plan, state, up_to=UP_TO, log=quiet)
    report["overhead"] = dict(OVERHEAD)
    return report, time.monotonic() - t


def print_report(label: str, report: dict[str, Any], wall: float) -> None:
    print(f"\n== {label} ==")
    print(f"  {'play':<16} {'hosts':>5} {'seconds':>8} {'facts rt':>9} {'ok':>4} {'changed':>8}")
    per_host: dict[str, float] = {}
    local = 0.0
    barrier = 0.0
    for p in report["plays"]:
        facts_rt = sum(int(f["round_trips"]) for f in p["facts"].values())
        print(
            f"  {p['play']:<16} {len(p['hosts']):>5} {p['seconds']:>8.2f} {facts_rt:>9} "
            f"{p['ok']:>4} {p['changed']:>8}"
        )
        in_play: dict[str, float] = {}
        for r in p["results"]:
            if r["host"] == "local":
                local += r["seconds"]
                in_play["local"] = in_play.get("local", 0.0) + r["seconds"]
            else:
                per_host[r["host"]] = per_host.get(r["host"], 0.0) + r["seconds"]
                in_play[r["host"]] = in_play.get(r["host"], 0.0) + r["seconds"]
        for host, f in p["facts"].items():
            per_host[host] = per_host.get(host, 0.0) + float(f["seconds"])
            in_play[host] = in_play.get(host, 0.0) + float(f["seconds"])
        barrier += max(in_play.values(), default=0.0)
    print(
        f"\n  {'step':<28} {'hosts':>5} {'changed':>8} {'median s':>9} {'max s':>7} "
        f"{'round trips':>12} {'max/host':>9}"
    )
    for p in report["plays"]:
        facts = list(p["facts"].values())
        if facts:
            secs = [float(f["seconds"]) for f in facts]
            trips = [int(f["round_trips"]) for f in facts]
            print(
                f"  {'(facts) ' + p['play']:<28} {len(facts):>5} {'':>8} {statistics.median(secs):>9.3f} "
                f"{max(secs):>7.3f} {sum(trips):>12} {max(trips):>9}"
            )
        by_step: dict[str, list[dict[str, Any]]] = {}
        for r in p["results"]:
            by_step.setdefault(r["step"], []).append(r)
        for name, rs in by_step.items():
            secs = [r["seconds"] for r in rs]
            trips = [r["round_trips"] for r in rs]
            changed = sum(r["status"] == "changed" for r in rs)
            print(
                f"  {name:<28} {len(rs):>5} {changed:>8} {statistics.median(secs):>9.3f} "
                f"{max(secs):>7.3f} {sum(trips):>12} {max(trips):>9}"
            )
    slowest, path = max(per_host.items(), key=lambda kv: kv[1])
    critical = path + local
    plays_sum = sum(p["seconds"] for p in report["plays"])
    trips = report["round_trips"]
    print(
        f"\n  SSH round trips: {sum(trips.values())} in all, "
        + ", ".join(f"{h.removeprefix(NAME + '-')} {n}" for h, n in trips.items())
    )
    overhead = ", ".join(f"{k} {v:.2f} s" for k, v in report["overhead"].items())
    print(f"  bootstrap wall time {wall:.2f} s: plays {plays_sum:.2f} s, {overhead}")
    print(
        f"  critical path {critical:.2f} s = {slowest}'s steps and facts {path:.2f} s "
        f"+ local steps (etcd.health) {local:.2f} s"
    )
    print(
        f"  wall / critical path: {wall / critical:.2f}   (plays / critical path: {plays_sum / critical:.2f})"
    )
    print(f"  play-barrier bound (sum over plays of the slowest host): {barrier:.2f} s")


# -- the Ansible translation -----------------------------------------------------------------


class Unsafe(str):
    """A value Ansible must never template: file contents and shell scripts hold {{ and {#."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    Unsafe,
    lambda d, v: d.represent_scalar("!unsafe", str(v), style="|" if "\n" in v else None),
)


def _owner(owner: str | None) -> dict[str, str]:
    if not owner:
        return {}
    user, _, group = owner.partition(":")
    return {"owner": user, **({"group": group} if group else {})}


def _split(cmd: Cmd) -> list[Unsafe]:
    return [Unsafe(a.reveal() if isinstance(a, Secret) else a) for a in cmd.args]


@dataclasses.dataclass
class Translation:
    plays: list[dict[str, Any]]
    hostvars: dict[str, dict[str, Any]]
    counts: dict[str, int]


def translate(playbook: Playbook, cl: Cluster, *, checks_only: bool, facts: bool) -> Translation:
    """One Ansible play per vkp play. Tasks are shared by the play's hosts and read their
    per-host arguments (a node's certificates, its etcd config) from host variables, so the
    hosts run each task in parallel as they run each step in vkp; a host without that action
    skips the task."""
    sdefs = registry()
    hostvars: dict[str, dict[str, Any]] = {n.name: {} for n in cl.plan.nodes}
    plays: list[dict[str, Any]] = []
    counts = {"facts": 0, "file": 0, "copy": 0, "command": 0, "restart": 0}
    n = 0
    phases = create_phases()
    for play in playbook.for_phases(set(phases[: phases.index(UP_TO) + 1])):
        nodes = play.hosts.select(cl.plan)
        tasks: list[dict[str, Any]] = []
        if any(sdefs[s].local for s in play.steps):
            continue  # etcd.health is an HTTPS check from this machine, not a host action
        if facts:
            n += 1
            var = f"v{n}"
            for node in nodes:
                # The probes the runner gathers in its one facts round trip, from the public
                # step definitions.
                probes = [
                    probe
                    for sdef in (sdefs[s] for s in play.steps)
                    if sdef.probes is not None and not sdef.local
                    for probe in sdef.probes(node, cl)
                ]
                if probes:
                    hostvars[node.name][var] = _split(facts_command(list(dict.fromkeys(probes))))
            tasks.append(
                {
                    "name": f"facts {play.name}",
                    "command": {"argv": f"{{{{ {var} }}}}"},
                    "become": True,
                    "changed_when": False,
                    "when": f"{var} is defined",
                }
            )
            counts["facts"] += 1
        for step_name in play.steps:
            per_host = {node.name: RECORDED.get((node.name, step_name), []) for node in nodes}
            file_regs: list[str] = []
            width = max((len(a) for a in per_host.values()), default=0)
            for j in range(width):
                kinds: dict[str, list[str]] = {}
                for host, actions in per_host.items():
                    if j < len(actions):
                        kinds.setdefault(type(actions[j]).__name__, []).append(host)
                for kind, hosts in kinds.items():
                    task = _task(kind, step_name, checks_only, file_regs)
                    if task is None:
                        continue
                    n += 1
                    var = f"v{n}"
                    for host in hosts:
                        hostvars[host][var] = _args(per_host[host][j])
                    task["when"] = f"{var} is defined" + (
                        f" and ({' or '.join(f'{r} is changed' for r in file_regs)})"
                        if kind == "Restart"
                        else ""
                    )
                    if kind in ("Upload", "EnsureDir"):
                        file_regs.append(f"r{n}")
                        task["register"] = f"r{n}"
                    _fill(task, var)
                    tasks.append(task)
                    counts[
                        {"Upload": "copy", "EnsureDir": "file", "Run": "command"}.get(kind, "restart")
                    ] += 1
        plays.append(
            {
                "name": play.name,
                "hosts": [node.name for node in nodes],
                "gather_facts": False,
                "tasks": tasks,
            }
        )
    return Translation(plays, hostvars, counts)


def _task(kind: str, step_name: str, checks_only: bool, file_regs: list[str]) -> dict[str, Any] | None:
    if kind in ("Warn", "Local"):
        return None
    if checks_only and kind in ("Run", "Restart"):
        return None
    if kind == "Restart" and not file_regs:
        return None
    return {"name": f"{step_name} {kind.lower()}", "become": True}


def _args(action: Any) -> dict[str, Any]:
    if isinstance(action, Upload):
        try:
            content = action.data.decode()
        except UnicodeDecodeError:
            raise SystemExit(f"{action.path}: binary content has no copy content= form") from None
        mode = format(action.mode, "04o")
        return {"path": action.path, "content": Unsafe(content), "mode": mode, **_owner(action.owner)}
    if isinstance(action, EnsureDir):
        return {"path": action.path, "mode": format(action.mode, "04o"), **_owner(action.owner)}
    if isinstance(action, Run):
        if action.stdin is not None:
            raise SystemExit("a Run with stdin: the translation has no stdin support yet")
        return {
            "argv": _split(action.cmd),
            "become": action.root,
            "check": action.check,
            "changes": action.changes,
        }
    if isinstance(action, Restart):
        return {"argv": _split(Cmd.shell(engine._RESTART_SCRIPT, action.service))}
    raise TypeError(action)


def _fill(task: dict[str, Any], var: str) -> None:
    def ref(field: str, default_omit: bool = False) -> str:
        return f"{{{{ {var}.{field}{' | default(omit)' if default_omit else ''} }}}}"

    kind = task["name"].rsplit(" ", 1)[1]
    owner = {"owner": ref("owner", True), "group": ref("group", True)}
    if kind == "upload":
        task["copy"] = {"content": ref("content"), "dest": ref("path"), "mode": ref("mode"), **owner}
    elif kind == "ensuredir":
        task["file"] = {"path": ref("path"), "state": "directory", "mode": ref("mode"), **owner}
    elif kind == "run":
        task["command"] = {"argv": ref("argv")}
        task["become"] = ref("become")
        task["register"] = "r_cmd"
        task["failed_when"] = f"{var}.check and r_cmd.rc != 0"
        task["changed_when"] = f"{var}.changes and r_cmd.rc == 0"
    else:  # restart
        task["command"] = {"argv": ref("argv")}
        task["register"] = "r_restart"
        task["changed_when"] = "'restarted' in r_restart.stdout"


# A notification callback: per task, how many hosts reported ok / changed / failed / skipped.
CALLBACK = """
import json, os, time
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vkp_bench"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.tasks, self.current = [], None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.current = {"name": task.get_name(), "start": time.monotonic(), "hosts": {}}
        self.tasks.append(self.current)

    def _set(self, result, status):
        self.current["hosts"][result._host.get_name()] = status
        self.current["end"] = time.monotonic()

    def v2_runner_on_ok(self, result):
        self._set(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._set(result, "failed")
        self.current["error"] = str(result._result.get("msg") or result._result.get("stderr"))[:300]

    def v2_runner_on_skipped(self, result):
        self._set(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._set(result, "unreachable")
        self.current["error"] = str(result._result.get("msg"))[:300]

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["VKP_BENCH_ANSIBLE_OUT"], "w") as f:
            json.dump(self.tasks, f)
"""


def ansible_bin() -> Path:
    try:
        import ansible  # noqa: F401  (the bench extra)

        return Path(sys.executable).parent
    except ImportError:
        pass
    if not (ANSIBLE_VENV / "bin" / "ansible-playbook").exists():
        print(f"(installing ansible-core into {ANSIBLE_VENV})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True, timeout=600
        )
    return ANSIBLE_VENV / "bin"


class AnsibleRun:
    """A private directory (0700: host variables hold the nodes' private keys) with the
    inventory, host variables, ansible.cfg and the callback; removed by cleanup()."""

    def __init__(self, state: ClusterState, forks: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vkp-bench-ansible-"))
        self.bin = ansible_bin()
        t = time.monotonic()
        self.version = subprocess.run(
            [str(self.bin / "ansible-playbook"), "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        # Part of every run's wall time below, whatever the playbook: worth knowing apart.
        self.startup = time.monotonic() - t
        (self.dir / "callback_plugins").mkdir()
        (self.dir / "callback_plugins" / "vkp_bench.py").write_text(CALLBACK)
        shutil.copy(state.path / "hosts.yaml", self.dir / "hosts.yaml")
        (self.dir / "ansible.cfg").write_text(
            "[defaults]\n"
            f"forks = {forks}\n"
            "gathering = explicit\n"
            "host_key_checking = True\n"
            "interpreter_python = /usr/bin/python3\n"
            "callbacks_enabled = vkp_bench\n"
            f"callback_plugins = {self.dir / 'callback_plugins'}\n"
            "retry_files_enabled = False\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
        )
        self.runs = 0

    def run(self, tr: Translation) -> dict[str, Any]:
        self.runs += 1
        hv = self.dir / "host_vars"
        shutil.rmtree(hv, ignore_errors=True)
        hv.mkdir()
        for host, variables in tr.hostvars.items():
            (hv / f"{host}.yml").write_text(yaml.dump(variables, Dumper=_Dumper, sort_keys=False))
        book = self.dir / f"playbook-{self.runs}.yml"
        book.write_text(yaml.dump(tr.plays, Dumper=_Dumper, sort_keys=False))
        out = self.dir / f"result-{self.runs}.json"
        env = os.environ | {
            "ANSIBLE_CONFIG": str(self.dir / "ansible.cfg"),
            "VKP_BENCH_ANSIBLE_OUT": str(out),
            # A fresh ControlPersist directory per run: every run opens its own connections,
            # as every vkp run does, instead of inheriting the previous run's masters.
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.dir / f"cp-{self.runs}"),
            "ANSIBLE_LOCAL_TEMP": str(self.dir / "tmp"),
        }
        t = time.monotonic()
        proc = subprocess.run(
            [str(self.bin / "ansible-playbook"), "-i", str(self.dir / "hosts.yaml"), str(book)],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=ANSIBLE_TIMEOUT,
        )
        wall = time.monotonic() - t
        tasks = json.loads(out.read_text()) if out.exists() else []
        if proc.returncode != 0:
            failed = [tk for tk in tasks if "error" in tk]
            detail = f"{failed[0]['name']}: {failed[0]['error']}" if failed else proc.stdout[-1500:]
            raise SystemExit(f"ansible-playbook failed ({proc.returncode}): {detail}\n{proc.stderr[-800:]}")
        statuses: dict[str, dict[str, int]] = {}
        for tk in tasks:
            kind = tk["name"].rsplit(" ", 1)[1] if " " in tk["name"] else tk["name"]
            kind = {"upload": "copy", "ensuredir": "file", "run": "command"}.get(kind, kind)
            kind = "facts" if tk["name"].startswith("facts ") else kind
            for st in tk["hosts"].values():
                statuses.setdefault(kind, {}).setdefault(st, 0)
                statuses[kind][st] += 1
        host_tasks = sum(sum(st != "skipped" for st in tk["hosts"].values()) for tk in tasks)
        return {"wall": wall, "tasks": len(tasks), "host_tasks": host_tasks, "statuses": statuses}

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def reset(spec: ClusterSpec, plan: Plan, state: ClusterState) -> tuple[int, list[str]]:
    """Back to the cold run's starting point as far as both tools' actions go: every file vkp
    uploaded removed, and every service it started stopped.

    Stopped, so that both tools start the services from the same point (a cold first run).
    """
    files: dict[str, list[str]] = {}
    services: dict[str, list[str]] = {}
    for (host, _), actions in RECORDED.items():
        files.setdefault(host, []).extend(a.path for a in actions if isinstance(a, Upload))
        for a in actions:
            if isinstance(a, Run) and a.cmd.args[:2] == ("systemctl", "start"):
                services.setdefault(host, []).extend(str(x) for x in a.cmd.args[2:])
    conns = connect_all(spec, state, [n for n in plan.nodes if n.name in files])
    try:
        for name, conn in conns.items():
            if services.get(name):
                conn.run(sudo(Cmd("systemctl", "stop", *services[name])))
            conn.run(sudo(Cmd("rm", "-f", "--", *files[name])))
    finally:
        for c in conns.values():
            c.close()
    return sum(len(v) for v in files.values()), sorted({s for v in services.values() for s in v})


def tasks_text(run: dict[str, Any]) -> str:
    per_kind = "; ".join(
        f"{kind} " + " ".join(f"{k}={v}" for k, v in sorted(sts.items()))
        for kind, sts in run["statuses"].items()
    )
    return f"{run['tasks']} tasks, {run['host_tasks']} host-tasks: {per_kind}"


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    global RECORDING
    ap = argparse.ArgumentParser(description="the bootstrap phases on the lab, against Ansible")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    args = ap.parse_args()
    if not lab_mod.status().get("up"):
        print("the lab is not up: run `vkp lab up` first", file=sys.stderr)
        return 2
    os.environ.update(lab_env())
    os.environ.setdefault("VKP_STATE_DIR", "/tmp/vkp-bench-bootstrap")
    started = time.monotonic()

    raw = yaml.safe_load((REPO / "inventory" / "lab.yaml").read_text())
    raw["name"] = NAME
    raw["network"]["pool"] = POOL
    spec_dir = Path(tempfile.mkdtemp(prefix="vkp-bench-spec-"))
    spec_path = spec_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(spec_path, env=os.environ)
    if ClusterState.exists(NAME):
        # Left by an interrupted run of this bench: its guests would be warm, not fresh.
        cluster_mod.delete_cluster(NAME, quiet)
    ansible: AnsibleRun | None = None
    try:
        t = time.monotonic()
        created = cluster_mod.create_cluster(spec, quiet, up_to="vms")
        nodes = created["nodes"]
        roles = {r: sum(n["role"] == r for n in nodes) for r in ("etcd", "master", "worker")}
        print(
            f"cluster {NAME}: {len(nodes)} VMs ({', '.join(f'{v} {k}' for k, v in roles.items())}) "
            f"in {time.monotonic() - t:.1f} s (create-cluster --up-to vms); bootstrap up to {UP_TO}"
        )
        state = ClusterState.load(NAME)
        with login.session_for(spec) as session:
            inv = machines.resolve(session.content, spec, f"vkp/{spec.name}")
            plan = make_plan(spec, hosts=[h.name for h in inv.hosts])

        RECORDING = True
        cold, cold_wall = bootstrap(spec, plan, state)
        RECORDING = False
        print_report("cold bootstrap (fresh VMs)", cold, cold_wall)
        warm, warm_wall = bootstrap(spec, plan, state)
        print_report("warm bootstrap (nothing to change)", warm, warm_wall)
        if warm["changed"] or warm["restarts"]:
            print(f"  !! the warm run changed {warm['changed']} step(s), restarted {warm['restarts']}")

        # -- Ansible, side by side ---------------------------------------------------------
        playbook = load_playbook(PLAYBOOK)
        cl = Cluster(spec=spec, plan=plan, state=state, pki=load_pki(state))
        checks = translate(playbook, cl, checks_only=True, facts=True)
        actions = translate(playbook, cl, checks_only=False, facts=False)
        forks = len(plan.nodes)
        ansible = AnsibleRun(state, forks)
        print(f"\n== Ansible ({ansible.version}, forks {forks}, ssh pipelining on, no fact gathering) ==")
        print(
            "  what vkp did on the cold run, all hosts: "
            + ", ".join(
                f"{k} {sum(isinstance(a, c) for acts in RECORDED.values() for a in acts)}"
                for k, c in (("EnsureDir", EnsureDir), ("Upload", Upload), ("Run", Run))
            )
            + f" over {len({h for h, _ in RECORDED})} hosts"
        )
        runs: dict[tuple[str, str], int] = {}
        for (_, step_name), acts in RECORDED.items():
            for a in acts:
                if isinstance(a, Run):
                    key = (
                        step_name,
                        a.cmd.masked() if len(a.cmd.masked()) < 60 else a.cmd.masked()[:57] + "...",
                    )
                    runs[key] = runs.get(key, 0) + 1
        for (step_name, cmd), count in runs.items():
            print(f"    {step_name:<16} {cmd}  (x{count})")
        print(f"  'same checks' playbook tasks: {checks.counts}")
        print(f"  'same actions' playbook tasks: {actions.counts}")
        health = sum(r["seconds"] for p in warm["plays"] for r in p["results"] if r["host"] == "local")

        a_checks = ansible.run(checks)
        a_actions = ansible.run(actions)
        print("\n  warm cluster (everything already in place)        wall s   ansible / vkp")
        print(f"  vkp warm run (run_bootstrap)                     {warm_wall:7.2f}")
        print(
            f"  ansible, same checks (facts + file + copy)       {a_checks['wall']:7.2f}   "
            f"{a_checks['wall'] / warm_wall:6.1f}x   ({tasks_text(a_checks)})"
        )
        print(
            f"  ansible, same actions (file + copy + commands)   {a_actions['wall']:7.2f}   "
            f"{a_actions['wall'] / warm_wall:6.1f}x   ({tasks_text(a_actions)})"
        )
        print(
            f"  (vkp's time includes etcd.health, {health:.2f} s, which Ansible does not do; "
            f"`ansible-playbook --version` alone takes {ansible.startup:.2f} s)"
        )

        removed, stopped = reset(spec, plan, state)
        reset_vkp, reset_vkp_wall = bootstrap(spec, plan, state)
        reset(spec, plan, state)
        a_reset = ansible.run(actions)
        print(
            f"\n  reset ({removed} uploaded files removed, {', '.join(stopped)} stopped)"
            "         wall s   ansible / vkp"
        )
        print(
            f"  vkp                                              {reset_vkp_wall:7.2f}             "
            f"({reset_vkp['changed']} steps changed, restarts: {len(reset_vkp['restarts'])})"
        )
        print(
            f"  ansible, same actions                            {a_reset['wall']:7.2f}   "
            f"{a_reset['wall'] / reset_vkp_wall:6.1f}x   ({tasks_text(a_reset)})"
        )
        after, after_wall = bootstrap(spec, plan, state)
        print(
            f"  vkp run after Ansible's: {after['changed']} step(s) changed, "
            f"{len(after['restarts'])} restarts "
            f"in {after_wall:.2f} s (0 changed: Ansible wrote exactly vkp's files)"
        )
    finally:
        if ansible is not None:
            ansible.cleanup()
        shutil.rmtree(spec_dir, ignore_errors=True)
        if not args.keep:
            cluster_mod.delete_cluster(NAME, quiet)
    print(f"\nbench total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
