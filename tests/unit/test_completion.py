"""Shell completion as the shell drives it: `vkp completion SHELL`, then Tab.

The value tests set what click's bash script sets (_VKP_COMPLETE, COMP_WORDS, COMP_CWORD) and
read vkp's answer; the script tests source the generated script in a real bash and call its
completion function, which runs a `vkp` found on PATH (here: this checkout's code).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.state import ClusterState, NodeRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory with two clusters; demo has three nodes."""
    h = tmp_path / "state"
    monkeypatch.setenv("VKP_STATE_DIR", str(h))
    monkeypatch.delenv("VKP_PLANS_FILE", raising=False)
    demo = ClusterState.create_or_load("demo")
    for name, role, addr in [
        ("demo-etcd-1", "etcd", "10.0.0.11"),
        ("demo-master-1", "master", "10.0.0.21"),
        ("demo-worker-1", "worker", "10.0.0.31"),
    ]:
        demo.save_node(NodeRecord(name, role, addr))
    ClusterState.create_or_load("alpha")
    return h


def complete(line: str) -> tuple[list[str], str]:
    """What vkp answers for Tab at the end of line (a trailing space: a new, empty word), and
    whatever it wrote on stderr."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = {"_VKP_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword)}
    r = CliRunner().invoke(main, [], env=env, prog_name="vkp")
    assert r.exit_code == 0, r.output
    # bash's protocol: one "type,value" line per candidate
    values = [ln.split(",", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("plain,")]
    return values, r.stderr


@pytest.mark.parametrize(
    "line",
    [
        "vkp describe-cluster ",
        "vkp certs renew ",
        "vkp delete-cluster ",
        "vkp resize ",
        "vkp get-credentials ",
        "vkp ssh ",
        "vkp etcdctl ",
        "vkp create-cluster ",
        "vkp plan ",
    ],
)
def test_every_cluster_command_completes_cluster_names(home: Path, line: str) -> None:
    assert complete(line) == (["alpha", "demo"], "")


def test_certs_completes_cluster_names_for_its_list_and_its_subcommands(home: Path) -> None:
    # `vkp certs NAME` lists NAME's certificates: names first, then what else certs does.
    assert complete("vkp certs ") == (["alpha", "demo", "list", "renew"], "")
    assert complete("vkp certs de")[0] == ["demo"]
    assert complete("vkp certs re")[0] == ["renew"]


def test_a_prefix_narrows_the_cluster_names(home: Path) -> None:
    assert complete("vkp delete-cluster de")[0] == ["demo"]
    assert complete("vkp get-credentials --merge al")[0] == ["alpha"]


def test_ssh_completes_the_nodes_of_the_cluster_named_before(home: Path) -> None:
    assert complete("vkp ssh demo ")[0] == ["demo-etcd-1", "demo-master-1", "demo-worker-1"]
    assert complete("vkp ssh demo demo-w")[0] == ["demo-worker-1"]
    assert complete("vkp ssh alpha ")[0] == []  # a cluster without nodes yet
    assert complete("vkp ssh nosuch ") == ([], "")


def test_zsh_shows_each_nodes_role_and_address(home: Path) -> None:
    r = CliRunner().invoke(
        main,
        [],
        env={"_VKP_COMPLETE": "zsh_complete", "COMP_WORDS": "vkp ssh demo ", "COMP_CWORD": "3"},
        prog_name="vkp",
    )
    # zsh's protocol: type, value and help, a line each
    assert "demo-master-1\nmaster 10.0.0.21" in r.stdout


def test_plan_names_come_from_the_plans_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert complete("vkp create-cluster demo --plan ")[0] == ["dev", "small", "prod"]
    assert complete("vkp plan --plan s")[0] == ["small"]
    site = tmp_path / "plans.yaml"
    role = "{count: 1, cpus: 2, memory_mb: 2048, disk_gb: 20}"
    site.write_text(f"plans:\n  edge:\n    etcd: {role}\n    master: {role}\n    worker: {role}\n")
    monkeypatch.setenv("VKP_PLANS_FILE", str(site))
    assert complete("vkp create-cluster demo --plan ")[0] == ["edge"]


def test_broken_sources_complete_nothing_and_print_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "demo" / "state.json").write_text("{not json")
    assert complete("vkp ssh demo ") == ([], "")
    bad_plans = tmp_path / "bad-plans.yaml"
    bad_plans.write_text("plans: [")
    monkeypatch.setenv("VKP_PLANS_FILE", str(bad_plans))
    assert complete("vkp create-cluster x --plan ") == ([], "")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("VKP_STATE_DIR", str(not_a_dir))
    assert complete("vkp describe-cluster ") == ([], "")


def test_commands_and_options_complete_too(home: Path) -> None:
    assert "completion" in complete("vkp comp")[0]
    assert complete("vkp create-cluster --up")[0] == ["--up-to"]


def test_completion_help_says_how_to_install() -> None:
    r = CliRunner().invoke(main, ["completion", "--help"])
    assert r.exit_code == 0
    assert "vkp completion bash > /etc/bash_completion.d/vkp" in r.stdout
    assert "source <(vkp completion bash)" in r.stdout
    assert "_VKP_COMPLETE" not in r.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    r = CliRunner().invoke(main, ["completion", "tcsh"])
    assert r.exit_code == 2 and "bash" in r.stderr


def test_json_carries_the_script() -> None:
    import json

    r = CliRunner().invoke(main, ["completion", "zsh", "-o", "json"])
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["shell"] == "zsh"
    assert "compdef _vkp_completion vkp" in doc["script"]


def test_fish_script_registers_vkp() -> None:
    r = CliRunner().invoke(main, ["completion", "fish"])
    assert r.exit_code == 0 and "complete --no-files --command vkp" in r.stdout


# -- the bash script in a real bash ----------------------------------------------------------


@pytest.fixture
def vkp_on_path(tmp_path: Path) -> Path:
    """A directory holding a `vkp` that runs this checkout's code."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vkp"
    exe.write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -c "
        "'import sys; from provisioner.cli import main; sys.exit(main(prog_name=\"vkp\"))' \"$@\"\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


def bash_script(vkp_on_path: Path) -> str:
    cmd = [str(vkp_on_path / "vkp"), "completion", "bash"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")


@needs_bash
def test_the_bash_script_parses(vkp_on_path: Path, tmp_path: Path) -> None:
    script = tmp_path / "vkp.bash"
    script.write_text(bash_script(vkp_on_path))
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@needs_bash
def test_sourced_in_bash_tab_completes_a_cluster_name(home: Path, vkp_on_path: Path, tmp_path: Path) -> None:
    script = tmp_path / "vkp.bash"
    script.write_text(bash_script(vkp_on_path))
    # What bash does on `vkp describe-cluster de<Tab>`: the function `complete -p vkp` names,
    # called with the command word, COMP_WORDS and COMP_CWORD set; COMPREPLY is the answer.
    probe = f"""
        source {script}
        func=$(complete -p vkp | sed -n 's/.*-F \\([^ ]*\\) vkp$/\\1/p')
        [ -n "$func" ] || {{ echo "no completion function registered for vkp" >&2; exit 3; }}
        COMP_WORDS=(vkp describe-cluster de); COMP_CWORD=2; COMPREPLY=()
        "$func" vkp
        printf '%s\\n' "${{COMPREPLY[@]}}"
        COMP_WORDS=(vkp ssh demo ''); COMP_CWORD=3; COMPREPLY=()
        "$func" vkp
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    env = os.environ | {"PATH": f"{vkp_on_path}:{os.environ['PATH']}", "VKP_STATE_DIR": str(home)}
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["demo", "demo-etcd-1", "demo-master-1", "demo-worker-1"]
    assert r.stderr == ""
