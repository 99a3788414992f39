"""What a user or a CI job sees when vkp fails: one JSON (or YAML) document on stdout with -o
json/yaml, never a traceback, exit codes that say what went wrong, one insecure-TLS warning,
and a dry run that fits in one file. Nothing real is contacted: vCenter is 127.0.0.1 on a
closed port, or credentials are missing."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result

from provisioner.errors import ExitCode
from provisioner.spec import load_spec
from provisioner.state import ClusterState
from tests.unit.test_cli_plan import vkp as _vkp
from tests.unit.test_spec import LAB_ENV, REPO


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: connections refused


def vkp(*args: str, env: dict[str, str] | None = None) -> Result:
    # The test's own state directory (the state_dir fixture), never the user's ~/.vkp.
    return _vkp(*args, env={"VKP_STATE_DIR": os.environ["VKP_STATE_DIR"]} | (env or {}))


NO_CREDS = {k: v for k, v in LAB_ENV.items() if k not in ("VKP_VSPHERE_USER", "VKP_VSPHERE_PASSWORD")}


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("VKP_STATE_DIR", str(d))
    return d


def _saved_cluster(name: str) -> None:
    """A cluster that exists locally (its spec saved), as after a create that reached vCenter."""
    spec = load_spec(None, name=name, plan="dev", env=LAB_ENV)
    ClusterState.create_or_load(name).save_spec(spec.to_dict())


def _doc(r: Result, fmt: str = "json") -> dict[str, Any]:
    doc = json.loads(r.stdout) if fmt == "json" else yaml.safe_load(r.stdout)
    assert isinstance(doc, dict), r.stdout
    return doc


# Each row: a failure a user can meet, the arguments and environment, the exit code wanted.
FAILURES: list[tuple[str, list[str], dict[str, str], int]] = [
    ("create without credentials", ["create-cluster", "demo", "--plan=dev", "-y"], NO_CREDS, ExitCode.SPEC),
    ("delete without credentials", ["delete-cluster", "demo", "--yes"], NO_CREDS, ExitCode.SPEC),
    ("delete without any vCenter", ["delete-cluster", "demo", "--yes"], {}, ExitCode.SPEC),
    ("resize of no cluster", ["resize", "nope", "--workers", "2", "--yes"], LAB_ENV, ExitCode.NOT_FOUND),
    ("bad spec", ["create-cluster", "Bad_Name!", "--plan", "dev", "--yes"], LAB_ENV, ExitCode.SPEC),
    ("unknown option", ["create-cluster", "--bogus"], LAB_ENV, ExitCode.USAGE),
    ("bad choice", ["create-cluster", "demo", "--up-to", "nope"], LAB_ENV, ExitCode.USAGE),
    ("missing argument", ["delete-cluster", "--yes"], {}, ExitCode.USAGE),
    ("unknown command", ["no-such-command"], {}, ExitCode.USAGE),
    ("ssh to no cluster", ["ssh", "-o", "FMT", "nope", "node"], {}, ExitCode.NOT_FOUND),  # options first
    ("certs of no cluster", ["certs", "nope"], {}, ExitCode.NOT_FOUND),
    ("lab fault, bad method", ["lab", "fault", "vsphere", "not a method!"], {}, ExitCode.USAGE),
]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize(("what", "args", "env", "code"), FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_is_one_document(
    state_dir: Path, what: str, args: list[str], env: dict[str, str], code: int, fmt: str
) -> None:
    args = [fmt if a == "FMT" else a for a in args] if "FMT" in args else [*args, "-o", fmt]
    r = vkp(*args, env=env)
    assert r.exit_code == code, (what, r.output)
    doc = _doc(r, fmt)
    assert doc["ok"] is False and doc["exit_code"] == code
    assert doc["error"]["code"] == code and doc["error"]["message"]
    assert "Traceback" not in r.output


def test_unreachable_vcenter_is_one_json_document(state_dir: Path) -> None:
    env = LAB_ENV | {"VKP_VSPHERE_SERVER": f"127.0.0.1:{_closed_port()}"}
    r = vkp("create-cluster", "demo", "--plan", "dev", "--yes", "-o", "json", env=env)
    assert r.exit_code == ExitCode.VSPHERE, r.output
    assert _doc(r)["error"]["message"].startswith("cannot reach vCenter at 127.0.0.1")
    assert LAB_ENV["VKP_VSPHERE_PASSWORD"] not in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["create-cluster", "demo", "--plan", "dev", "--yes"],
        ["delete-cluster", "demo", "--yes"],
        ["resize", "demo", "--workers", "3", "--yes"],
    ],
    ids=["create", "delete", "resize"],
)
def test_missing_credentials_are_a_missing_setting_not_a_rejection(state_dir: Path, args: list[str]) -> None:
    _saved_cluster("demo")  # delete and resize then read vCenter from the saved spec
    env = NO_CREDS | {"VKP_VSPHERE_USER": "someone"}
    r = vkp(*args, env=env)
    # 3 like any other missing setting: nothing was tried, so not 10 ("vCenter rejected them").
    assert r.exit_code == ExitCode.SPEC, r.output
    assert "VKP_VSPHERE_PASSWORD: not set" in r.stderr
    assert "VKP_VSPHERE_USER" not in r.stderr  # it is set: only what is missing is named
    j = vkp(*args, "-o", "json", env=env)
    assert j.exit_code == ExitCode.SPEC
    assert [p["field"] for p in _doc(j)["error"]["problems"]] == ["VKP_VSPHERE_PASSWORD"]


def test_delete_without_local_state_or_server_names_the_variable(state_dir: Path) -> None:
    r = vkp("delete-cluster", "gone", "--yes")
    assert r.exit_code == ExitCode.SPEC, r.output
    assert "VKP_VSPHERE_SERVER: not set" in r.stderr


def test_an_unexpected_error_is_one_line_and_a_hint(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import provisioner.cluster

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("the state index is garbled")

    monkeypatch.setattr(provisioner.cluster, "list_clusters", broken)
    r = vkp("list-clusters")  # catch_exceptions=False: an escaped exception fails the test
    assert r.exit_code == ExitCode.ERROR
    assert r.stderr.startswith("error: RuntimeError: the state index is garbled\n")
    assert "report it" in r.stderr and "Traceback" not in r.output
    j = vkp("list-clusters", "-o", "json")
    assert j.exit_code == ExitCode.ERROR
    err = _doc(j)["error"]
    assert err["type"] == "RuntimeError" and err["unexpected"] is True and "report it" in err["hint"]


def test_an_unexpected_error_after_the_command_body_is_still_a_message(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provisioner.cluster

    # describe_cluster answers, but without the keys the text view reads: the error is raised
    # while printing, outside run(). The cluster has local state, so the local view is asked.
    ClusterState.create_or_load("demo")
    monkeypatch.setattr(provisioner.cluster, "describe_cluster", lambda name: {})
    r = vkp("describe-cluster", "demo")
    assert r.exit_code == ExitCode.ERROR
    assert r.stderr.startswith("error: KeyError: 'name'\n") and "Traceback" not in r.output


def test_yaml_is_the_json_document(state_dir: Path) -> None:
    for args in (["plans"], ["plan", "-f", str(REPO / "inventory/lab.yaml"), "--hosts", "a,b,c"]):
        j = vkp(*args, "-o", "json", env=LAB_ENV)
        y = vkp(*args, "-o", "yaml", env=LAB_ENV)
        assert j.exit_code == y.exit_code == 0, y.output
        assert yaml.safe_load(y.stdout) == json.loads(j.stdout)
        assert not y.stdout.lstrip().startswith("{")  # block style, not JSON-in-YAML


def test_insecure_tls_warns_once_per_run(state_dir: Path) -> None:
    env = {k: v for k, v in LAB_ENV.items() if k != "VKP_VSPHERE_THUMBPRINT"} | {
        "VKP_VSPHERE_INSECURE": "1",
        "VKP_VSPHERE_SERVER": f"127.0.0.1:{_closed_port()}",
    }
    r = vkp("create-cluster", "demo", "--plan", "dev", "--yes", env=env)
    assert r.exit_code == ExitCode.VSPHERE, r.output  # it got as far as connecting
    assert r.stderr.count("insecure") == 1, r.stderr
    # The next run (same process, as in a test or an embedding) warns again.
    r = vkp("create-cluster", "demo", "--plan", "dev", "--yes", env=env)
    assert r.stderr.count("insecure") == 1, r.stderr


def test_dry_run_prints_the_whole_plan_on_stdout(state_dir: Path, tmp_path: Path) -> None:
    env = LAB_ENV | {"VKP_K8S_ARTIFACTS": f"local:{tmp_path / 'none'}"}
    r = vkp("create-cluster", "demo", "--plan", "dev", "--dry-run", "--up-to", "etcd", env=env)
    assert r.exit_code == 0, r.output
    out = r.stdout
    # The plan table, then the VM actions, then every step per host, then the artifacts.
    table, vm_action = out.index("NAME "), out.index("demo-etcd-1: power on")
    step, artifacts = out.index("common.packages"), out.index("artifacts this run needs:")
    assert table < vm_action < step < artifacts
    assert "would change" in out and "etcd.health" in out
    assert "[" not in out.split("\n", 1)[0]  # no progress timestamps in the plan
    assert "would change" not in r.stderr and "NAME " not in r.stderr
    assert r.stderr.strip() == "dry run: nothing was contacted or changed"

    j = vkp("create-cluster", "demo", "--plan", "dev", "--dry-run", "--up-to", "etcd", "-o", "json", env=env)
    assert j.exit_code == 0, j.output
    assert _doc(j)["ok"] is True  # stdout is only the document; the steps are progress on stderr
    assert "would change" in j.stderr


# -- the vCenter prompt, on a real terminal ---------------------------------------------------

_VKP = "import sys; sys.argv[0] = 'vkp'; from provisioner.cli import main; main()"


def _on_a_tty(args: list[str], env: dict[str, str], seconds: float = 20) -> tuple[int | None, str, str]:
    """Run vkp with a pseudo-terminal as stdin (stdout and stderr piped apart); returns its exit
    code (None when it still waited at the end), stdout and stderr."""
    master, slave = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VKP_")}
    p = subprocess.Popen(
        [sys.executable, "-c", _VKP, *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean | env,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(slave)
    assert p.stderr is not None and p.stdout is not None
    err = b""
    deadline = time.monotonic() + seconds
    try:
        while p.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(p.stderr.fileno(), 4096)
                err += chunk
                if b"vCenter user for" in err:
                    break  # it prompts: what the text-mode test wants to see
        code = p.poll()
        if code is None:
            p.kill()
        out, rest = p.communicate(timeout=10)
        return code, out.decode(), (err + rest).decode()
    finally:
        os.close(master)


def test_prompt_path_with_json_fails_naming_the_variable(state_dir: Path) -> None:
    env = NO_CREDS | {"VKP_STATE_DIR": str(state_dir)}
    # On a terminal, text mode asks (on stderr): the pty really is a terminal to vkp...
    code, out, err = _on_a_tty(["create-cluster", "demo", "--plan", "dev", "--yes"], env)
    assert code is None and "vCenter user for 127.0.0.1" in err and out == ""
    # ...and with -o json it does not: one JSON error saying what to set.
    code, out, err = _on_a_tty(["create-cluster", "demo", "--plan", "dev", "--yes", "-o", "json"], env)
    assert code == ExitCode.SPEC, err
    doc = json.loads(out)
    assert doc["ok"] is False
    assert [p["field"] for p in doc["error"]["problems"]] == ["VKP_VSPHERE_USER", "VKP_VSPHERE_PASSWORD"]
    assert "with -o json vkp does not prompt" in doc["error"]["message"]
    assert "vCenter user for" not in err


def test_o_is_output_and_the_format_in_every_command() -> None:
    # One meaning per option across vkp: scripts write `-o json` or `--output json` anywhere; a
    # command that writes a file names it --file (support-bundle once took --output for it).
    import click

    from provisioner.cli import main

    def commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
        out = []
        for name, cmd in group.commands.items():
            out.append((f"{path} {name}", cmd))
            if isinstance(cmd, click.Group):
                out += commands(cmd, f"{path} {name}")
        return out

    seen = 0
    for path, cmd in commands(main, "vkp"):
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            if "-o" in p.opts or "--output" in p.opts:
                assert set(p.opts) == {"-o", "--output"}, (path, p.opts)
                assert isinstance(p.type, click.Choice) and {"json", "yaml"} <= set(p.type.choices), path
                seen += 1
    assert seen >= 20, seen
