"""Kubernetes on the lab: what the artifacts cost, how long a cluster takes to all nodes Ready,
what each guest uses, and how many such clusters this machine holds.

Run as root, from the repository, with nothing else running in the lab:

    .venv/bin/python bench/kubernetes.py [--rebuild] [--plans lab,prod]

--rebuild   build the artifacts again with the Go cache warm (drops the compiled binaries and
            the artifacts record, not the Go cache): the warm rebuild time, beside the cold
            build's own record.
--plans     which clusters to create, one after the other: lab (inventory/lab.yaml: 3 etcd,
            1 master, 2 workers) and/or prod (the prod plan from `vkp lab env` alone: 3 etcd,
            3 masters behind a virtual address, 3 workers). Each is deleted afterwards.

Per cluster it prints the seconds per phase (from create-cluster's own JSON), and the
Kubernetes phase against the slowest node's own critical path: the sum of that node's step
and fact-gathering times plus the local steps every node waits on (token, health), so the
difference is time spent waiting for other nodes or on the ordering itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from provisioner.lab import guest, kubebuild, paths
from provisioner.lab import lab as lab_mod

REPO = Path(__file__).resolve().parents[1]
VKP = str(Path(sys.executable).parent / "vkp")
SETTLE = 20.0  # seconds after all nodes are Ready before memory counts as steady


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def artifacts(rebuild: bool) -> None:
    cache = paths.CACHE / "kubernetes"
    go_dir = cache / f"go-{kubebuild.GoRecipe().hash()}"
    if rebuild:
        shutil.rmtree(go_dir, ignore_errors=True)
        kubebuild.Layout(paths.ARTIFACTS).record.unlink(missing_ok=True)
        started = time.monotonic()
        kubebuild.build(cache, paths.ARTIFACTS, log)
        warm = time.monotonic() - started
    record = kubebuild.read_record(paths.ARTIFACTS)
    assert record is not None, "no artifacts: run `vkp lab prepare` first"
    try:
        go = json.loads((go_dir / "recipe.json").read_text())
    except OSError:
        go = {}
    print("artifacts")
    go_seconds = sum(go.get("timings", {}).values())
    print(f"  Go build (fetch, unpack, openapi, 7 commands, pause): {go_seconds:.0f} s as recorded "
          f"when the binaries were last built")  # fmt: skip
    for step, secs in sorted(go.get("timings", {}).items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {step:<34} {secs:6.0f} s")
    if rebuild:
        print(f"  warm rebuild (Go cache kept), end to end: {warm:.0f} s")
    print(f"  disk: artifacts {mib(du(paths.ARTIFACTS))}, Go cache {mib(du(cache / 'go-cache'))}, "
          f"source {mib(du(cache / 'source'))}, compiled {mib(du(go_dir))}")  # fmt: skip


def vkp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VKP, *args], env=env, capture_output=True, text=True, check=False)


def lab_env(state_dir: str) -> dict[str, str]:
    base = {**os.environ, "VKP_STATE_DIR": state_dir}
    r = subprocess.run(["bash", "-c", f'eval "$({VKP} lab env)" && env -0'], env=base, capture_output=True,
                       check=True)  # fmt: skip
    return dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if "=" in item)


def critical_path(bootstrap: dict[str, Any], phase: str) -> tuple[str, float]:
    per_host: dict[str, float] = defaultdict(float)
    local = 0.0
    for play in bootstrap["plays"]:
        if play["phase"] != phase:
            continue
        for host, facts in (play.get("facts") or {}).items():
            per_host[host] += facts["seconds"]
        for r in play["results"]:
            if r["host"] == "local":
                local += r["seconds"]
            else:
                per_host[r["host"]] += r["seconds"]
    host, secs = max(per_host.items(), key=lambda kv: kv[1])
    return host, secs + local


def memory_by_role(name: str) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = defaultdict(list)
    for g in guest.list_guests(paths.GUESTS):
        if g.state == "running" and g.hostname.startswith(f"{name}-"):
            role = g.hostname.removeprefix(f"{name}-").rsplit("-", 1)[0]
            roles[role].append(guest.guest_memory(g.id)["pss"])
    return roles


def cluster(plan: str) -> int:
    state = tempfile.mkdtemp(prefix="vkp-bench-")
    env = lab_env(state)
    name = "bench" if plan == "lab" else "benchha"
    if plan == "lab":
        spec = REPO / "inventory" / "lab.yaml"
        text = spec.read_text().replace("name: lab", f"name: {name}", 1)
        path = Path(state) / "bench.yaml"
        path.write_text(text)
        args = ["create-cluster", "-f", str(path), "--yes", "-o", "json"]
    else:
        args = ["create-cluster", name, "--plan", "prod", "--yes", "-o", "json"]
    log(f"creating {name} ({plan}) ...")
    started = time.monotonic()
    r = vkp(env, *args)
    wall = time.monotonic() - started
    try:
        if r.returncode != 0:
            print(f"{plan}: create-cluster failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
            return 0
        result = json.loads(r.stdout)
        nodes = len(result["nodes"])
        print(f"\ncluster {name} ({plan} plan, {nodes} VMs): {wall:.0f} s from nothing to all nodes Ready")
        for ph in result["phases"]:
            print(f"  phase {ph['name']:<11} {ph['seconds']:6.1f} s")
        k8s = next(p for p in result["phases"] if p["name"] == "kubernetes")["seconds"]
        host, crit = critical_path(result["bootstrap"], "kubernetes")
        print(f"  kubernetes phase {k8s:.1f} s against {crit:.1f} s on the slowest node's own path ({host}): "
              f"ratio {k8s / crit:.2f}")  # fmt: skip
        time.sleep(SETTLE)
        mem = memory_by_role(name)
        total = 0
        for role, values in sorted(mem.items()):
            total += sum(values)
            print(f"  memory (PSS) per {role:<7} {mib(sum(values) / len(values))} (x{len(values)})")
        avail = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
        print(f"  cluster total {mib(total)}; available now {mib(avail)}: room for about "
              f"{int(avail // total)} more such clusters by memory")  # fmt: skip
        return total
    finally:
        d = vkp(env, "delete-cluster", name, "--yes")
        if d.returncode != 0:
            print(f"  delete-cluster {name} failed: {d.stderr[-500:]}")
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--plans", default="lab,prod")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the lab needs it)")
    lab_mod.up(lab_mod.LabOptions(), log)
    artifacts(opts.rebuild)
    for plan in [p for p in opts.plans.split(",") if p]:
        cluster(plan)


if __name__ == "__main__":
    main()
