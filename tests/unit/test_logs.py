"""vkp -v/-vv/-q/--debug and the per-run log file, through the CLI as a user runs it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from provisioner import cluster, logs
from provisioner.cli import main
from provisioner.errors import ProvisionerError
from provisioner.state import ClusterState

PASSWORD = "Vc-p@ss'w0rd"
TOKEN = "abcdef.0123456789abcdef"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "state"
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    monkeypatch.setenv("VKP_VSPHERE_PASSWORD", PASSWORD)
    yield home
    # Leave the process's logging as other tests expect it (no vkp handler on the root logger).
    logs.finish()
    logs.configure()
    logging.getLogger().removeHandler(logs._stderr)  # noqa: SLF001


def fake_delete(fail: bool = False, *, secrets: bool = False) -> Any:
    """A delete-cluster library call that logs at every level, as the real modules do."""

    def delete_cluster(name: str, log: Any, **_kw: Any) -> dict[str, Any]:
        lib = logging.getLogger("provisioner.vsphere.session")
        lib.debug("debug-line from vkp")
        lib.info("info-line from vkp")
        lib.warning("warning-line from vkp")
        lib.error("error-line from vkp")
        logging.getLogger("paramiko.transport").debug("debug-line from paramiko")
        logging.getLogger("pyVmomi").debug("debug-line from pyVmomi")
        log("progress-line")
        if secrets:
            lib.warning("login as admin with %s, join token %s, key %s", PASSWORD, TOKEN, PEM)
            log(f"progress with token {TOKEN}")
        if fail:
            raise ProvisionerError("vCenter went away", hint="try again")
        return {"cluster": name, "cluster_id": "x", "deleted": {}, "kept_folders": [], "leftovers": []}

    return delete_cluster


def vkp(monkeypatch: pytest.MonkeyPatch, *args: str, fail: bool = False, secrets: bool = False) -> Result:
    monkeypatch.setattr(cluster, "delete_cluster", fake_delete(fail, secrets=secrets))
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def delete(*flags: str) -> tuple[str, ...]:
    return (*flags, "delete-cluster", "demo", "--yes")


@pytest.fixture
def demo(_home: Path) -> Path:
    return ClusterState.create_or_load("demo").path


def run_logs(cluster_dir: Path) -> list[Path]:
    d = cluster_dir / "logs"
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ((), {"warning-line", "error-line", "progress-line"}, {"info-line", "debug-line"}),
        (("-v",), {"info-line from vkp", "warning-line", "progress-line"}, {"debug-line"}),
        (
            ("-vv",),
            {"debug-line from vkp", "info-line"},
            {"debug-line from paramiko", "debug-line from pyVmomi"},
        ),
        (
            ("--debug",),
            {"debug-line from vkp", "debug-line from paramiko", "debug-line from pyVmomi"},
            set(),
        ),
        (("-q",), {"error-line"}, {"warning-line", "info-line", "debug-line", "progress-line"}),
    ],
)
def test_each_flag_sets_what_reaches_stderr(monkeypatch, demo, flags, shown, hidden):
    r = vkp(monkeypatch, *delete(*flags))
    assert r.exit_code == 0, r.output
    for text in shown:
        assert text in r.stderr, (flags, text)
    for text in hidden:
        assert text not in r.stderr, (flags, text)
    assert "-line" not in r.stdout  # stdout is for results only


def test_log_lines_name_their_level_and_with_vv_their_source(monkeypatch, demo):
    r = vkp(monkeypatch, *delete("-v"))
    assert "info: info-line from vkp" in r.stderr.splitlines()
    r = vkp(monkeypatch, *delete("-vv"))
    assert "info: provisioner.vsphere.session: info-line from vkp" in r.stderr.splitlines()


def test_an_error_before_the_cluster_is_known_is_printed_once(monkeypatch, _home):
    for k in [k for k in os.environ if k.startswith("VKP_") and k != "VKP_STATE_DIR"]:
        monkeypatch.delenv(k)
    r = CliRunner().invoke(main, ["create-cluster", "demo", "--yes"], catch_exceptions=False)
    assert r.exit_code == 3
    assert r.stderr.count("vsphere.server: required") == 1
    assert not (_home / "demo").exists()


def test_paramiko_lines_are_not_shown_twice_whichever_was_imported_first(monkeypatch, demo):
    import provisioner.ssh.connector  # noqa: F401 - turns paramiko's propagation off

    r = vkp(monkeypatch, *delete("--debug"))
    assert r.stderr.count("debug-line from paramiko") == 1
    monkeypatch.setattr(logging.getLogger("paramiko"), "propagate", True)
    r = vkp(monkeypatch, *delete("--debug"))
    assert r.stderr.count("debug-line from paramiko") == 1


def test_quiet_and_verbose_together_is_a_usage_error(monkeypatch, demo):
    r = vkp(monkeypatch, *delete("-q", "-v"))
    assert r.exit_code == 2
    assert "-q cannot be combined with -v" in r.stderr


@pytest.mark.parametrize("flags", [(), ("-q",)])
def test_every_run_keeps_a_private_debug_log_whatever_the_flags(monkeypatch, demo, flags):
    r = vkp(monkeypatch, *delete(*flags))
    assert r.exit_code == 0, r.output
    (path,) = run_logs(demo)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.name.endswith("-delete-cluster.log") and path.name[:8].isdigit()
    text = path.read_text()
    for line in ("debug-line from vkp", "info-line", "warning-line", "progress-line", "delete-cluster"):
        assert line in text
    # paramiko's chatter only with --debug
    assert "debug-line from paramiko" not in text
    assert "full log" not in r.stderr  # a run that worked does not point at its log


def test_secrets_logged_by_the_library_are_masked_in_file_and_stderr(monkeypatch, demo):
    r = vkp(monkeypatch, *delete("--debug"), secrets=True)
    assert r.exit_code == 0, r.output
    (path,) = run_logs(demo)
    for where, text in (("file", path.read_text()), ("stderr", r.stderr)):
        for secret in (PASSWORD, TOKEN, KEY_BODY):
            assert secret not in text, (where, secret)
        assert f"login as admin with {logs.MASK}, join token {logs.MASK}" in text, where
        assert "-----BEGIN OPENSSH PRIVATE KEY-----" + logs.MASK in text, where
        assert f"progress with token {logs.MASK}" in text, where


def test_a_failed_run_prints_where_its_log_is(monkeypatch, demo):
    r = vkp(monkeypatch, *delete(), "-o", "json", fail=True)
    assert r.exit_code == 1
    (path,) = run_logs(demo)
    lines = r.stderr.splitlines()
    assert lines[-1] == f"full log: {path}"
    assert lines.index("error: vCenter went away") < len(lines) - 1
    assert '"ok": false' in r.stdout  # the JSON document is untouched
    assert "error: vCenter went away" in path.read_text()


def test_a_cluster_without_state_gets_no_directory_and_no_log(monkeypatch, _home):
    r = vkp(monkeypatch, *delete(), fail=True)
    assert r.exit_code == 1
    assert not (_home / "demo").exists()
    assert "full log" not in r.stderr


def test_a_state_directory_made_during_the_run_gets_the_whole_log(monkeypatch, _home):
    def delete_cluster(name: str, log: Any, **_kw: Any) -> dict[str, Any]:
        log("before the state exists")
        ClusterState.create_or_load(name)
        log("after")
        raise ProvisionerError("failed later")

    monkeypatch.setattr(cluster, "delete_cluster", delete_cluster)
    r = CliRunner().invoke(main, list(delete()), catch_exceptions=False)
    (path,) = run_logs(_home / "demo")
    text = path.read_text()
    assert text.index("before the state exists") < text.index("after") < text.index("failed later")
    assert r.stderr.splitlines()[-1] == f"full log: {path}"


def test_an_unexpected_error_leaves_its_traceback_in_the_log(monkeypatch, demo):
    def delete_cluster(name: str, log: Any, **_kw: Any) -> dict[str, Any]:
        raise RuntimeError(f"boom with {PASSWORD}")

    monkeypatch.setattr(cluster, "delete_cluster", delete_cluster)
    r = CliRunner().invoke(main, list(delete()))
    # A message on the terminal (exit 1, "report it"), the traceback in the log only.
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "full log: " in r.output
    (path,) = run_logs(demo)
    text = path.read_text()
    assert "Traceback" in text and "RuntimeError: boom with" in text
    assert PASSWORD not in text


def test_only_the_twenty_newest_logs_are_kept(monkeypatch, demo):
    old = demo / "logs"
    old.mkdir(mode=0o700)
    names = [f"2020010{d}T0000{s:02d}Z-create-cluster.log" for d in (1, 2) for s in range(15)]
    for n in names:
        (old / n).write_text("old\n")
    r = vkp(monkeypatch, *delete())
    assert r.exit_code == 0
    kept = [p.name for p in run_logs(demo)]
    assert len(kept) == 20
    assert kept[-1].endswith("-delete-cluster.log")  # this run's, the newest
    assert kept[:-1] == sorted(names)[-19:]


def test_two_runs_in_one_second_keep_both_logs(monkeypatch, demo):
    monkeypatch.setattr(logs.time, "strftime", lambda *_a: "20250101T000000Z")
    vkp(monkeypatch, *delete())
    vkp(monkeypatch, *delete())
    assert [p.name for p in run_logs(demo)] == [
        "20250101T000000Z-delete-cluster-1.log",
        "20250101T000000Z-delete-cluster.log",
    ]


def test_mask_handles_repr_forms_and_unterminated_keys():
    assert logs.mask(repr(PASSWORD), [PASSWORD]).count(PASSWORD) == 0
    assert "Vc-p@ss" not in logs.mask(repr(PASSWORD), [PASSWORD])
    truncated = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow..."
    assert logs.mask(truncated, []) == f"-----BEGIN RSA PRIVATE KEY-----{logs.MASK}"
    assert logs.mask("host etcd-1.example.com is up", []) == "host etcd-1.example.com is up"
