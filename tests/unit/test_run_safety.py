"""A run's safety rails without a vCenter: re-runs that cannot change a cluster, the stop flag,
--timeout, what a failed run leaves, and output discipline."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner import stop
from provisioner.cli import main
from provisioner.cluster import delete_cluster, refuse_changes
from provisioner.errors import AuthError, Interrupted, SpecError, Timeout
from provisioner.spec import ClusterSpec, load_spec
from provisioner.state import ClusterState
from tests.unit.test_spec import LAB_ENV


@pytest.fixture(autouse=True)
def fresh_stop() -> Iterator[None]:
    stop.reset()
    yield
    stop.reset()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "clusters"
    monkeypatch.setenv("VKP_STATE_DIR", str(h))
    return h


def spec_for(plan: str = "small", **env: str) -> ClusterSpec:
    return load_spec(None, name="demo", plan=plan, env=LAB_ENV | env)


def with_counts(spec: ClusterSpec, **counts: int) -> ClusterSpec:
    topo = spec.topology
    for role, n in counts.items():
        topo = dataclasses.replace(topo, **{role: dataclasses.replace(topo.role(role), count=n)})
    return dataclasses.replace(spec, topology=topo)


# -- what a re-run cannot change ----------------------------------------------------------------


def test_a_rerun_may_add_workers_but_not_change_etcd_masters_or_where_it_lives(home: Path) -> None:
    spec = spec_for("small")
    state = ClusterState.create_or_load("demo")
    state.save_spec(spec.to_dict())
    refuse_changes(state, spec)  # the same spec is fine
    refuse_changes(state, with_counts(spec, worker=5))  # more workers: a re-run adds them

    with pytest.raises(SpecError) as e:
        refuse_changes(state, with_counts(spec, etcd=5, master=3))
    fields = {f for f, _ in e.value.problems}
    assert fields == {"topology.etcd.count", "topology.master.count"}
    assert "delete and recreate" in str(e.value)

    with pytest.raises(SpecError) as e:
        refuse_changes(state, with_counts(spec, worker=1))
    assert "vkp resize demo --workers 1" in str(e.value)

    moved = dataclasses.replace(spec, vsphere=dataclasses.replace(spec.vsphere, datacenter="DC9"))
    with pytest.raises(SpecError) as e:
        refuse_changes(state, moved)
    assert e.value.problems[0][0] == "vsphere.datacenter" and "'DC0'" in e.value.problems[0][1]


def test_delete_of_a_cluster_that_never_reached_vcenter_needs_no_vcenter(home: Path) -> None:
    ClusterState.create_or_load("demo")  # a run that stopped before its first session
    said: list[str] = []
    result = delete_cluster("demo", said.append, env={})
    assert not ClusterState.exists("demo")
    assert result["deleted"] == {"vms": 0, "rules": 0, "folders": 0}
    assert "never reached vCenter" in said[0]


def test_delete_with_another_id_than_the_local_state_is_refused(home: Path) -> None:
    state = ClusterState.create_or_load("demo")
    with pytest.raises(Exception) as e:
        delete_cluster("demo", print, env={}, cluster_id="not-" + state.cluster_id)
    assert state.cluster_id in str(e.value)
    assert ClusterState.exists("demo")


# -- the stop flag ------------------------------------------------------------------------------


def test_a_stop_ends_waits_and_sleeps_and_names_what_they_waited_for() -> None:
    threading.Timer(0.3, lambda: stop.request({"signal": signal.SIGINT})).start()
    t = time.monotonic()
    with pytest.raises(Interrupted) as e:
        stop.wait(threading.Event(), 30, "the moon")
    assert time.monotonic() - t < 1.5
    assert e.value.exit_code == 130 and "SIGINT" in str(e.value) and "the moon" in str(e.value)
    with pytest.raises(Interrupted):
        stop.sleep(30)
    with stop.shielded():
        stop.check("cleanup")  # cleanup still runs after a stop
        stop.sleep(0.01)


def test_sigterm_exits_143() -> None:
    stop.request({"signal": signal.SIGTERM})
    with pytest.raises(Interrupted) as e:
        stop.check("x")
    assert e.value.exit_code == 143


def test_the_run_deadline_is_a_timeout_naming_the_wait() -> None:
    stop.arm_deadline(0.2)
    assert stop.remaining(100) <= 0.2  # type: ignore[operator]
    with pytest.raises(Timeout) as e:
        stop.wait(threading.Event(), 30, "`kubeadm init` on demo-master-1")
    assert e.value.exit_code == 13
    assert "--timeout of 0s" not in str(e.value) and "kubeadm init" in str(e.value)


def test_callbacks_run_on_stop_and_not_after_leaving() -> None:
    calls: list[str] = []
    with stop.on_stop(lambda: calls.append("inside")):
        pass
    with stop.on_stop(lambda: calls.append("held")):
        stop.request({"signal": signal.SIGINT})
    assert calls == ["held"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2h", 7200)]
)
def test_durations(text: str, seconds: float) -> None:
    assert stop.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "5x", "1.5h", "²", "9999h"])
def test_bad_durations_are_refused_by_the_cli(text: str) -> None:
    r = CliRunner().invoke(main, ["create-cluster", "demo", "--timeout", text, "--yes"])
    assert r.exit_code == 2
    assert "--timeout" in r.output and "Traceback" not in r.output


# -- output discipline --------------------------------------------------------------------------


def test_the_credential_prompt_goes_to_stderr_and_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.vsphere import login

    spec = spec_for("dev")
    env = {k: v for k, v in LAB_ENV.items() if "USER" not in k and "PASSWORD" not in k}
    stdin, stderr, stdout = io.StringIO("alice\n"), io.StringIO(), io.StringIO()
    stdin.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr(
        "getpass.getpass", lambda prompt, stream=None: (stream or stdout).write(prompt) and "pw"
    )
    seen: list[tuple[str, str]] = []

    def fake_connect(server: str, user: str, password: str, **kw: object) -> None:
        seen.append((user, password))
        raise AuthError("stop here")

    monkeypatch.setattr(login, "connect", fake_connect)
    monkeypatch.setattr(login, "_prompted", {})
    for _ in range(2):
        with pytest.raises(AuthError):
            login.session_for(spec, env)
    assert seen == [("alice", "pw"), ("alice", "pw")]  # the second session did not ask again
    assert stdout.getvalue() == "", "a prompt on stdout corrupts -o json"
    assert "vCenter user" in stderr.getvalue() and "password for alice" in stderr.getvalue()


def test_a_json_failure_is_one_document_with_code_hint_and_no_traceback(home: Path) -> None:
    r = CliRunner().invoke(main, ["delete-cluster", "Not_A_Name", "--yes", "-o", "json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 3
    assert doc["ok"] is False and doc["exit_code"] == 3 and doc["error"]["code"] == 3
    assert "Traceback" not in r.output
