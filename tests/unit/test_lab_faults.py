"""The lab's runtime faults: parsing, the file handed to the simulator, the link-restore record."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.lab import faults


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("CloneVM_Task", ("CloneVM_Task", 1)),
        ("PowerOnVM_Task:3", ("PowerOnVM_Task", 3)),
        (" Destroy_Task:1 ", ("Destroy_Task", 1)),
    ],
)
def test_parse_vsphere_fault(text: str, want: tuple[str, int]) -> None:
    assert faults.parse_vsphere_fault(text) == want


@pytest.mark.parametrize(
    "bad", ["", ":2", "CloneVM_Task:0", "CloneVM_Task:", "CloneVM_Task:x", "9Clone", "a b:1"]
)
def test_parse_vsphere_fault_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="METHOD or METHOD:K"):
        faults.parse_vsphere_fault(bad)


def test_bad_arguments_are_usage_errors_before_the_lab_is_asked() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["lab", "fault", "vsphere", "CloneVM_Task:0"])
    assert r.exit_code == 2 and "METHOD or METHOD:K" in r.output
    r = runner.invoke(main, ["lab", "fault", "network", "lab-worker-1", "--seconds", "0"])
    assert r.exit_code == 2
    r = runner.invoke(main, ["lab", "fault", "network", "lab-worker-1"])
    assert r.exit_code == 2 and "--seconds" in r.output


def _fake_simulator(d: Path, taken: list[str], stop: threading.Event) -> None:
    # Claims files the way vcsim/main.go does: rename, read, remove.
    while not stop.is_set():
        for p in d.glob("*.fault"):
            mode = stat.S_IMODE(p.stat().st_mode)
            p.rename(p.with_name(p.name + ".taken"))
            taken.append(f"{oct(mode)} {p.with_name(p.name + '.taken').read_text()}")
            p.with_name(p.name + ".taken").unlink()
        time.sleep(0.01)


def test_armed_faults_are_one_private_file_of_method_k_lines(tmp_path: Path) -> None:
    d = tmp_path / "faults"
    d.mkdir()
    taken: list[str] = []
    stop = threading.Event()
    t = threading.Thread(target=_fake_simulator, args=(d, taken, stop))
    t.start()
    try:
        faults.arm_vsphere(tmp_path, [("CloneVM_Task", 1), ("Destroy_Task", 4)])
        faults.clear_vsphere(tmp_path)
    finally:
        stop.set()
        t.join()
    assert taken == ["0o600 CloneVM_Task 1\nDestroy_Task 4\n", "0o600 clear\n"]
    assert list(d.iterdir()) == []


def test_fault_state_when_the_simulator_wrote_none(tmp_path: Path) -> None:
    assert faults.vsphere_state(tmp_path) == {"pending": [], "fired": [], "calls": {}}


def test_a_later_fault_on_the_same_guest_takes_over_the_restore(tmp_path: Path) -> None:
    record = tmp_path / "vm-1.json"
    record.write_text(
        json.dumps({"vm": "n", "interface": "vkh-none", "up_at": time.time() + 60, "token": "new"})
    )
    t = time.monotonic()
    assert faults.restore_link(record, "old") is False  # not the latest: returns at once
    assert time.monotonic() - t < 1
    assert record.exists()
    d = tmp_path / faults.NETFAULTS
    d.mkdir()
    os.replace(record, d / "vm-1.json")
    (listed,) = faults.network_faults(tmp_path)
    assert listed["vm"] == "n" and "token" not in listed
