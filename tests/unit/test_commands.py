import pickle
import subprocess

import pytest

from provisioner.errors import CommandFailed
from provisioner.ssh.commands import MASK, Cmd, Result, Secret, sudo

NASTY = ["a b", "it's", 'say "hi"', "$(touch /tmp/pwned)", "`id`", "line1\nline2", "*", "; rm -rf /", ""]


def sh_argv(rendered: str) -> list[str]:
    """What a real POSIX shell makes of the rendered command, argument by argument."""
    script = f'set -- {rendered}; for a in "$@"; do printf "%s\\0" "$a"; done'
    done = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("arg", NASTY)
def test_each_argument_reaches_the_shell_unchanged(arg):
    cmd = Cmd("printf", "%s", arg)
    assert sh_argv(cmd.render()) == ["printf", "%s", arg]


def test_secret_is_revealed_only_in_render():
    cmd = Cmd("etcdctl", "--password", Secret("p@ss w'rd $(x)"), "member", "list")
    assert sh_argv(cmd.render())[2] == "p@ss w'rd $(x)"
    assert cmd.masked() == f"etcdctl --password {MASK} member list"
    assert "p@ss" not in repr(cmd) and "p@ss" not in str(cmd)
    assert cmd.has_secrets


def test_secret_masked_in_str_repr_format():
    s = Secret("hunter2")
    assert str(s) == MASK and "hunter2" not in repr(s) and f"{s}" == MASK and f"{s:>20}" == MASK
    assert s.reveal() == "hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_shell_passes_values_as_positional_parameters():
    cmd = Cmd.shell('printf %s "$1" > "$2"', Secret("top secret"), "/tmp/a file")
    assert sh_argv(cmd.render()) == ["sh", "-c", 'printf %s "$1" > "$2"', "sh", "top secret", "/tmp/a file"]
    assert "top secret" not in cmd.masked()
    assert MASK in cmd.masked()


def test_shell_really_runs_with_quoting_intact(tmp_path):
    target = tmp_path / "out $(x) 'q'"
    cmd = Cmd.shell('printf %s "$1" > "$2"', "v; echo injected", str(target))
    subprocess.run(cmd.render(), shell=True, check=True)
    assert target.read_text() == "v; echo injected"


def test_sudo_wraps_and_keeps_masking():
    cmd = sudo(Cmd("chpasswd", Secret("x")))
    assert cmd.args[:3] == ("sudo", "-n", "--")
    assert cmd.masked() == f"sudo -n -- chpasswd {MASK}"
    assert sudo(Cmd("id"), user="etcd").masked() == "sudo -n -u etcd -- id"


def test_command_failed_message_uses_the_masked_command():
    cmd = Cmd("login", Secret("tok-123"))
    err = CommandFailed("node1", cmd.masked(), 1, "", "denied\n")
    assert "tok-123" not in str(err) and MASK in str(err) and "denied" in str(err)


def test_arguments_must_be_str_or_secret():
    with pytest.raises(TypeError):
        Cmd("ls", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Cmd()


def test_result_ok():
    assert Result(0, "", "").ok and not Result(2, "", "").ok
