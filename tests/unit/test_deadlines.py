"""Deadlines and stops on the SSH and bootstrap side: every remote command has a deadline, and
a SIGINT or the run's --timeout (provisioner.stop) ends every wait within a second or two.

SSH waits run against paramiko's own server side in-process (test_connector's FakeSSHD), so
the channel, socket and transport behaviour is real; the plays run over scripted hosts whose
commands wait the way Connection.run does (through stop.wait), since the connector's waits are
tested on their own here.
"""

from __future__ import annotations

import ast
import io
import json
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko
import pytest

from provisioner import stop
from provisioner.bootstrap import engine, runner
from provisioner.bootstrap.engine import Cluster, Facts, Run, StepGen, step
from provisioner.bootstrap.phases import PLAYBOOK, connect_all
from provisioner.bootstrap.playbook import load_playbook, parse_playbook
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.errors import ExitCode, Interrupted, Timeout
from provisioner.plan import make_plan
from provisioner.retry import retry_call
from provisioner.spec import load_spec
from provisioner.ssh.commands import COMMAND_TIMEOUT, Cmd, Result, Secret
from provisioner.ssh.connector import Connection
from provisioner.state import ClusterState
from tests.unit.test_connector import FakeSSHD
from tests.unit.test_spec import LAB_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_stop() -> Iterator[None]:
    # The flag is process-wide: a stop requested by one test must not end the next one's waits.
    stop.reset()
    yield
    stop.reset()


def later(seconds: float, fn: Any) -> threading.Timer:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


def sigint() -> None:
    stop.request({"signal": signal.SIGINT})


# -- SSH: the in-process server ---------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ClusterState, FakeSSHD]]:
    st = ClusterState.create_or_load("demo", home=tmp_path / "state")
    key_path, _ = st.ssh_keypair()
    host_pem, _ = st.host_key("n1")
    st.write_known_hosts([("n1", "127.0.0.1")])
    host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_pem))
    login = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    server = FakeSSHD(host_key, login)
    yield st, server
    server.close()


def connection(st: ClusterState, port: int, **kw: Any) -> Connection:
    key_path, _ = st.ssh_keypair()
    return Connection("n1", "127.0.0.1", "vkp", key_path, st.known_hosts_path, port=port, become=False, **kw)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a wedged or half-booted sshd)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    # shutdown wakes the accept() above; close alone would leave it listening.
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    for c in accepted:
        c.close()


def test_the_default_command_deadline_is_finite_and_none_is_refused(node: Any) -> None:
    st, server = node
    assert math.isfinite(COMMAND_TIMEOUT) and 60 <= COMMAND_TIMEOUT <= 900
    assert Run(Cmd("true")).timeout == COMMAND_TIMEOUT
    for bad in (None, 0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            Run(Cmd("true"), timeout=bad)  # type: ignore[arg-type]
    with connection(st, server.port) as c:
        with pytest.raises(ValueError, match="timeout"):
            c.run(Cmd("true"), timeout=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            c.get("/etc/hostname", timeout=math.inf)
        assert server.commands == []  # refused before anything was sent


def test_a_command_that_never_returns_hits_its_deadline(node: Any) -> None:
    st, server = node
    with connection(st, server.port) as c:
        started = time.monotonic()
        with pytest.raises(Timeout) as ei:
            c.run(Cmd.shell("sleep 30", Secret("tok-S3CRET")), timeout=1)
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 4
        err = ei.value
        assert err.exit_code == ExitCode.TIMEOUT == 13
        assert "n1" in err.message and "sleep 30" in err.message and "1 s" in err.message
        assert "tok-S3CRET" not in str(err) and "********" in err.message
        # The channel was abandoned, not the connection: the next command runs on it.
        assert c.run(Cmd("echo", "next")).stdout == "next\n"
        assert len(server.transports) == 1


def test_the_deadline_also_bounds_sending_stdin(node: Any) -> None:
    # `sleep` never reads its stdin: once the channel's window is full, sending blocks.
    st, server = node
    with connection(st, server.port) as c:
        started = time.monotonic()
        with pytest.raises(Timeout, match="did not finish within 1 s"):
            c.run(Cmd("sleep", "30"), stdin=b"x" * 20_000_000, timeout=1)
        assert time.monotonic() - started < 4


def test_sigint_ends_a_running_command_within_a_second_or_two(node: Any) -> None:
    st, server = node
    with connection(st, server.port) as c:
        later(0.5, sigint)
        started = time.monotonic()
        with pytest.raises(Interrupted) as ei:
            c.run(Cmd("sleep", "30"), timeout=60)
        assert time.monotonic() - started < 2.5
        err = ei.value
        assert err.exit_code == 130 == ExitCode.INTERRUPTED
        assert "SIGINT" in err.message and "sleep 30" in err.message and "n1" in err.message


def test_sigterm_ends_sending_stdin(node: Any) -> None:
    st, server = node
    with connection(st, server.port) as c:
        later(0.5, lambda: stop.request({"signal": signal.SIGTERM}))
        started = time.monotonic()
        with pytest.raises(Interrupted) as ei:
            c.run(Cmd("sleep", "30"), stdin=b"x" * 20_000_000, timeout=60)
        assert time.monotonic() - started < 2.5
        assert ei.value.exit_code == 143


def test_the_run_deadline_ends_a_command_with_a_timeout(node: Any) -> None:
    st, server = node
    with connection(st, server.port) as c:
        stop.arm_deadline(1.0)
        started = time.monotonic()
        with pytest.raises(Timeout) as ei:
            c.run(Cmd("sleep", "30"), timeout=60)
        assert time.monotonic() - started < 3
        assert ei.value.exit_code == 13
        assert "--timeout" in ei.value.message and "sleep 30" in ei.value.message


def test_no_command_is_sent_once_the_run_is_stopping(node: Any) -> None:
    st, server = node
    with connection(st, server.port) as c:
        sigint()
        with pytest.raises(Interrupted):
            c.run(Cmd("echo", "late"))
        assert server.commands == []


def test_a_stop_ends_a_connect_to_a_server_that_never_speaks_ssh(node: Any, silent_port: int) -> None:
    st, _ = node
    c = connection(st, silent_port, connect_deadline=60)
    later(0.5, sigint)
    started = time.monotonic()
    with pytest.raises(Interrupted) as ei:
        c.open()
    # Without the stop, paramiko waits 15 s for the banner, and then retries until 60 s.
    assert time.monotonic() - started < 2.5
    assert ei.value.exit_code == 130 and "n1" in ei.value.message


def test_the_run_deadline_caps_the_connect_deadline(node: Any, silent_port: int) -> None:
    st, _ = node
    c = connection(st, silent_port, connect_deadline=60)
    stop.arm_deadline(1.0)
    started = time.monotonic()
    with pytest.raises(Timeout) as ei:
        c.open()
    assert time.monotonic() - started < 3
    assert ei.value.exit_code == 13


def test_a_stop_ends_the_retries_of_a_refused_connect(node: Any) -> None:
    st, _ = node
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once this closes
    c = connection(st, port, connect_deadline=60)
    later(0.7, sigint)
    started = time.monotonic()
    with pytest.raises(Interrupted):
        c.open()
    assert time.monotonic() - started < 2.5 and c.connect_attempts > 1


def test_an_open_connection_is_abandoned_on_a_stop(node: Any) -> None:
    st, server = node
    c = connection(st, server.port).open()
    try:
        transport = c._client.get_transport() if c._client else None
        assert transport is not None and transport.is_active()
        sigint()
        deadline = time.monotonic() + 2
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not transport.is_active()
    finally:
        c.close()


def test_connect_all_reports_the_stop_not_a_node_s_failure(tmp_path: Path, silent_port: int) -> None:
    env = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    spec = load_spec(None, name="demo", plan="small", env=env)
    spec = replace(spec, ssh=replace(spec.ssh, port=silent_port))
    st = ClusterState.create_or_load("demo", home=tmp_path / "state")
    nodes = [replace(n, address="127.0.0.1") for n in make_plan(spec).nodes[:3]]
    for n in nodes:
        st.host_key(n.name)
    st.write_known_hosts([(n.name, "127.0.0.1") for n in nodes])
    later(0.5, sigint)
    started = time.monotonic()
    with pytest.raises(Interrupted):
        connect_all(spec, st, nodes)
    assert time.monotonic() - started < 3


# -- the retry helper -----------------------------------------------------------------------


def test_retry_sleep_ends_on_a_stop_and_no_attempt_follows() -> None:
    calls: list[float] = []

    def fail() -> None:
        calls.append(time.monotonic())
        raise ValueError("not yet")

    later(0.5, sigint)
    started = time.monotonic()
    with pytest.raises(Interrupted) as ei:
        retry_call(fail, retry_on=lambda e: True, deadline=120, initial=30, maximum=30, what="the thing")
    assert time.monotonic() - started < 2
    assert len(calls) == 1
    assert "the thing" in ei.value.message


def test_retry_call_ends_at_the_run_deadline() -> None:
    stop.arm_deadline(0.6)
    started = time.monotonic()
    with pytest.raises(Timeout, match="--timeout"):
        retry_call(lambda: (_ for _ in ()).throw(ValueError("no")), retry_on=lambda e: True, deadline=60,
                   initial=1, maximum=1)  # fmt: skip
    assert time.monotonic() - started < 2


def test_retry_call_without_a_stop_still_retries_and_gives_up_at_its_deadline() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        return "done"

    got = retry_call(flaky, retry_on=lambda e: isinstance(e, ValueError), initial=0.01, maximum=0.02)
    assert got == "done" and len(calls) == 3
    with pytest.raises(ValueError):
        retry_call(lambda: (_ for _ in ()).throw(ValueError("never")), retry_on=lambda e: True, deadline=0.3,
                   initial=0.05, maximum=0.05)  # fmt: skip


# -- plays -----------------------------------------------------------------------------------


@step("test.deadline_wait")
def _wait(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("wait-long", node.name), timeout=60)
    yield Run(Cmd("after", node.name))


@step("test.deadline_short")
def _short(node: Any, cluster: Cluster, facts: Facts) -> StepGen:
    yield Run(Cmd("wait-long", node.name), timeout=0.3)


class WaitingHost:
    """A node whose `wait-long` command waits as Connection.run does: until its deadline or the
    run's stop."""

    become = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.round_trips = 0
        self.commands: list[str] = []
        self.timeouts: list[float] = []

    def run(self, cmd: Cmd, *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
            stdin: bytes | None = None, retry_safe: bool = False) -> Result:  # fmt: skip
        self.round_trips += 1
        self.commands.append(cmd.masked())
        self.timeouts.append(timeout)
        waits = "wait-long" in cmd.masked()
        if waits and not stop.wait(threading.Event(), timeout, f"`{cmd}` on {self.name}"):
            raise Timeout(f"{self.name}: `{cmd}` did not finish within {timeout:g} s")
        return Result(0, "", "")

    def put(self, data: bytes, path: str, *, mode: int, owner: str | None = None) -> bool:
        raise AssertionError("not used")


def make_cluster(tmp_path: Path, plan_name: str = "small") -> Cluster:
    env = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    spec = load_spec(None, name="demo", plan=plan_name, env=env)
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    return Cluster(spec=spec, plan=make_plan(spec), state=state, pki=_PKI())


class _PKI:
    def cert_pem(self, name: str) -> bytes:
        return f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n".encode()

    def key_pem(self, name: str) -> bytes:
        return b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"


def wait_play(serial: int | None) -> runner.Playbook:
    play: dict[str, Any] = {"play": "waits", "phase": "etcd", "hosts": "etcd"}
    play["steps"] = ["test.deadline_wait"]
    if serial:
        play["serial"] = serial
    plays = [play, {"play": "later", "phase": "runtime", "hosts": "all", "steps": ["test.deadline_wait"]}]
    return parse_playbook(plays, source="waits.yaml", digest=json.dumps(plays))


def play_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("play-")]


@pytest.mark.parametrize("serial", [None, 1])
def test_a_sigint_ends_a_play_with_interrupted_and_records_the_phase(
    tmp_path: Path, serial: int | None
) -> None:
    cluster = make_cluster(tmp_path)
    hosts = {n.name: WaitingHost(n.name) for n in cluster.plan.nodes}
    phases: list[tuple[str, str, str | None]] = []
    later(0.5, sigint)
    started = time.monotonic()
    with pytest.raises(Interrupted) as ei:
        run_playbook(wait_play(serial), cluster, hosts, phases={"etcd", "runtime"}, log=lambda _: None,
                     on_phase=lambda p, s, _secs, d: phases.append((p, s, d)))  # fmt: skip
    assert time.monotonic() - started < 3
    assert not isinstance(ei.value, PlayFailed)  # the stop, not "N hosts failed"
    assert ei.value.exit_code == 130
    assert "wait-long" in ei.value.message and "SIGINT" in ei.value.message
    assert phases[0][:2] == ("etcd", "running") and phases[-1][:2] == ("etcd", "interrupted")
    assert all(p != "runtime" for p, *_ in phases)
    etcd = [n.name for n in cluster.plan.by_role("etcd")]
    started_hosts = [n for n in etcd if hosts[n].commands]
    # Nothing after the stop: no host's next command, no next batch, no next play.
    for n in started_hosts:
        assert len(hosts[n].commands) == 1 and hosts[n].commands[0].endswith(f"wait-long {n}")
    assert started_hosts == (etcd[:1] if serial == 1 else etcd)
    assert all(not hosts[n.name].commands for n in cluster.plan.nodes if n.name not in etcd)
    # The workers have ended, and where the run stopped is kept for the next one to resume.
    assert play_threads() == []
    assert cluster.state is not None
    saved = json.loads(cluster.state.progress_path("waits").read_text())
    assert saved["failed"]["play"] == "waits"


def test_the_run_deadline_ends_a_play_with_a_timeout_recorded_as_failed(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    hosts = {n.name: WaitingHost(n.name) for n in cluster.plan.nodes}
    phases: list[tuple[str, str, str | None]] = []
    stop.arm_deadline(0.6)
    with pytest.raises(Timeout) as ei:
        run_playbook(wait_play(None), cluster, hosts, phases={"etcd", "runtime"}, log=lambda _: None,
                     on_phase=lambda p, s, _secs, d: phases.append((p, s, d)))  # fmt: skip
    assert not isinstance(ei.value, PlayFailed) and ei.value.exit_code == 13
    assert phases[-1][:2] == ("etcd", "failed")
    assert phases[-1][2] is not None and "--timeout" in phases[-1][2]


def test_a_command_deadline_in_a_play_is_a_play_failure(tmp_path: Path) -> None:
    # A command past its own deadline is an ordinary failure: the play reports its hosts.
    cluster = make_cluster(tmp_path)
    hosts = {n.name: WaitingHost(n.name) for n in cluster.plan.nodes}
    phases: list[tuple[str, str, str | None]] = []
    plays = [{"play": "short", "phase": "etcd", "hosts": "etcd", "steps": ["test.deadline_short"]}]
    pb = parse_playbook(plays, source="short.yaml", digest="short")
    with pytest.raises(PlayFailed) as ei:
        run_playbook(pb, cluster, hosts, phases={"etcd"}, log=lambda _: None,
                     on_phase=lambda p, s, _secs, d: phases.append((p, s, d)))  # fmt: skip
    assert ei.value.exit_code == 13 and "3 host(s)" in ei.value.message
    assert phases[-1][:2] == ("etcd", "failed")


# -- every command of the playbook has a bounded deadline, long ones their own ------------------

# Commands that legitimately run longer than the default, as they show in a dry run (the
# binaries' download and install script is the one with curl --max-time 900).
LONG = ("kubeadm init", "kubeadm join", "images import", "apt-get", "--max-time 900")


@pytest.mark.parametrize("plan_name", ["small", "prod"])
def test_every_command_of_the_playbook_has_a_bounded_deadline(
    tmp_path: Path, plan_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(tmp_path, plan_name)
    seen: list[Run] = []
    perform = engine.Executor._perform

    def record(self: engine.Executor, action: Any, result: Any, changed: bool) -> Any:
        if isinstance(action, Run):
            seen.append(action)
        return perform(self, action, result, changed)

    monkeypatch.setattr(engine.Executor, "_perform", record)
    playbook = load_playbook(PLAYBOOK)
    run_playbook(playbook, cluster, {}, phases=set(playbook.phases), log=lambda _: None, dry_run=True)
    assert len(seen) > 20
    for action in seen:
        assert math.isfinite(action.timeout) and 0 < action.timeout <= 3600, action
    long = [a for a in seen if any(word in _script(a) for word in LONG)]
    assert long, "the dry run shows no long-running command: LONG is out of date"
    short = [a.cmd.masked()[:80] for a in long if a.timeout <= COMMAND_TIMEOUT]
    assert not short, f"long-running commands on the default deadline: {short}"


def _script(action: Run) -> str:
    return " ".join(str(a) for a in action.cmd.args)


def test_long_running_actions_declare_their_timeout_in_the_source() -> None:
    """Static: a Run whose command is a known long one names its timeout where it is written
    (the dry run above sees only the path a first run takes)."""
    # As ast.unparse writes them (single quotes).
    needles = ("install_command", "fetch_sums_command", "_FETCH_SCRIPT", "'import'", "'install'",
               "'update'", "kubectl_cmd('apply'", "kubectl_cmd('wait'", "'reset'")  # fmt: skip
    missing = []
    for path in sorted((ROOT / "provisioner" / "bootstrap").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Run"):
                continue
            text = ast.unparse(call)
            # kubeadm init and join are built first and run as `Run(cmd, ...)`.
            long_one = any(n in text for n in needles) or (
                bool(call.args) and isinstance(call.args[0], ast.Name) and call.args[0].id == "cmd"
            )
            if long_one and not any(k.arg == "timeout" for k in call.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno}: {text[:90]}")
    assert not missing, "long-running commands without their own timeout:\n" + "\n".join(missing)


def test_curl_on_the_nodes_has_an_overall_time_limit() -> None:
    from provisioner.bootstrap import artifacts
    from provisioner.bootstrap.steps import artifacts as step_artifacts

    for script in (artifacts._FETCH_SUMS_SCRIPT, artifacts._INSTALL_SCRIPT, step_artifacts._FETCH_SCRIPT):
        assert "curl" in script or "_CURL" in script or "--fail" in script
        assert "--max-time" in script and "--connect-timeout" in script and "--speed-time" in script
