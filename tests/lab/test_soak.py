"""A short soak (bench/soak.py): create and delete a cluster under faults, kills and a cut network,
and nothing may be left behind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import LabHandle

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def _soak() -> ModuleType:
    # bench/ holds scripts, not a package.
    spec = importlib.util.spec_from_file_location("vkp_bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_short_soak_leaves_nothing_behind(lab: LabHandle, tmp_path: Path) -> None:
    soak = _soak()
    opts = soak.SoakOptions(
        cycles=2,
        name="soaktest",  # its VMs are soaktest-*, which no other test's prefix matches
        plan="small",  # six VMs and a DRS rule for etcd: more that could leak than dev's three
        up_to="vms",
        max_attempts=5,
        run_deadline=120.0,
        work_dir=tmp_path,
    )
    report = soak.run_soak(opts)
    print(soak.render(report))

    assert len(report.cycles) == 2
    assert report.leaks == [], "\n".join(report.leaks)
    assert report.inconsistencies == [], "\n".join(report.inconsistencies)
    assert report.hung == [], "\n".join(report.hung)
    assert report.converged == 2, "\n".join(report.problems)
    # The promises kept under fire: a second run refused at once (exit 15), SIGINT obeyed
    # within 5 s with the phase recorded as interrupted.
    assert report.problems == [], "\n".join(report.problems)
    # Every cycle had its three kinds of trouble.
    assert sum(report.faults_armed.values()) == 2
    assert report.net_drops == 2
    assert all("kill" in c for c in report.cycles)
