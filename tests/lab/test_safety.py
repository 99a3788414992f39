"""Safe under faults and a shared vCenter, end to end on the lab through the CLI.

What a CI pipeline in a shared vCenter checks: a same-named cluster of another team survives
our delete, a VM of someone else in our folder survives it too, a second run on a busy cluster
is refused at once, Ctrl-C stops a run within seconds and the next run finishes it, and a
vCenter that swallows packets or a node command that never returns ends in a clear timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyVmomi import vim

from provisioner.vsphere import find, ownership, vms, waits
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab


def vkp(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VKP, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def write_spec(path: Path, name: str, pool: str, *, folder: str | None = None, etcd: int = 3) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "plan": "dev",
        "vsphere": {"datacenter": "DC0", "cluster": "DC0_C0", "datastore": "LocalDS_0",
                    "network": "VM Network", "template": "debian-12"},
        "topology": {"etcd": {"count": etcd}},
        "network": {"pool": pool, "prefix": 24, "gateway": "198.18.0.1", "dns": ["198.18.0.1"],
                    "api_endpoint": {"mode": "direct"}},
    }  # fmt: skip
    if folder:
        spec["vsphere"]["folder"] = folder
    path.write_text(yaml.safe_dump(spec))
    return path


def lab_env(lab: LabHandle, state_dir: Path) -> dict[str, str]:
    return {**os.environ, **lab.env(), "VKP_STATE_DIR": str(state_dir)}


def by_id(lab: LabHandle, name: str, cid: str) -> dict[str, Any]:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        owned = ownership.find_owned(s.content, name, cid)
        return {
            "vms": sorted(vm.name for vm in owned.vms),
            "rules": sorted(r.name for _, r in owned.rules),
            "folders": sorted(find.inventory_path(f) for f in owned.folders),
        }


@pytest.fixture()
def cleanup(lab: LabHandle) -> Iterator[list[str]]:
    """Cluster names whose every trace is removed afterwards, whatever the test left."""
    names: list[str] = []
    yield names
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        c = s.content
        for name in names:
            for cand in ownership.candidates(c, name):
                owned = ownership.find_owned(c, name, cand.cluster_id)
                from provisioner.vsphere.provider import destroy as _destroy

                _destroy(s, owned, print)
    for name in names:
        lab.wait_guests_gone(name)


def test_two_clusters_of_one_name_and_a_foreign_vm(
    lab: LabHandle, tmp_path: Path, cleanup: list[str]
) -> None:
    cleanup.append("twin")
    env_a, env_b = lab_env(lab, tmp_path / "a"), lab_env(lab, tmp_path / "b")
    spec_a = write_spec(tmp_path / "a.yaml", "twin", "198.18.0.100-198.18.0.119")
    # vsphere.folder names the parent of the cluster's own folder, as the plan shows it.
    spec_b = write_spec(tmp_path / "b.yaml", "twin", "198.18.0.120-198.18.0.139", folder="team-b")

    # While A's create runs, a second create of A is refused at once, naming the first.
    first = subprocess.Popen(
        [VKP, "create-cluster", "-f", str(spec_a), "--yes", "--up-to", "vms", "-o", "json"],
        env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder = tmp_path / "a" / ".locks" / "twin.holder.json"
    deadline = time.monotonic() + 30
    while not holder.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert holder.exists(), "the first run never took the lock"
    t = time.monotonic()
    second = vkp(env_a, "create-cluster", "-f", str(spec_a), "--yes", "--up-to", "vms")
    took = time.monotonic() - t
    assert second.returncode == 15, second.stderr
    assert took < 1.0, f"refused after {took:.2f}s"
    assert str(first.pid) in second.stderr and "create-cluster" in second.stderr, second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    id_a = json.loads(out)["cluster_id"]

    r = vkp(env_b, "create-cluster", "-f", str(spec_b), "--yes", "--up-to", "vms", "-o", "json")
    assert r.returncode == 0, r.stderr
    id_b = json.loads(r.stdout)["cluster_id"]
    assert id_a != id_b
    held_b = by_id(lab, "twin", id_b)
    assert held_b == {
        "vms": ["twin-etcd-1", "twin-etcd-2", "twin-etcd-3", "twin-master-1", "twin-worker-1"],
        "rules": [f"vkp-twin-etcd-{id_b}"],
        "folders": ["/DC0/vm/team-b/twin"],
    }
    assert by_id(lab, "twin", id_a)["folders"] == ["/DC0/vm/vkp/twin"]

    # Someone puts a VM of theirs into A's folder.
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        c = s.content
        dc = find.datacenter(c, "DC0")
        folder_a = find.folder(c, dc, "vkp/twin")
        template = find.template(c, dc, "debian-12")
        cluster = find.cluster(c, dc, "DC0_C0")
        where = vim.vm.RelocateSpec(
            pool=find.resource_pool(c, dc, cluster, None), datastore=find.datastore(c, dc, "LocalDS_0")
        )
        spec = vim.vm.CloneSpec(location=where, powerOn=False, template=False)
        waits.wait_for_tasks(
            c, [vms.clone(template, folder_a, "not-vkps", spec)], deadline=time.monotonic() + 60
        )

    # Without local state the name alone is ambiguous: both are listed, nothing is deleted.
    r = vkp(lab_env(lab, tmp_path / "none"), "delete-cluster", "twin", "--yes")
    assert r.returncode == 4, r.stderr
    assert id_a in r.stderr and id_b in r.stderr and "--cluster-id" in r.stderr
    assert "/DC0/vm/team-b/twin" in r.stderr and "/DC0/vm/vkp/twin" in r.stderr

    r = vkp(env_a, "delete-cluster", "twin", "--yes", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["deleted"] == {"vms": 5, "rules": 1, "folders": 1}
    assert doc["kept_folders"] == ["/DC0/vm/vkp/twin"] and doc["leftovers"] == []
    assert by_id(lab, "twin", id_a) == {"vms": [], "rules": [], "folders": []}
    assert by_id(lab, "twin", id_b) == held_b, "the other team's cluster was touched"
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        c = s.content
        dc = find.datacenter(c, "DC0")
        folder_a = find.folder(c, dc, "vkp/twin")
        assert folder_a is not None, "a folder holding a foreign VM was destroyed"
        foreign = find.vms_in_folder(folder_a)
        assert [vm.name for vm in foreign] == ["not-vkps"]
        waits.wait_for_tasks(c, [vms.destroy(foreign[0])], deadline=time.monotonic() + 60)
        waits.wait_for_tasks(c, [vms.destroy_folder(folder_a)], deadline=time.monotonic() + 60)

    # The other one, from a machine without its state: by id.
    r = vkp(lab_env(lab, tmp_path / "none"), "delete-cluster", "twin", "--yes", "--cluster-id", id_b)
    assert r.returncode == 0, r.stderr
    assert by_id(lab, "twin", id_b) == {"vms": [], "rules": [], "folders": []}


def userdata_left(lab: LabHandle, name: str) -> list[str]:
    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        out = []
        for vm in find.retrieve(s.content, s.content.rootFolder, [vim.VirtualMachine], ["name"]):
            extra = {o.key: o.value for o in vm.config.extraConfig or []}
            if extra.get("vkp.cluster.name") == name and extra.get("guestinfo.userdata"):
                out.append(vm.name)
        return out


def interrupt_when(
    env: dict[str, str], args: list[str], marker: str, sig: int, after: float = 0.0
) -> tuple[int, float, str]:
    """Start vkp, send sig once marker shows in its progress (plus after seconds); return
    (exit code, seconds from the signal to the exit, everything it printed on stderr)."""
    proc = subprocess.Popen(
        [VKP, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    time.sleep(after)
    proc.send_signal(sig)
    sent = time.monotonic()
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, time.monotonic() - sent, "".join(seen) + rest


def test_interrupts_stop_within_seconds_and_a_rerun_converges(
    lab: LabHandle, tmp_path: Path, cleanup: list[str]
) -> None:
    cleanup.append("intr")
    env = lab_env(lab, tmp_path / "state")
    spec = write_spec(tmp_path / "intr.yaml", "intr", "198.18.0.140-198.18.0.149", etcd=1)
    create = ["create-cluster", "-f", str(spec), "--yes", "--up-to", "vms"]

    # Ctrl-C while the clones are in flight.
    code, took, said = interrupt_when(env, create, "preflight ok", signal.SIGINT)
    assert code == 130, said
    assert took < 5, f"SIGINT took {took:.1f}s"
    assert "interrupted by SIGINT" in said
    r = vkp(env, "describe-cluster", "intr", "-o", "json")
    assert {p["name"]: p["status"] for p in json.loads(r.stdout)["phases"]}["vms"] == "interrupted"

    # SIGTERM (a pipeline's timeout) while the guests boot: their host keys do not linger.
    code, took, said = interrupt_when(env, create, "powered on", signal.SIGTERM)
    assert code == 143, said
    assert took < 5, f"SIGTERM took {took:.1f}s"
    assert userdata_left(lab, "intr") == [], "a private host key stayed in a VM's properties"

    r = vkp(env, *create, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [n["name"] for n in json.loads(r.stdout)["nodes"]] == [
        "intr-etcd-1",
        "intr-master-1",
        "intr-worker-1",
    ]
    assert vkp(env, "ssh", "intr", "intr-worker-1", "--", "hostname").stdout.strip() == "intr-worker-1"

    # A node command that never returns: the run's deadline ends it, naming what it waited for.
    hang = (
        "sudo sh -c 'mv /usr/bin/cloud-init /usr/bin/cloud-init.real && "
        'printf "#!/bin/sh\\nexec sleep 3600\\n" > /usr/bin/cloud-init && chmod +x /usr/bin/cloud-init\''
    )
    assert vkp(env, "ssh", "intr", "intr-worker-1", "--", hang).returncode == 0
    t = time.monotonic()
    r = vkp(env, *create, "--timeout", "20s", "-o", "json")
    took = time.monotonic() - t
    assert r.returncode == 13, r.stderr
    assert took < 30, f"the 20 s deadline ended the run after {took:.0f}s"
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == 13 and doc["error"]["phase"] == "vms"
    assert "cloud-init status --wait" in doc["error"]["message"], doc
    restore = "sudo mv /usr/bin/cloud-init.real /usr/bin/cloud-init"
    assert vkp(env, "ssh", "intr", "intr-worker-1", "--", restore).returncode == 0
    assert vkp(env, *create).returncode == 0

    r = vkp(env, "delete-cluster", "intr", "--yes")
    assert r.returncode == 0, r.stderr


def test_a_blackholed_vcenter_times_out_clearly(lab: LabHandle, tmp_path: Path) -> None:
    # Accepts the TCP connection (the kernel does, from the backlog) and never says a word.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        env = {**lab_env(lab, tmp_path / "state"), "VKP_VSPHERE_SERVER": f"127.0.0.1:{hole.getsockname()[1]}"}
        spec = write_spec(tmp_path / "hole.yaml", "hole", "198.18.0.150-198.18.0.159", etcd=1)
        for extra, bound in (([], 30.0), (["--timeout", "5s"], 10.0)):
            t = time.monotonic()
            r = vkp(env, "create-cluster", "-f", str(spec), "--yes", *extra, "-o", "json", timeout=120)
            took = time.monotonic() - t
            assert r.returncode == 13, r.stderr
            assert took < bound, f"gave up after {took:.0f}s"
            error = json.loads(r.stdout)["error"]
            assert "did not answer within" in error["message"] and error["hint"], error
    assert not (tmp_path / "state" / "hole").exists(), "a run that never reached vCenter left a cluster entry"
