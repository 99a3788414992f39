"""Boot-to-SSH time of lab guests started at once, and their idle memory.

Run as root: .venv/bin/python bench/guest_boot.py [N ...]   (default 1 3 6 9)
Uses guest ids vkp-bench-NN and addresses 198.18.0.50-59; every guest is destroyed afterwards.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from provisioner.lab import guest, image, network, paths

SETTLE = 15.0  # seconds after the last SSH answer before memory counts as idle


def seed(name: str, mac: str, ip: str) -> guest.NoCloudSeed:
    netcfg = {
        "version": 2,
        "ethernets": {"id0": {"match": {"macaddress": mac}, "set-name": "eth0", "addresses": [f"{ip}/24"]}},
    }
    return guest.NoCloudSeed(
        meta_data=f"instance-id: {name}\nlocal-hostname: {name}\n",
        user_data="#cloud-config\n{}\n",
        network_config=yaml.safe_dump(guest.translate_network_config(netcfg)),
    )


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / 100.0  # USER_HZ is 100 on Linux


def wait_ssh(ip: str, deadline: float) -> float | None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, 22), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4) == b"SSH-":
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.1)
    return None


def run(n: int, root: Path, gdir: Path) -> None:
    specs = [(f"vkp-bench-{i:02d}", f"00:50:56:18:01:{50 + i:02x}", f"198.18.0.{50 + i}") for i in range(n)]
    for gid, _, _ in specs:
        guest.destroy_guest(gid, guests_dir=gdir)
    times: dict[str, float | None] = {}

    def start(gid: str, mac: str, ip: str) -> None:
        s = seed(gid, mac, ip)
        guest.start_guest(gid, hostname=gid, mac=mac, image_root=root, guests_dir=gdir, seed=s)

    def one(gid: str, mac: str, ip: str) -> None:
        t0 = time.monotonic()
        start(gid, mac, ip)
        done = wait_ssh(ip, t0 + 180)
        times[gid] = None if done is None else done - t0

    cpu0 = busy_cpu_seconds()
    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=s) for s in specs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    cpu = busy_cpu_seconds() - cpu0
    ok = [v for v in times.values() if v is not None]
    line = f"{n} guest(s) at once: SSH after "
    if ok:
        line += f"min {min(ok):.1f} s, median {statistics.median(ok):.1f} s, max {max(ok):.1f} s"
        line += f"; all in {wall:.1f} s"
    if len(ok) != n:
        line += f"; {n - len(ok)} never answered"
    print(line, flush=True)
    print(f"  CPU busy until the last SSH answer: {cpu:.1f} s ({cpu / n:.1f} s per guest)", flush=True)
    time.sleep(SETTLE)
    mems = [guest.guest_memory(gid) for gid, _, _ in specs]
    rss = statistics.mean(m["rss"] for m in mems) / 2**20
    pss = statistics.mean(m["pss"] for m in mems) / 2**20
    procs = statistics.mean(m["processes"] for m in mems)
    print(f"  idle per guest: RSS {rss:.0f} MiB, PSS {pss:.0f} MiB, {procs:.0f} processes", flush=True)
    # Warm: the same disks, powered off then on.
    if n == 1:
        gid, mac, ip = specs[0]
        guest.stop_guest(gid, guests_dir=gdir)
        t = time.monotonic()
        start(gid, mac, ip)
        done = wait_ssh(ip, t + 180)
        print(f"  warm restart (same disk): SSH after {(done or float('nan')) - t:.1f} s", flush=True)
    t = time.monotonic()
    for gid, _, _ in specs:
        guest.destroy_guest(gid, guests_dir=gdir)
    print(f"  destroy all: {time.monotonic() - t:.1f} s", flush=True)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1, 3, 6, 9]
    if max(counts) > 10:
        sys.exit("at most 10 guests: the bench uses 198.18.0.50-59")
    root = image.build_image(paths.CACHE, log=print)
    network.ensure_bridge()
    with tempfile.TemporaryDirectory(prefix="vkp-bench-") as d:
        for n in counts:
            run(n, root, Path(d))


if __name__ == "__main__":
    main()
