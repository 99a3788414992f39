"""The machine-wide settings the lab sets while it is up, and puts back at `lab down`."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.lab import host


@pytest.fixture()
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc-sys"
    for key, value in (("vm.overcommit_memory", "0"), ("kernel.panic", "1"), ("kernel.panic_on_oops", "0")):
        p = root / key.replace(".", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    monkeypatch.setattr(host, "_PROC", root)
    return root


def test_up_sets_and_says_so_down_puts_back(proc: Path, tmp_path: Path) -> None:
    said: list[str] = []
    record = tmp_path / "host-sysctls.json"
    assert host.apply(record, said.append) == host.KUBELET_SYSCTLS
    assert host.read() == host.KUBELET_SYSCTLS
    assert "kernel.panic=10 (was 1)" in said[0] and "lab down" in said[0]
    # A second `lab up` must not take the lab's own values for the machine's.
    assert host.apply(record, said.append) == {}
    assert host.restore(record, said.append) == {
        "vm.overcommit_memory": "0",
        "kernel.panic": "1",
        "kernel.panic_on_oops": "0",
    }
    assert host.read() == {"vm.overcommit_memory": "0", "kernel.panic": "1", "kernel.panic_on_oops": "0"}
    assert not record.exists()


def test_a_value_changed_by_someone_else_meanwhile_stays(proc: Path, tmp_path: Path) -> None:
    record = tmp_path / "host-sysctls.json"
    host.apply(record, lambda _m: None)
    (proc / "kernel/panic").write_text("30\n")
    restored = host.restore(record, lambda _m: None)
    assert "kernel.panic" not in restored and host.read()["kernel.panic"] == "30"
    assert host.read()["vm.overcommit_memory"] == "0"
