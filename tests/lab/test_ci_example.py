"""docs/ci/github-actions.yml, run as its runner would: every run: step in order in bash, then
the steps that always run, in a fresh working directory with the example's own NAME and
VKP_STATE_DIR. Each step must exit 0, and the delete must leave nothing of the cluster in vCenter.

The install step is the one not run: the suite's own venv stands for it (linked in as .venv),
so the example runs the vkp under test. `vkp lab prepare` and `vkp lab up` are run: with the
lab up they find everything built and the lab running, and change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.vsphere import ownership
from provisioner.vsphere.session import connect
from tests.conftest import VKP, LabHandle

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "ci" / "github-actions.yml"
INSTALL_STEP = "Install vkp"


def job() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return doc["jobs"]["cluster"]


def run_step(step: dict[str, Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # What `shell: bash` runs a step with on GitHub's runner.
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=20 * 60,
        stdin=subprocess.DEVNULL,
    )


# Above the suite's 900 s: a kill mid-test would skip the delete and leave the cluster behind.
@pytest.mark.timeout(1800)
def test_the_github_actions_example_runs(lab: LabHandle, tmp_path: Path) -> None:
    j = job()
    name = j["env"]["NAME"]
    assert name != "lab", "the example's cluster would collide with the suite's shared one"
    assert not Path(j["env"]["VKP_STATE_DIR"]).is_absolute(), "relative: fresh in a fresh directory"
    steps = [s for s in j["steps"] if "run" in s]
    install = [s for s in steps if s.get("name") == INSTALL_STEP]
    assert len(install) == 1 and "pip install" in install[0]["run"]
    main_steps = [s for s in steps if "if" not in s and s.get("name") != INSTALL_STEP]
    always = [s for s in steps if s.get("if") == "always()"]
    assert main_steps and always

    work = tmp_path / "checkout"
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "vkp").symlink_to(VKP)
    # The runner's environment: no VKP_* or KUBECONFIG of the developer's, the job's env added.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VKP_") and k != "KUBECONFIG"}
    env |= {k: str(v) for k, v in j["env"].items()}

    outcomes: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    try:
        for step in main_steps:
            r = run_step(step, work, env)
            outcomes.append((step["name"], r))
            if r.returncode != 0:
                break
    finally:
        for step in always:
            outcomes.append((step["name"], run_step(step, work, env)))
        lab.wait_guests_gone(name)

    for step_name, r in outcomes:
        output = f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        assert r.returncode == 0, f"step {step_name!r} exited {r.returncode}:\n{output}"
    assert [n for n, _ in outcomes] == [s["name"] for s in main_steps + always]

    created = json.loads((work / "create.json").read_text())
    assert created["ok"] is True
    assert [(p["name"], p["status"]) for p in created["phases"]][-1] == ("kubernetes", "done")
    tested = dict(outcomes)["Test against it"].stdout
    # `kubectl get nodes` rows (the other lines are get-credentials' and kubectl wait's)
    rows = [line.split() for line in tested.splitlines() if line.startswith(f"{name}-")]
    nodes = {row[0]: row[1] for row in rows}
    assert nodes == {f"{name}-master-1": "Ready", f"{name}-worker-1": "Ready"}, tested

    with connect(lab.server, lab.username, lab.password, thumbprint=lab.thumbprint) as s:
        assert ownership.candidates(s.content, name) == [], "the delete left something in vCenter"
    assert not (work / j["env"]["VKP_STATE_DIR"] / name).exists()
